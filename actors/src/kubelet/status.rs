//! Pod status as the kubelet reports it: phase, conditions and container statuses, in the
//! shape `kubectl get pods` and `describe` read.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::runtime::{ContainerState, ContainerStatus};

pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    flotilla_api::rfc3339(secs)
}

/// What the worker knows about one container of the spec.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub name: String,
    pub image: String,
    pub current: Option<ContainerStatus>,
    pub previous: Option<ContainerStatus>,
    pub restarts: u32,
    /// Why it is not running (ErrImagePull, CrashLoopBackOff, ContainerCreating, …).
    pub waiting: Option<(String, String)>,
    pub ready: bool,
}

fn state_of(s: &ContainerStatus) -> Value {
    match s.state {
        ContainerState::Running => json!({"running": {
            "startedAt": s.started_at.map(rfc3339),
        }}),
        ContainerState::Exited => json!({"terminated": {
            "exitCode": s.exit_code.unwrap_or(0),
            "reason": s.reason.clone().unwrap_or_else(|| if s.exit_code == Some(0) { "Completed".into() } else { "Error".into() }),
            "message": s.message,
            "startedAt": s.started_at.map(rfc3339),
            "finishedAt": s.finished_at.map(rfc3339),
            "containerID": format!("flotilla://{}", s.id),
        }}),
        ContainerState::Created | ContainerState::Unknown => {
            json!({"waiting": {"reason": "ContainerCreating"}})
        }
    }
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

pub fn container_status(o: &Observed) -> Value {
    let state = match (&o.waiting, &o.current) {
        (Some((reason, message)), _) => {
            json!({"waiting": {"reason": reason, "message": if message.is_empty() { Value::Null } else { json!(message) }}})
        }
        (None, Some(s)) => state_of(s),
        (None, None) => json!({"waiting": {"reason": "ContainerCreating"}}),
    };
    let last = o.previous.as_ref().map(state_of).unwrap_or(json!({}));
    let running = o
        .current
        .as_ref()
        .is_some_and(|s| s.state == ContainerState::Running);
    let mut v = json!({
        "name": o.name,
        "image": o.image,
        "imageID": o.current.as_ref().map(|s| s.image_ref.clone()).unwrap_or_default(),
        "containerID": o.current.as_ref().map(|s| format!("flotilla://{}", s.id)),
        "ready": o.ready && running,
        "started": running,
        "restartCount": o.restarts,
        "state": state,
        "lastState": last,
    });
    strip_nulls(&mut v);
    v
}

fn condition(kind: &str, ok: bool, reason: Option<&str>, since: &str) -> Value {
    let mut c = json!({
        "type": kind,
        "status": if ok { "True" } else { "False" },
        "lastProbeTime": null,
        "lastTransitionTime": since,
    });
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    c
}

pub struct PodView<'a> {
    pub init: &'a [Observed],
    pub main: &'a [Observed],
    pub init_done: bool,
    pub restart_policy: &'a str,
    pub pod_ip: Option<String>,
    pub host_ip: &'a str,
    pub start_time: &'a str,
    pub qos: Option<Value>,
    /// Conditions' transition times from the last written status, kept when unchanged.
    pub previous: Option<&'a Value>,
}

fn exited(o: &Observed) -> Option<i32> {
    o.current
        .as_ref()
        .filter(|s| s.state == ContainerState::Exited)
        .map(|s| s.exit_code.unwrap_or(-1))
}

/// The phase Kubernetes derives from container states and the restart policy.
fn phase(v: &PodView) -> &'static str {
    if v.init.iter().any(|o| exited(o).is_some_and(|c| c != 0)) && v.restart_policy == "Never" {
        return "Failed";
    }
    if !v.init_done {
        return "Pending";
    }
    let running = v
        .main
        .iter()
        .filter(|o| {
            o.current
                .as_ref()
                .is_some_and(|s| s.state == ContainerState::Running)
        })
        .count();
    let codes: Vec<Option<i32>> = v.main.iter().map(exited).collect();
    let all_exited = !codes.is_empty() && codes.iter().all(Option::is_some);
    if all_exited && v.restart_policy != "Always" {
        let failed = codes.iter().flatten().any(|c| *c != 0);
        return match (failed, v.restart_policy) {
            (false, _) => "Succeeded",
            (true, "Never") => "Failed",
            // OnFailure keeps restarting failed containers.
            (true, _) => "Running",
        };
    }
    if running > 0 || v.main.iter().any(|o| o.restarts > 0) {
        "Running"
    } else {
        "Pending"
    }
}

pub fn pod_status(v: &PodView, now: &str) -> Value {
    let phase = phase(v);
    let ready_all = !v.main.is_empty() && v.main.iter().all(|o| o.ready && exited(o).is_none());
    let since = |kind: &str, ok: bool| -> String {
        v.previous
            .and_then(|p| p.get("conditions"))
            .and_then(Value::as_array)
            .and_then(|cs| {
                cs.iter().find(|c| {
                    c.get("type").and_then(Value::as_str) == Some(kind)
                        && c.get("status").and_then(Value::as_str)
                            == Some(if ok { "True" } else { "False" })
                })
            })
            .and_then(|c| c.get("lastTransitionTime"))
            .and_then(Value::as_str)
            .unwrap_or(now)
            .to_owned()
    };
    let not_ready_reason = if phase == "Succeeded" || phase == "Failed" {
        Some("PodCompleted")
    } else {
        Some("ContainersNotReady")
    };
    let conditions = vec![
        condition(
            "PodReadyToStartContainers",
            v.pod_ip.is_some() || !v.host_ip.is_empty(),
            None,
            &since("PodReadyToStartContainers", true),
        ),
        condition(
            "Initialized",
            v.init_done,
            (!v.init_done).then_some("ContainersNotInitialized"),
            &since("Initialized", v.init_done),
        ),
        condition(
            "Ready",
            ready_all,
            (!ready_all).then_some(not_ready_reason).flatten(),
            &since("Ready", ready_all),
        ),
        condition(
            "ContainersReady",
            ready_all,
            (!ready_all).then_some(not_ready_reason).flatten(),
            &since("ContainersReady", ready_all),
        ),
        condition("PodScheduled", true, None, &since("PodScheduled", true)),
    ];
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": v.host_ip,
        "hostIPs": [{"ip": v.host_ip}],
        "startTime": v.start_time,
        "containerStatuses": v.main.iter().map(container_status).collect::<Vec<_>>(),
    });
    if !v.init.is_empty() {
        status["initContainerStatuses"] =
            json!(v.init.iter().map(container_status).collect::<Vec<_>>());
    }
    if let Some(ip) = &v.pod_ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    if let Some(q) = &v.qos {
        status["qosClass"] = q.clone();
    }
    status
}

/// Status without the timestamps that change on every computation, to decide whether a
/// write is needed.
pub fn comparable(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(Value::Array(cs)) = s.get_mut("conditions") {
        for c in cs {
            if let Some(m) = c.as_object_mut() {
                m.remove("lastTransitionTime");
            }
        }
    }
    s
}
