//! A span as the collector keeps and serves it: the API contract's type,
//! so what the collector stores is exactly what `trefoil trace` reads.

pub use trefoil_api::traces::{Span, SpanEvent};
