//! PodDisruptionBudgets (pkg/controller/disruption/disruption.go): for each budget, the pods
//! it selects, how many of them must stay healthy and how many may be disrupted now. The
//! eviction subresource spends `disruptionsAllowed` and records the pod in `disruptedPods`;
//! this controller recomputes the counts from the pods, drops `disruptedPods` entries whose pod
//! is being deleted or is gone, and forgets an entry whose pod was not deleted within two
//! minutes (the eviction's delete must have failed).

use flotilla_api::At;
use std::collections::BTreeSet;
use std::time::Duration;

use flotilla_api::ApiError;
use flotilla_api::internal;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use super::common::*;
use super::runner::{Ctx, Reconciler};

const MANAGER: &str = "disruption-controller";
/// How long an eviction's pod may take to be marked deleted before its entry is dropped.
const DELETION_TIMEOUT: u64 = 120;

pub struct DisruptionController;

/// The budget's counts, as its status reports them.
#[derive(Debug, PartialEq, Eq)]
struct Counts {
    expected: i64,
    desired: i64,
    current: i64,
}

/// `GetScaledValueFromIntOrPercent(v, total, roundUp=true)`; `None` for a malformed value.
fn scaled(v: &Value, total: i64) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let p: i64 = s.strip_suffix('%')?.parse().ok()?;
            Some((p * total + 99) / 100)
        }
        _ => None,
    }
}

/// `disruptionsAllowed` from the counts: none when nothing is expected or too few are healthy.
fn allowed(c: &Counts) -> i64 {
    if c.expected <= 0 {
        0
    } else {
        (c.current - c.desired).max(0)
    }
}

