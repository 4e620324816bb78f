//! Trefoil's HTTP/2 server side: frames (RFC 9113), HPACK header
//! compression (RFC 7541), and `server::Connection`, which serves one
//! client connection with them.
//!
//! It takes the place of hyper's and the h2 crate's server for the proxy's
//! downstream connections: see docs/decisions/0009-own-http2-server.md.

pub mod body;
pub mod frame;
pub mod hpack;
pub mod huffman;
mod huffman_code;
pub mod server;
mod timer;

pub use body::RecvBody;
pub use server::{Config, Connection, Error};
