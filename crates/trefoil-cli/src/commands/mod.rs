pub mod proxy;
pub mod validate;
