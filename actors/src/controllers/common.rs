//! What several controllers share: label selectors, pod states, owner references, time.

use flotilla_api::At;
use std::time::{SystemTime, UNIX_EPOCH};

use flotilla_api::internal::{self, Fence};
use serde_json::{Value, json};

pub fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.at(p).and_then(Value::as_str).unwrap_or("")
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn now() -> String {
    flotilla_api::rfc3339(now_secs())
}

/// A `LabelSelector` (matchLabels and matchExpressions) against `labels`. An empty selector
/// matches everything; a malformed one nothing.
pub fn selector_matches(selector: &Value, labels: &Value) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    if let Some(ml) = selector.get("matchLabels").and_then(Value::as_object)
        && ml.iter().any(|(k, v)| label(k) != v.as_str())
    {
        return false;
    }
    selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .all(|e| {
            let have = label(str_at(e, "/key"));
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match str_at(e, "/operator") {
                "In" => have.is_some_and(|h| values.contains(&h)),
                "NotIn" => !have.is_some_and(|h| values.contains(&h)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        })
}

/// A plain label map (a ReplicationController's or Service's selector) as a LabelSelector.
pub fn map_selector(map: &Value) -> Value {
    json!({"matchLabels": map})
}

pub fn is_deleting(obj: &Value) -> bool {
    obj.at("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

/// Not finished and not being deleted: counts against a controller's replicas.
pub fn is_active(pod: &Value) -> bool {
    !is_deleting(pod) && !matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed")
}

fn condition<'a>(pod: &'a Value, kind: &str) -> Option<&'a Value> {
    pod.at("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| str_at(c, "/type") == kind)
}

pub fn is_ready(pod: &Value) -> bool {
    condition(pod, "Ready").is_some_and(|c| str_at(c, "/status") == "True")
}

/// Ready for at least `min_ready` seconds (as of `now`).
pub fn is_available(pod: &Value, min_ready: u64, now: u64) -> bool {
    let Some(ready) = condition(pod, "Ready").filter(|c| str_at(c, "/status") == "True") else {
        return false;
    };
    if min_ready == 0 {
        return true;
    }
    flotilla_api::parse_rfc3339(str_at(ready, "/lastTransitionTime"))
        .is_some_and(|t| t + min_ready <= now)
}

/// Whether one toleration tolerates `taint` (Kubernetes' matching rules).
pub fn toleration_matches(toleration: &Value, taint: &Value) -> bool {
    let t_effect = str_at(toleration, "/effect");
    if !t_effect.is_empty() && t_effect != str_at(taint, "/effect") {
        return false;
    }
    let t_key = str_at(toleration, "/key");
    let key = str_at(taint, "/key");
    match toleration
        .get("operator")
        .and_then(Value::as_str)
        .unwrap_or("Equal")
    {
        "Exists" => t_key.is_empty() || t_key == key,
        _ => t_key == key && str_at(toleration, "/value") == str_at(taint, "/value"),
    }
}

/// The uid of the object's controller, if any.
pub fn controller_uid(obj: &Value) -> Option<&str> {
    obj.at("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
        .and_then(|o| o.get("uid").and_then(Value::as_str))
}

/// The owner reference a controller puts on what it makes.
pub fn owner_ref(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "name": str_at(owner, "/metadata/name"),
        "uid": str_at(owner, "/metadata/uid"),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// An Event about `obj`, as controllers record them.
pub fn event(obj: &Value, kind: &str, reason: &str, message: &str, component: &str) -> Value {
    let now = now();
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": format!("{}.", str_at(obj, "/metadata/name")),
            "namespace": str_at(obj, "/metadata/namespace"),
        },
        "involvedObject": {
            "apiVersion": str_at(obj, "/apiVersion"),
            "kind": str_at(obj, "/kind"),
            "name": str_at(obj, "/metadata/name"),
            "namespace": str_at(obj, "/metadata/namespace"),
            "uid": str_at(obj, "/metadata/uid"),
        },
        "reason": reason,
        "message": message,
        "type": kind,
        "count": 1,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "source": {"component": component},
        "reportingComponent": component,
    })
}

/// Records an Event about `obj` (of `api_version`/`kind`) on behalf of `component`; best effort.
#[allow(clippy::too_many_arguments)]
pub async fn record(
    store: &flotilla_consensus::Store,
    obj: &Value,
    api_version: &str,
    kind: &str,
    event_type: &str,
    reason: &str,
    message: &str,
    component: &str,
    fence: &Fence,
) {
    let mut involved = obj.clone();
    involved["apiVersion"] = json!(api_version);
    involved["kind"] = json!(kind);
    let e = event(&involved, event_type, reason, message, component);
    let _ = internal::create(
        store,
        ("", "v1", "events"),
        Some(str_at(obj, "/metadata/namespace")),
        e,
        component,
        fence.clone(),
    )
    .await;
}

/// Deletes a pod a controller owns (the kubelet stops it first when it is on a node), if it
/// is still the same pod.
pub async fn delete_pod(
    store: &flotilla_consensus::Store,
    pod: &Value,
    fence: &Fence,
) -> Result<bool, flotilla_api::ApiError> {
    internal::delete(
        store,
        ("", "v1", "pods"),
        Some(str_at(pod, "/metadata/namespace")),
        str_at(pod, "/metadata/name"),
        Some(str_at(pod, "/metadata/uid")),
        None,
        fence.clone(),
    )
    .await
}

/// The pods in `namespace` whose controller is `uid`.
pub async fn owned_pods(
    ctx: &super::runner::Ctx,
    namespace: &str,
    uid: &str,
) -> Result<Vec<Value>, flotilla_api::ApiError> {
    Ok(ctx
        .list(&format!("/registry/core/pods/{namespace}/"))
        .await?
        .into_iter()
        .filter(|p| controller_uid(p) == Some(uid))
        .collect())
}

/// The keys (`namespace/name`) of the `kind` owners an object names.
pub fn owner_keys(obj: &Value, kind: &str) -> Vec<String> {
    obj.at("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|o| o.get("kind").and_then(Value::as_str) == Some(kind))
        .filter_map(|o| o.get("name").and_then(Value::as_str))
        .map(|n| format!("{}/{n}", str_at(obj, "/metadata/namespace")))
        .collect()
}

/// Sets a condition of `conditions` (`type`, `status`, `reason`, `message`); the transition
/// time changes only when the status does. Whether anything changed.
pub fn set_condition(
    conditions: &mut Vec<Value>,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
) -> bool {
    let now = now();
    if let Some(c) = conditions.iter_mut().find(|c| str_at(c, "/type") == kind) {
        if str_at(c, "/status") == status
            && str_at(c, "/reason") == reason
            && str_at(c, "/message") == message
        {
            return false;
        }
        if str_at(c, "/status") != status {
            c["lastTransitionTime"] = json!(now);
        }
        c["status"] = json!(status);
        c["reason"] = json!(reason);
        c["message"] = json!(message);
        c["lastProbeTime"] = json!(now);
        return true;
    }
    conditions.push(json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }));
    true
}

/// Whether the condition `kind` is `True`.
pub fn condition_true(obj: &Value, kind: &str) -> bool {
    condition(obj, kind).is_some_and(|c| str_at(c, "/status") == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let labels = json!({"app": "web", "tier": "front"});
        assert!(selector_matches(
            &json!({"matchLabels": {"app": "web"}}),
            &labels
        ));
        assert!(!selector_matches(
            &json!({"matchLabels": {"app": "db"}}),
            &labels
        ));
        assert!(selector_matches(
            &json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "back"]},
                {"key": "canary", "operator": "DoesNotExist"}]}),
            &labels
        ));
        assert!(!selector_matches(
            &json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}),
            &labels
        ));
        assert!(selector_matches(&json!({}), &labels));
    }
}
