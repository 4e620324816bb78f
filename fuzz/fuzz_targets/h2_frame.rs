//! A client's bytes through the HTTP/2 frame decoder, frame after frame.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut buf = bytes::BytesMut::from(data);
    // Stops at the first error or at a frame not yet whole.
    while let Ok(Some(_)) = trefoil_h2::frame::decode(&mut buf, trefoil_h2::frame::DEFAULT_MAX_FRAME_SIZE) {}
});
