pub mod client;
pub mod control;
pub mod demo;
pub mod logs;
pub mod proxy;
pub mod up;
pub mod validate;