impl DisruptionController {
    /// The scale of a pod's controller: a ReplicaSet's Deployment, else the ReplicaSet,
    /// StatefulSet or ReplicationController itself. `Ok(None)`: the pod has no controller kube
    /// knows (unmanaged pods are left out of the expected count); `Err(())`: its controller
    /// is not found, so nothing can be said (the budget fails safe).
    async fn controller_scale(
        ctx: &Ctx,
        ns: &str,
        pod: &Value,
    ) -> Result<Option<(String, i64)>, ApiError> {
        let Some(owner) = pod
            .at("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|refs| {
                refs.iter()
                    .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
            })
        else {
            return Ok(None);
        };
        let (kind, name, uid) = (
            str_at(owner, "/kind"),
            str_at(owner, "/name"),
            str_at(owner, "/uid"),
        );
        let prefix = match kind {
            "ReplicaSet" => "/registry/apps/replicasets",
            "StatefulSet" => "/registry/apps/statefulsets",
            "ReplicationController" => "/registry/core/replicationcontrollers",
            _ => return Ok(None),
        };
        let missing = || ApiError::internal(format!("{kind} {ns}/{name} of a pod not found"));
        let owner_obj = ctx
            .get(&format!("{prefix}/{ns}/{name}"))
            .await?
            .filter(|o| str_at(o, "/metadata/uid") == uid)
            .ok_or_else(missing)?;
        if kind == "ReplicaSet"
            && let Some(d) = super::runner::controller_of(&owner_obj, "Deployment")
        {
            let dname = str_at(d, "/name");
            let duid = str_at(d, "/uid");
            let deployment = ctx
                .get(&format!("/registry/apps/deployments/{ns}/{dname}"))
                .await?
                .filter(|o| str_at(o, "/metadata/uid") == duid)
                .ok_or_else(|| ApiError::internal(format!("Deployment {ns}/{dname} not found")))?;
            return Ok(Some((duid.to_owned(), replicas(&deployment))));
        }
        Ok(Some((uid.to_owned(), replicas(&owner_obj))))
    }

    /// Expected pods and desired healthy (`getExpectedPodCount`).
    async fn expected(
        ctx: &Ctx,
        ns: &str,
        pdb: &Value,
        pods: &[Value],
    ) -> Result<(i64, i64), ApiError> {
        let spec = pdb.get("spec").cloned().unwrap_or(Value::Null);
        let min = spec.get("minAvailable").filter(|v| !v.is_null());
        let max = spec.get("maxUnavailable").filter(|v| !v.is_null());
        let bad = |f: &str| ApiError::internal(format!("invalid {f}"));
        if max.is_some() || min.is_some_and(Value::is_string) {
            // The controllers' scale, each controller counted once.
            let mut seen = BTreeSet::new();
            let mut expected = 0;
            for pod in pods {
                if let Some((uid, scale)) = Self::controller_scale(ctx, ns, pod).await?
                    && seen.insert(uid)
                {
                    expected += scale;
                }
            }
            if let Some(max) = max {
                let max = scaled(max, expected).ok_or_else(|| bad("maxUnavailable"))?;
                return Ok((expected, (expected - max).max(0)));
            }
            let min = min.and_then(|m| scaled(m, expected));
            return Ok((expected, min.ok_or_else(|| bad("minAvailable"))?));
        }
        match min {
            Some(m) => Ok((
                pods.len() as i64,
                m.as_i64().ok_or_else(|| bad("minAvailable"))?,
            )),
            None => Ok((0, 0)),
        }
    }

    async fn sync(&self, ctx: &Ctx, key: &str) -> Result<Option<Duration>, ApiError> {
        let Some(fence) = ctx.fence(key) else {
            return Ok(None);
        };
        let Some(pdb) = ctx.get(&format!("{}{key}", self.prefix())).await? else {
            return Ok(None);
        };
        if is_deleting(&pdb) {
            return Ok(None);
        }
        let ns = str_at(&pdb, "/metadata/namespace").to_owned();
        let name = str_at(&pdb, "/metadata/name").to_owned();
        // policy/v1: a null selector selects nothing, an empty one every pod.
        let selector = pdb.at("/spec/selector").cloned().unwrap_or(Value::Null);
        let pods: Vec<Value> = if selector.is_object() {
            ctx.list(&format!("/registry/core/pods/{ns}/"))
                .await?
                .into_iter()
                .filter(|p| {
                    selector_matches(&selector, p.at("/metadata/labels").unwrap_or(&json!({})))
                })
                .collect()
        } else {
            Vec::new()
        };
        let now = now_secs();
        // `buildDisruptedPodMap`: entries of pods not yet marked deleted, until they time out.
        let mut disrupted = Map::new();
        let mut recheck: Option<u64> = None;
        if let Some(old) = pdb.at("/status/disruptedPods").and_then(Value::as_object) {
            for pod in &pods {
                let pname = str_at(pod, "/metadata/name");
                let Some(at) = old.get(pname) else { continue };
                if is_deleting(pod) {
                    continue;
                }
                let since = at
                    .as_str()
                    .and_then(flotilla_api::parse_rfc3339)
                    .unwrap_or(0);
                let expires = since + DELETION_TIMEOUT;
                if expires <= now {
                    continue;
                }
                recheck = Some(recheck.map_or(expires, |r| r.min(expires)));
                disrupted.insert(pname.to_owned(), at.clone());
            }
        }
        let current = pods
            .iter()
            .filter(|p| {
                !is_deleting(p)
                    && !disrupted.contains_key(str_at(p, "/metadata/name"))
                    && is_ready(p)
            })
            .count() as i64;
        let generation = pdb
            .at("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let mut status = pdb.get("status").cloned().unwrap_or(json!({}));
        if !status.is_object() {
            status = json!({});
        }
        let mut conditions: Vec<Value> = status
            .get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        match Self::expected(ctx, &ns, &pdb, &pods).await {
            Ok((expected, desired)) => {
                let counts = Counts {
                    expected,
                    desired,
                    current,
                };
                let n = allowed(&counts);
                status["expectedPods"] = json!(expected);
                status["desiredHealthy"] = json!(desired);
                status["currentHealthy"] = json!(current);
                status["disruptionsAllowed"] = json!(n);
                let (s, reason) = if n > 0 {
                    ("True", "SufficientPods")
                } else {
                    ("False", "InsufficientPods")
                };
                set_metav1_condition(&mut conditions, s, reason, "", generation);
            }
            Err(e) => {
                // `failSafe`: no disruption while the budget cannot be computed.
                status["currentHealthy"] = json!(current);
                status["disruptionsAllowed"] = json!(0);
                set_metav1_condition(
                    &mut conditions,
                    "False",
                    "SyncFailed",
                    e.message(),
                    generation,
                );
            }
        }
        // An empty map is left out, as Go's `omitempty` does.
        if disrupted.is_empty() {
            if let Some(m) = status.as_object_mut() {
                m.remove("disruptedPods");
            }
        } else {
            status["disruptedPods"] = Value::Object(disrupted);
        }
        status["conditions"] = json!(conditions);
        status["observedGeneration"] = json!(generation);
        if pdb.get("status") != Some(&status) {
            let mut updated = pdb.clone();
            updated["status"] = status;
            // A conflict (an eviction spent a disruption meanwhile) is retried from a fresh read.
            if internal::replace(
                &ctx.store,
                ("policy", "v1", "poddisruptionbudgets"),
                Some(&ns),
                &name,
                updated,
                true,
                MANAGER,
                fence,
            )
            .await?
            .is_none()
            {
                return Ok(Some(Duration::from_millis(100)));
            }
        }
        Ok(recheck.map(|at| Duration::from_secs(at.saturating_sub(now).max(1))))
    }
}

