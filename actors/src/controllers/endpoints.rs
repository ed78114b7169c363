//! Endpoints and EndpointSlices for Services with a selector: the pods the selector picks that
//! have an IP, ready ones as addresses and the rest as notReadyAddresses (slices carry
//! ready/serving/terminating conditions), with each Service port's targetPort resolved per pod
//! (a named port is looked up in the pod's containers). Pods are grouped by their resolved
//! ports, as Kubernetes packs subsets. As in Kubernetes, an Endpoints object holds at most
//! 1,000 addresses (ready ones first; beyond that it is annotated
//! `endpoints.kubernetes.io/over-capacity: truncated`), and each port group's EndpointSlices
//! hold at most 100 endpoints each, owned by the Service: a large Service is not rewritten as
//! one huge object on every pod change.
//!
//! Pods are read from a node-local copy (a mirror of the registry feed) holding only what
//! endpoints are made of: every pod change reconciles its namespace's Services, and listing
//! and parsing the namespace's pods from the store each time made that quadratic in the pods
//! of a namespace. Before reading, a reconcile waits until the copy has every change the
//! node's feed has delivered, so it never acts on a state older than the event that woke it.

use flotilla_api::At;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::ApiError;
use flotilla_api::internal::{self, Fence};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use flotilla_consensus::Store;
use tokio::sync::watch;

use super::common::*;
use super::feed::Feed;
use super::mirror::Mirror;
use super::runner::{Ctx, Reconciler};

const MANAGER: &str = "endpoint-controller";
const SERVICES: &str = "/registry/core/services/";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY_US: &str = "endpointslice-controller.k8s.io";
/// kube-controller-manager's limits: addresses per Endpoints object, endpoints per slice.
const MAX_ENDPOINTS_ADDRESSES: usize = 1000;
const MAX_ENDPOINTS_PER_SLICE: usize = 100;
const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";

pub struct EndpointsController {
    /// Every pod on the node's feed, slimmed to what endpoints need (`slim`).
    pods: Mirror<Value>,
}

const PODS: &str = "/registry/core/pods/";

impl EndpointsController {
    pub fn new(store: Store, feed: &Feed, shutdown: watch::Receiver<bool>) -> Self {
        EndpointsController {
            pods: Mirror::on_feed(store, feed, PODS, slim, shutdown),
        }
    }
}

/// What of a pod its endpoints are made of: identity and labels, node, hostname and
/// subdomain, container ports, and its status without the container statuses.
fn slim(pod: &Arc<Value>) -> Option<Value> {
    let meta = pod.get("metadata")?;
    let spec = pod.get("spec");
    let pick = |from: Option<&Value>, keys: &[&str]| -> Value {
        let mut out = serde_json::Map::new();
        for k in keys {
            if let Some(v) = from.and_then(|f| f.get(*k)) {
                out.insert((*k).to_owned(), v.clone());
            }
        }
        Value::Object(out)
    };
    let containers: Vec<Value> = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| pick(Some(c), &["name", "ports"]))
        .collect();
    let mut out = json!({
        "metadata": pick(Some(meta), &["name", "namespace", "uid", "labels", "deletionTimestamp"]),
        "spec": pick(spec, &["nodeName", "hostname", "subdomain"]),
        "status": pick(pod.get("status"), &["phase", "podIP", "podIPs", "conditions"]),
    });
    out["spec"]["containers"] = Value::Array(containers);
    Some(out)
}

/// A Service port resolved for one pod: (name, port, protocol).
type Port = (String, i64, String);

/// The pod's port for a Service port's targetPort (a number, or a container port's name).
fn resolve(svc_port: &Value, pod: &Value) -> Option<i64> {
    let target = svc_port
        .get("targetPort")
        .or_else(|| svc_port.get("port"))?;
    match target {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => pod
            .at("/spec/containers")
            .and_then(Value::as_array)?
            .iter()
            .flat_map(|c| {
                c.get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
            .and_then(|p| p.get("containerPort").and_then(Value::as_i64))
            .or_else(|| name.parse().ok()),
        _ => None,
    }
}

fn ports_for(svc: &Value, pod: &Value) -> Vec<Port> {
    svc.at("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                str_at(p, "/name").to_owned(),
                resolve(p, pod)?,
                p.get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("TCP")
                    .to_owned(),
            ))
        })
        .collect()
}

/// A short, stable suffix for a slice of `service` serving `ports`.
fn slice_name(service: &str, ports: &[Port]) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in format!("{ports:?}").bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{service}-{h:08x}")
}

impl EndpointsController {
    async fn sync(&self, ctx: &Ctx, key: &str) -> Result<Option<Duration>, ApiError> {
        if let Some(ns) = key.strip_suffix("/*") {
            for svc in ctx.list(&format!("{SERVICES}{ns}/")).await? {
                let k = super::runner::key_of(&svc);
                if ctx.fence(&k).is_some() {
                    self.sync_service(ctx, &k).await?;
                }
            }
            return Ok(None);
        }
        self.sync_service(ctx, key).await
    }

