//! `?watch=true`: newline-delimited JSON events over a chunked response, replayed from the
//! store's history, filtered by selectors (objects entering or leaving a selector appear as
//! ADDED or DELETED), with bookmarks, `timeoutSeconds`, and `410 Expired` as an ERROR event.

use crate::At;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_consensus::{Event, EventKind, Read, Store, StoreError};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};

use crate::meta::{self, LabelSelector};
use crate::resources::Resource;
use crate::status::ApiError;

/// Longest a watch stays open when the client names no timeout (the apiserver picks 30–60 min).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Bookmark period, as the apiserver's (about a minute).
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

pub(crate) struct WatchRequest {
    pub resource: &'static Resource,
    pub prefix: String,
    pub resource_version: Option<String>,
    pub labels: LabelSelector,
    pub fields: Option<String>,
    pub timeout: Option<Duration>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub table: bool,
}

/// Whether an object passes the label and field selectors.
fn selected(w: &WatchRequest, obj: &Value) -> Result<bool, ApiError> {
    if !w.labels.matches(&meta::labels_of(obj)) {
        return Ok(false);
    }
    match &w.fields {
        Some(fs) => crate::server::field_matches(w.resource, obj, fs),
        None => Ok(true),
    }
}

struct Encoder {
    resource: &'static Resource,
    table: bool,
    /// Table watches send column definitions with the first event only, as the apiserver does.
    sent_columns: bool,
}

impl Encoder {
    fn line(&mut self, kind: &str, obj: Value) -> Bytes {
        let obj = if self.table && kind != "ERROR" && kind != "BOOKMARK" {
            let mut t = crate::table::table(
                self.resource,
                std::slice::from_ref(&obj),
                obj.at("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            );
            if self.sent_columns {
                t["columnDefinitions"] = json!([]);
            }
            self.sent_columns = true;
            t
        } else {
            obj
        };
        let mut bytes =
            serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap_or_default();
        bytes.push(b'\n');
        Bytes::from(bytes)
    }
}

fn expired_event(requested: u64, oldest: u64) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("too old resource version: {requested} ({oldest})"),
        "reason": "Expired", "code": 410,
    })
}

/// Turns one store event into zero or one watch event for this watcher.
fn translate(w: &WatchRequest, e: &Event) -> Result<Option<(&'static str, Value)>, ApiError> {
    let now = crate::server::served(w.resource, &e.kv)?;
    match e.kind {
        EventKind::Delete => Ok(selected(w, &now)?.then_some(("DELETED", now))),
        EventKind::Put => {
            let was = match &e.prev {
                Some(prev) => Some(selected(w, &crate::server::served(w.resource, prev)?)?),
                None => None,
            };
            let is = selected(w, &now)?;
            Ok(match (was, is) {
                (None | Some(false), true) => Some(("ADDED", now)),
                (Some(true), true) => Some(("MODIFIED", now)),
                // Left the selector: to this watcher it is gone.
                (Some(true), false) => Some(("DELETED", now)),
                (_, false) => None,
            })
        }
    }
}

