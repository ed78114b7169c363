//! Node lifecycle, keyed by node name. Nodes do not post heartbeats to the store (liveness
//! travels by gossip), so "the kubelet stopped posting status" means: gossip's failure detector
//! declared the node dead (acted on at once: the detector already waited for it), or gossip has
//! not reported it live and ready for [`UNREACHABLE_AFTER`] (a node not heard of yet, one that
//! announced its departure, or one without a Raft leader). Then its `Ready` condition becomes
//! `Unknown` and it gets the `node.kubernetes.io/unreachable:NoExecute` taint; once live again,
//! `Ready=True` and the taint goes. Gossip changes wake the controller (no waiting for a poll).
//!
//! The pods bound to an unreachable node are evicted (deleted gracefully: they stay
//! Terminating until their node comes back or is removed, and their controllers replace them)
//! when their toleration of the taint runs out: `tolerationSeconds` after the taint's
//! `timeAdded`, or the node's default (`--default-unreachable-toleration-seconds`) for a pod
//! with no such toleration; never for a toleration without `tolerationSeconds`. When more than
//! [`MAX_UNREACHABLE_PERCENT`] of the nodes look unreachable at once, nothing is evicted: this
//! node is more likely on the wrong side of a partition than most of the cluster dead.
//!
//! Who writes what: the controller is the only writer of the taint and of `Ready=Unknown`. A
//! (re)starting node writes its own `Ready=True` and keeps its taints; the controller removes
//! the taint when gossip reports the node live. The taint keeps its `timeAdded` while the
//! node stays unreachable, so the two writers never restart the pods' toleration clocks.

use flotilla_api::At;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_api::ApiError;
use flotilla_api::internal;
use flotilla_consensus::Read;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::common::*;
use super::runner::{Ctx, Reconciler};
use super::shards::Members;

const MANAGER: &str = "node-lifecycle-controller";
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// How long gossip must miss a node it has not declared dead before it is marked: a node
/// that just started, or just took the shard over, may not have heard of everyone yet, and a
/// node that announced its departure is most likely restarting.
const UNREACHABLE_AFTER: Duration = Duration::from_secs(2);
/// How often liveness is looked at besides the gossip changes that wake the controller (in
/// case one is missed).
const POLL: Duration = Duration::from_secs(1);
/// Pods evicted at once (each eviction is a few store writes).
const EVICT_CONCURRENCY: usize = 16;
/// How often the pods of an unreachable node are looked at when none is due for eviction
/// (a pod bound to it later, say).
const PODS_RECHECK: Duration = Duration::from_secs(10);
/// Above this share of unreachable nodes, evictions stop.
pub const MAX_UNREACHABLE_PERCENT: usize = 55;

pub struct NodeLifecycleController {
    live: Members,
    /// Nodes gossip's failure detector declared dead (not merely unheard of, departed or
    /// unready).
    dead: Members,
    /// Bumped when gossip's view of the members changes.
    kicks: Option<watch::Receiver<u64>>,
    default_toleration: Duration,
    /// What this instance saw of each node gossip misses (after a restart or a shard move it
    /// starts again, grace included).
    missing: Mutex<HashMap<String, Missing>>,
    /// `live` as of a moment ago: every node is polled each second, and listing the live
    /// nodes (a thousand hollow ones, say) for each poll cost more than the polls.
    live_cache: Mutex<Option<LiveCache>>,
}

struct LiveCache {
    at: Instant,
    /// The membership counter it was taken at: a membership event refreshes it at once.
    kick: u64,
    names: std::collections::HashSet<String>,
}

struct Missing {
    since: Instant,
    /// When the pods of the node are to be looked at next (not every poll: that lists them).
    pods_next: Instant,
    /// When this instance last looked: an older record is from before the shard moved away
    /// and back, and says nothing about now.
    seen: Instant,
}

/// How old a [`Missing`] record may be before it is started afresh.
const STALE: Duration = Duration::from_secs(3);

impl NodeLifecycleController {
    pub fn new(
        live: Members,
        dead: Members,
        kicks: Option<watch::Receiver<u64>>,
        default_toleration: Duration,
    ) -> NodeLifecycleController {
        NodeLifecycleController {
            live,
            dead,
            kicks,
            default_toleration,
            missing: Mutex::new(HashMap::new()),
            live_cache: Mutex::new(None),
        }
    }

    fn is_live(&self, name: &str) -> bool {
        let kick = self.kicks.as_ref().map_or(0, |k| *k.borrow());
        let mut cache = self.live_cache.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = cache
            .as_ref()
            .is_some_and(|c| c.kick == kick && c.at.elapsed() < Duration::from_millis(100));
        if !fresh {
            *cache = Some(LiveCache {
                at: Instant::now(),
                kick,
                names: (self.live)().into_iter().collect(),
            });
        }
        cache.as_ref().is_some_and(|c| c.names.contains(name))
    }
}

