//! StatefulSets: pods with stable names (`<set>-<ordinal>`), stable storage (a claim per
//! volumeClaimTemplate and ordinal, `<template>-<set>-<ordinal>`, kept when pods go) and an
//! ordered lifecycle.
//!
//! - `OrderedReady`: ordinal i is created only when every lower ordinal is Running and Ready;
//!   scale-down removes the highest ordinal first, one at a time, each only when the rest are
//!   healthy. `Parallel`: all missing ordinals are created and all surplus ones deleted at once.
//! - Revisions are ControllerRevisions (`<set>-<hash>`, the template as `data.spec.template`,
//!   a `revision` number); pods carry the name in the `controller-revision-hash` label, so a
//!   pod below a RollingUpdate `partition` can be recreated from the old template.
//!   `RollingUpdate` deletes the highest ordinal at or above the partition whose revision is
//!   not the update revision, one at a time, each after those above it are Running and Ready;
//!   `OnDelete` only gives pods that users delete the new template.
//! - Status: replicas, readyReplicas, availableReplicas (ready for minReadySeconds),
//!   currentReplicas, updatedReplicas, currentRevision, updateRevision (currentRevision
//!   becomes the update revision once every pod is updated and ready), observedGeneration —
//!   what `kubectl rollout status sts/x` reads.
//!
//! **At most one pod per ordinal.** A pod of an ordinal is created only when no pod object of
//! that name exists in the store — never while the old one is merely Terminating, or sits on an
//! unreachable node. So a pod on a dead node is replaced only after that node comes back and
//! removes it, an operator force-deletes it, or the Node object is deleted (and with it, by
//! the node lifecycle, its pods). The controller never force-deletes (its deletes are graceful:
//! the pod's kubelet finishes them). The pod's fixed name makes this hold even on a stale read:
//! the create is refused while an object of that name exists.
//!
//! `persistentVolumeClaimRetentionPolicy` works as kube's (stateful_set_utils.go
//! `updateClaimOwnerRefForSetAndPod`): with `whenDeleted: Delete` a claim carries an owner
//! reference to the set; with `whenScaled: Delete` the claim of an ordinal above the replicas
//! is handed to its pod (the set's reference removed) before that pod is deleted; the garbage
//! collector then deletes the claims whose owners are gone. `Retain` removes those references.
//!
//! Not done: `maxUnavailable` (updates go one pod at a time), and adopting or releasing pods
//! by selector.

use flotilla_api::At;
use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_api::ApiError;
use flotilla_api::internal::{self, Fence};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::common::*;
use super::deployment::template_hash;
use super::runner::{Ctx, Reconciler};

const MANAGER: &str = "statefulset-controller";
const PREFIX: &str = "/registry/apps/statefulsets/";
const SETS: (&str, &str, &str) = ("apps", "v1", "statefulsets");
const PODS: (&str, &str, &str) = ("", "v1", "pods");
const PVCS: (&str, &str, &str) = ("", "v1", "persistentvolumeclaims");
const REVISIONS: (&str, &str, &str) = ("apps", "v1", "controllerrevisions");
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const REVISION_LABEL: &str = "controller-revision-hash";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
const HASH_LABEL: &str = "controller.kubernetes.io/hash";

pub struct StatefulSetController;

/// `<set>-<ordinal>`.
pub fn pod_name(set: &str, ordinal: i64) -> String {
    format!("{set}-{ordinal}")
}

/// `<template>-<set>-<ordinal>`.
pub fn claim_name(template: &str, set: &str, ordinal: i64) -> String {
    format!("{template}-{set}-{ordinal}")
}

/// The ordinal of a pod named `<set>-<n>` (`n` in plain decimal); None for other names.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i64> {
    let digits = pod.strip_prefix(set)?.strip_prefix('-')?;
    let plain = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !plain {
        return None;
    }
    digits.parse().ok()
}

/// What the planner needs to know of one ordinal's pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub deleting: bool,
    /// Running and Ready.
    pub healthy: bool,
    /// Succeeded or Failed: it will not run again, so it is replaced.
    pub finished: bool,
    pub revision: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// Ordinals at or above `start + partition` are updated.
    RollingUpdate {
        partition: i64,
    },
    OnDelete,
}

/// The set's spec as the planner reads it.
#[derive(Debug, Clone)]
pub struct Plan {
    pub start: i64,
    pub replicas: i64,
    pub ordered: bool,
    pub strategy: Strategy,
    pub current_revision: String,
    pub update_revision: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the ordinal's pod from this revision.
    Create(i64, String),
    /// Delete the ordinal's pod (gracefully).
    Delete(i64),
}

