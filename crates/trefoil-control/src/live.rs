//! `GET /api/v1/live`: the portal's live feed, as server-sent events.
//!
//! One task (`run`) builds a snapshot of the mesh: the proxies' status
//! (connected, acknowledged and latest snapshot, last NACK), the traffic
//! per service and version as `trefoil top` computes it (the same code, in
//! `trefoil_metrics::top`), the services, workloads, rollouts and recent
//! events. It does so every [`LiveLimits::period`] and after every write to
//! the store, and only while someone is listening: the proxies are scraped
//! for the feed, not for nobody.
//!
//! What one listener may cost is bounded: at most [`LiveLimits::max_streams`]
//! streams are open at once (more are answered 503); each holds at most one
//! snapshot, the newest, never a queue (a reader that falls behind skips to
//! the latest state, which is all a dashboard shows); a quiet stream carries
//! a comment every [`LiveLimits::heartbeat`], so a dead reader is found by
//! the server's write-stall limit and proxies in between keep it open.
//!
//! A new stream is not kept waiting for the next period: opening one wakes
//! the task, which builds a snapshot at once (scraping the proxies if no
//! window was being kept). The snapshot held from before, built while no
//! one listened and so possibly long out of date, is not sent.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use trefoil_api::ProxyStatusList;
use trefoil_metrics::top::{self, Scrapes, Target};
use trefoil_metrics::{Fetcher, Row};

use crate::api::ApiError;
use crate::proxies::Proxies;
use crate::store::Store;

/// What the feed may cost.
#[derive(Clone, Debug)]
pub struct LiveLimits {
    /// Streams open at once; more are answered 503.
    pub max_streams: usize,
    /// A comment on a stream that had nothing else for this long.
    pub heartbeat: Duration,
    /// How often the proxies are scraped while someone listens.
    pub period: Duration,
}

impl Default for LiveLimits {
    fn default() -> Self {
        LiveLimits { max_streams: 32, heartbeat: Duration::from_secs(15), period: Duration::from_secs(1) }
    }
}

/// Recent events a snapshot carries, newest first.
const RECENT_EVENTS: usize = 20;
/// How long one scrape of a proxy may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// One traffic line: `trefoil top`'s row for the last window, with the
/// requests counted since the proxies started.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Traffic {
    #[serde(flatten)]
    pub row: Row,
    pub total: f64,
}

/// The latest snapshot, as sent, and the traffic in it.
#[derive(Clone, Default)]
pub struct Snapshot {
    pub seq: u64,
    pub json: Bytes,
    pub traffic: Arc<Vec<Traffic>>,
    /// When it was built; `None` before the first.
    pub built: Option<Instant>,
}

/// The feed: the latest snapshot, and the open streams' slots.
pub struct Live {
    latest: watch::Sender<Snapshot>,
    streams: Arc<Semaphore>,
    limits: LiveLimits,
    /// Turns true at shutdown: every stream ends, so none holds the server open.
    closing: watch::Sender<bool>,
    /// A stream opened: build a snapshot now.
    wanted: Notify,
}

impl Live {
    pub fn new(limits: LiveLimits) -> Self {
        Live {
            latest: watch::Sender::new(Snapshot::default()),
            streams: Arc::new(Semaphore::new(limits.max_streams)),
            limits,
            closing: watch::Sender::new(false),
            wanted: Notify::new(),
        }
    }

    /// Ends every open stream and refuses new ones (the control plane is stopping).
    pub fn close(&self) {
        self.closing.send_replace(true);
        self.streams.close();
    }

    /// Whether any stream is open.
    pub fn listened(&self) -> bool {
        self.latest.receiver_count() > 0
    }

    /// Sends `value` to every open stream, as the next snapshot.
    pub fn publish(&self, mut value: Value, traffic: Arc<Vec<Traffic>>) {
        self.latest.send_modify(|s| {
            s.seq += 1;
            value["seq"] = json!(s.seq);
            s.json = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
            s.traffic = traffic;
            s.built = Some(Instant::now());
        });
    }