/// Whether pods may be evicted with `unreachable` of `total` nodes unreachable.
pub fn evictions_allowed(total: usize, unreachable: usize) -> bool {
    unreachable * 100 <= total * MAX_UNREACHABLE_PERCENT
}

/// When a pod on a node tainted unreachable at `tainted_at` (seconds) is to be evicted: None
/// if it tolerates the taint forever.
pub fn eviction_due(pod: &Value, tainted_at: u64, default_toleration: Duration) -> Option<u64> {
    let taint = json!({"key": UNREACHABLE_TAINT, "effect": "NoExecute"});
    let tolerations = pod
        .at("/spec/tolerations")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let matching: Vec<&Value> = tolerations
        .iter()
        .filter(|t| toleration_matches(t, &taint))
        .collect();
    if matching.is_empty() {
        return Some(tainted_at.saturating_add(default_toleration.as_secs()));
    }
    // As in Kubernetes: the longest matching toleration wins; one without a limit is forever.
    let mut longest: u64 = 0;
    for t in matching {
        match t.get("tolerationSeconds").and_then(Value::as_i64) {
            None => return None,
            Some(s) => longest = longest.max(s.max(0) as u64),
        }
    }
    Some(tainted_at.saturating_add(longest))
}

/// The pod with its Ready condition False, as its unreachable kubelet can no longer vouch
/// for it; None if it is not Ready now.
fn pod_not_ready(pod: &Value) -> Option<Value> {
    let mut updated = pod.clone();
    let conditions = updated
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)?;
    let ready = conditions
        .iter_mut()
        .find(|c| str_at(c, "/type") == "Ready" && str_at(c, "/status") == "True")?;
    ready["status"] = json!("False");
    ready["reason"] = json!("NodeUnreachable");
    ready["lastTransitionTime"] = json!(now());
    Some(updated)
}