impl Plan {
    /// The revision a new pod of `ordinal` gets: below a RollingUpdate partition the current
    /// one, else the update revision (as Kubernetes' `newVersionedStatefulSetPod`).
    fn revision_for(&self, ordinal: i64) -> String {
        match self.strategy {
            Strategy::RollingUpdate { partition } if ordinal < self.start + partition => {
                self.current_revision.clone()
            }
            _ => self.update_revision.clone(),
        }
    }

    /// The next steps towards the spec, given the pods by ordinal. Creates only ordinals with
    /// no pod object at all (see the module docs); with `ordered`, stops at the first ordinal
    /// that is not yet Running and Ready.
    pub fn actions(&self, pods: &BTreeMap<i64, PodView>) -> Vec<Action> {
        let mut out = Vec::new();
        let end = self.start + self.replicas;
        for ordinal in self.start..end {
            match pods.get(&ordinal) {
                None => out.push(Action::Create(ordinal, self.revision_for(ordinal))),
                Some(p) if p.deleting => {}
                Some(p) if p.finished => out.push(Action::Delete(ordinal)),
                Some(p) if p.healthy => continue,
                Some(_) => {}
            }
            if self.ordered {
                return out;
            }
        }
        // Surplus ordinals, highest first.
        for (&ordinal, p) in pods.iter().rev() {
            if (self.start..end).contains(&ordinal) {
                continue;
            }
            if !p.deleting {
                out.push(Action::Delete(ordinal));
            }
            if self.ordered {
                return out;
            }
        }
        if let Strategy::RollingUpdate { partition } = self.strategy {
            let from = self.start + partition.max(0);
            for ordinal in (from..end).rev() {
                let Some(p) = pods.get(&ordinal) else {
                    return out;
                };
                if p.revision != self.update_revision {
                    if !p.deleting {
                        out.push(Action::Delete(ordinal));
                    }
                    return out;
                }
                if p.deleting || !p.healthy {
                    return out;
                }
            }
        }
        out
    }
}

fn int_at(v: &Value, p: &str) -> Option<i64> {
    v.at(p).and_then(Value::as_i64)
}

/// A template without null fields, so equal templates compare and hash equal however they
/// were written; `$patch` is ControllerRevision packaging, not template.
fn normalized(template: &Value) -> Value {
    fn drop_nulls(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|k, x| !x.is_null() && k != "$patch");
                m.values_mut().for_each(drop_nulls);
            }
            Value::Array(a) => a.iter_mut().for_each(drop_nulls),
            _ => {}
        }
    }
    let mut t = template.clone();
    drop_nulls(&mut t);
    t
}

/// The pod of `ordinal` made from a revision's template.
pub fn pod_from_template(set: &Value, template: &Value, revision: &str, ordinal: i64) -> Value {
    let set_name = str_at(set, "/metadata/name");
    let name = pod_name(set_name, ordinal);
    let mut labels = template
        .at("/metadata/labels")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or(json!({}));
    labels[POD_NAME_LABEL] = json!(name);
    labels[REVISION_LABEL] = json!(revision);
    labels[POD_INDEX_LABEL] = json!(ordinal.to_string());
    let mut meta = json!({
        "name": name,
        "namespace": str_at(set, "/metadata/namespace"),
        "labels": labels,
        "ownerReferences": [owner_ref(set, "apps/v1", "StatefulSet")],
    });
    if let Some(a) = template.at("/metadata/annotations") {
        meta["annotations"] = a.clone();
    }
    let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
    spec["hostname"] = json!(name);
    let service = str_at(set, "/spec/serviceName");
    if !service.is_empty() {
        spec["subdomain"] = json!(service);
    }
    // Each claim template becomes the pod's volume of that name, bound to this ordinal's claim.
    let mut volumes: Vec<Value> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for claim in claim_templates(set) {
        let template_name = str_at(&claim, "/metadata/name");
        volumes.retain(|v| str_at(v, "/name") != template_name);
        volumes.push(json!({
            "name": template_name,
            "persistentVolumeClaim": {"claimName": claim_name(template_name, set_name, ordinal)},
        }));
    }
    if !volumes.is_empty() {
        spec["volumes"] = json!(volumes);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

fn claim_templates(set: &Value) -> Vec<Value> {
    set.at("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The claim of one template and ordinal, labelled with the set's selector (as Kubernetes).
fn claim_from_template(set: &Value, claim: &Value, ordinal: i64) -> Value {
    let set_name = str_at(set, "/metadata/name");
    let mut labels = claim
        .at("/metadata/labels")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or(json!({}));
    if let Some(ml) = set
        .at("/spec/selector/matchLabels")
        .and_then(Value::as_object)
    {
        for (k, v) in ml {
            labels[k] = v.clone();
        }
    }
    let mut meta = json!({
        "name": claim_name(str_at(claim, "/metadata/name"), set_name, ordinal),
        "namespace": str_at(set, "/metadata/namespace"),
        "labels": labels,
    });
    if let Some(a) = claim.at("/metadata/annotations") {
        meta["annotations"] = a.clone();
    }
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta,
        "spec": claim.get("spec").cloned().unwrap_or(json!({})),
    })
}

/// `persistentVolumeClaimRetentionPolicy` as (whenDeleted is Delete, whenScaled is Delete).
fn retention(set: &Value) -> (bool, bool) {
    let policy = |k: &str| {
        str_at(
            set,
            &format!("/spec/persistentVolumeClaimRetentionPolicy/{k}"),
        ) == "Delete"
    };
    (policy("whenDeleted"), policy("whenScaled"))
}

fn owner_ref_to(api_version: &str, kind: &str, obj: &Value) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "name": str_at(obj, "/metadata/name"),
        "uid": str_at(obj, "/metadata/uid"),
    })
}

