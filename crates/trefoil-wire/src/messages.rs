//! The stream's messages, written by hand with prost derives; field numbers
//! match `proto/config.proto`.

/// What a proxy sends: a `Hello` first, then an `Ack` or `Nack` per snapshot.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProxyMessage {
    #[prost(oneof = "proxy_message::Kind", tags = "1, 2, 3")]
    pub kind: Option<proxy_message::Kind>,
}

/// The oneof of [`ProxyMessage`].
pub mod proxy_message {
    /// One of the three things a proxy says.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Hello(super::Hello),
        #[prost(message, tag = "2")]
        Ack(super::Ack),
        #[prost(message, tag = "3")]
        Nack(super::Nack),
    }
}

/// First message on every stream, also after a reconnect.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    /// The proxy's name: the `Proxy` resource it stands for.
    #[prost(string, tag = "1")]
    pub proxy: String,
    /// Where its admin listener is, `ip:port`.
    #[prost(string, tag = "2")]
    pub admin_address: String,
    /// The snapshot version it serves now; 0 if none yet.
    #[prost(uint64, tag = "3")]
    pub version: u64,
    /// The hash of that snapshot; 0 if none yet.
    #[prost(uint64, tag = "4")]
    pub hash: u64,
    #[prost(uint32, tag = "5")]
    pub pid: u32,
}

/// The snapshot with this version and hash is in force.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(uint64, tag = "2")]
    pub hash: u64,
}

/// The snapshot was rejected; the proxy keeps serving what it had.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Nack {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(uint64, tag = "2")]
    pub hash: u64,
    /// The diagnostics, one per line, with `snapshot <version>:line:column`.
    #[prost(string, tag = "3")]
    pub error: String,
}

/// Everything one proxy serves: the resources of its would-be config file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Snapshot {
    /// The store revision it was compiled at.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// Hash of the content: equal hashes, equal content.
    #[prost(uint64, tag = "2")]
    pub hash: u64,
    /// A JSON array of resources.
    #[prost(string, tag = "3")]
    pub resources_json: String,
}

impl ProxyMessage {
    pub fn hello(hello: Hello) -> Self {
        ProxyMessage { kind: Some(proxy_message::Kind::Hello(hello)) }
    }
    pub fn ack(version: u64, hash: u64) -> Self {
        ProxyMessage { kind: Some(proxy_message::Kind::Ack(Ack { version, hash })) }
    }
    pub fn nack(version: u64, hash: u64, error: impl Into<String>) -> Self {
        ProxyMessage { kind: Some(proxy_message::Kind::Nack(Nack { version, hash, error: error.into() })) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The first byte of a length-delimited or varint field: `tag << 3 | wire type`.
    fn key(tag: u8, wire_type: u8) -> u8 {
        tag << 3 | wire_type
    }

    #[test]
    fn field_numbers_match_the_proto_file() {
        let ack = ProxyMessage::ack(7, 9).encode_to_vec();
        // ProxyMessage.ack = 2 (a message), then Ack.version = 1, Ack.hash = 2 (varints).
        assert_eq!(ack, vec![key(2, 2), 4, key(1, 0), 7, key(2, 0), 9]);
        let nack = ProxyMessage::nack(1, 2, "x").encode_to_vec();
        assert_eq!(nack, vec![key(3, 2), 7, key(1, 0), 1, key(2, 0), 2, key(3, 2), 1, b'x']);
        let hello =
            ProxyMessage::hello(Hello { proxy: "p".into(), admin_address: "a".into(), version: 3, hash: 4, pid: 5 }).encode_to_vec();
        assert_eq!(hello, vec![key(1, 2), 12, key(1, 2), 1, b'p', key(2, 2), 1, b'a', key(3, 0), 3, key(4, 0), 4, key(5, 0), 5]);
        let snapshot = Snapshot { version: 1, hash: 2, resources_json: "[]".into() }.encode_to_vec();
        assert_eq!(snapshot, vec![key(1, 0), 1, key(2, 0), 2, key(3, 2), 2, b'[', b']']);
    }

    #[test]
    fn round_trip() {
        let m = ProxyMessage::nack(10, u64::MAX, "snapshot 10:3:5: spec.address: in use");
        assert_eq!(ProxyMessage::decode(m.encode_to_vec().as_slice()).unwrap(), m);
    }
}