fn ready_condition(node: &Value) -> Option<&Value> {
    node.at("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| str_at(c, "/type") == "Ready")
}

fn unreachable_taint(node: &Value) -> Option<&Value> {
    node.at("/spec/taints")
        .and_then(Value::as_array)?
        .iter()
        .find(|t| str_at(t, "/key") == UNREACHABLE_TAINT && str_at(t, "/effect") == "NoExecute")
}

/// The node with its Ready condition set (unchanged if it already has this status).
fn with_ready(node: &Value, status: &str, reason: &str, message: &str) -> Option<Value> {
    if ready_condition(node).is_some_and(|c| str_at(c, "/status") == status) {
        return None;
    }
    let mut updated = node.clone();
    let now = now();
    let mut conditions: Vec<Value> = node
        .at("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let heartbeat = ready_condition(node)
        .and_then(|c| c.get("lastHeartbeatTime"))
        .cloned()
        .unwrap_or_else(|| json!(now));
    conditions.retain(|c| str_at(c, "/type") != "Ready");
    conditions.insert(
        0,
        json!({
            "type": "Ready",
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": heartbeat,
            "lastTransitionTime": now,
        }),
    );
    updated["status"]["conditions"] = json!(conditions);
    Some(updated)
}

/// The node with the unreachable taint added (`add`) or removed; None if already so.
fn with_taint(node: &Value, add: bool) -> Option<Value> {
    if unreachable_taint(node).is_some() == add {
        return None;
    }
    let mut taints: Vec<Value> = node
        .at("/spec/taints")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if add {
        taints.push(json!({"key": UNREACHABLE_TAINT, "effect": "NoExecute", "timeAdded": now()}));
    } else {
        taints.retain(|t| {
            !(str_at(t, "/key") == UNREACHABLE_TAINT && str_at(t, "/effect") == "NoExecute")
        });
    }
    let mut updated = node.clone();
    if taints.is_empty() {
        if let Some(spec) = updated["spec"].as_object_mut() {
            spec.remove("taints");
        }
    } else {
        updated["spec"]["taints"] = json!(taints);
    }
    Some(updated)
}

impl NodeLifecycleController {
    async fn sync(&self, ctx: &Ctx, name: &str) -> Result<Option<Duration>, ApiError> {
        let Some(fence) = ctx.fence(name) else {
            return Ok(None);
        };
        // Polled every second per node: a local read; the writes below are conditional.
        let key = format!("/registry/core/nodes/{name}");
        let Some(kv) = ctx.store.get(&key, Read::Local).await?.kv else {
            self.forget(name);
            return Ok(None);
        };
        let Ok(mut node) = serde_json::from_slice::<Value>(&kv.value) else {
            return Ok(None);
        };
        node["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
        let live = self.is_live(name);
        let dead = !live && (self.dead)().iter().any(|m| m == name);
        let (missing_for, pods_next) = {
            let mut missing = self.missing.lock().unwrap_or_else(|e| e.into_inner());
            if live {
                missing.remove(name);
                (Duration::ZERO, Instant::now())
            } else {
                let now = Instant::now();
                let fresh = Missing {
                    since: now,
                    pods_next: now,
                    seen: now,
                };
                let m = missing.entry(name.to_owned()).or_insert(fresh);
                if now.duration_since(m.seen) > STALE {
                    m.since = now;
                    m.pods_next = now;
                }
                m.seen = now;
                (m.since.elapsed(), m.pods_next)
            }
        };
        if !live && !dead && missing_for < UNREACHABLE_AFTER {
            return Ok(Some(UNREACHABLE_AFTER - missing_for));
        }
        let (status, reason, message) = if live {
            ("True", "FlotillaReady", "flotilla node is running")
        } else {
            (
                "Unknown",
                "NodeStatusUnknown",
                "Kubelet stopped posting node status.",
            )
        };
        if let Some(updated) = with_taint(&node, !live) {
            if live {
                tracing::info!(node = %name, "node reachable again; removing the unreachable taint");
            } else {
                tracing::warn!(node = %name, "node unreachable; marking it NotReady and tainting it");
            }
            let Some(written) = internal::replace(
                &ctx.store,
                ("", "v1", "nodes"),
                None,
                name,
                updated,
                false,
                MANAGER,
                fence.clone(),
            )
            .await?
            else {
                // Changed meanwhile (the node re-registered, say): look again.
                return Ok(Some(Duration::from_millis(200)));
            };
            node = written;
        }
        if let Some(updated) = with_ready(&node, status, reason, message)
            && internal::replace(
                &ctx.store,
                ("", "v1", "nodes"),
                None,
                name,
                updated,
                true,
                MANAGER,
                fence.clone(),
            )
            .await?
            .is_none()
        {
            // The node or the fence changed meanwhile: look again.
            return Ok(Some(Duration::from_millis(200)));
        }
        if live {
            return Ok(Some(POLL));
        }
        let now = Instant::now();
        if pods_next > now {
            return Ok(Some(POLL.min(pods_next - now)));
        }
        let next = self.evict(ctx, name, &node).await?;
        let next = next.map_or(PODS_RECHECK, |n| n.min(PODS_RECHECK));
        if let Some(m) = self
            .missing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(name)
        {
            m.pods_next = Instant::now() + next;
        }
        // Back when the next pod is due, not a poll later.
        Ok(Some(POLL.min(next)))
    }

    fn forget(&self, name: &str) {
        self.missing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Marks the pods of unreachable `node` not Ready (so Services stop sending them traffic)
    /// and evicts those whose toleration ran out; when the next one is due.
    async fn evict(
        &self,
        ctx: &Ctx,
        name: &str,
        node: &Value,
    ) -> Result<Option<Duration>, ApiError> {
        let Some(tainted_at) = unreachable_taint(node)
            .and_then(|t| flotilla_api::parse_rfc3339(str_at(t, "/timeAdded")))
        else {
            return Ok(None);
        };
        let nodes = ctx.list("/registry/core/nodes/").await?;
        let live = (self.live)();
        let unreachable = nodes
            .iter()
            .filter(|n| !live.iter().any(|m| m == str_at(n, "/metadata/name")))
            .count();
        let allowed = evictions_allowed(nodes.len(), unreachable);
        if !allowed {
            tracing::warn!(node = %name, unreachable, total = nodes.len(), "not evicting pods: more than {MAX_UNREACHABLE_PERCENT}% of nodes look unreachable, so this node is probably the partitioned one");
        }
        // Wall-clock time to the millisecond, so a pod is evicted when its toleration runs out
        // rather than up to a second later.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut next: Option<Duration> = None;
        let mut work = Vec::new();
        for pod in ctx.list("/registry/core/pods/").await? {
            if str_at(&pod, "/spec/nodeName") != name || is_deleting(&pod) {
                continue;
            }
            let due = if allowed {
                eviction_due(&pod, tainted_at, self.default_toleration).map(Duration::from_secs)
            } else {
                None
            };
            let evict_now = due.is_some_and(|d| d <= now);
            if let Some(d) = due.filter(|d| *d > now) {
                next = Some(next.map_or(d - now, |n| n.min(d - now)));
            }
            work.push((pod, evict_now));
        }
        // The pods one by one would make the last eviction wait for all the others' writes.
        let results: Vec<Result<bool, ApiError>> = futures::stream::iter(work)
            .map(|(pod, evict_now)| self.evict_pod(ctx, name, pod, evict_now))
            .buffer_unordered(EVICT_CONCURRENCY)
            .collect()
            .await;
        for done in results {
            if !done? {
                // The pod or the fence changed under the eviction: try again soon.
                next = Some(Duration::from_millis(200));
            }
        }
        Ok(next)
    }

    /// Marks one pod of unreachable node `name` not Ready, and evicts it if `evict_now`;
    /// false if an eviction due did not happen.
    async fn evict_pod(
        &self,
        ctx: &Ctx,
        name: &str,
        pod: Value,
        evict_now: bool,
    ) -> Result<bool, ApiError> {
        // The node's shard owner looks after the node's pods (whatever their own shards).
        let Some(fence) = ctx.fence(name) else {
            return Ok(!evict_now);
        };
        let ns = str_at(&pod, "/metadata/namespace");
        let pod_name = str_at(&pod, "/metadata/name");
        if let Some(not_ready) = pod_not_ready(&pod) {
            // Best effort: a pod changed meanwhile is looked at on the next pass.
            let _ = internal::replace(
                &ctx.store,
                ("", "v1", "pods"),
                Some(ns),
                pod_name,
                not_ready,
                true,
                MANAGER,
                fence.clone(),
            )
            .await;
        }
        if !evict_now {
            return Ok(true);
        }
        if !internal::delete(
            &ctx.store,
            ("", "v1", "pods"),
            Some(ns),
            pod_name,
            Some(str_at(&pod, "/metadata/uid")),
            None,
            fence.clone(),
        )
        .await?
        {
            return Ok(false);
        }
        tracing::info!(node = %name, namespace = %ns, pod = %pod_name, "evicted a pod from an unreachable node");
        let e = event(
            &pod,
            "Normal",
            "TaintManagerEviction",
            &format!("Marking for deletion Pod {ns}/{pod_name}"),
            MANAGER,
        );
        let _ = internal::create(
            &ctx.store,
            ("", "v1", "events"),
            Some(ns),
            e,
            MANAGER,
            fence,
        )
        .await;
        Ok(true)
    }
}

impl Reconciler for NodeLifecycleController {
    fn name(&self) -> &'static str {
        "NodeLifecycle"
    }

    fn prefix(&self) -> &'static str {
        "/registry/core/nodes/"
    }

    fn kicks(&self) -> Option<watch::Receiver<u64>> {
        self.kicks.clone()
    }

    fn reconcile<'a>(
        &'a self,
        ctx: &'a Ctx,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Duration>, ApiError>> {
        self.sync(ctx, key).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evictions_stop_when_most_nodes_look_unreachable() {
        assert!(evictions_allowed(3, 1));
        assert!(evictions_allowed(2, 1));
        assert!(evictions_allowed(100, 55));
        assert!(!evictions_allowed(100, 56));
        assert!(!evictions_allowed(3, 2));
        assert!(!evictions_allowed(1, 1));
        assert!(evictions_allowed(0, 0));
    }

    #[test]
    fn tolerations_set_the_eviction_time() {
        let default = Duration::from_secs(5);
        let pod = |tolerations: Value| json!({"spec": {"tolerations": tolerations}});
        // No toleration: the node's default.
        assert_eq!(
            eviction_due(&json!({"spec": {}}), 1000, default),
            Some(1005)
        );
        // Its own limit, for this taint or for any NoExecute taint.
        let own = pod(json!([{"key": UNREACHABLE_TAINT, "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 60}]));
        assert_eq!(eviction_due(&own, 1000, default), Some(1060));
        let any =
            pod(json!([{"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]));
        assert_eq!(eviction_due(&any, 1000, default), Some(1030));
        // A negative limit means at once; the longest of several wins.
        let two = pod(json!([
            {"key": UNREACHABLE_TAINT, "operator": "Exists", "tolerationSeconds": -5},
            {"key": UNREACHABLE_TAINT, "operator": "Exists", "tolerationSeconds": 20}]));
        assert_eq!(eviction_due(&two, 1000, default), Some(1020));
        // No limit: tolerated forever.
        let forever = pod(json!([{"operator": "Exists"}]));
        assert_eq!(eviction_due(&forever, 1000, default), None);
        // A toleration of another taint or effect does not count.
        let other = pod(json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 900},
            {"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoSchedule"}]));
        assert_eq!(eviction_due(&other, 1000, default), Some(1005));
    }

    #[test]
    fn taint_and_condition_changes_are_idempotent() {
        let node = json!({"metadata": {"name": "n"}, "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let tainted = with_taint(&node, true).unwrap();
        assert!(unreachable_taint(&tainted).is_some());
        assert!(with_taint(&tainted, true).is_none());
        let untainted = with_taint(&tainted, false).unwrap();
        assert!(untainted.at("/spec/taints").is_none());
        let unknown = with_ready(&node, "Unknown", "NodeStatusUnknown", "m").unwrap();
        assert_eq!(
            str_at(ready_condition(&unknown).unwrap(), "/status"),
            "Unknown"
        );
        assert!(with_ready(&unknown, "Unknown", "NodeStatusUnknown", "m").is_none());
    }
}