/// The owner references a claim should carry for the retention policy, the set and the
/// ordinal's pod (`in_range`: the ordinal is below the replicas); `None` when it already does.
/// The set owns it while `whenDeleted: Delete` unless it was scaled away under
/// `whenScaled: Delete`, when its pod owns it instead (so it goes with the pod).
fn claim_owner_refs(
    claim: &Value,
    set: &Value,
    pod: Option<&Value>,
    in_range: bool,
) -> Option<Value> {
    let (when_deleted, when_scaled) = retention(set);
    let want_set = when_deleted && (in_range || !when_scaled);
    let want_pod = when_scaled && !in_range;
    let set_uid = str_at(set, "/metadata/uid");
    let old: Vec<Value> = claim
        .at("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let pod_name = pod.map(|p| str_at(p, "/metadata/name")).unwrap_or("");
    let pod_uid = pod.map(|p| str_at(p, "/metadata/uid")).unwrap_or("");
    let is_set = |r: &Value| str_at(r, "/uid") == set_uid;
    // Any reference to a pod of this ordinal's name: an older pod's would otherwise delete
    // the claim of an ordinal that was scaled back up.
    let is_pod = |r: &Value| str_at(r, "/kind") == "Pod" && str_at(r, "/name") == pod_name;
    let mut refs: Vec<Value> = old
        .iter()
        .filter(|r| !is_set(r) && !(is_pod(r) && !(want_pod && str_at(r, "/uid") == pod_uid)))
        .cloned()
        .collect();
    if want_set {
        refs.push(owner_ref_to("apps/v1", "StatefulSet", set));
    }
    if want_pod
        && !pod_uid.is_empty()
        && !refs.iter().any(|r| str_at(r, "/uid") == pod_uid)
        && let Some(p) = pod
    {
        refs.push(owner_ref_to("v1", "Pod", p));
    }
    let same = refs.len() == old.len()
        && refs
            .iter()
            .all(|r| old.iter().any(|o| str_at(o, "/uid") == str_at(r, "/uid")));
    (!same).then(|| json!(refs))
}

fn view(pod: &Value) -> PodView {
    PodView {
        deleting: is_deleting(pod),
        healthy: str_at(pod, "/status/phase") == "Running" && is_ready(pod),
        finished: matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed"),
        revision: pod
            .at("/metadata/labels")
            .and_then(|l| l.get(REVISION_LABEL))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
    }
}

impl StatefulSetController {
    async fn sync(&self, ctx: &Ctx, key: &str) -> Result<Option<Duration>, ApiError> {
        let Some(fence) = ctx.fence(key) else {
            return Ok(None);
        };
        let Some(set) = ctx.get(&format!("{PREFIX}{key}")).await? else {
            return Ok(None);
        };
        if is_deleting(&set) {
            return Ok(None);
        }
        let ns = str_at(&set, "/metadata/namespace").to_owned();
        let name = str_at(&set, "/metadata/name").to_owned();
        let uid = str_at(&set, "/metadata/uid").to_owned();
        let revisions: Vec<Value> = ctx
            .list(&format!("/registry/apps/controllerrevisions/{ns}/"))
            .await?
            .into_iter()
            .filter(|r| controller_uid(r) == Some(uid.as_str()))
            .collect();
        let update = self.update_revision(ctx, &set, &revisions, &fence).await?;
        let update_name = str_at(&update, "/metadata/name").to_owned();
        let current_name = {
            let c = str_at(&set, "/status/currentRevision");
            if revisions.iter().any(|r| str_at(r, "/metadata/name") == c) {
                c.to_owned()
            } else {
                update_name.clone()
            }
        };
        let mut pods: BTreeMap<i64, Value> = BTreeMap::new();
        for pod in ctx.list(&format!("/registry/core/pods/{ns}/")).await? {
            if controller_uid(&pod) != Some(uid.as_str()) {
                continue;
            }
            if let Some(o) = ordinal_of(&name, str_at(&pod, "/metadata/name")) {
                pods.insert(o, pod);
            }
        }
        let strategy = match str_at(&set, "/spec/updateStrategy/type") {
            "OnDelete" => Strategy::OnDelete,
            _ => Strategy::RollingUpdate {
                partition: int_at(&set, "/spec/updateStrategy/rollingUpdate/partition")
                    .unwrap_or(0),
            },
        };
        let plan = Plan {
            start: int_at(&set, "/spec/ordinals/start").unwrap_or(0).max(0),
            replicas: int_at(&set, "/spec/replicas").unwrap_or(1).max(0),
            ordered: str_at(&set, "/spec/podManagementPolicy") != "Parallel",
            strategy,
            current_revision: current_name.clone(),
            update_revision: update_name.clone(),
        };
        if !claim_templates(&set).is_empty() {
            // Before a scaled-away pod is deleted its claims must already name it as owner.
            if !self
                .claim_retention(ctx, &set, &pods, plan.start, plan.replicas, &fence)
                .await?
            {
                // A claim changed under us: no pod is deleted before its claims are right.
                return Ok(Some(Duration::from_millis(100)));
            }
        }
        let views: BTreeMap<i64, PodView> = pods.iter().map(|(o, p)| (*o, view(p))).collect();
        for action in plan.actions(&views) {
            match action {
                Action::Create(ordinal, revision) => {
                    // A revision pruned meanwhile falls back to the update revision.
                    let (source, revision) = match revisions
                        .iter()
                        .find(|r| str_at(r, "/metadata/name") == revision)
                    {
                        Some(r) if revision != update_name => (r, revision),
                        _ => (&update, update_name.clone()),
                    };
                    let template = source
                        .at("/data/spec/template")
                        .map(normalized)
                        .unwrap_or(json!({}));
                    if !self
                        .create_pod(ctx, &set, &template, &revision, ordinal, &fence)
                        .await?
                    {
                        break;
                    }
                }
                Action::Delete(ordinal) => {
                    let Some(pod) = pods.get(&ordinal) else {
                        continue;
                    };
                    let pod_name = str_at(pod, "/metadata/name").to_owned();
                    internal::delete(
                        &ctx.store,
                        PODS,
                        Some(&ns),
                        &pod_name,
                        Some(str_at(pod, "/metadata/uid")),
                        None,
                        fence.clone(),
                    )
                    .await?;
                    self.record(
                        ctx,
                        &set,
                        "Normal",
                        "SuccessfulDelete",
                        &format!("delete Pod {pod_name} in StatefulSet {name} successful"),
                        &fence,
                    )
                    .await;
                }
            }
        }
        self.prune_revisions(
            ctx,
            &set,
            &revisions,
            &pods,
            &[&current_name, &update_name],
            &fence,
        )
        .await;
        self.update_status(ctx, &set, &pods, &current_name, &update_name, &fence)
            .await
    }

    /// The ControllerRevision of the set's current template, made if none matches.
    async fn update_revision(
        &self,
        ctx: &Ctx,
        set: &Value,
        revisions: &[Value],
        fence: &Fence,
    ) -> Result<Value, ApiError> {
        let template = normalized(set.at("/spec/template").unwrap_or(&Value::Null));
        if let Some(r) = revisions
            .iter()
            .find(|r| r.at("/data/spec/template").map(normalized).as_ref() == Some(&template))
        {
            return Ok(r.clone());
        }
        let next = revisions
            .iter()
            .filter_map(|r| int_at(r, "/revision"))
            .max()
            .unwrap_or(0)
            + 1;
        let set_name = str_at(set, "/metadata/name");
        let ns = str_at(set, "/metadata/namespace");
        let mut collisions = int_at(set, "/status/collisionCount").unwrap_or(0) as u64;
        loop {
            let hash = template_hash(&template, collisions);
            let mut labels = set
                .at("/spec/selector/matchLabels")
                .cloned()
                .filter(Value::is_object)
                .unwrap_or(json!({}));
            labels[HASH_LABEL] = json!(hash);
            let mut data_template = template.clone();
            data_template["$patch"] = json!("replace");
            let revision = json!({
                "apiVersion": "apps/v1",
                "kind": "ControllerRevision",
                "metadata": {
                    "name": format!("{set_name}-{hash}"),
                    "namespace": ns,
                    "labels": labels,
                    "ownerReferences": [owner_ref(set, "apps/v1", "StatefulSet")],
                },
                "data": {"spec": {"template": data_template}},
                "revision": next,
            });
            match internal::create(
                &ctx.store,
                REVISIONS,
                Some(ns),
                revision,
                MANAGER,
                fence.clone(),
            )
            .await
            {
                Ok(written) => return Ok(written),
                // Another template (or another set) has that name: hash again.
                Err(e) if e.code() == 409 && collisions < 16 => collisions += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Brings the owner references of the existing pods' claims in line with the retention
    /// policy (each write compares the claim's resourceVersion and the fence); false when a
    /// write lost to a concurrent change.
    async fn claim_retention(
        &self,
        ctx: &Ctx,
        set: &Value,
        pods: &BTreeMap<i64, Value>,
        start: i64,
        replicas: i64,
        fence: &Fence,
    ) -> Result<bool, ApiError> {
        let ns = str_at(set, "/metadata/namespace");
        let set_name = str_at(set, "/metadata/name");
        let claims: BTreeMap<String, Value> = ctx
            .list(&format!("/registry/core/persistentvolumeclaims/{ns}/"))
            .await?
            .into_iter()
            .map(|c| (str_at(&c, "/metadata/name").to_owned(), c))
            .collect();
        for (ordinal, pod) in pods {
            let in_range = *ordinal >= start && *ordinal < start + replicas;
            for template in claim_templates(set) {
                let name = claim_name(str_at(&template, "/metadata/name"), set_name, *ordinal);
                let Some(claim) = claims.get(&name).filter(|c| !is_deleting(c)) else {
                    continue;
                };
                let Some(refs) = claim_owner_refs(claim, set, Some(pod), in_range) else {
                    continue;
                };
                let mut updated = claim.clone();
                updated["metadata"]["ownerReferences"] = refs;
                if internal::replace(
                    &ctx.store,
                    PVCS,
                    Some(ns),
                    &name,
                    updated,
                    false,
                    MANAGER,
                    fence.clone(),
                )
                .await?
                .is_none()
                {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Creates the ordinal's missing claims, then its pod; false when it must wait (a claim
    /// is being deleted) or the create failed (recorded as an event).
    async fn create_pod(
        &self,
        ctx: &Ctx,
        set: &Value,
        template: &Value,
        revision: &str,
        ordinal: i64,
        fence: &Fence,
    ) -> Result<bool, ApiError> {
        let ns = str_at(set, "/metadata/namespace");
        let set_name = str_at(set, "/metadata/name");
        let name = pod_name(set_name, ordinal);
        for claim in claim_templates(set) {
            let mut pvc = claim_from_template(set, &claim, ordinal);
            // A claim made for an ordinal in range is owned by the set under whenDeleted=Delete.
            if let Some(refs) = claim_owner_refs(&pvc, set, None, true) {
                pvc["metadata"]["ownerReferences"] = refs;
            }
            let pvc_name = str_at(&pvc, "/metadata/name").to_owned();
            let existing = ctx
                .get(&format!(
                    "/registry/core/persistentvolumeclaims/{ns}/{pvc_name}"
                ))
                .await?;
            match existing {
                Some(c) if is_deleting(&c) => return Ok(false),
                Some(_) => continue,
                None => {}
            }
            match internal::create(&ctx.store, PVCS, Some(ns), pvc, MANAGER, fence.clone()).await {
                Ok(_) => {
                    self.record(
                        ctx,
                        set,
                        "Normal",
                        "SuccessfulCreate",
                        &format!(
                            "create Claim {pvc_name} Pod {name} in StatefulSet {set_name} success"
                        ),
                        fence,
                    )
                    .await;
                }
                Err(e) if e.code() == 409 => {}
                Err(e) => {
                    self.record(
                        ctx,
                        set,
                        "Warning",
                        "FailedCreate",
                        &format!("create Claim {pvc_name} for Pod {name} in StatefulSet {set_name} failed error: {}", e.message()),
                        fence,
                    )
                    .await;
                    return Ok(false);
                }
            }
        }
        let pod = pod_from_template(set, template, revision, ordinal);
        match internal::create(&ctx.store, PODS, Some(ns), pod, MANAGER, fence.clone()).await {
            Ok(_) => {
                self.record(
                    ctx,
                    set,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("create Pod {name} in StatefulSet {set_name} successful"),
                    fence,
                )
                .await;
                Ok(true)
            }
            // The old pod of this ordinal is still there (a stale read): wait for it to go.
            Err(e) if e.code() == 409 => Ok(false),
            Err(e) => {
                self.record(
                    ctx,
                    set,
                    "Warning",
                    "FailedCreate",
                    &format!(
                        "create Pod {name} in StatefulSet {set_name} failed error: {}",
                        e.message()
                    ),
                    fence,
                )
                .await;
                Ok(false)
            }
        }
    }

    /// Deletes the oldest revisions beyond `revisionHistoryLimit` that no pod uses.
    async fn prune_revisions(
        &self,
        ctx: &Ctx,
        set: &Value,
        revisions: &[Value],
        pods: &BTreeMap<i64, Value>,
        live: &[&str],
        fence: &Fence,
    ) {
        let limit = int_at(set, "/spec/revisionHistoryLimit")
            .unwrap_or(10)
            .max(0) as usize;
        let mut unused: Vec<&Value> = revisions
            .iter()
            .filter(|r| {
                let n = str_at(r, "/metadata/name");
                !live.contains(&n) && !pods.values().any(|p| view(p).revision == n)
            })
            .collect();
        if unused.len() <= limit {
            return;
        }
        unused.sort_by_key(|r| int_at(r, "/revision").unwrap_or(0));
        for r in &unused[..unused.len() - limit] {
            let _ = internal::delete(
                &ctx.store,
                REVISIONS,
                Some(str_at(set, "/metadata/namespace")),
                str_at(r, "/metadata/name"),
                Some(str_at(r, "/metadata/uid")),
                None,
                fence.clone(),
            )
            .await;
        }
    }

    async fn record(
        &self,
        ctx: &Ctx,
        set: &Value,
        kind: &str,
        reason: &str,
        message: &str,
        fence: &Fence,
    ) {
        super::common::record(
            &ctx.store,
            set,
            "apps/v1",
            "StatefulSet",
            kind,
            reason,
            message,
            MANAGER,
            fence,
        )
        .await;
    }

    async fn update_status(
        &self,
        ctx: &Ctx,
        set: &Value,
        pods: &BTreeMap<i64, Value>,
        current: &str,
        update: &str,
        fence: &Fence,
    ) -> Result<Option<Duration>, ApiError> {
        let min_ready = set
            .at("/spec/minReadySeconds")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let now = now_secs();
        let replicas = int_at(set, "/spec/replicas").unwrap_or(1).max(0) as usize;
        let created: Vec<&Value> = pods.values().filter(|p| !is_deleting(p)).collect();
        let ready = created
            .iter()
            .filter(|p| str_at(p, "/status/phase") == "Running" && is_ready(p))
            .count();
        let available = created
            .iter()
            .filter(|p| str_at(p, "/status/phase") == "Running" && is_available(p, min_ready, now))
            .count();
        let at = |rev: &str| created.iter().filter(|p| view(p).revision == rev).count();
        let updated = at(update);
        let (mut current, mut current_count) = (current.to_owned(), at(current));
        // The rollout is complete: the update revision becomes the current one.
        let done = updated == replicas && ready == replicas && created.len() == replicas;
        if done {
            current = update.to_owned();
            current_count = updated;
        }
        let mut status = set.get("status").cloned().unwrap_or(json!({}));
        if !status.is_object() {
            status = json!({});
        }
        status["replicas"] = json!(created.len());
        status["readyReplicas"] = json!(ready);
        status["availableReplicas"] = json!(available);
        status["currentReplicas"] = json!(current_count);
        status["updatedReplicas"] = json!(updated);
        status["currentRevision"] = json!(current);
        status["updateRevision"] = json!(update);
        status["collisionCount"] = json!(int_at(set, "/status/collisionCount").unwrap_or(0));
        status["observedGeneration"] = set.at("/metadata/generation").cloned().unwrap_or(json!(1));
        let again = (ready > available && min_ready > 0).then(|| Duration::from_secs(1));
        if set.get("status") == Some(&status) {
            return Ok(again);
        }
        let mut updated_set = set.clone();
        updated_set["status"] = status;
        internal::replace(
            &ctx.store,
            SETS,
            Some(str_at(set, "/metadata/namespace")),
            str_at(set, "/metadata/name"),
            updated_set,
            true,
            MANAGER,
            fence.clone(),
        )
        .await?;
        Ok(again)
    }
}

impl Reconciler for StatefulSetController {
    fn name(&self) -> &'static str {
        "StatefulSet"
    }

    fn prefix(&self) -> &'static str {
        PREFIX
    }

    fn related(&self) -> &'static [&'static str] {
        &["/registry/core/pods/"]
    }

    fn keys_for(&self, pod: &Value) -> Vec<String> {
        super::runner::controller_of(pod, "StatefulSet")
            .map(|o| {
                format!(
                    "{}/{}",
                    str_at(pod, "/metadata/namespace"),
                    str_at(o, "/name")
                )
            })
            .into_iter()
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

    fn healthy(rev: &str) -> PodView {
        PodView {
            deleting: false,
            healthy: true,
            finished: false,
            revision: rev.into(),
        }
    }

    fn plan(replicas: i64, ordered: bool, strategy: Strategy) -> Plan {
        Plan {
            start: 0,
            replicas,
            ordered,
            strategy,
            current_revision: "web-a".into(),
            update_revision: "web-b".into(),
        }
    }

    #[test]
    fn claim_owners_follow_the_retention_policy() {
        let set = |deleted: &str, scaled: &str| {
            json!({"metadata": {"name": "web", "uid": "set-uid"},
                "spec": {"persistentVolumeClaimRetentionPolicy": {"whenDeleted": deleted, "whenScaled": scaled}}})
        };
        let pod = json!({"metadata": {"name": "web-2", "uid": "pod-uid"}});
        let claim = json!({"metadata": {"name": "data-web-2"}});
        let uids = |refs: Option<Value>| -> Option<Vec<String>> {
            refs.map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|o| str_at(o, "/uid").to_owned())
                    .collect()
            })
        };
        // Retain/Retain: nothing to add.
        assert_eq!(
            claim_owner_refs(&claim, &set("Retain", "Retain"), Some(&pod), false),
            None
        );
        // whenDeleted=Delete: the set owns it while in range.
        let owned = claim_owner_refs(&claim, &set("Delete", "Retain"), Some(&pod), true);
        assert_eq!(uids(owned.clone()), Some(vec!["set-uid".to_owned()]));
        let mut by_set = claim.clone();
        by_set["metadata"]["ownerReferences"] = owned.unwrap();
        assert_eq!(
            claim_owner_refs(&by_set, &set("Delete", "Retain"), Some(&pod), true),
            None
        );
        // Both Delete and scaled away: handed from the set to the pod.
        assert_eq!(
            uids(claim_owner_refs(
                &by_set,
                &set("Delete", "Delete"),
                Some(&pod),
                false
            )),
            Some(vec!["pod-uid".to_owned()])
        );
        // Back to Retain: the set's reference goes.
        assert_eq!(
            uids(claim_owner_refs(
                &by_set,
                &set("Retain", "Retain"),
                Some(&pod),
                true
            )),
            Some(vec![])
        );
    }

    #[test]
    fn names_and_ordinals() {
        assert_eq!(pod_name("web", 2), "web-2");
        assert_eq!(claim_name("data", "web", 0), "data-web-0");
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
        assert_eq!(ordinal_of("web", "web-1a"), None);
        assert_eq!(ordinal_of("web", "webx-1"), None);
        assert_eq!(ordinal_of("web", "web--1"), None);
        assert_eq!(ordinal_of("web-1", "web-1-3"), Some(3));
        assert_eq!(ordinal_of("web", "web-99999999999999999999"), None);
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_in_order() {
        let p = plan(3, true, Strategy::RollingUpdate { partition: 0 });
        let mut pods = BTreeMap::new();
        assert_eq!(p.actions(&pods), vec![Action::Create(0, "web-b".into())]);
        // web-0 exists but is not ready: nothing more.
        pods.insert(
            0,
            PodView {
                healthy: false,
                ..healthy("web-b")
            },
        );
        assert_eq!(p.actions(&pods), vec![]);
        pods.insert(0, healthy("web-b"));
        assert_eq!(p.actions(&pods), vec![Action::Create(1, "web-b".into())]);
        // Parallel creates every missing ordinal at once.
        let par = plan(3, false, Strategy::RollingUpdate { partition: 0 });
        assert_eq!(
            par.actions(&BTreeMap::new()),
            vec![
                Action::Create(0, "web-b".into()),
                Action::Create(1, "web-b".into()),
                Action::Create(2, "web-b".into())
            ]
        );
    }

    #[test]
    fn an_ordinal_is_recreated_only_once_its_old_pod_is_gone() {
        let p = plan(3, false, Strategy::RollingUpdate { partition: 0 });
        let mut pods: BTreeMap<i64, PodView> = (0..3).map(|o| (o, healthy("web-b"))).collect();
        // Terminating (say on a dead node): waited for, never replaced.
        pods.insert(
            1,
            PodView {
                deleting: true,
                healthy: false,
                ..healthy("web-b")
            },
        );
        assert_eq!(p.actions(&pods), vec![]);
        // Failed: deleted first; created again only when absent.
        pods.insert(
            1,
            PodView {
                finished: true,
                healthy: false,
                ..healthy("web-b")
            },
        );
        assert_eq!(p.actions(&pods), vec![Action::Delete(1)]);
        pods.remove(&1);
        assert_eq!(p.actions(&pods), vec![Action::Create(1, "web-b".into())]);
    }

    #[test]
    fn scale_down_removes_the_highest_ordinal_first() {
        let p = plan(1, true, Strategy::RollingUpdate { partition: 0 });
        let mut pods: BTreeMap<i64, PodView> = (0..3).map(|o| (o, healthy("web-b"))).collect();
        assert_eq!(p.actions(&pods), vec![Action::Delete(2)]);
        // One at a time: web-1 waits while web-2 terminates.
        pods.insert(
            2,
            PodView {
                deleting: true,
                ..healthy("web-b")
            },
        );
        assert_eq!(p.actions(&pods), vec![]);
        pods.remove(&2);
        assert_eq!(p.actions(&pods), vec![Action::Delete(1)]);
        let par = plan(1, false, Strategy::RollingUpdate { partition: 0 });
        let pods: BTreeMap<i64, PodView> = (0..3).map(|o| (o, healthy("web-b"))).collect();
        assert_eq!(
            par.actions(&pods),
            vec![Action::Delete(2), Action::Delete(1)]
        );
    }

    #[test]
    fn rolling_update_goes_down_to_the_partition() {
        let p = plan(4, true, Strategy::RollingUpdate { partition: 2 });
        let mut pods: BTreeMap<i64, PodView> = (0..4).map(|o| (o, healthy("web-a"))).collect();
        assert_eq!(p.actions(&pods), vec![Action::Delete(3)]);
        pods.remove(&3);
        assert_eq!(p.actions(&pods), vec![Action::Create(3, "web-b".into())]);
        pods.insert(
            3,
            PodView {
                healthy: false,
                ..healthy("web-b")
            },
        );
        // web-2 waits until web-3 is Running and Ready.
        assert_eq!(p.actions(&pods), vec![]);
        pods.insert(3, healthy("web-b"));
        assert_eq!(p.actions(&pods), vec![Action::Delete(2)]);
        pods.insert(2, healthy("web-b"));
        // Below the partition nothing changes, and a lost pod comes back at the old revision.
        assert_eq!(p.actions(&pods), vec![]);
        pods.remove(&1);
        assert_eq!(p.actions(&pods), vec![Action::Create(1, "web-a".into())]);
        // OnDelete: nothing is deleted; a deleted pod comes back new.
        let od = plan(2, true, Strategy::OnDelete);
        let mut pods: BTreeMap<i64, PodView> = (0..2).map(|o| (o, healthy("web-a"))).collect();
        assert_eq!(od.actions(&pods), vec![]);
        pods.remove(&0);
        assert_eq!(od.actions(&pods), vec![Action::Create(0, "web-b".into())]);
    }

    #[test]
    fn pods_get_stable_identity_and_their_claims() {
        let set = json!({"metadata": {"name": "web", "namespace": "default", "uid": "u"},
            "spec": {"serviceName": "nginx", "selector": {"matchLabels": {"app": "web"}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]}});
        let template = json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}],
                "volumes": [{"name": "data", "emptyDir": {}}, {"name": "cfg", "emptyDir": {}}]}});
        let pod = pod_from_template(&set, &template, "web-abc", 2);
        assert_eq!(str_at(&pod, "/metadata/name"), "web-2");
        assert_eq!(str_at(&pod, "/metadata/labels/app"), "web");
        assert_eq!(
            pod.at("/metadata/labels")
                .and_then(|l| l.get(POD_NAME_LABEL)),
            Some(&json!("web-2"))
        );
        assert_eq!(
            pod.at("/metadata/labels")
                .and_then(|l| l.get(POD_INDEX_LABEL)),
            Some(&json!("2"))
        );
        assert_eq!(
            str_at(&pod, "/metadata/labels/controller-revision-hash"),
            "web-abc"
        );
        assert_eq!(str_at(&pod, "/spec/hostname"), "web-2");
        assert_eq!(str_at(&pod, "/spec/subdomain"), "nginx");
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 2);
        assert!(
            volumes.iter().any(|v| v
                == &json!({"name": "data", "persistentVolumeClaim": {"claimName": "data-web-2"}}))
        );
        let claim = claim_from_template(&set, &claim_templates(&set)[0], 2);
        assert_eq!(str_at(&claim, "/metadata/name"), "data-web-2");
        assert_eq!(str_at(&claim, "/metadata/labels/app"), "web");
    }
}
