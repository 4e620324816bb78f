//! Client and server glue talk to each other over loopback.

use std::time::Duration;

use tokio_stream::StreamExt;
use trefoil_wire::{
    proxy_message::Kind, ConfigStream, ConfigStreamClient, Hello, ProxyMessage, Request, Response, Snapshot, Status, Streaming,
};

/// Answers each Hello with a snapshot naming the proxy, and each Ack with the next version.
struct Echo;

impl ConfigStream for Echo {
    type SnapshotStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<Snapshot, Status>> + Send>>;

    async fn stream(&self, request: Request<Streaming<ProxyMessage>>) -> Result<Response<Self::SnapshotStream>, Status> {
        let inbound = request.into_inner();
        let out = inbound.filter_map(|m| match m.ok()?.kind? {
            Kind::Hello(h) => {
                Some(Ok(Snapshot { version: 1, hash: 11, resources_json: format!("[\"{}\"]", h.proxy), ..Default::default() }))
            }
            Kind::Ack(a) => Some(Ok(Snapshot { version: a.version + 1, hash: 12, resources_json: "[]".into(), ..Default::default() })),
            Kind::Nack(_) | Kind::Csr(_) | Kind::Lookup(_) => None,
        });
        Ok(Response::new(Box::pin(out)))
    }
}

#[tokio::test]
async fn hello_snapshot_ack_over_loopback() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(trefoil_wire::serve(listener, Echo, async move {
        let _ = stopped.await;
    }));
    let mut client = ConfigStreamClient::connect(&addr.to_string(), Duration::from_secs(5)).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(ProxyMessage::hello(Hello {
        proxy: "edge".into(),
        admin_address: "127.0.0.1:1".into(),
        version: 0,
        hash: 0,
        pid: 1,
        ..Default::default()
    }))
    .unwrap();
    let mut snapshots = client.stream(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await.unwrap();
    let first = snapshots.message().await.unwrap().unwrap();
    assert_eq!((first.version, first.hash, first.resources_json.as_str()), (1, 11, "[\"edge\"]"));
    tx.send(ProxyMessage::ack(1, 11)).unwrap();
    let second = snapshots.message().await.unwrap().unwrap();
    assert_eq!(second.version, 2);
    let _ = stop.send(());
    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn no_server_is_a_connect_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = ConfigStreamClient::connect(&format!("127.0.0.1:{port}"), Duration::from_secs(2)).await.err().unwrap();
    assert!(err.to_string().contains("cannot connect"), "{err}");
}
