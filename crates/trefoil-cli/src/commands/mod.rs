pub mod client;
pub mod control;
pub mod demo;
pub mod demo_app;
pub mod proxy;
pub mod validate;
