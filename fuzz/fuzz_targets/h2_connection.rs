//! A client's bytes, after the connection preface, through the whole HTTP/2
//! server: frames, HPACK, stream states, flow control, bodies. The service
//! echoes each request body. Time is paused, so timeouts pass at once once
//! nothing else can happen and every input ends.
#![no_main]

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("a runtime");
    runtime.block_on(async {
        let (server, mut client) = tokio::io::duplex(64 << 10);
        let service = |req: http::Request<trefoil_h2::RecvBody>| async move {
            http::Response::new(req.into_body().map_err(|e| -> trefoil_h2::body::BoxError { e }).boxed_unsync())
        };
        let connection = trefoil_h2::Connection::new(server, trefoil_h2::Config::default(), service);
        let mut input = trefoil_h2::frame::PREFACE.to_vec();
        input.extend_from_slice(data);
        let talk = async move {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            let mut sink = vec![0u8; 16 << 10];
            while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::join!(connection, talk);
    });
});
