//! Events expire: one not seen again for the TTL (`--event-ttl-seconds`, default one hour, as
//! the apiserver's `--event-ttl`, which etcd enforces with a lease) is deleted. Each node
//! sweeps the events of the shards it owns, every quarter of the TTL (at most once a minute);
//! a deletion compares the event's mod revision and the shard's lease, so an event updated
//! meanwhile (a recurring one, counted up) stays, and an old shard owner deletes nothing.

use std::sync::Arc;
use std::time::Duration;

use flotilla_consensus::{CmpOp, Compare, Op, Read, TxnRequest};
use serde::Deserialize;
use tokio::sync::watch;

use super::common::now_secs;
use super::runner::Ctx;

const EVENTS: &str = "/registry/core/events/";
/// Deletions per transaction.
const BATCH: usize = 128;

/// The times an event was last seen (whichever it carries) and made.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Seen {
    metadata: SeenMeta,
    last_timestamp: Option<String>,
    event_time: Option<String>,
    series: Option<Series>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SeenMeta {
    creation_timestamp: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Series {
    last_observed_time: Option<String>,
}

impl Seen {
    /// Seconds since the epoch it was last seen; `None` if it carries no time at all.
    fn last(&self) -> Option<u64> {
        [
            self.series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_deref()),
            self.last_timestamp.as_deref(),
            self.event_time.as_deref(),
            self.metadata.creation_timestamp.as_deref(),
        ]
        .into_iter()
        .flatten()
        .filter_map(flotilla_api::parse_rfc3339)
        .max()
    }
}

/// Starts the sweeper; it stops with `shutdown`.
pub fn start(ctx: Arc<Ctx>, ttl: Duration, mut shutdown: watch::Receiver<bool>) {
    let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            if ctx.shards.owned().is_empty() {
                continue;
            }
            match sweep(&ctx, ttl).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "expired events deleted"),
                Err(e) => tracing::debug!(error = %e, "event sweep failed"),
            }
        }
    });
}

/// One sweep of this node's shards; how many events it deleted.
async fn sweep(ctx: &Ctx, ttl: Duration) -> Result<usize, flotilla_consensus::StoreError> {
    // A stale read only delays a deletion: each one compares what it read.
    let range = ctx.store.range(EVENTS, usize::MAX, Read::Local).await?;
    let cutoff = now_secs().saturating_sub(ttl.as_secs());
    let mut expired: Vec<(String, u64, Compare)> = Vec::new();
    for (i, kv) in range.kvs.iter().enumerate() {
        if i % 512 == 511 {
            tokio::task::yield_now().await;
        }
        let Some(shard_key) = kv.key.strip_prefix(EVENTS) else {
            continue;
        };
        let Some(lease) = ctx.shards.fence_for(shard_key) else {
            continue;
        };
        let seen: Seen = serde_json::from_slice(&kv.value).unwrap_or_default();
        // An event with no time at all is as old as can be.
        if seen.last().is_none_or(|t| t < cutoff) {
            expired.push((kv.key.clone(), kv.mod_revision, lease));
        }
    }
    let mut deleted = 0;
    for batch in expired.chunks(BATCH) {
        let mut compare: Vec<Compare> = Vec::new();
        let mut success = Vec::new();
        for (key, revision, lease) in batch {
            if !compare.contains(lease) {
                compare.push(lease.clone());
            }
            compare.push(Compare::ModRevision {
                key: key.clone(),
                op: CmpOp::Equal,
                revision: *revision,
            });
            success.push(Op::Delete { key: key.clone() });
        }
        let resp = ctx
            .store
            .txn(TxnRequest {
                compare,
                success,
                failure: vec![],
            })
            .await?;
        // A batch with an event updated meanwhile (or a lease lost) is left to the next sweep.
        if resp.succeeded {
            deleted += batch.len();
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_was_last_seen_at_its_latest_time() {
        let seen: Seen = serde_json::from_str(
            r#"{"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"},
                "lastTimestamp": "2026-01-01T01:00:00Z", "involvedObject": {"kind": "Pod"}}"#,
        )
        .unwrap();
        assert_eq!(
            seen.last(),
            flotilla_api::parse_rfc3339("2026-01-01T01:00:00Z")
        );
        let series: Seen = serde_json::from_str(
            r#"{"eventTime": "2026-01-01T00:00:00.000000Z", "series": {"count": 3, "lastObservedTime": "2026-01-02T00:00:00.000000Z"}}"#,
        )
        .unwrap();
        assert_eq!(
            series.last(),
            flotilla_api::parse_rfc3339("2026-01-02T00:00:00Z")
        );
        assert_eq!(Seen::default().last(), None);
    }
}