    /// The traffic in the latest snapshot.
    pub fn traffic(&self) -> Arc<Vec<Traffic>> {
        self.latest.borrow().traffic.clone()
    }

    /// A new stream, or `None` when the limit is reached.
    pub fn open(&self) -> Option<impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static> {
        let slot = self.streams.clone().try_acquire_owned().ok()?;
        let mut rx = self.latest.subscribe();
        // The snapshot held is sent at once only if it is current (built
        // within the last two periods, so while someone listened); else the
        // one built now for this stream comes first.
        let current = rx.borrow().built.is_some_and(|b| b.elapsed() <= self.limits.period * 2);
        if current {
            rx.mark_changed();
        }
        self.wanted.notify_one();
        Some(frames(rx, self.closing.subscribe(), self.limits.heartbeat, slot))
    }
}

/// The stream's bytes: each snapshot as it changes (the newest only, if
/// several came while the reader was busy), a heartbeat when quiet.
fn frames(
    rx: watch::Receiver<Snapshot>,
    closing: watch::Receiver<bool>,
    heartbeat: Duration,
    slot: OwnedSemaphorePermit,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    futures_util::stream::unfold((rx, closing, slot), move |(mut rx, mut closing, slot)| async move {
        loop {
            let changed = tokio::select! {
                changed = tokio::time::timeout(heartbeat, rx.changed()) => changed,
                _ = closing.wait_for(|c| *c) => return None,
            };
            match changed {
                Ok(Ok(())) => {
                    let snapshot = rx.borrow_and_update().clone();
                    // Nothing built yet: wait for the first snapshot.
                    if snapshot.seq == 0 {
                        continue;
                    }
                    let mut frame = Vec::with_capacity(snapshot.json.len() + 32);
                    frame.extend_from_slice(format!("id: {}\nevent: snapshot\ndata: ", snapshot.seq).as_bytes());
                    frame.extend_from_slice(&snapshot.json);
                    frame.extend_from_slice(b"\n\n");
                    return Some((Ok(Bytes::from(frame)), (rx, closing, slot)));
                }
                // The feed is gone: the control plane is stopping.
                Ok(Err(_)) => return None,
                Err(_quiet) => return Some((Ok(Bytes::from_static(b": heartbeat\n\n")), (rx, closing, slot))),
            }
        }
    })
}

pub fn router(live: Arc<Live>) -> Router {
    Router::new().route("/api/v1/live", get(stream)).with_state(live)
}