pub(crate) async fn watch(store: &Store, w: WatchRequest) -> Result<Response, ApiError> {
    if w.send_initial_events {
        // WatchList is off by default in Kubernetes 1.33; refusing makes clients fall back to
        // LIST + WATCH, where ignoring the flag would leave them waiting for a bookmark.
        return Err(ApiError::invalid_options(
            "sendInitialEvents",
            "Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
        ));
    }
    let mut encoder = Encoder {
        resource: w.resource,
        table: w.table,
        sent_columns: false,
    };
    let mut initial = Vec::new();
    let from = match w.resource_version.as_deref() {
        None | Some("") | Some("0") => {
            // "From now": every current object as ADDED, then changes after the list.
            let range = store
                .range(&w.prefix, usize::MAX, Read::Linearizable)
                .await?;
            for kv in &range.kvs {
                let obj = crate::server::served(w.resource, kv)?;
                if selected(&w, &obj)? {
                    initial.push(encoder.line("ADDED", obj));
                }
            }
            range.revision + 1
        }
        Some(rv) => {
            let n: u64 = rv
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
            n + 1
        }
    };
    let last_rv = Arc::new(AtomicU64::new(from.saturating_sub(1)));
    let events: BoxStream<'static, Result<Vec<Event>, StoreError>> = match store
        .watch(&w.prefix, from)
    {
        Ok(s) => s,
        // Past validation, errors are reported as ERROR events with HTTP 200.
        Err(StoreError::Expired { requested, oldest }) => {
            let line = encoder.line("ERROR", expired_event(requested.saturating_sub(1), oldest));
            let body = futures::stream::iter(
                initial
                    .into_iter()
                    .chain([line])
                    .map(Ok::<_, std::convert::Infallible>),
            );
            return Ok(streaming(Body::from_stream(body)));
        }
        Err(e) => return Err(e.into()),
    };

    let w = Arc::new(w);
    let changes = {
        let w = w.clone();
        let last_rv = last_rv.clone();
        events.flat_map(move |batch| {
            let lines: Vec<Bytes> = match batch {
                Ok(batch) => batch
                    .iter()
                    .filter_map(|e| {
                        last_rv.store(e.revision(), Ordering::Relaxed);
                        match translate(&w, e) {
                            Ok(Some((kind, obj))) => Some(encoder.line(kind, obj)),
                            Ok(None) => None,
                            Err(err) => {
                                tracing::warn!(key = %e.kv.key, error = ?err, "skipping an undecodable object in a watch");
                                None
                            }
                        }
                    })
                    .collect(),
                Err(StoreError::Expired { requested, oldest }) => {
                    vec![encoder.line("ERROR", expired_event(requested.saturating_sub(1), oldest))]
                }
                Err(e) => {
                    tracing::debug!(error = %e, "watch ended");
                    vec![]
                }
            };
            futures::stream::iter(lines)
        })
    };
    let bookmark = {
        let w = w.clone();
        let last_rv = last_rv.clone();
        move || {
            let mut obj = json!({
                "kind": w.resource.kind,
                "apiVersion": w.resource.api_version(),
                "metadata": {"resourceVersion": last_rv.load(Ordering::Relaxed).to_string()},
            });
            if w.table {
                obj = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"].clone()});
            }
            let mut bytes =
                serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj})).unwrap_or_default();
            bytes.push(b'\n');
            Bytes::from(bytes)
        }
    };
    let live: BoxStream<'static, Bytes> = if w.bookmarks {
        let ticks = futures::stream::unfold(
            tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY),
            |mut t| async move {
                t.tick().await;
                Some(((), t))
            },
        );
        let b = bookmark.clone();
        futures::stream::select(changes, ticks.map(move |()| b())).boxed()
    } else {
        changes.boxed()
    };
    let deadline = tokio::time::sleep(w.timeout.unwrap_or(DEFAULT_TIMEOUT));
    let live = live.take_until(deadline);
    // A closing bookmark tells the client where to resume.
    let closing = futures::stream::iter(w.bookmarks.then(bookmark));
    let body = futures::stream::iter(initial)
        .chain(live)
        .chain(closing)
        .map(Ok::<_, std::convert::Infallible>);
    Ok(streaming(Body::from_stream(body)))
}

fn streaming(body: Body) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use flotilla_consensus::KeyValue;

    use super::*;

    fn kv(rev: u64, app: &str) -> KeyValue {
        KeyValue {
            key: "/registry/core/configmaps/default/x".into(),
            value: serde_json::to_vec(
                &json!({"metadata": {"name": "x", "namespace": "default", "labels": {"app": app}}}),
            )
            .unwrap(),
            create_revision: 1,
            mod_revision: rev,
            version: 1,
        }
    }

    fn request(selector: &str) -> WatchRequest {
        WatchRequest {
            resource: crate::resources::find("", "v1", "configmaps").unwrap(),
            prefix: String::new(),
            resource_version: None,
            labels: LabelSelector::parse(selector).unwrap(),
            fields: None,
            timeout: None,
            bookmarks: false,
            send_initial_events: false,
            table: false,
        }
    }

    #[test]
    fn objects_entering_and_leaving_a_selector_are_added_and_deleted() {
        let w = request("app=web");
        let put = |prev: Option<KeyValue>, now: KeyValue| Event {
            kind: EventKind::Put,
            kv: now,
            prev,
        };
        let kind = |e: &Event| translate(&w, e).unwrap().map(|(k, _)| k);
        assert_eq!(kind(&put(None, kv(2, "web"))), Some("ADDED"));
        assert_eq!(
            kind(&put(Some(kv(2, "web")), kv(3, "web"))),
            Some("MODIFIED")
        );
        assert_eq!(kind(&put(Some(kv(3, "web")), kv(4, "db"))), Some("DELETED"));
        assert_eq!(kind(&put(Some(kv(4, "db")), kv(5, "db"))), None);
        assert_eq!(kind(&put(Some(kv(5, "db")), kv(6, "web"))), Some("ADDED"));
        let del = Event {
            kind: EventKind::Delete,
            kv: kv(7, "web"),
            prev: None,
        };
        assert_eq!(kind(&del), Some("DELETED"));
        let (_, obj) = translate(&w, &del).unwrap().unwrap();
        assert_eq!(obj["metadata"]["resourceVersion"], "7");
    }
}
