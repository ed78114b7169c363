//! Cluster-wide allocations a Service holds: its cluster IP and node ports.
//!
//! Each allocation is a key in the store (`/registry/flotilla/serviceips/<ip>`,
//! `/registry/flotilla/nodeports/<port>`) whose value names the Service. The write that
//! creates or changes a Service also creates (compare-missing) and deletes these keys in the
//! same transaction, so two Services can never hold the same IP or port, whichever node
//! served them.

use crate::At;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use flotilla_consensus::{Compare, Op, Read, Store};
use serde_json::{Value, json};

use crate::status::{ApiError, StatusCause};

const IP_PREFIX: &str = "/registry/flotilla/serviceips/";
const PORT_PREFIX: &str = "/registry/flotilla/nodeports/";

/// The Service CIDR, 10.96.0.0/12 as in kubeadm's default.
const SERVICE_NET: u32 = u32::from_be_bytes([10, 96, 0, 0]);
const SERVICE_BITS: u32 = 12;
/// The first address is the `kubernetes` Service's, as in Kubernetes.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
pub const NODE_PORT_MIN: u16 = 30000;
pub const NODE_PORT_MAX: u16 = 32767;

fn in_service_net(ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - SERVICE_BITS);
    u32::from(ip) & mask == SERVICE_NET
}

fn is_service(obj: &Value) -> bool {
    obj.get("kind").and_then(Value::as_str) == Some("Service")
        && obj.get("apiVersion").and_then(Value::as_str) == Some("v1")
}

fn wants_node_ports(obj: &Value) -> bool {
    matches!(
        obj.at("/spec/type").and_then(Value::as_str),
        Some("NodePort" | "LoadBalancer")
    )
}

fn cluster_ip(obj: &Value) -> Option<Ipv4Addr> {
    obj.at("/spec/clusterIP")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

/// The allocation keys `obj` holds.
pub fn keys_of(obj: &Value) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    if !is_service(obj) {
        return keys;
    }
    if let Some(ip) = cluster_ip(obj) {
        keys.insert(format!("{IP_PREFIX}{ip}"));
    }
    if let Some(Value::Array(ports)) = obj.at("/spec/ports") {
        for p in ports {
            if let Some(n) = p.get("nodePort").and_then(Value::as_u64).filter(|n| *n > 0) {
                keys.insert(format!("{PORT_PREFIX}{n}"));
            }
        }
    }
    keys
}

fn invalid(field: &str, message: String) -> StatusCause {
    StatusCause {
        reason: "FieldValueInvalid".into(),
        message,
        field: field.into(),
    }
}

async fn taken(store: &Store, key: &str) -> Result<bool, ApiError> {
    Ok(store.get(key, Read::Local).await?.kv.is_some())
}

