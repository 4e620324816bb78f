//! Entry points for the fuzz targets (`fuzz/`, outside the workspace):
//! the parsers that face untrusted bytes, reachable without making their
//! modules public. Compiled only with the `fuzzing` feature.

use bytes::BytesMut;
use http::Method;
use trefoil_model::spec::PathNormalization;

use crate::upstream::h1::codec::{self, Decoded, Decoder};

/// An upstream's bytes as the HTTP/1 client reads them: response heads, then
/// each body by its framing, as far as the bytes go. Must never panic.
pub fn h1_response(bytes: &[u8], head_request: bool) {
    let method = if head_request { Method::HEAD } else { Method::GET };
    let mut buf = BytesMut::from(bytes);
    let mut spans = Vec::new();
    while let Ok(Some(head)) = codec::parse_response_head(&mut buf, &method, &mut spans) {
        let mut decoder = Decoder::new(head.body);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Decoded::End) => break,
                Ok(Decoded::NeedMore) | Err(_) => {
                    let _ = decoder.at_close();
                    return;
                }
                Ok(_) => {}
            }
        }
    }
}

/// A request path through normalisation, under each escaped-slash action;
/// the result, when there is one, must be its own normal form.
pub fn path(text: &str) {
    use trefoil_model::spec::EscapedSlashes;
    for escaped_slashes in [EscapedSlashes::Reject, EscapedSlashes::Keep, EscapedSlashes::Unescape] {
        let options = PathNormalization { escaped_slashes, ..PathNormalization::default() };
        if let Ok(Some(normal)) = crate::http::head::normalize_path(text, &options) {
            assert_eq!(crate::http::head::normalize_path(&normal, &options).ok().flatten(), None, "{text:?} -> {normal:?} is not normal");
        }
    }
}
