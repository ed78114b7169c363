//! Object deletion with finalizers, and the namespace lifecycle.
//!
//! Deleting an object that has finalizers only marks it (`deletionTimestamp`); it goes when
//! the last finalizer is removed. Every active namespace gets a `default` ServiceAccount.
//! Deleting a namespace marks it `Terminating`; [`reconcile_namespace`] (run by the namespace
//! controller on the node owning the namespace's shard) deletes what is in it, then drops the
//! `kubernetes` finalizer and the namespace itself. Every step is a conditional transaction
//! fenced by the shard lease, so work done twice, or by a deposed owner, changes nothing twice.

use crate::At;
use flotilla_consensus::{CmpOp, Compare, Op, Read, Store, TxnRequest};
use serde_json::{Value, json};

use crate::meta;
use crate::resources::{self, RESOURCES};
use crate::status::ApiError;

/// Whether deleting `obj` must wait for finalizers (its own, or a namespace's spec ones).
pub fn has_finalizers(obj: &Value) -> bool {
    let non_empty = |p: &str| {
        obj.at(p)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    non_empty("/metadata/finalizers")
        || (obj.get("kind").and_then(Value::as_str) == Some("Namespace")
            && non_empty("/spec/finalizers"))
}

pub fn is_deleting(obj: &Value) -> bool {
    obj.at("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

/// Marks `obj` as being deleted (idempotent).
pub fn mark_deleting(obj: &mut Value) {
    if is_deleting(obj) {
        return;
    }
    obj["metadata"]["deletionTimestamp"] = json!(meta::rfc3339(meta::now_secs()));
    obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    if obj.get("kind").and_then(Value::as_str) == Some("Namespace") {
        obj["status"]["phase"] = json!("Terminating");
    }
}

/// The grace period a pod's deletion gets, or None when it goes at once: not on a node yet,
/// already finished, or a grace period of 0 (`--force`).
pub fn pod_grace_period(pod: &Value, requested: Option<i64>) -> Option<i64> {
    let on_node = pod
        .at("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        pod.at("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    let grace = requested
        .or_else(|| {
            pod.at("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30);
    (on_node && !finished && grace > 0).then_some(grace)
}

/// Marks a pod for graceful deletion; a shorter grace period may replace a longer one.
/// Returns false when nothing changed.
pub fn mark_pod_deleting(pod: &mut Value, grace: i64) -> bool {
    let current = pod
        .at("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64);
    if is_deleting(pod) && current.is_some_and(|c| c <= grace) {
        return false;
    }
    let at = meta::now_secs().saturating_add(grace.max(0) as u64);
    pod["metadata"]["deletionTimestamp"] = json!(meta::rfc3339(at));
    pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    true
}

/// The garbage collector's finalizers: an owner that carries one waits for its dependents to be
/// deleted (`foregroundDeletion`) or released (`orphan`) before it goes.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
pub const ORPHAN_FINALIZER: &str = "orphan";

/// How a DELETE treats the object's dependents (`DeleteOptions.propagationPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Foreground,
    Background,
    Orphan,
}

impl Propagation {
    /// `propagationPolicy` and the deprecated `orphanDependents`, as the apiserver reads them
    /// (both set is an error; neither: keep what the object's finalizers already ask for).
    pub fn from_options(
        policy: Option<&str>,
        orphan_dependents: Option<bool>,
    ) -> Result<Option<Propagation>, ApiError> {
        match (policy, orphan_dependents) {
            (Some(_), Some(_)) => Err(ApiError::invalid_delete_options(
                "propagationPolicy",
                "FieldValueInvalid",
                "orphanDependents and deletionPropagation cannot be both set",
            )),
            (Some("Foreground"), None) => Ok(Some(Propagation::Foreground)),
            (Some("Background"), None) => Ok(Some(Propagation::Background)),
            (Some("Orphan"), None) => Ok(Some(Propagation::Orphan)),
            (Some(other), None) => Err(ApiError::invalid_delete_options(
                "propagationPolicy",
                "FieldValueNotSupported",
                &format!(
                    "Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
                ),
            )),
            (None, Some(true)) => Ok(Some(Propagation::Orphan)),
            (None, Some(false)) => Ok(Some(Propagation::Background)),
            (None, None) => Ok(None),
        }
    }
}

fn finalizers_of(obj: &Value) -> Vec<String> {
    obj.at("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The finalizers `obj` gets when deleted with `policy`, or None when they stay as they are.
/// As in the apiserver: the garbage collector's two finalizers are replaced by the one the
/// policy asks for; without a policy, the ones already there stay.
pub fn deletion_finalizers(obj: &Value, policy: Option<Propagation>) -> Option<Vec<String>> {
    let current = finalizers_of(obj);
    let has = |f: &str| current.iter().any(|c| c == f);
    let orphan = policy.map_or_else(|| has(ORPHAN_FINALIZER), |p| p == Propagation::Orphan);
    let foreground = policy.map_or_else(
        || has(FOREGROUND_FINALIZER),
        |p| p == Propagation::Foreground,
    );
    let mut new: Vec<String> = current
        .iter()
        .filter(|f| *f != ORPHAN_FINALIZER && *f != FOREGROUND_FINALIZER)
        .cloned()
        .collect();
    if orphan {
        new.push(ORPHAN_FINALIZER.to_owned());
    }
    if foreground {
        new.push(FOREGROUND_FINALIZER.to_owned());
    }
    let same = new.len() == current.len() && new.iter().all(|f| current.contains(f));
    (!same).then_some(new)
}

/// Finalizers in `new` that `old` (being deleted) did not have: the apiserver forbids them.
pub fn added_finalizers(old: &Value, new: &Value) -> Vec<String> {
    let before = finalizers_of(old);
    finalizers_of(new)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect()
}

/// The namespace controller's work for namespace `name`, every write fenced by `fence` (the
/// controller shard's lease): an active namespace gets its `default` ServiceAccount; a
/// Terminating one is emptied, then its `kubernetes` finalizer dropped and the namespace
/// removed. True while there is more to do (a Terminating namespace not yet gone).
pub async fn reconcile_namespace(
    store: &Store,
    name: &str,
    fence: &[Compare],
) -> Result<bool, ApiError> {
    let ns_res = resources::find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces not served"))?;
    let key = ns_res.key(None, name);
    let Some(kv) = store.get(&key, Read::Linearizable).await?.kv else {
        return Ok(false);
    };
    let Ok(ns) = serde_json::from_slice::<Value>(&kv.value) else {
        return Ok(false);
    };
    if !is_deleting(&ns) {
        ensure_default_service_account(store, name, fence).await?;
        return Ok(false);
    }
    if empty_namespace(store, name, fence).await? {
        finish_namespace(store, &kv.key, kv.mod_revision, ns, fence).await?;
    }
    Ok(true)
}

/// Every active namespace has a `default` ServiceAccount, as the apiserver's controllers make.
async fn ensure_default_service_account(
    store: &Store,
    ns: &str,
    fence: &[Compare],
) -> Result<(), ApiError> {
    let sa = resources::find("", "v1", "serviceaccounts")
        .ok_or_else(|| ApiError::internal("serviceaccounts not served"))?;
    let key = sa.key(Some(ns), "default");
    if store.get(&key, Read::Local).await?.kv.is_some() {
        return Ok(());
    }
    let obj = json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": "default",
            "namespace": ns,
            "uid": meta::new_uid(),
            "creationTimestamp": meta::rfc3339(meta::now_secs()),
        },
    });
    let mut compare = vec![Compare::Missing { key: key.clone() }];
    compare.extend_from_slice(fence);
    store
        .txn(TxnRequest {
            compare,
            success: vec![Op::Put {
                key,
                value: serde_json::to_vec(&obj).unwrap_or_default(),
            }],
            failure: vec![],
        })
        .await?;
    Ok(())
}

/// Deletes what is left in namespace `ns`; true once nothing is.
async fn empty_namespace(store: &Store, ns: &str, fence: &[Compare]) -> Result<bool, ApiError> {
    let mut prefixes: Vec<String> = RESOURCES
        .iter()
        .filter(|r| r.namespaced)
        .map(|r| r.namespace_prefix(Some(ns)))
        .collect();
    prefixes.sort();
    prefixes.dedup();
    let mut empty = true;
    for prefix in prefixes {
        let range = store.range(&prefix, 500, Read::Linearizable).await?;
        for kv in range.kvs {
            empty = false;
            let Ok(mut obj) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            let same = Compare::ModRevision {
                key: kv.key.clone(),
                op: CmpOp::Equal,
                revision: kv.mod_revision,
            };
            let (_, mut ops) = crate::alloc::ops(&kv.key, None, Some(&obj));
            if has_finalizers(&obj) {
                if is_deleting(&obj) {
                    continue;
                }
                mark_deleting(&mut obj);
                ops = vec![Op::Put {
                    key: kv.key.clone(),
                    value: serde_json::to_vec(&obj).unwrap_or_default(),
                }];
            } else {
                ops.push(Op::Delete {
                    key: kv.key.clone(),
                });
            }
            let mut compare = vec![same];
            compare.extend_from_slice(fence);
            store
                .txn(TxnRequest {
                    compare,
                    success: ops,
                    failure: vec![],
                })
                .await?;
        }
    }
    Ok(empty)
}

/// Drops the namespace's `kubernetes` finalizer, and the namespace once nothing holds it.
async fn finish_namespace(
    store: &Store,
    key: &str,
    revision: u64,
    mut ns: Value,
    fence: &[Compare],
) -> Result<(), ApiError> {
    if let Some(Value::Array(f)) = ns.pointer_mut("/spec/finalizers") {
        f.retain(|x| x.as_str() != Some("kubernetes"));
    }
    let op = if has_finalizers(&ns) {
        Op::Put {
            key: key.to_owned(),
            value: serde_json::to_vec(&ns).unwrap_or_default(),
        }
    } else {
        Op::Delete {
            key: key.to_owned(),
        }
    };
    let mut compare = vec![Compare::ModRevision {
        key: key.to_owned(),
        op: CmpOp::Equal,
        revision,
    }];
    compare.extend_from_slice(fence);
    store
        .txn(TxnRequest {
            compare,
            success: vec![op],
            failure: vec![],
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletion_finalizers_follow_the_propagation_policy() {
        let plain = json!({"metadata": {"finalizers": ["example.com/keep"]}});
        assert_eq!(deletion_finalizers(&plain, None), None);
        assert_eq!(
            deletion_finalizers(&plain, Some(Propagation::Background)),
            None
        );
        assert_eq!(
            deletion_finalizers(&plain, Some(Propagation::Foreground)),
            Some(vec!["example.com/keep".into(), "foregroundDeletion".into()])
        );
        let orphaning = json!({"metadata": {"finalizers": ["orphan"]}});
        assert_eq!(deletion_finalizers(&orphaning, None), None);
        assert_eq!(
            deletion_finalizers(&orphaning, Some(Propagation::Background)),
            Some(vec![])
        );
        assert_eq!(
            deletion_finalizers(&orphaning, Some(Propagation::Foreground)),
            Some(vec!["foregroundDeletion".into()])
        );
        assert_eq!(
            deletion_finalizers(&json!({}), Some(Propagation::Orphan)),
            Some(vec!["orphan".into()])
        );
    }

    #[test]
    fn propagation_options() {
        assert_eq!(
            Propagation::from_options(Some("Orphan"), None).unwrap(),
            Some(Propagation::Orphan)
        );
        assert_eq!(
            Propagation::from_options(None, Some(true)).unwrap(),
            Some(Propagation::Orphan)
        );
        assert_eq!(
            Propagation::from_options(None, Some(false)).unwrap(),
            Some(Propagation::Background)
        );
        assert_eq!(Propagation::from_options(None, None).unwrap(), None);
        assert_eq!(
            Propagation::from_options(Some("Sideways"), None)
                .unwrap_err()
                .code(),
            422
        );
        assert!(Propagation::from_options(Some("Orphan"), Some(true)).is_err());
    }
}
