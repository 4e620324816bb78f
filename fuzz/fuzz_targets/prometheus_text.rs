//! A proxy's `/metrics` page as `trefoil top` and the rollout judge read it.
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = trefoil_metrics::parse(text);
});
