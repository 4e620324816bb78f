//! A datapath rule in the compact form, as `trefoil datapath add` and (later)
//! the handler SDK read it; what parses must format and read back the same.
#![no_main]

use trefoil_model::datapath::compact;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(rule) = compact::parse(text) {
        let again = compact::format(&rule.clone().into_spec());
        assert_eq!(compact::parse(&again).ok(), Some(rule), "{again}");
    }
});
