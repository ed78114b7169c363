//! DaemonSets (apps/v1): one pod from the template on every node that should run it — the
//! template's nodeSelector and required node affinity match, and every NoSchedule/NoExecute
//! taint is tolerated, counting the tolerations Kubernetes adds to daemon pods (not-ready,
//! unreachable, pressure, unschedulable). A node that appears gets a pod; a pod whose node is
//! gone, or no longer selects it, or has an untolerated NoExecute taint is deleted (a new
//! NoSchedule taint leaves a running pod alone, as in Kubernetes). Finished pods are replaced.
//!
//! Pods are created with `spec.nodeName` set, not left to the scheduler: a daemon pod belongs
//! on its node even when the node is cordoned or not ready (the scheduler skips those), and it
//! takes no scheduling round trip. The create bumps the node's allocation record in the same
//! transaction, so a scheduler binding to that node at the same moment re-reads and counts it.
//!
//! Pods carry `controller-revision-hash`, a hash of the template. `RollingUpdate` replaces old
//! pods at most `maxUnavailable` nodes at a time (old pods that are not available go first and
//! freely); `OnDelete` leaves them until someone deletes them. Status carries what
//! `kubectl rollout status ds/…` reads.

use flotilla_api::At;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use flotilla_api::ApiError;
use flotilla_api::internal::{self, Fence};
use flotilla_consensus::{CmpOp, Compare, Op, Read};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::common::*;
use super::runner::{Ctx, Reconciler};
use super::scheduler::{ALLOC_PREFIX, selects, tolerates};

const MANAGER: &str = "daemonset-controller";
const PREFIX: &str = "/registry/apps/daemonsets/";
const NODES: &str = "/registry/core/nodes/";
pub const HASH_LABEL: &str = "controller-revision-hash";
const GENERATION_LABEL: &str = "pod-template-generation";

pub struct DaemonSetController {
    /// The DaemonSets seen here: a node's change concerns every one of them, and the watch
    /// callback cannot read the store.
    known: Mutex<BTreeSet<String>>,
}

impl DaemonSetController {
    pub fn new() -> DaemonSetController {
        DaemonSetController {
            known: Mutex::new(BTreeSet::new()),
        }
    }

    fn remember(&self, key: &str, present: bool) {
        // A poisoned lock only means a panic elsewhere; the set itself stays usable.
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if present {
            known.insert(key.to_owned());
        } else {
            known.remove(key);
        }
    }
}

impl Default for DaemonSetController {
    fn default() -> Self {
        DaemonSetController::new()
    }
}

/// The tolerations Kubernetes gives every daemon pod, so it stays on (and gets onto) nodes
/// that are not ready, unreachable, under pressure or cordoned.
fn daemon_tolerations(spec: &Value) -> Vec<Value> {
    let mut extra = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        extra.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let mut tolerations: Vec<Value> = spec
        .get("tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (key, effect) in extra {
        let present = tolerations.iter().any(|t| {
            str_at(t, "/key") == key
                && str_at(t, "/effect") == effect
                && str_at(t, "/operator") == "Exists"
        });
        if !present {
            tolerations.push(json!({"key": key, "operator": "Exists", "effect": effect}));
        }
    }
    tolerations
}

