//! A client's request path through normalisation: never a panic, and the
//! result is its own normal form.
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| {
    trefoil_proxy::fuzzing::path(text);
});
