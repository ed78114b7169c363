//! ReplicaSets and ReplicationControllers: as many active pods as `replicas`, made from the
//! template with a random suffix and an owner reference; pods that match the selector and
//! have no controller are adopted, owned pods that stop matching are released. Surplus pods
//! go unscheduled first, then pending, not ready, newest. Status counts replicas,
//! fullyLabeledReplicas, readyReplicas and availableReplicas (ready for minReadySeconds).

use flotilla_api::At;
use std::time::Duration;

use flotilla_api::ApiError;
use flotilla_api::internal::{self, Fence};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::common::*;
use super::runner::{Ctx, Reconciler};

const MANAGER: &str = "replicaset-controller";
/// The most pods one reconcile creates (the rest come on the next one).
const BURST: usize = 500;

pub struct ReplicaSetController {
    kind: &'static str,
    api_version: &'static str,
    gvr: (&'static str, &'static str, &'static str),
    prefix: &'static str,
}

impl ReplicaSetController {
    pub fn replica_sets() -> ReplicaSetController {
        ReplicaSetController {
            kind: "ReplicaSet",
            api_version: "apps/v1",
            gvr: ("apps", "v1", "replicasets"),
            prefix: "/registry/apps/replicasets/",
        }
    }

    pub fn replication_controllers() -> ReplicaSetController {
        ReplicaSetController {
            kind: "ReplicationController",
            api_version: "v1",
            gvr: ("", "v1", "replicationcontrollers"),
            prefix: "/registry/core/replicationcontrollers/",
        }
    }

    fn selector(&self, rs: &Value) -> Value {
        let sel = rs.at("/spec/selector").cloned().unwrap_or(Value::Null);
        if self.kind == "ReplicationController" {
            // A plain map; empty means the template's labels.
            match sel.as_object() {
                Some(m) if !m.is_empty() => map_selector(&sel),
                _ => map_selector(
                    rs.at("/spec/template/metadata/labels")
                        .unwrap_or(&Value::Null),
                ),
            }
        } else {
            sel
        }
    }
}

/// Which surplus pod goes first: lower ranks are deleted first.
fn deletion_rank(
    pod: &Value,
) -> (
    u8,
    u8,
    u8,
    std::cmp::Reverse<String>,
    std::cmp::Reverse<i64>,
) {
    let unassigned = u8::from(!str_at(pod, "/spec/nodeName").is_empty());
    let phase = match str_at(pod, "/status/phase") {
        "Pending" => 0,
        "Unknown" => 1,
        _ => 2,
    };
    let restarts: i64 = pod
        .at("/status/containerStatuses")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
                .sum()
        })
        .unwrap_or(0);
    (
        unassigned,
        phase,
        u8::from(is_ready(pod)),
        // Newer first.
        std::cmp::Reverse(str_at(pod, "/metadata/creationTimestamp").to_owned()),
        std::cmp::Reverse(restarts),
    )
}

