//! Plain HTTP/1 towards endpoints, the proxy's own client (docs/decisions/0008):
//! [`codec`] turns heads and bodies into bytes and back, [`pool`] owns the
//! connections and moves the bytes.

pub(crate) mod codec;
pub(crate) mod pool;
