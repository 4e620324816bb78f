pub mod check;
pub mod client;
pub mod control;
pub mod demo;
pub mod describe;
pub mod proxy;
pub mod top;
pub mod validate;
