//! The Node object a node keeps of itself: written when the node starts (created, or updated
//! in place with the same uid), never on a timer. Liveness travels by gossip, not by heartbeat
//! writes, which is what lets thousands of nodes share one Raft log.

use flotilla_consensus::{CmpOp, Compare, Op, Read, Store, TxnRequest};
use serde_json::{Value, json};

use crate::meta;
use crate::resources;
use crate::status::ApiError;

/// What a node reports about itself.
#[derive(Debug, Clone)]
pub struct NodeRegistration {
    pub name: String,
    pub internal_ip: String,
    pub cpus: u64,
    pub memory_kib: u64,
    pub max_pods: u64,
    pub kernel_version: String,
    pub os_image: String,
    pub version: String,
    pub labels: Vec<(String, String)>,
}

impl NodeRegistration {
    /// Capacity and system facts from this machine (`/proc`, `/etc/os-release`).
    pub fn from_host(name: &str, internal_ip: &str, version: &str) -> NodeRegistration {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let memory_kib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let os_image = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_else(|| "Linux".into());
        NodeRegistration {
            name: name.to_owned(),
            internal_ip: internal_ip.to_owned(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            memory_kib,
            max_pods: 110,
            kernel_version: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            os_image,
            version: version.to_owned(),
            labels: Vec::new(),
        }
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The Node object for `reg`, keeping `existing`'s identity, labels, taints and spec.
fn node_object(reg: &NodeRegistration, existing: Option<&Value>) -> Value {
    let now = meta::rfc3339(meta::now_secs());
    let mut labels = json!({
        "kubernetes.io/hostname": reg.name,
        "kubernetes.io/os": std::env::consts::OS,
        "kubernetes.io/arch": arch(),
        "beta.kubernetes.io/os": std::env::consts::OS,
        "beta.kubernetes.io/arch": arch(),
    });
    for (k, v) in &reg.labels {
        labels[k] = json!(v);
    }
    let mut obj = existing.cloned().unwrap_or_else(|| {
        json!({
            "metadata": {
                "name": reg.name,
                "uid": meta::new_uid(),
                "creationTimestamp": now,
            },
            "spec": {},
        })
    });
    obj["apiVersion"] = json!("v1");
    obj["kind"] = json!("Node");
    // Labels set by users (`kubectl label node`) stay; ours are refreshed.
    match obj["metadata"].get_mut("labels") {
        Some(Value::Object(current)) => {
            if let Value::Object(ours) = labels {
                current.extend(ours);
            }
        }
        _ => obj["metadata"]["labels"] = labels,
    }
    if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    let capacity = json!({
        "cpu": reg.cpus.to_string(),
        "memory": format!("{}Ki", reg.memory_kib),
        "pods": reg.max_pods.to_string(),
        "ephemeral-storage": "0",
    });
    obj["status"] = json!({
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [
            {"type": "InternalIP", "address": reg.internal_ip},
            {"type": "Hostname", "address": reg.name},
        ],
        "conditions": [{
            "type": "Ready",
            "status": "True",
            "reason": "FlotillaReady",
            "message": "flotilla node is running",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
            "kernelVersion": reg.kernel_version,
            "osImage": reg.os_image,
            "containerRuntimeVersion": format!("flotilla://{}", reg.version),
            "kubeletVersion": format!("v1.33.0-flotilla.{}", reg.version),
            "kubeProxyVersion": "",
            "operatingSystem": std::env::consts::OS,
            "architecture": arch(),
        },
    });
    obj
}

/// Creates or refreshes this node's Node object.
pub async fn register_node(store: &Store, reg: &NodeRegistration) -> Result<(), ApiError> {
    let nodes =
        resources::find("", "v1", "nodes").ok_or_else(|| ApiError::internal("nodes not served"))?;
    let key = nodes.key(None, &reg.name);
    for _ in 0..8 {
        let current = store.get(&key, Read::Linearizable).await?.kv;
        let existing = current
            .as_ref()
            .and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok());
        let obj = node_object(reg, existing.as_ref());
        let compare = match &current {
            Some(kv) => Compare::ModRevision {
                key: key.clone(),
                op: CmpOp::Equal,
                revision: kv.mod_revision,
            },
            None => Compare::Missing { key: key.clone() },
        };
        let resp = store
            .txn(TxnRequest {
                compare: vec![compare],
                success: vec![Op::Put {
                    key: key.clone(),
                    value: serde_json::to_vec(&obj).unwrap_or_default(),
                }],
                failure: vec![],
            })
            .await?;
        if resp.succeeded {
            return Ok(());
        }
    }
    Err(ApiError::internal(
        "the Node object kept changing while it was being registered",
    ))
}
