//! Deployments: a ReplicaSet per pod template (named `<deployment>-<pod-template-hash>`, the
//! hash also labelling its pods), rolled out by the strategy — RollingUpdate within maxSurge
//! and maxUnavailable, or Recreate (old pods gone before new ones start) — with revisions in
//! `deployment.kubernetes.io/revision` (so `kubectl rollout history|undo` work: undo puts an
//! old template back, whose ReplicaSet becomes the newest revision again), old ReplicaSets
//! pruned beyond revisionHistoryLimit, `paused`, and the status `kubectl rollout status` and
//! `helm --wait` read: replicas, updated/ready/available/unavailableReplicas,
//! observedGeneration and the Available and Progressing conditions (with
//! progressDeadlineSeconds).

use flotilla_api::At;
use std::time::Duration;

use flotilla_api::ApiError;
use flotilla_api::internal::{self, Fence};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::common::*;
use super::runner::{Ctx, Reconciler};

const MANAGER: &str = "deployment-controller";
const PREFIX: &str = "/registry/apps/deployments/";
const RS_PREFIX: &str = "/registry/apps/replicasets/";
const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH_LABEL: &str = "pod-template-hash";
const RS: (&str, &str, &str) = ("apps", "v1", "replicasets");
const DEPLOYMENTS: (&str, &str, &str) = ("apps", "v1", "deployments");

pub struct DeploymentController;

/// Kubernetes' `pod-template-hash`: FNV-32a of the template (and collision count), its
/// decimal digits spelled in the alphabet of generated names.
pub fn template_hash(template: &Value, collisions: u64) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let text = format!(
        "{}{}",
        template,
        if collisions > 0 {
            collisions.to_string()
        } else {
            String::new()
        }
    );
    for b in text.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|d| ALPHABET[usize::from(d) % ALPHABET.len()] as char)
        .collect()
}

/// A template without the hash label and null fields (`creationTimestamp: null`, which
/// `kubectl rollout undo` brings back), to compare a ReplicaSet's with the Deployment's.
fn unhashed(template: &Value) -> Value {
    fn drop_nulls(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|_, x| !x.is_null());
                m.values_mut().for_each(drop_nulls);
            }
            Value::Array(a) => a.iter_mut().for_each(drop_nulls),
            _ => {}
        }
    }
    let mut t = template.clone();
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH_LABEL);
    }
    drop_nulls(&mut t);
    t
}

fn revision(rs: &Value) -> u64 {
    rs.at("/metadata/annotations")
        .and_then(|a| a.get(REVISION))
        .and_then(Value::as_str)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn int_at(v: &Value, p: &str) -> i64 {
    v.at(p).and_then(Value::as_i64).unwrap_or(0)
}

/// An int-or-percent of `total`, rounding up (surge) or down (unavailable).
fn scaled(v: Option<&Value>, total: i64, default: &str, round_up: bool) -> i64 {
    let v = v.cloned().unwrap_or_else(|| json!(default));
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let x = total * pct;
            if round_up { (x + 99) / 100 } else { x / 100 }
        }
        _ => 0,
    }
}