fn replicas(obj: &Value) -> i64 {
    obj.at("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

/// `UpdateDisruptionAllowedCondition` on a `metav1.Condition` list: the transition time moves
/// only when the status does.
fn set_metav1_condition(
    conditions: &mut Vec<Value>,
    status: &str,
    reason: &str,
    message: &str,
    generation: i64,
) {
    let fresh = json!({"type": "DisruptionAllowed", "status": status, "reason": reason,
        "message": message, "observedGeneration": generation, "lastTransitionTime": now()});
    match conditions
        .iter_mut()
        .find(|c| str_at(c, "/type") == "DisruptionAllowed")
    {
        Some(c) if str_at(c, "/status") == status => {
            c["reason"] = json!(reason);
            c["message"] = json!(message);
            c["observedGeneration"] = json!(generation);
        }
        Some(c) => *c = fresh,
        None => conditions.push(fresh),
    }
}

impl Reconciler for DisruptionController {
    fn name(&self) -> &'static str {
        "disruption"
    }

    fn prefix(&self) -> &'static str {
        "/registry/policy/poddisruptionbudgets/"
    }

    fn related(&self) -> &'static [&'static str] {
        &[
            "/registry/core/pods/",
            "/registry/apps/replicasets/",
            "/registry/apps/deployments/",
            "/registry/apps/statefulsets/",
        ]
    }

    fn keys_for(&self, obj: &Value) -> Vec<String> {
        // Any budget of the namespace may select the pod or count the controller's scale.
        vec![format!("{}/*", str_at(obj, "/metadata/namespace"))]
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
    fn percentages_round_up_and_allowed_never_goes_negative() {
        assert_eq!(scaled(&json!("50%"), 3), Some(2));
        assert_eq!(scaled(&json!("34%"), 3), Some(2));
        assert_eq!(scaled(&json!("0%"), 3), Some(0));
        assert_eq!(scaled(&json!(2), 3), Some(2));
        assert_eq!(scaled(&json!("two"), 3), None);
        let c = |expected, desired, current| Counts {
            expected,
            desired,
            current,
        };
        assert_eq!(allowed(&c(3, 2, 3)), 1);
        assert_eq!(allowed(&c(3, 2, 1)), 0);
        assert_eq!(allowed(&c(0, 0, 2)), 0);
        assert_eq!(allowed(&c(3, 3, 3)), 0);
    }
}
