//! The client side: worker threads and their listening sockets
//! ([`listener_set`]), and each accepted connection's way to HTTP serving or
//! opaque forwarding ([`listener`]: TLS handshake, protocol detection).

pub(crate) mod listener;
pub(crate) mod listener_set;