/// Fills in what a Service needs allocated: `clusterIP`/`clusterIPs` (kept from `old` on
/// updates), and a `nodePort` per port for NodePort and LoadBalancer Services. Returns the
/// causes of an invalid request (a requested IP outside the range or in use).
pub async fn assign(
    store: &Store,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<Vec<StatusCause>, ApiError> {
    let mut causes = Vec::new();
    if !is_service(obj) {
        return Ok(causes);
    }
    let held = old.map(keys_of).unwrap_or_default();
    let ty = obj
        .at("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_owned();
    if ty == "ExternalName" {
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
    } else {
        let requested = obj
            .at("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let kept = old
            .and_then(|o| o.at("/spec/clusterIP"))
            .and_then(Value::as_str);
        let ip = match (requested.as_str(), kept) {
            ("None", _) => Some("None".to_owned()),
            ("", Some(k)) => Some(k.to_owned()),
            ("", None) => {
                let mut found = None;
                for _ in 0..64 {
                    let offset = rand::random_range(2..(1u32 << (32 - SERVICE_BITS)) - 1);
                    let ip = Ipv4Addr::from(SERVICE_NET + offset);
                    if !taken(store, &format!("{IP_PREFIX}{ip}")).await? {
                        found = Some(ip.to_string());
                        break;
                    }
                }
                if found.is_none() {
                    return Err(ApiError::internal(
                        "failed to allocate a service IP: the range is full",
                    ));
                }
                found
            }
            (want, _) => match want.parse::<Ipv4Addr>() {
                Ok(ip) if in_service_net(ip) => {
                    let key = format!("{IP_PREFIX}{ip}");
                    if !held.contains(&key) && taken(store, &key).await? {
                        causes.push(invalid(
                            "spec.clusterIPs",
                            format!("Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: provided IP is already allocated"),
                        ));
                    }
                    Some(ip.to_string())
                }
                _ => {
                    causes.push(invalid(
                        "spec.clusterIPs",
                        format!("Invalid value: []string{{\"{want}\"}}: failed to allocate IP {want}: the provided IP ({want}) is not in the valid range. The range of valid IPs is 10.96.0.0/12"),
                    ));
                    None
                }
            },
        };
        if let Some(ip) = ip {
            obj["spec"]["clusterIP"] = json!(ip);
            obj["spec"]["clusterIPs"] = json!([ip]);
        }
    }
    if wants_node_ports(obj) {
        let old_ports: Vec<u64> = old
            .and_then(|o| o.at("/spec/ports"))
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
                    .collect()
            })
            .unwrap_or_default();
        let mut chosen: BTreeSet<u64> = BTreeSet::new();
        let n = obj
            .at("/spec/ports")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        for i in 0..n {
            let field = format!("spec.ports[{i}].nodePort");
            let requested = obj["spec"]["ports"][i]
                .get("nodePort")
                .and_then(Value::as_u64)
                .filter(|p| *p > 0);
            let port = match requested {
                Some(p) => {
                    let key = format!("{PORT_PREFIX}{p}");
                    if !(u64::from(NODE_PORT_MIN)..=u64::from(NODE_PORT_MAX)).contains(&p) {
                        causes.push(invalid(&field, format!("Invalid value: {p}: provided port is not in the valid range. The range of valid ports is {NODE_PORT_MIN}-{NODE_PORT_MAX}")));
                    } else if chosen.contains(&p)
                        || (!held.contains(&key) && taken(store, &key).await?)
                    {
                        causes.push(invalid(
                            &field,
                            format!("Invalid value: {p}: provided port is already allocated"),
                        ));
                    }
                    p
                }
                None => {
                    // Reuse the port this index had, so an update does not move it.
                    let reuse = old_ports.get(i).copied().filter(|p| !chosen.contains(p));
                    let mut pick = reuse;
                    let mut tries = 0;
                    while pick.is_none() && tries < 256 {
                        tries += 1;
                        let p = u64::from(rand::random_range(NODE_PORT_MIN..=NODE_PORT_MAX));
                        if !chosen.contains(&p)
                            && !taken(store, &format!("{PORT_PREFIX}{p}")).await?
                        {
                            pick = Some(p);
                        }
                    }
                    pick.ok_or_else(|| {
                        ApiError::internal("failed to allocate a node port: the range is full")
                    })?
                }
            };
            chosen.insert(port);
            obj["spec"]["ports"][i]["nodePort"] = json!(port);
        }
    } else if let Some(Value::Array(ports)) = obj.pointer_mut("/spec/ports") {
        for p in ports {
            if let Some(m) = p.as_object_mut() {
                m.remove("nodePort");
            }
        }
    }
    Ok(causes)
}

/// The compares and operations that move a Service's allocations from `old` to `new` in the
/// object's own write transaction.
pub fn ops(object_key: &str, new: Option<&Value>, old: Option<&Value>) -> (Vec<Compare>, Vec<Op>) {
    let new_keys = new.map(keys_of).unwrap_or_default();
    let old_keys = old.map(keys_of).unwrap_or_default();
    let mut compare = Vec::new();
    let mut ops = Vec::new();
    for k in new_keys.difference(&old_keys) {
        compare.push(Compare::Missing { key: k.clone() });
        ops.push(Op::Put {
            key: k.clone(),
            value: object_key.as_bytes().to_vec(),
        });
    }
    for k in old_keys.difference(&new_keys) {
        ops.push(Op::Delete { key: k.clone() });
    }
    (compare, ops)
}
