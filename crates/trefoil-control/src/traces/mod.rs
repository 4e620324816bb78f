//! The trace collector: proxies export their spans here over OTLP/HTTP
//! JSON, and `trefoil trace` reads a request's spans back by trace id.

pub mod api;
pub mod otlp;
pub mod span;
pub mod store;

pub use span::{Span, SpanEvent};
pub use store::TraceStore;
pub use trefoil_api::traces::TraceSummary;

#[cfg(test)]
mod tests;
