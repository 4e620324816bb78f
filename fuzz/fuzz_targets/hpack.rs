//! Header blocks through one HPACK decoder, so the dynamic table carries
//! from block to block as it does on a connection. The first byte of each
//! block says how long it is.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut decoder = trefoil_h2::hpack::Decoder::new(4096, 64 << 10);
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (block, next) = tail.split_at(usize::from(len).min(tail.len()));
        if decoder.decode(&bytes::Bytes::copy_from_slice(block), |_| {}).is_err() {
            return;
        }
        rest = next;
    }
});
