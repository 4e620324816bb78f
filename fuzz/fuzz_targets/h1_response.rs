//! An upstream's bytes as the proxy's HTTP/1 client reads them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else { return };
    trefoil_proxy::fuzzing::h1_response(bytes, flags & 1 == 1);
});