impl ReplicaSetController {
    async fn sync(&self, ctx: &Ctx, key: &str) -> Result<Option<Duration>, ApiError> {
        let Some(fence) = ctx.fence(key) else {
            return Ok(None);
        };
        let Some(rs) = ctx.get(&format!("{}{key}", self.prefix)).await? else {
            return Ok(None);
        };
        if is_deleting(&rs) {
            return Ok(None);
        }
        let ns = str_at(&rs, "/metadata/namespace").to_owned();
        let name = str_at(&rs, "/metadata/name").to_owned();
        let uid = str_at(&rs, "/metadata/uid").to_owned();
        let selector = self.selector(&rs);
        let replicas = rs.at("/spec/replicas").and_then(Value::as_u64).unwrap_or(1) as usize;
        let mut owned = Vec::new();
        for mut pod in ctx.list(&format!("/registry/core/pods/{ns}/")).await? {
            let labels = pod.at("/metadata/labels").cloned().unwrap_or(json!({}));
            let matches = selector_matches(&selector, &labels) && selector.is_object();
            match controller_uid(&pod) {
                Some(owner) if owner == uid => {
                    if matches || is_deleting(&pod) {
                        owned.push(pod);
                    } else {
                        // No longer ours: release it.
                        strip_owner(&mut pod, &uid);
                        self.write_pod(ctx, &ns, pod, &fence).await?;
                    }
                }
                None if matches && is_active(&pod) => {
                    // An orphan that matches: adopt it.
                    let refs = pod["metadata"]["ownerReferences"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let mut refs = refs;
                    refs.push(owner_ref(&rs, self.api_version, self.kind));
                    pod["metadata"]["ownerReferences"] = json!(refs);
                    if let Some(p) = self.write_pod(ctx, &ns, pod, &fence).await? {
                        owned.push(p);
                    }
                }
                _ => {}
            }
        }
        let mut active: Vec<&Value> = owned.iter().filter(|p| is_active(p)).collect();
        if active.len() < replicas {
            let missing = (replicas - active.len()).min(BURST);
            // Slow start (1, 2, 4, …), each batch's creates at once as Kubernetes does: a
            // template that cannot be admitted fails once, not `missing` times, and replacing
            // many pods (a node died) does not wait for one write after another.
            let mut created = 0;
            let mut batch = 1;
            while created < missing {
                let n = batch.min(missing - created);
                let results = futures::future::join_all((0..n).map(|_| {
                    internal::create(
                        &ctx.store,
                        ("", "v1", "pods"),
                        Some(&ns),
                        self.pod_from_template(&rs),
                        MANAGER,
                        fence.clone(),
                    )
                }))
                .await;
                created += results.iter().filter(|r| r.is_ok()).count();
                if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                    self.record(
                        ctx,
                        &rs,
                        "Warning",
                        "FailedCreate",
                        &format!("Error creating: {}", e.message()),
                        &fence,
                    )
                    .await;
                    break;
                }
                batch *= 2;
            }
            if created > 0 {
                self.record(
                    ctx,
                    &rs,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("Created {created} pod(s)"),
                    &fence,
                )
                .await;
            }
        } else if active.len() > replicas {
            active.sort_by_key(|p| deletion_rank(p));
            let surplus: Vec<(String, String)> = active[..active.len() - replicas]
                .iter()
                .map(|p| {
                    (
                        str_at(p, "/metadata/name").to_owned(),
                        str_at(p, "/metadata/uid").to_owned(),
                    )
                })
                .collect();
            for (pod, pod_uid) in &surplus {
                internal::delete(
                    &ctx.store,
                    ("", "v1", "pods"),
                    Some(&ns),
                    pod,
                    Some(pod_uid),
                    None,
                    fence.clone(),
                )
                .await?;
                self.record(
                    ctx,
                    &rs,
                    "Normal",
                    "SuccessfulDelete",
                    &format!("Deleted pod: {pod}"),
                    &fence,
                )
                .await;
            }
        }
        self.update_status(ctx, &rs, &owned, &name, &fence).await
    }

