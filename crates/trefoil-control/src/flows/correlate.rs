//! The join of a trace with the datapath: a proxy's hop span on a
//! transparent listener names the connection it served (the client's
//! address and port, and the original destination the client addressed),
//! which is the 5-tuple the node's kernel keyed the flow by. The flows of
//! that tuple (either direction) active while the span was are the
//! connection's flows, so the trace id leads from the packets to the handler.

use std::net::{IpAddr, SocketAddr};

use trefoil_api::flows::Flow;
use trefoil_api::traces::Span;
use trefoil_model::spec::Protocol;

use super::store::FlowStore;

/// The span attributes that name the connection (OpenTelemetry's
/// `client.*`, and Trefoil's original destination on a transparent listener).
pub const CLIENT_ADDRESS: &str = "client.address";
pub const CLIENT_PORT: &str = "client.port";
pub const ORIGINAL_DESTINATION: &str = "trefoil.original_destination";

/// Clocks differ: the kernel's first and last packet are converted to wall
/// time by the agent, the span's times are the proxy's. A flow this close to
/// the span counts as overlapping it.
const SLACK_NANOS: u64 = 2_000_000_000;

/// The connection a span names: client and original destination.
fn connection(span: &Span) -> Option<(SocketAddr, SocketAddr)> {
    let ip: IpAddr = span.attributes.get(CLIENT_ADDRESS)?.parse().ok()?;
    let port: u16 = span.attributes.get(CLIENT_PORT)?.parse().ok()?;
    let to: SocketAddr = span.attributes.get(ORIGINAL_DESTINATION)?.parse().ok()?;
    Some((SocketAddr::new(ip, port), to))
}

/// The flows of the connections `spans` were served on, each once, oldest first.
pub fn flows_of(spans: &[Span], store: &FlowStore) -> Vec<Flow> {
    let mut out: Vec<Flow> = Vec::new();
    for span in spans {
        let Some((client, to)) = connection(span) else { continue };
        let (from, until) = (span.start_unix_nano.saturating_sub(SLACK_NANOS), span.end_unix_nano.saturating_add(SLACK_NANOS));
        for tuple in [(client, to, Protocol::Tcp), (to, client, Protocol::Tcp)] {
            for flow in store.during(&tuple, from, until) {
                if !out.contains(&flow) {
                    out.push(flow);
                }
            }
        }
    }
    out.sort_by_key(|f| f.start_unix_nano);
    out
}
