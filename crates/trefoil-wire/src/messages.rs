//! The stream's messages, written by hand with prost derives; field numbers
//! match `proto/config.proto`.

/// What a proxy sends: a `Hello` first, then an `Ack` or `Nack` per snapshot.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProxyMessage {
    #[prost(oneof = "proxy_message::Kind", tags = "1, 2, 3, 4, 5")]
    pub kind: Option<proxy_message::Kind>,
}

/// The oneof of [`ProxyMessage`].
pub mod proxy_message {
    /// One of the things a proxy says.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Hello(super::Hello),
        #[prost(message, tag = "2")]
        Ack(super::Ack),
        #[prost(message, tag = "3")]
        Nack(super::Nack),
        #[prost(message, tag = "4")]
        Csr(super::CertificateRequest),
        #[prost(message, tag = "5")]
        Lookup(super::Lookup),
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
    /// Empty for a proxy; [`AGENT`] for a node agent, whose `proxy` is its
    /// node and whose snapshots carry that node's datapath table.
    #[prost(string, tag = "6")]
    pub kind: String,
    /// Services it looked up on demand before this stream (after a
    /// reconnect): its scoped snapshot keeps holding them.
    #[prost(string, repeated, tag = "7")]
    pub looked_up: Vec<String>,
}

/// A request for a service outside a scoped sidecar's snapshot: its next
/// snapshot holds the service, or a snapshot with `lookup_miss` says there
/// is none.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Lookup {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// [`Hello::kind`] of a node agent.
pub const AGENT: &str = "agent";

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

/// A request for an X.509-SVID. The proxy proves who it is with exactly one
/// of a join token (its first) or the SVID it holds (a renewal, the CSR
/// signed by that SVID's key); the identity comes from that proof.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CertificateRequest {
    /// PKCS#10, DER.
    #[prost(bytes = "vec", tag = "1")]
    pub csr_der: Vec<u8>,
    #[prost(string, tag = "2")]
    pub join_token: String,
    /// The current SVID, DER.
    #[prost(bytes = "vec", tag = "3")]
    pub current_svid_der: Vec<u8>,
}

/// The control plane's answer to a [`CertificateRequest`]: a certificate or
/// why none was issued.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IdentityAnswer {
    /// The SVID first, then any intermediates, PEM.
    #[prost(string, tag = "1")]
    pub certificate_chain_pem: String,
    /// The roots peers' SVIDs are verified with, PEM.
    #[prost(string, tag = "2")]
    pub trust_bundle_pem: String,
    /// When to ask for the next one, counted from receipt.
    #[prost(uint64, tag = "3")]
    pub renew_after_ms: u64,
    /// Set when nothing was issued.
    #[prost(string, tag = "4")]
    pub error: String,
}

/// Everything one proxy serves: the resources of its would-be config file.
/// The same message carries the answer to a CSR (then `identity` is set and
/// the rest is empty), so the stream's one method keeps its signature.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Snapshot {
    /// The store revision it was compiled at.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// Hash of the content: equal hashes, equal content.
    #[prost(uint64, tag = "2")]
    pub hash: u64,
    /// A JSON array of resources; for a node agent, its node's datapath
    /// table (`trefoil_model::datapath::node_table::NodeTable`) as JSON.
    #[prost(string, tag = "3")]
    pub resources_json: String,
    /// The mesh's trust bundle (PEM roots), with every snapshot.
    #[prost(string, tag = "4")]
    pub trust_bundle_pem: String,
    #[prost(message, optional, tag = "5")]
    pub identity: Option<IdentityAnswer>,
    /// The answer to a [`Lookup`] of a service the mesh does not have (then
    /// the rest is empty).
    #[prost(string, tag = "6")]
    pub lookup_miss: String,
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
    pub fn csr(request: CertificateRequest) -> Self {
        ProxyMessage { kind: Some(proxy_message::Kind::Csr(request)) }
    }
    pub fn lookup(service: impl Into<String>) -> Self {
        ProxyMessage { kind: Some(proxy_message::Kind::Lookup(Lookup { service: service.into() })) }
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
            ProxyMessage::hello(Hello { proxy: "p".into(), admin_address: "a".into(), version: 3, hash: 4, pid: 5, ..Default::default() })
                .encode_to_vec();
        assert_eq!(hello, vec![key(1, 2), 12, key(1, 2), 1, b'p', key(2, 2), 1, b'a', key(3, 0), 3, key(4, 0), 4, key(5, 0), 5]);
        let agent = ProxyMessage::hello(Hello { proxy: "n".into(), kind: AGENT.into(), ..Default::default() }).encode_to_vec();
        assert_eq!(agent, vec![key(1, 2), 10, key(1, 2), 1, b'n', key(6, 2), 5, b'a', b'g', b'e', b'n', b't']);
        let snapshot = Snapshot { version: 1, hash: 2, resources_json: "[]".into(), ..Default::default() }.encode_to_vec();
        assert_eq!(snapshot, vec![key(1, 0), 1, key(2, 0), 2, key(3, 2), 2, b'[', b']']);
        let csr =
            ProxyMessage::csr(CertificateRequest { csr_der: vec![9], join_token: "t".into(), current_svid_der: vec![8] }).encode_to_vec();
        assert_eq!(csr, vec![key(4, 2), 9, key(1, 2), 1, 9, key(2, 2), 1, b't', key(3, 2), 1, 8]);
        assert_eq!(ProxyMessage::lookup("api").encode_to_vec(), vec![key(5, 2), 5, key(1, 2), 3, b'a', b'p', b'i']);
        let looked_up = ProxyMessage::hello(Hello { proxy: "p".into(), looked_up: vec!["a".into()], ..Default::default() }).encode_to_vec();
        assert_eq!(looked_up, vec![key(1, 2), 6, key(1, 2), 1, b'p', key(7, 2), 1, b'a']);
        let miss = Snapshot { lookup_miss: "x".into(), ..Default::default() }.encode_to_vec();
        assert_eq!(miss, vec![key(6, 2), 1, b'x']);
        let answer = Snapshot {
            trust_bundle_pem: "b".into(),
            identity: Some(IdentityAnswer {
                certificate_chain_pem: "c".into(),
                trust_bundle_pem: "b".into(),
                renew_after_ms: 5,
                error: "e".into(),
            }),
            ..Default::default()
        }
        .encode_to_vec();
        let inner = [key(1, 2), 1, b'c', key(2, 2), 1, b'b', key(3, 0), 5, key(4, 2), 1, b'e'];
        assert_eq!(answer, [&[key(4, 2), 1, b'b', key(5, 2), inner.len() as u8][..], &inner].concat());
    }

    #[test]
    fn round_trip() {
        let m = ProxyMessage::nack(10, u64::MAX, "snapshot 10:3:5: spec.address: in use");
        assert_eq!(ProxyMessage::decode(m.encode_to_vec().as_slice()).unwrap(), m);
    }
}