    async fn sync_service(&self, ctx: &Ctx, key: &str) -> Result<Option<Duration>, ApiError> {
        let Some(fence) = ctx.fence(key) else {
            return Ok(None);
        };
        let Some(svc) = ctx.get(&format!("{SERVICES}{key}")).await? else {
            return Ok(None);
        };
        // Without a selector the endpoints are the user's to write.
        let Some(selector) = svc
            .at("/spec/selector")
            .filter(|s| s.as_object().is_some_and(|m| !m.is_empty()))
        else {
            return Ok(None);
        };
        let selector = map_selector(selector);
        let ns = str_at(&svc, "/metadata/namespace").to_owned();
        let name = str_at(&svc, "/metadata/name").to_owned();
        let mut groups: BTreeMap<Vec<Port>, Vec<Value>> = BTreeMap::new();
        // Every change the feed has brought (the one that woke this reconcile included).
        let seen = ctx.feed.revision();
        if !self.pods.caught_up(seen, Duration::from_secs(5)).await {
            return Err(ApiError::unavailable("the pod cache is behind the feed"));
        }
        for entry in self.pods.under(&format!("{ns}/")) {
            let pod = Value::clone(&entry.value);
            let labels = pod.at("/metadata/labels").cloned().unwrap_or(json!({}));
            if !selector_matches(&selector, &labels)
                || str_at(&pod, "/status/podIP").is_empty()
                || matches!(str_at(&pod, "/status/phase"), "Succeeded" | "Failed")
            {
                continue;
            }
            groups.entry(ports_for(&svc, &pod)).or_default().push(pod);
        }
        // The copy is unordered: a stable order keeps unchanged objects unwritten.
        for pods in groups.values_mut() {
            pods.sort_by(|a, b| str_at(a, "/metadata/name").cmp(str_at(b, "/metadata/name")));
        }
        let target = |pod: &Value| json!({"kind": "Pod", "name": str_at(pod, "/metadata/name"), "namespace": ns, "uid": str_at(pod, "/metadata/uid")});
        let address = |pod: &Value| {
            let mut a = json!({"ip": str_at(pod, "/status/podIP"), "targetRef": target(pod)});
            if let Some(n) = pod
                .at("/spec/nodeName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            {
                a["nodeName"] = json!(n);
            }
            a
        };
        let port_json = |ports: &[Port]| -> Vec<Value> {
            ports
                .iter()
                .map(|(n, p, proto)| {
                    let mut v = json!({"port": p, "protocol": proto});
                    if !n.is_empty() {
                        v["name"] = json!(n);
                    }
                    v
                })
                .collect()
        };
        // Endpoints: one subset per port group, at most MAX_ENDPOINTS_ADDRESSES addresses in
        // all, ready ones first.
        let serving = |p: &&Value| is_ready(p) && !is_deleting(p);
        let total: usize = groups
            .iter()
            .filter(|(ports, _)| !ports.is_empty())
            .map(|(_, pods)| pods.len())
            .sum();
        let ready_total: usize = groups
            .iter()
            .filter(|(ports, _)| !ports.is_empty())
            .map(|(_, pods)| pods.iter().filter(serving).count())
            .sum();
        let truncated = total > MAX_ENDPOINTS_ADDRESSES;
        let mut ready_room = MAX_ENDPOINTS_ADDRESSES.min(ready_total);
        let mut not_ready_room = MAX_ENDPOINTS_ADDRESSES - ready_room;
        let subsets: Vec<Value> = groups
            .iter()
            .filter(|(ports, _)| !ports.is_empty())
            .map(|(ports, pods)| {
                let ready: Vec<Value> = pods
                    .iter()
                    .filter(serving)
                    .take(ready_room)
                    .map(address)
                    .collect();
                ready_room -= ready.len();
                let not_ready: Vec<Value> = pods
                    .iter()
                    .filter(|p| !serving(p))
                    .take(not_ready_room)
                    .map(address)
                    .collect();
                not_ready_room -= not_ready.len();
                let mut s = json!({"ports": port_json(ports)});
                if !ready.is_empty() {
                    s["addresses"] = json!(ready);
                }
                if !not_ready.is_empty() {
                    s["notReadyAddresses"] = json!(not_ready);
                }
                s
            })
            .filter(|s: &Value| {
                s.get("addresses").is_some() || s.get("notReadyAddresses").is_some()
            })
            .collect();
        let owner = {
            let mut s = svc.clone();
            s["apiVersion"] = json!("v1");
            s["kind"] = json!("Service");
            owner_ref(&s, "v1", "Service")
        };
        let labels = svc.at("/metadata/labels").cloned().unwrap_or(json!({}));
        let mut endpoints = json!({
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "subsets": subsets,
        });
        if truncated {
            endpoints["metadata"]["annotations"] = json!({ OVER_CAPACITY: "truncated" });
        }
        self.put(
            ctx,
            ("", "v1", "endpoints"),
            &ns,
            &name,
            endpoints,
            "subsets",
            &fence,
        )
        .await?;
        // EndpointSlices: per port group, one per MAX_ENDPOINTS_PER_SLICE endpoints (at least
        // one); slices no longer wanted are removed.
        let mut wanted = Vec::new();
        for (ports, all) in &groups {
            for (i, pods) in all.chunks(MAX_ENDPOINTS_PER_SLICE).enumerate() {
                let slice = if i == 0 {
                    slice_name(&name, ports)
                } else {
                    format!("{}-{i}", slice_name(&name, ports))
                };
                wanted.push(slice.clone());
                let endpoints: Vec<Value> = pods
                .iter()
                .map(|p| {
                    let ready = is_ready(p) && !is_deleting(p);
                    let mut e = json!({
                        "addresses": [str_at(p, "/status/podIP")],
                        "conditions": {"ready": ready, "serving": is_ready(p), "terminating": is_deleting(p)},
                        "targetRef": target(p),
                    });
                    if let Some(n) = p.at("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                        e["nodeName"] = json!(n);
                    }
                    e
                })
                .collect();
                let mut slice_labels = labels.clone();
                slice_labels[SERVICE_NAME_LABEL] = json!(name);
                slice_labels[MANAGED_BY] = json!(MANAGED_BY_US);
                let obj = json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {"name": slice, "namespace": ns, "labels": slice_labels, "ownerReferences": [owner]},
                    "addressType": "IPv4",
                    "endpoints": endpoints,
                    "ports": port_json(ports),
                });
                self.put(
                    ctx,
                    ("discovery.k8s.io", "v1", "endpointslices"),
                    &ns,
                    &slice,
                    obj,
                    "endpoints",
                    &fence,
                )
                .await?;
            }
        }
        for old in ctx
            .list(&format!("/registry/discovery.k8s.io/endpointslices/{ns}/"))
            .await?
        {
            let slice = str_at(&old, "/metadata/name");
            if str_at(
                &old,
                &format!("/metadata/labels/{}", SERVICE_NAME_LABEL.replace('/', "~1")),
            ) == name
                && str_at(
                    &old,
                    &format!("/metadata/labels/{}", MANAGED_BY.replace('/', "~1")),
                ) == MANAGED_BY_US
                && !wanted.iter().any(|w| w == slice)
            {
                internal::delete(
                    &ctx.store,
                    ("discovery.k8s.io", "v1", "endpointslices"),
                    Some(&ns),
                    slice,
                    None,
                    None,
                    fence.clone(),
                )
                .await?;
            }
        }
        Ok(None)
    }

    /// Creates or updates `obj` when what it says (`field`, and ports) changed.
    #[allow(clippy::too_many_arguments)]
    async fn put(
        &self,
        ctx: &Ctx,
        gvr: (&str, &str, &str),
        ns: &str,
        name: &str,
        obj: Value,
        field: &str,
        fence: &Fence,
    ) -> Result<(), ApiError> {
        let key = format!(
            "/registry/{}/{}/{ns}/{name}",
            if gvr.0.is_empty() { "core" } else { gvr.0 },
            gvr.2
        );
        match ctx.get(&key).await? {
            None => {
                internal::create(&ctx.store, gvr, Some(ns), obj, MANAGER, fence.clone()).await?;
            }
            Some(current) => {
                let same = current.get(field) == obj.get(field)
                    && current.get("ports") == obj.get("ports")
                    && current.at("/metadata/labels") == obj.at("/metadata/labels");
                if !same {
                    let mut updated = current.clone();
                    for k in [field, "ports", "addressType"] {
                        if let Some(v) = obj.get(k) {
                            updated[k] = v.clone();
                        }
                    }
                    updated["metadata"]["labels"] = obj["metadata"]["labels"].clone();
                    internal::replace(
                        &ctx.store,
                        gvr,
                        Some(ns),
                        name,
                        updated,
                        false,
                        MANAGER,
                        fence.clone(),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}

impl Reconciler for EndpointsController {
    fn name(&self) -> &'static str {
        "Endpoints"
    }

    fn prefix(&self) -> &'static str {
        SERVICES
    }

    fn related(&self) -> &'static [&'static str] {
        &["/registry/core/pods/"]
    }

    fn keys_for(&self, pod: &Value) -> Vec<String> {
        // Which Services select the pod needs the Services: fan out to the namespace.
        vec![format!("{}/*", str_at(pod, "/metadata/namespace"))]
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
    fn named_target_ports_resolve_per_pod() {
        let svc = json!({"spec": {"ports": [{"name": "http", "port": 80, "targetPort": "web"}, {"port": 53, "protocol": "UDP"}]}});
        let pod =
            json!({"spec": {"containers": [{"ports": [{"name": "web", "containerPort": 8080}]}]}});
        assert_eq!(
            ports_for(&svc, &pod),
            vec![
                ("http".to_owned(), 8080, "TCP".to_owned()),
                (String::new(), 53, "UDP".to_owned())
            ]
        );
        let other =
            json!({"spec": {"containers": [{"ports": [{"name": "web", "containerPort": 9090}]}]}});
        assert_ne!(
            slice_name("svc", &ports_for(&svc, &pod)),
            slice_name("svc", &ports_for(&svc, &other))
        );
    }
}
