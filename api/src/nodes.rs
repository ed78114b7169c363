//! The Node object a node keeps of itself: written when the node starts (created, or updated
//! in place with the same uid), never on a timer. Liveness travels by gossip, not by heartbeat
//! writes, which is what lets thousands of nodes share one Raft log.

use crate::At;
use flotilla_consensus::{CmpOp, Compare, Op, Read, Store, TxnRequest};
use serde_json::{Value, json};

use crate::meta;
use crate::resources;
use crate::status::ApiError;

/// Where a node's pod CIDR comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PodCidr {
    /// No pod network: pods get no IP of their own.
    #[default]
    None,
    /// Set by the node's operator (`--pod-cidr`).
    Fixed(String),
    /// A free subnet of `cluster` with this prefix length, claimed in the store.
    Allocate { cluster: String, prefix: u8 },
}

impl PodCidr {
    /// Refuses a malformed CIDR or a prefix that does not fit (at start, not at every retry).
    pub fn check(&self) -> Result<(), String> {
        match self {
            PodCidr::None => Ok(()),
            PodCidr::Fixed(c) => parse_cidr(c)
                .map(drop)
                .ok_or_else(|| format!("pod CIDR {c:?}: expected A.B.C.D/N")),
            PodCidr::Allocate { cluster, prefix } => subnets(cluster, *prefix)
                .map(drop)
                .map_err(|e| e.message().to_owned()),
        }
    }
}

/// Claims of pod subnets: `<network>-<prefix>` → the node that holds it. A claim makes two
/// nodes registering at once pick different subnets; a claim whose node was deleted is free.
const CIDR_CLAIMS: &str = "/registry/flotilla/podcidrs/";

/// What a node reports about itself.
#[derive(Debug, Clone)]
pub struct NodeRegistration {
    pub pod_cidr: PodCidr,
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
            pod_cidr: PodCidr::None,
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

/// An IPv4 network: address and prefix length.
fn parse_cidr(cidr: &str) -> Option<(u32, u8)> {
    let (addr, prefix) = cidr.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    Some((u32::from(addr) & mask, prefix))
}

fn format_cidr(network: u32, prefix: u8) -> String {
    format!("{}/{prefix}", std::net::Ipv4Addr::from(network))
}

/// The subnets of `cluster` with `prefix`, in order.
fn subnets(cluster: &str, prefix: u8) -> Result<impl Iterator<Item = String>, ApiError> {
    let (network, cluster_prefix) = parse_cidr(cluster).ok_or_else(|| {
        ApiError::bad_request(format!("cluster CIDR {cluster:?}: expected A.B.C.D/N"))
    })?;
    if prefix < cluster_prefix || prefix > 30 {
        return Err(ApiError::bad_request(format!(
            "node CIDR prefix /{prefix} does not fit in the cluster CIDR {cluster} (and must be at most /30)"
        )));
    }
    let count = 1u64 << (prefix - cluster_prefix);
    let step = 1u64 << (32 - prefix);
    Ok((0..count).map(move |i| format_cidr((u64::from(network) + i * step) as u32, prefix)))
}

fn claim_key(cidr: &str) -> String {
    format!("{CIDR_CLAIMS}{}", cidr.replace('/', "-"))
}

/// Creates or refreshes this node's Node object; returns its pod CIDR.
pub async fn register_node(
    store: &Store,
    reg: &NodeRegistration,
) -> Result<Option<String>, ApiError> {
    let nodes =
        resources::find("", "v1", "nodes").ok_or_else(|| ApiError::internal("nodes not served"))?;
    let key = nodes.key(None, &reg.name);
    for _ in 0..16 {
        let current = store.get(&key, Read::Linearizable).await?.kv;
        let existing = current
            .as_ref()
            .and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok());
        let mut obj = node_object(reg, existing.as_ref());
        let compare = match &current {
            Some(kv) => Compare::ModRevision {
                key: key.clone(),
                op: CmpOp::Equal,
                revision: kv.mod_revision,
            },
            None => Compare::Missing { key: key.clone() },
        };
        let mut compares = vec![compare];
        let mut puts = Vec::new();
        let had = obj
            .at("/spec/podCIDR")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let cidr = match (&reg.pod_cidr, had) {
            (PodCidr::None, had) => had,
            (PodCidr::Fixed(c), _) => Some(c.clone()),
            // The node keeps the subnet it was given.
            (PodCidr::Allocate { .. }, Some(had)) => Some(had),
            (PodCidr::Allocate { cluster, prefix }, None) => {
                let (cidr, claim) = free_subnet(store, nodes, cluster, *prefix).await?;
                compares.push(claim);
                puts.push(Op::Put {
                    key: claim_key(&cidr),
                    value: reg.name.clone().into_bytes(),
                });
                Some(cidr)
            }
        };
        if let Some(c) = &cidr {
            obj["spec"]["podCIDR"] = json!(c);
            obj["spec"]["podCIDRs"] = json!([c]);
        }
        puts.push(Op::Put {
            key: key.clone(),
            value: serde_json::to_vec(&obj).unwrap_or_default(),
        });
        let resp = store
            .txn(TxnRequest {
                compare: compares,
                success: puts,
                failure: vec![],
            })
            .await?;
        if resp.succeeded {
            return Ok(cidr);
        }
    }
    Err(ApiError::internal(
        "the Node object kept changing while it was being registered",
    ))
}