    fn pod_from_template(&self, rs: &Value) -> Value {
        let template = rs.at("/spec/template").cloned().unwrap_or(json!({}));
        let mut meta = json!({
            "generateName": format!("{}-", str_at(rs, "/metadata/name")),
            "namespace": str_at(rs, "/metadata/namespace"),
            "ownerReferences": [owner_ref(rs, self.api_version, self.kind)],
        });
        for field in ["labels", "annotations"] {
            if let Some(v) = template.at(&format!("/metadata/{field}")) {
                meta[field] = v.clone();
            }
        }
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": template.get("spec").cloned().unwrap_or(json!({})),
        })
    }

    async fn write_pod(
        &self,
        ctx: &Ctx,
        ns: &str,
        pod: Value,
        fence: &Fence,
    ) -> Result<Option<Value>, ApiError> {
        let name = str_at(&pod, "/metadata/name").to_owned();
        internal::replace(
            &ctx.store,
            ("", "v1", "pods"),
            Some(ns),
            &name,
            pod,
            false,
            MANAGER,
            fence.clone(),
        )
        .await
    }

    async fn record(
        &self,
        ctx: &Ctx,
        rs: &Value,
        kind: &str,
        reason: &str,
        message: &str,
        fence: &Fence,
    ) {
        super::common::record(
            &ctx.store,
            rs,
            self.api_version,
            self.kind,
            kind,
            reason,
            message,
            "replicaset-controller",
            fence,
        )
        .await;
    }

    async fn update_status(
        &self,
        ctx: &Ctx,
        rs: &Value,
        owned: &[Value],
        name: &str,
        fence: &Fence,
    ) -> Result<Option<Duration>, ApiError> {
        let min_ready = rs
            .at("/spec/minReadySeconds")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let now = now_secs();
        let template_labels = rs
            .at("/spec/template/metadata/labels")
            .cloned()
            .unwrap_or(json!({}));
        let active: Vec<&Value> = owned.iter().filter(|p| is_active(p)).collect();
        let fully = active
            .iter()
            .filter(|p| {
                selector_matches(
                    &json!({"matchLabels": template_labels}),
                    p.at("/metadata/labels").unwrap_or(&Value::Null),
                )
            })
            .count();
        let ready = active.iter().filter(|p| is_ready(p)).count();
        let available = active
            .iter()
            .filter(|p| is_available(p, min_ready, now))
            .count();
        let mut status = rs.get("status").cloned().unwrap_or(json!({}));
        status["replicas"] = json!(active.len());
        status["fullyLabeledReplicas"] = json!(fully);
        status["readyReplicas"] = json!(ready);
        status["availableReplicas"] = json!(available);
        status["observedGeneration"] = rs.at("/metadata/generation").cloned().unwrap_or(json!(1));
        // A ready pod becomes available later: look again then.
        let again = (ready > available && min_ready > 0).then(|| Duration::from_secs(1));
        if rs.get("status") == Some(&status) {
            return Ok(again);
        }
        let mut updated = rs.clone();
        updated["status"] = status;
        internal::replace(
            &ctx.store,
            self.gvr,
            Some(str_at(rs, "/metadata/namespace")),
            name,
            updated,
            true,
            MANAGER,
            fence.clone(),
        )
        .await?;
        Ok(again)
    }
}

/// Removes `uid`'s owner reference.
fn strip_owner(pod: &mut Value, uid: &str) {
    if let Some(refs) = pod
        .pointer_mut("/metadata/ownerReferences")
        .and_then(Value::as_array_mut)
    {
        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
    }
}

impl Reconciler for ReplicaSetController {
    fn name(&self) -> &'static str {
        self.kind
    }

    fn prefix(&self) -> &'static str {
        self.prefix
    }

    fn related(&self) -> &'static [&'static str] {
        &["/registry/core/pods/"]
    }

    fn keys_for(&self, pod: &Value) -> Vec<String> {
        // A pod's controller; an orphan may be adopted by any set in its namespace, which the
        // periodic resync finds.
        pod.at("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|o| o.get("kind").and_then(Value::as_str) == Some(self.kind))
            .filter_map(|o| o.get("name").and_then(Value::as_str))
            .map(|n| format!("{}/{n}", str_at(pod, "/metadata/namespace")))
            .collect()
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
    fn surplus_pods_go_unscheduled_pending_unready_newest_first() {
        let pod = |name: &str, node: &str, phase: &str, ready: bool, created: &str| {
            json!({"metadata": {"name": name, "creationTimestamp": created},
                "spec": {"nodeName": node},
                "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
        };
        let mut pods = [
            pod("old-ready", "n1", "Running", true, "2026-01-01T00:00:00Z"),
            pod("new-ready", "n1", "Running", true, "2026-01-02T00:00:00Z"),
            pod("unready", "n1", "Running", false, "2026-01-01T00:00:00Z"),
            pod("pending", "n1", "Pending", false, "2026-01-01T00:00:00Z"),
            pod("unscheduled", "", "Pending", false, "2026-01-01T00:00:00Z"),
        ];
        pods.sort_by_key(deletion_rank);
        let order: Vec<&str> = pods.iter().map(|p| str_at(p, "/metadata/name")).collect();
        assert_eq!(
            order,
            [
                "unscheduled",
                "pending",
                "unready",
                "new-ready",
                "old-ready"
            ]
        );
    }
}
