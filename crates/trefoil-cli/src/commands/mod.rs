pub mod client;
pub mod control;
pub mod demo;
pub mod proxy;
pub mod validate;