/// maxSurge and maxUnavailable (never both zero).
fn limits(d: &Value, replicas: i64) -> (i64, i64) {
    let ru = d.at("/spec/strategy/rollingUpdate");
    let surge = scaled(ru.and_then(|r| r.get("maxSurge")), replicas, "25%", true);
    let mut unavailable = scaled(
        ru.and_then(|r| r.get("maxUnavailable")),
        replicas,
        "25%",
        false,
    );
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

impl DeploymentController {
    async fn sync(&self, ctx: &Ctx, key: &str) -> Result<Option<Duration>, ApiError> {
        let Some(fence) = ctx.fence(key) else {
            return Ok(None);
        };
        let Some(d) = ctx.get(&format!("{PREFIX}{key}")).await? else {
            return Ok(None);
        };
        if is_deleting(&d) {
            return Ok(None);
        }
        let ns = str_at(&d, "/metadata/namespace").to_owned();
        let uid = str_at(&d, "/metadata/uid").to_owned();
        let selector = d.at("/spec/selector").cloned().unwrap_or(Value::Null);
        let replicas = d.at("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        let template = d.at("/spec/template").cloned().unwrap_or(json!({}));
        let mut all = Vec::new();
        for mut rs in ctx.list(&format!("{RS_PREFIX}{ns}/")).await? {
            let labels = rs.at("/metadata/labels").cloned().unwrap_or(json!({}));
            match controller_uid(&rs) {
                Some(o) if o == uid => all.push(rs),
                None if selector.is_object()
                    && selector_matches(&selector, &labels)
                    && !is_deleting(&rs) =>
                {
                    let mut refs = rs["metadata"]["ownerReferences"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    refs.push(owner_ref(&d, "apps/v1", "Deployment"));
                    rs["metadata"]["ownerReferences"] = json!(refs);
                    if let Some(rs) = self.write_rs(ctx, &rs, &fence).await? {
                        all.push(rs);
                    }
                }
                _ => {}
            }
        }
        all.sort_by_key(|rs| {
            (
                revision(rs),
                str_at(rs, "/metadata/creationTimestamp").to_owned(),
            )
        });
        let paused = d.at("/spec/paused").and_then(Value::as_bool) == Some(true);
        let max_revision = all.iter().map(revision).max().unwrap_or(0);
        let wanted = unhashed(&template);
        let mut new_rs = all
            .iter()
            .find(|rs| rs.at("/spec/template").map(unhashed).as_ref() == Some(&wanted))
            .cloned();
        let recreate = str_at(&d, "/spec/strategy/type") == "Recreate";
        if !paused {
            match &mut new_rs {
                None => {
                    let old_active: i64 = all.iter().map(|rs| int_at(rs, "/status/replicas")).sum();
                    let initial = if recreate && old_active > 0 {
                        0
                    } else if recreate || all.is_empty() {
                        replicas
                    } else {
                        0
                    };
                    match self
                        .create_rs(ctx, &d, max_revision + 1, initial, &fence)
                        .await?
                    {
                        Some(rs) => new_rs = Some(rs),
                        None => return Ok(Some(Duration::from_millis(200))),
                    }
                }
                Some(rs) if revision(rs) < max_revision => {
                    // An old template came back (rollout undo): it is the newest revision now.
                    set_annotation(rs, REVISION, &(max_revision + 1).to_string());
                    if let Some(written) = self.write_rs(ctx, rs, &fence).await? {
                        *rs = written;
                    }
                }
                Some(_) => {}
            }
        }
        let new_uid = new_rs
            .as_ref()
            .map(|rs| str_at(rs, "/metadata/uid").to_owned());
        let olds: Vec<Value> = all
            .iter()
            .filter(|rs| Some(str_at(rs, "/metadata/uid").to_owned()) != new_uid)
            .cloned()
            .collect();
        let (surge, max_unavailable) = limits(&d, replicas);
        if !paused && let Some(new) = new_rs.clone() {
            if recreate {
                self.recreate(ctx, &new, &olds, replicas, &fence).await?;
            } else {
                self.roll(ctx, &new, &olds, replicas, surge, max_unavailable, &fence)
                    .await?;
            }
        }
        // The deployment shows the revision of its newest ReplicaSet.
        if let Some(new) = &new_rs {
            let rev = revision(new).max(max_revision).to_string();
            if d.at("/metadata/annotations")
                .and_then(|a| a.get(REVISION))
                .and_then(Value::as_str)
                != Some(rev.as_str())
            {
                let mut updated = d.clone();
                set_annotation(&mut updated, REVISION, &rev);
                internal::replace(
                    &ctx.store,
                    DEPLOYMENTS,
                    Some(&ns),
                    str_at(&d, "/metadata/name"),
                    updated,
                    false,
                    MANAGER,
                    fence.clone(),
                )
                .await?;
                // The write queues another reconcile, which sees the new resourceVersion.
                return Ok(None);
            }
        }
        self.prune(ctx, &d, &olds, &fence).await?;
        // Fresh counts for the status.
        let mut all = Vec::new();
        for rs in ctx.list(&format!("{RS_PREFIX}{ns}/")).await? {
            if controller_uid(&rs) == Some(uid.as_str()) {
                all.push(rs);
            }
        }
        let new = all
            .iter()
            .find(|rs| Some(str_at(rs, "/metadata/uid").to_owned()) == new_uid)
            .cloned();
        self.status(
            ctx,
            &d,
            &all,
            new.as_ref(),
            replicas,
            max_unavailable,
            paused,
            &fence,
        )
        .await
    }

    async fn create_rs(
        &self,
        ctx: &Ctx,
        d: &Value,
        revision: u64,
        initial: i64,
        fence: &Fence,
    ) -> Result<Option<Value>, ApiError> {
        let collisions = d
            .at("/status/collisionCount")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let template = d.at("/spec/template").cloned().unwrap_or(json!({}));
        let hash = template_hash(&unhashed(&template), collisions);
        let name = format!("{}-{hash}", str_at(d, "/metadata/name"));
        let mut template = template;
        template["metadata"]["labels"][HASH_LABEL] = json!(hash);
        let mut selector = d.at("/spec/selector").cloned().unwrap_or(json!({}));
        selector["matchLabels"][HASH_LABEL] = json!(hash);
        let mut annotations = serde_json::Map::new();
        if let Some(a) = d.at("/metadata/annotations").and_then(Value::as_object) {
            for (k, v) in a {
                if !k.starts_with("deployment.kubernetes.io/")
                    && k != "kubectl.kubernetes.io/last-applied-configuration"
                {
                    annotations.insert(k.clone(), v.clone());
                }
            }
        }
        annotations.insert(REVISION.into(), json!(revision.to_string()));
        annotations.insert(
            "deployment.kubernetes.io/desired-replicas".into(),
            json!(int_at(d, "/spec/replicas").to_string()),
        );
        let rs = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": name,
                "namespace": str_at(d, "/metadata/namespace"),
                "labels": template["metadata"]["labels"],
                "annotations": annotations,
                "ownerReferences": [owner_ref(d, "apps/v1", "Deployment")],
            },
            "spec": {
                "replicas": initial,
                "minReadySeconds": int_at(d, "/spec/minReadySeconds"),
                "selector": selector,
                "template": template,
            },
        });
        match internal::create(
            &ctx.store,
            RS,
            Some(str_at(d, "/metadata/namespace")),
            rs,
            MANAGER,
            fence.clone(),
        )
        .await
        {
            Ok(rs) => {
                self.record(
                    ctx,
                    d,
                    "Normal",
                    "ScalingReplicaSet",
                    &format!("Scaled up replica set {name} from 0 to {initial}"),
                    fence,
                )
                .await;
                Ok(Some(rs))
            }
            Err(e) if e.code() == 409 => {
                // Another template hashed to this name: count the collision and try again.
                let mut updated = d.clone();
                updated["status"]["collisionCount"] = json!(collisions + 1);
                internal::replace(
                    &ctx.store,
                    DEPLOYMENTS,
                    Some(str_at(d, "/metadata/namespace")),
                    str_at(d, "/metadata/name"),
                    updated,
                    true,
                    MANAGER,
                    fence.clone(),
                )
                .await?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn recreate(
        &self,
        ctx: &Ctx,
        new: &Value,
        olds: &[Value],
        replicas: i64,
        fence: &Fence,
    ) -> Result<(), ApiError> {
        let mut old_running = 0;
        for rs in olds {
            if int_at(rs, "/spec/replicas") > 0 {
                self.scale(ctx, rs, 0, fence).await?;
            }
            old_running += int_at(rs, "/status/replicas");
        }
        if old_running == 0 && int_at(new, "/spec/replicas") != replicas {
            self.scale(ctx, new, replicas, fence).await?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn roll(
        &self,
        ctx: &Ctx,
        new: &Value,
        olds: &[Value],
        replicas: i64,
        surge: i64,
        max_unavailable: i64,
        fence: &Fence,
    ) -> Result<(), ApiError> {
        let spec = |rs: &Value| int_at(rs, "/spec/replicas");
        let total: i64 = spec(new) + olds.iter().map(spec).sum::<i64>();
        // Up: the new set grows while the total stays within replicas + maxSurge.
        let new_target = if spec(new) > replicas {
            replicas
        } else {
            let room = (replicas + surge - total).max(0);
            spec(new) + room.min(replicas - spec(new))
        };
        if new_target != spec(new) {
            // One step per pass, as Kubernetes does: the old sets shrink on the next one,
            // against the new set's fresh status.
            return self.scale(ctx, new, new_target, fence).await;
        }
        // Down: old sets shrink while availability stays at least replicas - maxUnavailable.
        let min_available = replicas - max_unavailable;
        let new_unavailable = (new_target - int_at(new, "/status/availableReplicas")).max(0);
        let mut budget = total.max(new_target + olds.iter().map(spec).sum::<i64>())
            - min_available
            - new_unavailable;
        let mut targets: Vec<i64> = olds.iter().map(spec).collect();
        // Unhealthy old pods go first: removing them costs no availability.
        for (i, rs) in olds.iter().enumerate() {
            let unhealthy = (targets[i] - int_at(rs, "/status/availableReplicas")).max(0);
            let cut = unhealthy.min(budget.max(0));
            targets[i] -= cut;
            budget -= cut;
        }
        let available: i64 = int_at(new, "/status/availableReplicas")
            + olds
                .iter()
                .enumerate()
                .map(|(i, rs)| int_at(rs, "/status/availableReplicas").min(targets[i]))
                .sum::<i64>();
        let mut spare = (available - min_available).max(0);
        // Oldest first.
        for (i, _) in olds.iter().enumerate() {
            let cut = targets[i].min(spare);
            targets[i] -= cut;
            spare -= cut;
        }
        for (i, rs) in olds.iter().enumerate() {
            if targets[i] != spec(rs) {
                self.scale(ctx, rs, targets[i], fence).await?;
            }
        }
        Ok(())
    }

    async fn scale(&self, ctx: &Ctx, rs: &Value, to: i64, fence: &Fence) -> Result<(), ApiError> {
        let from = int_at(rs, "/spec/replicas");
        let mut updated = rs.clone();
        updated["spec"]["replicas"] = json!(to);
        if self.write_rs(ctx, &updated, fence).await?.is_some() {
            let (verb, name) = (
                if to > from { "up" } else { "down" },
                str_at(rs, "/metadata/name"),
            );
            if let Some(owner) = self.owner(ctx, rs).await {
                self.record(
                    ctx,
                    &owner,
                    "Normal",
                    "ScalingReplicaSet",
                    &format!("Scaled {verb} replica set {name} from {from} to {to}"),
                    fence,
                )
                .await;
            }
        }
        Ok(())
    }

    async fn owner(&self, ctx: &Ctx, rs: &Value) -> Option<Value> {
        let owner = super::runner::controller_of(rs, "Deployment")?;
        ctx.get(&format!(
            "{PREFIX}{}/{}",
            str_at(rs, "/metadata/namespace"),
            str_at(owner, "/name")
        ))
        .await
        .ok()
        .flatten()
    }

    async fn write_rs(
        &self,
        ctx: &Ctx,
        rs: &Value,
        fence: &Fence,
    ) -> Result<Option<Value>, ApiError> {
        internal::replace(
            &ctx.store,
            RS,
            Some(str_at(rs, "/metadata/namespace")),
            str_at(rs, "/metadata/name"),
            rs.clone(),
            false,
            MANAGER,
            fence.clone(),
        )
        .await
    }

    /// Old, empty ReplicaSets beyond revisionHistoryLimit go, oldest first.
    async fn prune(
        &self,
        ctx: &Ctx,
        d: &Value,
        olds: &[Value],
        fence: &Fence,
    ) -> Result<(), ApiError> {
        let limit = d
            .at("/spec/revisionHistoryLimit")
            .and_then(Value::as_u64)
            .unwrap_or(10) as usize;
        let empty: Vec<&Value> = olds
            .iter()
            .filter(|rs| int_at(rs, "/spec/replicas") == 0 && int_at(rs, "/status/replicas") == 0)
            .collect();
        if empty.len() <= limit {
            return Ok(());
        }
        for rs in &empty[..empty.len() - limit] {
            internal::delete(
                &ctx.store,
                RS,
                Some(str_at(rs, "/metadata/namespace")),
                str_at(rs, "/metadata/name"),
                Some(str_at(rs, "/metadata/uid")),
                None,
                fence.clone(),
            )
            .await?;
        }
        Ok(())
    }

    async fn record(
        &self,
        ctx: &Ctx,
        d: &Value,
        kind: &str,
        reason: &str,
        message: &str,
        fence: &Fence,
    ) {
        super::common::record(
            &ctx.store,
            d,
            "apps/v1",
            "Deployment",
            kind,
            reason,
            message,
            "deployment-controller",
            fence,
        )
        .await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn status(
        &self,
        ctx: &Ctx,
        d: &Value,
        all: &[Value],
        new: Option<&Value>,
        replicas: i64,
        max_unavailable: i64,
        paused: bool,
        fence: &Fence,
    ) -> Result<Option<Duration>, ApiError> {
        let sum = |p: &str| all.iter().map(|rs| int_at(rs, p)).sum::<i64>();
        let total_spec = sum("/spec/replicas");
        let available = sum("/status/availableReplicas");
        let updated = new.map_or(0, |rs| int_at(rs, "/status/replicas"));
        let old = d.get("status").cloned().unwrap_or(json!({}));
        let mut status = old.clone();
        status["replicas"] = json!(sum("/status/replicas"));
        status["updatedReplicas"] = json!(updated);
        status["readyReplicas"] = json!(sum("/status/readyReplicas"));
        status["availableReplicas"] = json!(available);
        status["unavailableReplicas"] = json!((total_spec - available).max(0));
        status["observedGeneration"] = d.at("/metadata/generation").cloned().unwrap_or(json!(1));
        let now = now();
        let rs_name = new.map_or("", |rs| str_at(rs, "/metadata/name"));
        let mut conditions: Vec<Value> = old
            .get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let set = |conditions: &mut Vec<Value>,
                   kind: &str,
                   st: &str,
                   reason: &str,
                   message: String,
                   progressed: bool| {
            let existing = conditions.iter().position(|c| str_at(c, "/type") == kind);
            let same = existing.is_some_and(|i| {
                str_at(&conditions[i], "/status") == st
                    && str_at(&conditions[i], "/reason") == reason
            });
            let mut c = existing
                .map(|i| conditions[i].clone())
                .unwrap_or(json!({"type": kind}));
            if !same {
                c["lastTransitionTime"] = json!(now);
                c["lastUpdateTime"] = json!(now);
            } else if progressed {
                c["lastUpdateTime"] = json!(now);
            }
            c["status"] = json!(st);
            c["reason"] = json!(reason);
            c["message"] = json!(message);
            match existing {
                Some(i) => conditions[i] = c,
                None => conditions.push(c),
            }
        };
        if available >= replicas - max_unavailable {
            set(
                &mut conditions,
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                false,
            );
        } else {
            set(
                &mut conditions,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                false,
            );
        }
        let complete = updated == replicas
            && available == replicas
            && int_at(&status, "/replicas") == replicas
            && total_spec == replicas;
        let progressed = [
            "updatedReplicas",
            "availableReplicas",
            "readyReplicas",
            "replicas",
        ]
        .iter()
        .any(|k| old.get(*k) != status.get(*k));
        let deadline = d
            .at("/spec/progressDeadlineSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(600);
        let mut again = None;
        if paused {
            set(
                &mut conditions,
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
                false,
            );
        } else if complete {
            set(
                &mut conditions,
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                false,
            );
        } else {
            let since = conditions
                .iter()
                .find(|c| str_at(c, "/type") == "Progressing")
                .filter(|c| str_at(c, "/reason") != "NewReplicaSetAvailable")
                .and_then(|c| flotilla_api::parse_rfc3339(str_at(c, "/lastUpdateTime")));
            let stuck = !progressed && since.is_some_and(|t| t + deadline <= now_secs());
            if stuck {
                set(
                    &mut conditions,
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                    false,
                );
            } else {
                set(
                    &mut conditions,
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    format!("ReplicaSet \"{rs_name}\" is progressing."),
                    progressed,
                );
                again = Some(Duration::from_secs(deadline.clamp(1, 60)));
            }
        }
        status["conditions"] = json!(conditions);
        if status != old {
            let mut updated = d.clone();
            updated["status"] = status;
            internal::replace(
                &ctx.store,
                DEPLOYMENTS,
                Some(str_at(d, "/metadata/namespace")),
                str_at(d, "/metadata/name"),
                updated,
                true,
                MANAGER,
                fence.clone(),
            )
            .await?;
        }
        Ok(again)
    }
}

fn set_annotation(obj: &mut Value, key: &str, value: &str) {
    if !obj["metadata"]["annotations"].is_object() {
        obj["metadata"]["annotations"] = json!({});
    }
    obj["metadata"]["annotations"][key] = json!(value);
}

impl Reconciler for DeploymentController {
    fn name(&self) -> &'static str {
        "Deployment"
    }

    fn prefix(&self) -> &'static str {
        PREFIX
    }

    fn related(&self) -> &'static [&'static str] {
        &[RS_PREFIX]
    }

    fn keys_for(&self, rs: &Value) -> Vec<String> {
        super::runner::controller_of(rs, "Deployment")
            .map(|o| {
                vec![format!(
                    "{}/{}",
                    str_at(rs, "/metadata/namespace"),
                    str_at(o, "/name")
                )]
            })
            .unwrap_or_default()
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
    fn surge_and_unavailability_round_like_kubernetes() {
        let d = |s: Value, u: Value| json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": s, "maxUnavailable": u}}}});
        assert_eq!(limits(&json!({}), 10), (3, 2));
        assert_eq!(limits(&d(json!(0), json!(0)), 3), (0, 1));
        assert_eq!(limits(&d(json!("50%"), json!(1)), 3), (2, 1));
        let t = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        let h = template_hash(&t, 0);
        assert_eq!(h, template_hash(&t, 0));
        assert_ne!(h, template_hash(&t, 1));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        let mut labelled = t.clone();
        labelled["metadata"]["labels"][HASH_LABEL] = json!(h);
        assert_eq!(unhashed(&labelled), t);
    }
}

#[cfg(test)]
mod undo_tests {
    use super::*;

    /// `kubectl rollout undo` writes the old template back with `creationTimestamp: null`.
    #[test]
    fn an_undone_template_matches_its_replica_set() {
        let d: Value = serde_json::from_str(r#"{"metadata": {"creationTimestamp": null, "labels": {"app": "web"}}, "spec": {"containers": [{"image": "nginx:1.26", "imagePullPolicy": "IfNotPresent", "name": "nginx", "resources": {}, "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}], "dnsPolicy": "ClusterFirst", "restartPolicy": "Always", "schedulerName": "default-scheduler", "securityContext": {}, "terminationGracePeriodSeconds": 30}}"#).unwrap();
        let rs: Value = serde_json::from_str(r#"{"metadata": {"labels": {"app": "web", "pod-template-hash": "865f4cf4d9"}}, "spec": {"containers": [{"image": "nginx:1.26", "imagePullPolicy": "IfNotPresent", "name": "nginx", "resources": {}, "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}], "dnsPolicy": "ClusterFirst", "restartPolicy": "Always", "schedulerName": "default-scheduler", "securityContext": {}, "terminationGracePeriodSeconds": 30}}"#).unwrap();
        assert_eq!(unhashed(&d), unhashed(&rs));
        assert_eq!(template_hash(&unhashed(&d), 0), "865f4cf4d9");
    }
}