/// The first subnet nobody holds, and the comparison that keeps it free until the claim is
/// written: unclaimed, or claimed by a node that no longer exists.
async fn free_subnet(
    store: &Store,
    nodes: &resources::Resource,
    cluster: &str,
    prefix: u8,
) -> Result<(String, Compare), ApiError> {
    let claims = store
        .range(CIDR_CLAIMS, usize::MAX, Read::Linearizable)
        .await?;
    let listed = store
        .range(&nodes.key_prefix(), usize::MAX, Read::Linearizable)
        .await?;
    let mut held = std::collections::HashSet::new();
    let mut names = std::collections::HashSet::new();
    for kv in &listed.kvs {
        if let Ok(node) = serde_json::from_slice::<Value>(&kv.value) {
            if let Some(c) = node.at("/spec/podCIDR").and_then(Value::as_str) {
                held.insert(c.to_owned());
            }
            if let Some(n) = node.at("/metadata/name").and_then(Value::as_str) {
                names.insert(n.to_owned());
            }
        }
    }
    for cidr in subnets(cluster, prefix)? {
        if held.contains(&cidr) {
            continue;
        }
        let key = claim_key(&cidr);
        match claims.kvs.iter().find(|kv| kv.key == key) {
            None => return Ok((cidr, Compare::Missing { key })),
            Some(kv) if !names.contains(String::from_utf8_lossy(&kv.value).as_ref()) => {
                let stale = Compare::ModRevision {
                    key,
                    op: CmpOp::Equal,
                    revision: kv.mod_revision,
                };
                return Ok((cidr, stale));
            }
            Some(_) => {}
        }
    }
    Err(ApiError::internal(format!(
        "no free /{prefix} pod subnet left in the cluster CIDR {cluster}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_of_a_cluster_cidr() {
        let all: Vec<String> = subnets("10.244.7.9/16", 24).unwrap().collect();
        assert_eq!(all.len(), 256);
        assert_eq!(all[0], "10.244.0.0/24");
        assert_eq!(all[255], "10.244.255.0/24");
        assert_eq!(
            subnets("10.0.0.0/8", 26).unwrap().nth(5).unwrap(),
            "10.0.1.64/26"
        );
        assert!(subnets("10.244.0.0/24", 16).is_err());
        assert!(subnets("nonsense", 24).is_err());
        assert_eq!(
            claim_key("10.244.3.0/24"),
            "/registry/flotilla/podcidrs/10.244.3.0-24"
        );
    }
}
