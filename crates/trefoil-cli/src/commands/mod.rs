pub mod demo;
pub mod proxy;
pub mod validate;