/// Kubernetes' template hash: FNV-1a (32 bit) of the template, its decimal digits mapped to
/// an alphabet without vowels (`rand.SafeEncodeString`). Keys are hashed in sorted order so
/// the hash depends only on the template's content.
pub fn template_hash(template: &Value) -> String {
    fn canonical(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, &Value> = m.iter().collect();
                out.push('{');
                for (i, (k, v)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    canonical(v, out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canonical(v, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut text = String::new();
    canonical(template, &mut text);
    let mut hash: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// Whether a node should run the daemon pod, and whether one already there may stay.
fn eligibility(pod: &Value, node: &Value) -> (bool, bool) {
    let wanted_node = str_at(pod, "/spec/nodeName");
    if !wanted_node.is_empty() && wanted_node != str_at(node, "/metadata/name") {
        return (false, false);
    }
    if !selects(pod, node) {
        return (false, false);
    }
    let tolerations: Vec<Value> = pod
        .at("/spec/tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let (mut run, mut stay) = (true, true);
    for taint in node
        .at("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match str_at(taint, "/effect") {
            "NoSchedule" if !tolerates(&tolerations, taint) => run = false,
            "NoExecute" if !tolerates(&tolerations, taint) => {
                run = false;
                stay = false;
            }
            _ => {}
        }
    }
    (run, stay)
}

/// `maxUnavailable` (a number or a percentage of `desired`, rounded up); at least 1.
fn max_unavailable(ds: &Value, desired: usize) -> usize {
    let v = ds.at("/spec/updateStrategy/rollingUpdate/maxUnavailable");
    let n = match v {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(1) as usize,
        Some(Value::String(s)) => match s.strip_suffix('%').and_then(|p| p.parse::<usize>().ok()) {
            Some(p) => (desired * p).div_ceil(100),
            None => s.parse().unwrap_or(1),
        },
        _ => 1,
    };
    n.max(1)
}

fn hash_of(pod: &Value) -> &str {
    str_at(pod, &format!("/metadata/labels/{HASH_LABEL}"))
}

impl DaemonSetController {
    async fn sync(&self, ctx: &Ctx, key: &str) -> Result<Option<Duration>, ApiError> {
        let Some(fence) = ctx.fence(key) else {
            return Ok(None);
        };
        let Some(ds) = ctx.get(&format!("{PREFIX}{key}")).await? else {
            self.remember(key, false);
            return Ok(None);
        };
        self.remember(key, true);
        if is_deleting(&ds) {
            return Ok(None);
        }
        let ns = str_at(&ds, "/metadata/namespace").to_owned();
        let uid = str_at(&ds, "/metadata/uid").to_owned();
        let now = now_secs();
        let min_ready = ds
            .at("/spec/minReadySeconds")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let template = ds.at("/spec/template").cloned().unwrap_or(json!({}));
        let hash = template_hash(&template);
        let pod = self.pod_from_template(&ds, &hash);
        let nodes = ctx.list(NODES).await?;
        let pods = owned_pods(ctx, &ns, &uid).await?;

        let node_names: BTreeSet<&str> =
            nodes.iter().map(|n| str_at(n, "/metadata/name")).collect();
        let mut by_node: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
        for p in &pods {
            if !node_names.contains(str_at(p, "/spec/nodeName")) {
                // Its node is gone, and with it the kubelet that would finish a graceful
                // deletion: the pod goes at once (Kubernetes' pod GC does the same).
                internal::delete(
                    &ctx.store,
                    ("", "v1", "pods"),
                    Some(&ns),
                    str_at(p, "/metadata/name"),
                    Some(str_at(p, "/metadata/uid")),
                    Some(0),
                    fence.clone(),
                )
                .await?;
                continue;
            }
            if is_deleting(p) {
                continue;
            }
            if matches!(str_at(p, "/status/phase"), "Succeeded" | "Failed") {
                // A daemon pod that ended is replaced.
                delete_pod(&ctx.store, p, &fence).await?;
                continue;
            }
            by_node
                .entry(str_at(p, "/spec/nodeName").to_owned())
                .or_default()
                .push(p);
        }

        let mut desired = 0;
        let mut current = 0;
        let mut ready = 0;
        let mut available = 0;
        let mut updated = 0;
        let mut misscheduled = 0;
        let mut to_create: Vec<String> = Vec::new();
        let mut to_delete: Vec<&Value> = Vec::new();
        // Nodes whose one pod is of an old template: (node, pod, available).
        let mut old: Vec<(&Value, bool)> = Vec::new();
        let mut unavailable = 0;
        for node in &nodes {
            let name = str_at(node, "/metadata/name").to_owned();
            let (run, stay) = eligibility(&pod, node);
            let mut here = by_node.remove(&name).unwrap_or_default();
            if !run && !here.is_empty() {
                misscheduled += 1;
            }
            if !stay {
                to_delete.extend(here);
                continue;
            }
            if run {
                desired += 1;
            }
            if here.is_empty() {
                if run {
                    to_create.push(name);
                    unavailable += 1;
                }
                continue;
            }
            // One pod per node: keep the current template's, then ready, then oldest.
            here.sort_by_key(|p| {
                (
                    u8::from(hash_of(p) != hash),
                    u8::from(!is_ready(p)),
                    str_at(p, "/metadata/creationTimestamp").to_owned(),
                )
            });
            to_delete.extend(here.drain(1..));
            let kept = here[0];
            let is_available = is_available(kept, min_ready, now);
            if run {
                current += 1;
                ready += usize::from(is_ready(kept));
                available += usize::from(is_available);
                if hash_of(kept) == hash {
                    updated += 1;
                    unavailable += usize::from(!is_available);
                } else {
                    old.push((kept, is_available));
                }
            }
        }
        // Pods on nodes that no longer select them (every node was visited above).
        for (_, pods) in by_node {
            to_delete.extend(pods);
        }

        if str_at(&ds, "/spec/updateStrategy/type") != "OnDelete" {
            let budget = max_unavailable(&ds, desired);
            for (p, is_available) in old {
                if !is_available {
                    // Already down: replacing it costs nothing.
                    to_delete.push(p);
                } else if unavailable < budget {
                    unavailable += 1;
                    to_delete.push(p);
                }
            }
        }
        for p in to_delete {
            delete_pod(&ctx.store, p, &fence).await?;
        }
        let mut created = 0;
        for node in &to_create {
            match self.create_on(ctx, &ds, &pod, node, &fence).await {
                Ok(()) => created += 1,
                Err(e) => {
                    let msg = format!("Error creating: {}", e.message());
                    self.event(ctx, &ds, "Warning", "FailedCreate", &msg, &fence)
                        .await;
                    return Err(e);
                }
            }
        }
        if created > 0 {
            let msg = format!("Created {created} pod(s)");
            self.event(ctx, &ds, "Normal", "SuccessfulCreate", &msg, &fence)
                .await;
        }

        let mut status = ds.get("status").cloned().unwrap_or(json!({}));
        status["desiredNumberScheduled"] = json!(desired);
        status["currentNumberScheduled"] = json!(current);
        status["numberReady"] = json!(ready);
        status["numberAvailable"] = json!(available);
        status["numberUnavailable"] = json!(desired.saturating_sub(available));
        status["updatedNumberScheduled"] = json!(updated);
        status["numberMisscheduled"] = json!(misscheduled);
        status["observedGeneration"] = ds.at("/metadata/generation").cloned().unwrap_or(json!(1));
        // A ready pod becomes available later: look again then.
        let again = (ready > available && min_ready > 0).then(|| Duration::from_secs(1));
        if ds.get("status") == Some(&status) {
            return Ok(again);
        }
        let mut written = ds.clone();
        written["status"] = status;
        let ok = internal::replace(
            &ctx.store,
            ("apps", "v1", "daemonsets"),
            Some(&ns),
            str_at(&ds, "/metadata/name"),
            written,
            true,
            MANAGER,
            fence,
        )
        .await?;
        Ok(if ok.is_none() {
            Some(Duration::from_millis(100))
        } else {
            again
        })
    }

    /// The pod every node gets, before its node is filled in.
    fn pod_from_template(&self, ds: &Value, hash: &str) -> Value {
        let template = ds.at("/spec/template").cloned().unwrap_or(json!({}));
        let mut labels = template
            .at("/metadata/labels")
            .cloned()
            .filter(Value::is_object)
            .unwrap_or(json!({}));
        labels[HASH_LABEL] = json!(hash);
        labels[GENERATION_LABEL] = json!(
            ds.at("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1)
                .to_string()
        );
        let mut meta = json!({
            "generateName": format!("{}-", str_at(ds, "/metadata/name")),
            "namespace": str_at(ds, "/metadata/namespace"),
            "labels": labels,
            "ownerReferences": [owner_ref(ds, "apps/v1", "DaemonSet")],
        });
        if let Some(a) = template.at("/metadata/annotations") {
            meta["annotations"] = a.clone();
        }
        let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
        spec["tolerations"] = json!(daemon_tolerations(&spec));
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
    }

    /// Creates the daemon pod on `node`, counting it in the node's allocation record.
    async fn create_on(
        &self,
        ctx: &Ctx,
        ds: &Value,
        pod: &Value,
        node: &str,
        fence: &Fence,
    ) -> Result<(), ApiError> {
        let mut pod = pod.clone();
        pod["spec"]["nodeName"] = json!(node);
        let record_key = format!("{ALLOC_PREFIX}{node}");
        let record = ctx.store.get(&record_key, Read::Linearizable).await?.kv;
        let (count, compare) = match record {
            Some(kv) => (
                std::str::from_utf8(&kv.value)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0),
                Compare::ModRevision {
                    key: record_key.clone(),
                    op: CmpOp::Equal,
                    revision: kv.mod_revision,
                },
            ),
            None => (
                0,
                Compare::Missing {
                    key: record_key.clone(),
                },
            ),
        };
        let mut fence = fence.clone();
        fence.compare.push(compare);
        fence.also.push(Op::Put {
            key: record_key,
            value: (count + 1).to_string().into_bytes(),
        });
        internal::create(
            &ctx.store,
            ("", "v1", "pods"),
            Some(str_at(ds, "/metadata/namespace")),
            pod,
            MANAGER,
            fence,
        )
        .await?;
        Ok(())
    }

    async fn event(
        &self,
        ctx: &Ctx,
        ds: &Value,
        kind: &str,
        reason: &str,
        message: &str,
        fence: &Fence,
    ) {
        record(
            &ctx.store,
            ds,
            "apps/v1",
            "DaemonSet",
            kind,
            reason,
            message,
            MANAGER,
            fence,
        )
        .await;
    }
}

impl Reconciler for DaemonSetController {
    fn name(&self) -> &'static str {
        "DaemonSet"
    }

    fn prefix(&self) -> &'static str {
        PREFIX
    }

    fn related(&self) -> &'static [&'static str] {
        &["/registry/core/pods/", NODES]
    }

    fn keys_for(&self, obj: &Value) -> Vec<String> {
        // Nodes are cluster-scoped; pods are not.
        if str_at(obj, "/metadata/namespace").is_empty() {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            return known.iter().cloned().collect();
        }
        owner_keys(obj, "DaemonSet")
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
    fn hash_depends_on_content_not_key_order() {
        let a = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}});
        let b: Value = serde_json::from_str(
            r#"{"spec": {"containers": [{"image": "i:1", "name": "c"}]}, "metadata": {"labels": {"app": "x"}}}"#,
        )
        .unwrap();
        let c = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i:2"}]}});
        assert_eq!(template_hash(&a), template_hash(&b));
        assert_ne!(template_hash(&a), template_hash(&c));
        assert!(
            template_hash(&a)
                .chars()
                .all(|ch| "bcdfghjklmnpqrstvwxz2456789".contains(ch))
        );
    }

    #[test]
    fn nodes_are_eligible_by_selector_and_taints() {
        let ds = json!({"metadata": {"name": "agent", "namespace": "default", "uid": "u"},
            "spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"},
                "containers": [{"name": "c", "image": "i"}]}}}});
        let pod = DaemonSetController::new().pod_from_template(&ds, "h");
        let node = |labels: Value, taints: Value| json!({"metadata": {"name": "n", "labels": labels}, "spec": {"taints": taints}});
        let ssd = json!({"disk": "ssd"});
        assert_eq!(
            eligibility(&pod, &node(ssd.clone(), json!([]))),
            (true, true)
        );
        assert_eq!(
            eligibility(&pod, &node(json!({"disk": "hdd"}), json!([]))),
            (false, false)
        );
        // Cordoned and not-ready nodes keep (and get) their daemon pods.
        let standard = json!([
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
        ]);
        assert_eq!(
            eligibility(&pod, &node(ssd.clone(), standard)),
            (true, true)
        );
        // Someone else's NoSchedule taint: no new pod, but a running one stays.
        let gpu = json!([{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]);
        assert_eq!(eligibility(&pod, &node(ssd.clone(), gpu)), (false, true));
        let evict = json!([{"key": "gpu", "value": "yes", "effect": "NoExecute"}]);
        assert_eq!(eligibility(&pod, &node(ssd, evict)), (false, false));
        assert_eq!(pod["metadata"]["labels"][HASH_LABEL], "h");
    }

    #[test]
    fn max_unavailable_numbers_and_percentages() {
        let ds = |v: Value| json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": v}}}});
        assert_eq!(max_unavailable(&ds(json!(2)), 10), 2);
        assert_eq!(max_unavailable(&ds(json!("25%")), 10), 3);
        assert_eq!(max_unavailable(&ds(json!("0%")), 10), 1);
        assert_eq!(max_unavailable(&json!({}), 10), 1);
    }
}