async fn stream(State(live): State<Arc<Live>>) -> Response {
    let Some(frames) = live.open() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} live streams are open, the most this control plane serves; close a portal tab or try again later",
                live.limits.max_streams
            ),
        )
        .into_response();
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(frames))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Builds and publishes snapshots while anyone listens, until dropped.
pub async fn run(live: Arc<Live>, store: Arc<Store>, proxies: Arc<Proxies>) {
    let fetcher = Fetcher::new(SCRAPE_TIMEOUT);
    let mut changes = store.subscribe();
    let mut timer = tokio::time::interval(live.limits.period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: Option<(Scrapes, Instant)> = None;
    let mut traffic: Arc<Vec<Traffic>> = Arc::new(Vec::new());
    loop {
        let scrape = tokio::select! {
            _ = timer.tick() => true,
            // A new stream: a snapshot now, with a scrape unless a window is kept.
            _ = live.wanted.notified() => previous.is_none(),
            changed = changes.recv() => {
                if matches!(changed, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
                // A burst of writes makes one snapshot.
                while changes.try_recv().is_ok() {}
                false
            }
        };
        if !live.listened() {
            previous = None;
            continue;
        }
        let status = proxies.status(&store.list("Proxy").into_iter().map(|s| s.name).collect::<Vec<_>>());
        if scrape {
            let targets: Vec<Target> = status
                .iter()
                .filter(|p| p.connected)
                .map(|p| Target {
                    name: p.name.clone(),
                    admin: p.admin_address.clone().filter(|a| !a.is_empty()).ok_or_else(|| "no admin address".to_string()),
                })
                .collect();
            let (current, failures) = top::scrape_all(&fetcher, &targets).await;
            let now = Instant::now();
            traffic = Arc::new(match &previous {
                Some((before, taken)) => merged(
                    top::report(&targets, before, &current, &failures, now.duration_since(*taken).as_secs_f64()).services,
                    top::since_start(&targets, &current, &failures, 0.0).services,
                ),
                None => merged(Vec::new(), top::since_start(&targets, &current, &failures, 0.0).services),
            });
            previous = Some((current, now));
        }
        let value = snapshot(&store, ProxyStatusList::new(proxies.compiled_revision(), status), &traffic);
        live.publish(value, traffic.clone());
    }
}

/// The window's rows with each series' total; a series quiet in the window
/// still shows, at 0 per second.
fn merged(window: Vec<Row>, totals: Vec<Row>) -> Vec<Traffic> {
    let by_key: HashMap<(String, String), Row> = window.into_iter().map(|r| ((r.service.clone(), r.version.clone()), r)).collect();
    totals
        .into_iter()
        .map(|total| {
            let row = by_key.get(&(total.service.clone(), total.version.clone())).cloned().unwrap_or_else(|| Row {
                requests: 0.0,
                rps: 0.0,
                success_rate: None,
                p50_seconds: None,
                p99_seconds: None,
                ..total.clone()
            });
            Traffic { row, total: total.requests }
        })
        .collect()
}

/// What one snapshot holds (see the module's documentation).
fn snapshot(store: &Store, proxies: ProxyStatusList, traffic: &[Traffic]) -> Value {
    let objects = |kind: &str| -> Vec<Value> {
        store
            .list(kind)
            .iter()
            .map(|s| {
                let mut v = s.value.clone();
                v["metadata"]["resourceVersion"] = json!(s.resource_version.to_string());
                v
            })
            .collect()
    };
    let mut events = objects("Event");
    events.sort_by_key(|e| std::cmp::Reverse(e["spec"]["timeMs"].as_u64().unwrap_or(0)));
    events.truncate(RECENT_EVENTS);
    json!({
        "timeMs": crate::rollout::now_ms(),
        "proxies": proxies,
        "traffic": traffic,
        "services": objects("Service"),
        "workloads": objects("Workload"),
        "rollouts": objects("Rollout"),
        "rolloutStatuses": objects("RolloutStatus"),
        "events": events,
    })
}

/// `GET /api/v1/graph`: the service graph with the feed's latest traffic.
pub fn graph_router(store: Arc<Store>, live: Arc<Live>) -> Router {
    Router::new().route("/api/v1/graph", get(graph)).with_state((store, live))
}

async fn graph(State((store, live)): State<(Arc<Store>, Arc<Live>)>) -> Json<crate::graph::Graph> {
    let mut resources = Vec::new();
    for kind in crate::graph::KINDS {
        for s in store.list(kind) {
            if let Ok(r) = serde_json::from_value::<trefoil_model::Resource>(s.value) {
                resources.push(r);
            }
        }
    }
    Json(crate::graph::build(&resources, &live.traffic()))
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    const WAIT: Duration = Duration::from_secs(20);

    fn live(max_streams: usize, heartbeat: Duration) -> Live {
        Live::new(LiveLimits { max_streams, heartbeat, period: Duration::from_secs(1) })
    }

    async fn next_text(s: &mut (impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Unpin)) -> String {
        let chunk = tokio::time::timeout(WAIT, s.next()).await.expect("a frame in time").expect("the stream goes on").unwrap();
        String::from_utf8(chunk.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn streams_beyond_the_limit_are_refused_and_a_closed_one_frees_its_slot() {
        let live = Arc::new(live(2, Duration::from_secs(60)));
        let first = live.open().expect("a first stream");
        let _second = live.open().expect("a second stream");
        assert!(live.open().is_none(), "a third stream past the limit of two");
        let refused = stream(State(live.clone())).await;
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(first);
        assert!(live.open().is_some(), "a closed stream gives its slot back");
    }

    #[tokio::test]
    async fn a_slow_reader_holds_only_the_newest_snapshot() {
        let live = live(4, Duration::from_secs(60));
        let mut s = Box::pin(live.open().unwrap());
        // A hundred snapshots while the reader reads nothing.
        for n in 1..=100 {
            live.publish(json!({ "n": n }), Arc::new(Vec::new()));
        }
        let frame = next_text(&mut s).await;
        assert!(frame.starts_with("id: 100\nevent: snapshot\ndata: "), "{frame}");
        assert!(frame.contains("\"n\":100") && frame.ends_with("\n\n"), "{frame}");
        // Nothing queued behind it: the next is a new snapshot.
        live.publish(json!({ "n": 101 }), Arc::new(Vec::new()));
        assert!(next_text(&mut s).await.contains("\"n\":101"));
    }

    #[tokio::test]
    async fn a_quiet_stream_carries_heartbeats_and_ends_with_the_feed() {
        let live = live(4, Duration::from_millis(20));
        live.publish(json!({}), Arc::new(Vec::new()));
        let mut s = Box::pin(live.open().unwrap());
        assert!(next_text(&mut s).await.starts_with("id: 1\n"), "the current snapshot first");
        assert_eq!(next_text(&mut s).await, ": heartbeat\n\n");
        drop(live);
        let ended = tokio::time::timeout(WAIT, async {
            while let Some(frame) = s.next().await {
                assert_eq!(frame.unwrap(), Bytes::from_static(b": heartbeat\n\n"));
            }
        })
        .await;
        assert!(ended.is_ok(), "the stream ended with its feed");
    }

    #[tokio::test]
    async fn a_new_stream_wakes_the_builder_and_skips_a_snapshot_held_from_before() {
        let live = Live::new(LiveLimits { max_streams: 4, heartbeat: Duration::from_secs(60), period: Duration::from_millis(5) });
        live.publish(json!({ "n": 1 }), Arc::new(Vec::new()));
        // Older than two periods: built while no one listened.
        std::thread::sleep(Duration::from_millis(20));
        let mut s = Box::pin(live.open().unwrap());
        tokio::time::timeout(WAIT, live.wanted.notified()).await.expect("opening a stream asks for a snapshot");
        live.publish(json!({ "n": 2 }), Arc::new(Vec::new()));
        let frame = next_text(&mut s).await;
        assert!(
            frame.starts_with(
                "id: 2
"
            ) && frame.contains("\"n\":2"),
            "the snapshot built for it first: {frame}"
        );
    }

    #[tokio::test]
    async fn closing_ends_every_stream_and_refuses_new_ones() {
        let live = live(4, Duration::from_secs(60));
        live.publish(json!({}), Arc::new(Vec::new()));
        let mut s = Box::pin(live.open().unwrap());
        assert!(next_text(&mut s).await.starts_with("id: 1\n"));
        live.close();
        assert!(tokio::time::timeout(WAIT, s.next()).await.expect("ended in time").is_none(), "the stream ends at once");
        assert!(live.open().is_none(), "no stream opens once closing");
    }

    #[test]
    fn quiet_series_keep_their_totals() {
        let row = |version: &str, requests: f64| Row {
            service: "web".into(),
            version: version.into(),
            direction: "inbound".into(),
            requests,
            rps: requests / 2.0,
            success_rate: Some(1.0),
            p50_seconds: None,
            p99_seconds: None,
        };
        let traffic = merged(vec![row("v1", 4.0)], vec![row("v1", 10.0), row("v2", 3.0)]);
        assert_eq!((traffic[0].row.rps, traffic[0].total), (2.0, 10.0));
        assert_eq!((traffic[1].row.rps, traffic[1].row.success_rate, traffic[1].total), (0.0, None, 3.0));
    }
}
