//! `meta.k8s.io/v1` Table responses, the way kubectl prints `get`.
//!
//! The main kinds get the columns of the apiserver's built-in printers (priority-1 columns show
//! with `-o wide`); other kinds get `Name` and `Age`, like the apiserver's default.

use crate::At;
use serde_json::{Value, json};

use crate::meta;
use crate::resources::Resource;

/// How a cell is computed from an object.
type Cell = fn(&Value) -> Value;

/// One column: header, priority (0 default, 1 wide) and its cell.
#[derive(Clone)]
struct Column {
    name: &'static str,
    priority: u8,
    cell: Cell,
}

const fn col(name: &'static str, priority: u8, cell: Cell) -> Column {
    Column {
        name,
        priority,
        cell,
    }
}

fn str_at(o: &Value, ptr: &str) -> String {
    o.at(ptr).and_then(Value::as_str).unwrap_or("").to_owned()
}

fn int_at(o: &Value, ptr: &str) -> i64 {
    o.at(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(s: String) -> Value {
    json!(if s.is_empty() { "<none>".to_owned() } else { s })
}

fn count(o: &Value, ptr: &str) -> usize {
    o.at(ptr).and_then(Value::as_object).map_or(0, |m| m.len())
}

fn containers(o: &Value, ptr: &str, field: &str) -> Value {
    let names: Vec<String> = o
        .at(ptr)
        .and_then(Value::as_array)
        .map(|cs| cs.iter().map(|c| str_at(c, &format!("/{field}"))).collect())
        .unwrap_or_default();
    or_none(names.join(","))
}

fn selector(o: &Value, ptr: &str) -> Value {
    let labels: Vec<String> = o
        .at(ptr)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
                .collect()
        })
        .unwrap_or_default();
    or_none(labels.join(","))
}

/// Pod STATUS as kubectl shows it: a container's waiting/terminated reason wins over the phase.
fn pod_status(o: &Value) -> Value {
    if o.at("/metadata/deletionTimestamp").is_some() {
        return json!("Terminating");
    }
    let mut reason = o
        .at("/status/reason")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| str_at(o, "/status/phase"));
    if let Some(statuses) = o.at("/status/containerStatuses").and_then(Value::as_array) {
        for s in statuses {
            if let Some(r) = s.at("/state/waiting/reason").and_then(Value::as_str) {
                reason = r.to_owned();
            } else if let Some(r) = s.at("/state/terminated/reason").and_then(Value::as_str) {
                reason = r.to_owned();
            }
        }
    }
    json!(if reason.is_empty() {
        "Pending".to_owned()
    } else {
        reason
    })
}

