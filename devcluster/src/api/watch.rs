//! Watches: a chunked stream of `{"type": ..., "object": ...}` lines. From resourceVersion ""
//! or "0" the current objects come first as ADDED; from a later one the changes after it are
//! replayed (410 Gone when the history no longer has them). Label and field selectors apply to
//! both the object before and after a change, so an object that stops matching is seen DELETED
//! and one that starts matching ADDED. Bookmarks, when allowed, carry the current revision; the
//! stream ends after `timeoutSeconds`. A watch that accepts `as=Table` gets each object as a
//! one-row table with its columns, as the apiserver sends `kubectl get -w`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::{Cluster, Params, selectors, with_type};
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult};
use crate::store::{Change, ChangeKind, WatchStart};

/// The longest a watch runs when the client sets no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a watch that allows bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);

/// Which changes a watch passes on, and how.
struct Filter {
    rtype: ResourceType,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    /// Each event's object as a one-row `Table` (`kubectl get -w` asks so, to keep its columns),
    /// embedding the object as `includeObject` says.
    table: Option<Option<String>>,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    /// The event a change becomes for this watch, if any.
    fn event(&self, change: &Change) -> Option<Value> {
        if change.key.resource != self.rtype.key()
            || self.namespace.as_ref().is_some_and(|ns| *ns != change.key.namespace)
        {
            return None;
        }
        let now = self.matches(&change.object);
        let before = change.previous.as_ref().is_some_and(|p| self.matches(p));
        let kind = match (change.kind, before, now) {
            (ChangeKind::Added, _, true) => ChangeKind::Added,
            (ChangeKind::Modified, true, true) => ChangeKind::Modified,
            (ChangeKind::Modified, false, true) => ChangeKind::Added,
            (ChangeKind::Modified, true, false) => ChangeKind::Deleted,
            (ChangeKind::Deleted, _, true) => ChangeKind::Deleted,
            _ => return None,
        };
        Some(self.event_of(kind.as_str(), with_type(&self.rtype, change.object.clone())))
    }

    /// An event of `kind` for `object`, as a table row where the watch asked for tables.
    fn event_of(&self, kind: &str, object: Value) -> Value {
        let object = match &self.table {
            None => object,
            Some(include) => {
                let revision = object["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_owned();
                super::table::render(&self.rtype, &[object], &revision, include.as_deref(), jiff::Timestamp::now())
            }
        };
        json!({"type": kind, "object": object})
    }
}

/// Starts a watch of `rtype` (in `namespace` when given).
pub fn serve(
    cluster: Arc<Cluster>,
    rtype: &ResourceType,
    namespace: Option<String>,
    params: &Params,
    as_table: bool,
) -> ApiResult<Response> {
    let (labels, fields) = selectors(params)?;
    let table = as_table.then(|| params.include_object.clone());
    let filter = Filter { rtype: rtype.clone(), namespace, labels, fields, table };
    let requested = params.resource_version.as_deref().unwrap_or_default();
    let mut initial = Vec::new();
    let from = match requested {
        "" | "0" => {
            let (objects, revision) = cluster.store.list(&rtype.key(), filter.namespace.as_deref());
            for (_, object) in objects {
                let object = with_type(rtype, object);
                if filter.matches(&object) {
                    initial.push(filter.event_of("ADDED", object));
                }
            }
            revision
        }
        rv => rv.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
    };
    let (start, mut changes) = cluster.store.watch(from);
    let replay = match start {
        WatchStart::Replay(replay) => replay,
        WatchStart::TooOld { oldest } => {
            return Err(ApiError::gone(format!("too old resource version: {from} ({oldest})")));
        }
    };
    let bookmarks = params.allow_watch_bookmarks.unwrap_or(false);
    if bookmarks && params.send_initial_events == Some(true) {
        initial.push(bookmark(rtype, from, true));
    }
    let timeout = params.timeout_seconds.map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let store_cluster = cluster.clone();
    tokio::spawn(async move {
        let send = |event: Value| {
            let sender = sender.clone();
            async move {
                let mut line = serde_json::to_vec(&event).expect("events serialize");
                line.push(b'\n');
                sender.send(Ok(Bytes::from(line))).await.is_ok()
            }
        };
        let mut last = from;
        for event in initial.into_iter().chain(replay.iter().filter_map(|c| filter.event(c))) {
            if !send(event).await {
                return;
            }
        }
        if let Some(change) = replay.last() {
            last = change.revision;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = ticker.tick(), if bookmarks => {
                    let revision = store_cluster.store.revision().max(last);
                    if !send(bookmark(&filter.rtype, revision, false)).await {
                        return;
                    }
                }
                _ = sender.closed() => return,
                change = changes.recv() => match change {
                    Ok(change) => {
                        if change.revision <= last {
                            continue;
                        }
                        last = change.revision;
                        if let Some(event) = filter.event(&change) && !send(event).await {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let expired = ApiError::gone(format!("the watch fell behind at resource version {last}; list again"));
                        let _ = send(json!({"type": "ERROR", "object": expired.to_status()})).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
    });
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver)))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// A BOOKMARK event at `revision`; the one after the initial events says so.
fn bookmark(rtype: &ResourceType, revision: u64, initial_events_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"type": "BOOKMARK", "object": {"kind": rtype.kind, "apiVersion": rtype.api_version(), "metadata": metadata}})
}
