//! A network function's answer to a call-out, as the proxy decodes it.
#![no_main]

libfuzzer_sys::fuzz_target!(|body: &[u8]| {
    let _ = trefoil_chain::json::decode(body);
});