fn pod_ready(o: &Value) -> Value {
    let total = o
        .at("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = o
        .at("/status/containerStatuses")
        .and_then(Value::as_array)
        .map_or(0, |s| {
            s.iter()
                .filter(|c| c.get("ready") == Some(&json!(true)))
                .count()
        });
    json!(format!("{ready}/{total}"))
}

fn pod_restarts(o: &Value) -> Value {
    let n: i64 = o
        .at("/status/containerStatuses")
        .and_then(Value::as_array)
        .map_or(0, |s| s.iter().map(|c| int_at(c, "/restartCount")).sum());
    json!(n)
}

fn node_status(o: &Value) -> Value {
    let ready = o
        .at("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c.get("type") == Some(&json!("Ready"))))
        .map(|c| str_at(c, "/status"));
    // As kubectl's printer: any Ready status but True (False, Unknown) is NotReady; only a
    // node without the condition is Unknown.
    let mut s = match ready.as_deref() {
        Some("True") => "Ready".to_owned(),
        Some(_) => "NotReady".to_owned(),
        None => "Unknown".to_owned(),
    };
    if o.at("/spec/unschedulable") == Some(&json!(true)) {
        s.push_str(",SchedulingDisabled");
    }
    json!(s)
}

fn node_roles(o: &Value) -> Value {
    let roles: Vec<String> = o
        .at("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.keys()
                .filter_map(|k| {
                    k.strip_prefix("node-role.kubernetes.io/")
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    or_none(roles.join(","))
}

fn node_address(o: &Value, kind: &str) -> Value {
    let addr = o
        .at("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|x| x.get("type") == Some(&json!(kind))))
        .map(|x| str_at(x, "/address"))
        .unwrap_or_default();
    or_none(addr)
}

fn service_ports(o: &Value) -> Value {
    let ports: Vec<String> = o
        .at("/spec/ports")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(np) => format!("{}:{np}/{proto}", int_at(p, "/port")),
                        None => format!("{}/{proto}", int_at(p, "/port")),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    or_none(ports.join(","))
}

/// Columns before and after Age, per kind.
/// `ip:port` pairs as kubectl lists them: the first three, then `+ N more...`.
fn listed(all: Vec<String>) -> Value {
    if all.is_empty() {
        return json!("<none>");
    }
    let shown = all[..all.len().min(3)].join(",");
    if all.len() > 3 {
        json!(format!("{shown} + {} more...", all.len() - 3))
    } else {
        json!(shown)
    }
}

fn endpoints_list(o: &Value) -> Value {
    let mut all = Vec::new();
    for subset in o
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ports: Vec<i64> = subset
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("port").and_then(Value::as_i64))
            .collect();
        for a in subset
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ip = a.get("ip").and_then(Value::as_str).unwrap_or("");
            if ports.is_empty() {
                all.push(ip.to_owned());
            }
            all.extend(ports.iter().map(|p| format!("{ip}:{p}")));
        }
    }
    listed(all)
}

fn slice_endpoints(o: &Value) -> Value {
    let all = o
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|e| {
            e.get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    listed(all)
}

fn printer(r: &Resource) -> (Vec<Column>, Vec<Column>) {
    // The pod template's containers and images, shown with `-o wide` by every workload kind.
    let images = || {
        vec![
            col("Containers", 1, |o| {
                containers(o, "/spec/template/spec/containers", "name")
            }),
            col("Images", 1, |o| {
                containers(o, "/spec/template/spec/containers", "image")
            }),
        ]
    };
    match (r.group, r.plural) {
        ("", "namespaces") => (
            vec![col("Status", 0, |o| json!(str_at(o, "/status/phase")))],
            vec![],
        ),
        ("", "configmaps") => (
            vec![col("Data", 0, |o| {
                json!(count(o, "/data") + count(o, "/binaryData"))
            })],
            vec![],
        ),
        ("", "secrets") => (
            vec![
                col("Type", 0, |o| {
                    json!(o.get("type").and_then(Value::as_str).unwrap_or("Opaque"))
                }),
                col("Data", 0, |o| json!(count(o, "/data"))),
            ],
            vec![],
        ),
        ("", "pods") => (
            vec![
                col("Ready", 0, pod_ready),
                col("Status", 0, pod_status),
                col("Restarts", 0, pod_restarts),
            ],
            vec![
                col("IP", 1, |o| or_none(str_at(o, "/status/podIP"))),
                col("Node", 1, |o| or_none(str_at(o, "/spec/nodeName"))),
                col("Nominated Node", 1, |o| {
                    or_none(str_at(o, "/status/nominatedNodeName"))
                }),
                col("Readiness Gates", 1, |_| json!("<none>")),
            ],
        ),
        ("", "nodes") => (
            vec![col("Status", 0, node_status), col("Roles", 0, node_roles)],
            vec![
                col("Version", 0, |o| {
                    json!(str_at(o, "/status/nodeInfo/kubeletVersion"))
                }),
                col("Internal-IP", 1, |o| node_address(o, "InternalIP")),
                col("External-IP", 1, |o| node_address(o, "ExternalIP")),
                col("OS-Image", 1, |o| {
                    json!(str_at(o, "/status/nodeInfo/osImage"))
                }),
                col("Kernel-Version", 1, |o| {
                    json!(str_at(o, "/status/nodeInfo/kernelVersion"))
                }),
                col("Container-Runtime", 1, |o| {
                    json!(str_at(o, "/status/nodeInfo/containerRuntimeVersion"))
                }),
            ],
        ),
        ("", "services") => (
            vec![
                col("Type", 0, |o| {
                    json!(
                        o.at("/spec/type")
                            .and_then(Value::as_str)
                            .unwrap_or("ClusterIP")
                    )
                }),
                col("Cluster-IP", 0, |o| or_none(str_at(o, "/spec/clusterIP"))),
                col("External-IP", 0, |o| {
                    let ips: Vec<String> = o
                        .at("/spec/externalIPs")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    or_none(ips.join(","))
                }),
                col("Port(s)", 0, service_ports),
            ],
            vec![col("Selector", 1, |o| selector(o, "/spec/selector"))],
        ),
        ("", "endpoints") => (vec![col("Endpoints", 0, endpoints_list)], vec![]),
        ("discovery.k8s.io", "endpointslices") => (
            vec![
                col("AddressType", 0, |o| json!(str_at(o, "/addressType"))),
                col("Ports", 0, |o| {
                    let ports: Vec<String> = o
                        .get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p.get("port").and_then(Value::as_i64))
                        .map(|p| p.to_string())
                        .collect();
                    or_none(ports.join(","))
                }),
                col("Endpoints", 0, slice_endpoints),
            ],
            vec![],
        ),
        ("apps", "deployments") => (
            vec![
                col("Ready", 0, |o| {
                    json!(format!(
                        "{}/{}",
                        int_at(o, "/status/readyReplicas"),
                        int_at(o, "/spec/replicas")
                    ))
                }),
                col("Up-to-date", 0, |o| {
                    json!(int_at(o, "/status/updatedReplicas"))
                }),
                col("Available", 0, |o| {
                    json!(int_at(o, "/status/availableReplicas"))
                }),
            ],
            [
                images(),
                vec![col("Selector", 1, |o| {
                    selector(o, "/spec/selector/matchLabels")
                })],
            ]
            .concat(),
        ),
        ("apps", "replicasets") | ("", "replicationcontrollers") => (
            vec![
                col("Desired", 0, |o| json!(int_at(o, "/spec/replicas"))),
                col("Current", 0, |o| json!(int_at(o, "/status/replicas"))),
                col("Ready", 0, |o| json!(int_at(o, "/status/readyReplicas"))),
            ],
            images(),
        ),
        ("apps", "statefulsets") => (
            vec![col("Ready", 0, |o| {
                json!(format!(
                    "{}/{}",
                    int_at(o, "/status/readyReplicas"),
                    int_at(o, "/spec/replicas")
                ))
            })],
            images(),
        ),
        ("apps", "daemonsets") => (
            vec![
                col("Desired", 0, |o| {
                    json!(int_at(o, "/status/desiredNumberScheduled"))
                }),
                col("Current", 0, |o| {
                    json!(int_at(o, "/status/currentNumberScheduled"))
                }),
                col("Ready", 0, |o| json!(int_at(o, "/status/numberReady"))),
                col("Up-to-date", 0, |o| {
                    json!(int_at(o, "/status/updatedNumberScheduled"))
                }),
                col("Available", 0, |o| {
                    json!(int_at(o, "/status/numberAvailable"))
                }),
                col("Node Selector", 0, |o| {
                    selector(o, "/spec/template/spec/nodeSelector")
                }),
            ],
            images(),
        ),
        ("batch", "jobs") => (
            vec![col("Completions", 0, |o| {
                let want = o
                    .at("/spec/completions")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                json!(format!("{}/{want}", int_at(o, "/status/succeeded")))
            })],
            vec![],
        ),
        ("policy", "poddisruptionbudgets") => (
            vec![
                col("Min Available", 0, |o| {
                    int_or_string(o, "/spec/minAvailable")
                }),
                col("Max Unavailable", 0, |o| {
                    int_or_string(o, "/spec/maxUnavailable")
                }),
                col("Allowed Disruptions", 0, |o| {
                    json!(int_at(o, "/status/disruptionsAllowed"))
                }),
            ],
            vec![],
        ),
        _ => (vec![], vec![]),
    }
}

/// An IntOrString as the apiserver's printer shows it, `N/A` when unset.
fn int_or_string(o: &Value, ptr: &str) -> Value {
    match o.at(ptr) {
        Some(Value::String(s)) => json!(s),
        Some(Value::Number(n)) => json!(n.to_string()),
        _ => json!("N/A"),
    }
}

pub fn table(r: &Resource, items: &[Value], resource_version: &str) -> Value {
    let (before, after) = printer(r);
    let definition = |name: &str, priority: u8, format: &str| json!({"name": name, "type": "string", "format": format, "description": name, "priority": priority});
    let mut columns = vec![definition("Name", 0, "name")];
    columns.extend(before.iter().map(|c| definition(c.name, c.priority, "")));
    columns.push(definition("Age", 0, ""));
    columns.extend(after.iter().map(|c| definition(c.name, c.priority, "")));
    let now = meta::now_secs();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let age = o
                .at("/metadata/creationTimestamp")
                .and_then(Value::as_str)
                .and_then(meta::parse_rfc3339)
                .map(|t| meta::human_age(now.saturating_sub(t)))
                .unwrap_or_else(|| "<unknown>".into());
            let mut cells = vec![o.at("/metadata/name").cloned().unwrap_or(json!(""))];
            cells.extend(before.iter().map(|c| (c.cell)(o)));
            cells.push(json!(age));
            cells.extend(after.iter().map(|c| (c.cell)(o)));
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_rows_show_ready_status_and_restarts() {
        let pod = json!({
            "metadata": {"name": "web-0", "creationTimestamp": meta::rfc3339(meta::now_secs())},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "node-1"},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 1, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        let r = crate::resources::find("", "v1", "pods").unwrap();
        let t = table(r, &[pod], "5");
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Ready",
                "Status",
                "Restarts",
                "Age",
                "IP",
                "Node",
                "Nominated Node",
                "Readiness Gates"
            ]
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], 3);
        assert_eq!(cells[5], "10.244.0.5");
        assert_eq!(cells[6], "node-1");
    }

    #[test]
    fn service_ports_print_like_kubectl() {
        let svc = json!({"spec": {"type": "NodePort", "clusterIP": "10.96.0.10",
            "ports": [{"port": 80, "nodePort": 30080}, {"port": 53, "protocol": "UDP"}]}});
        assert_eq!(service_ports(&svc), "80:30080/TCP,53/UDP");
    }
}
