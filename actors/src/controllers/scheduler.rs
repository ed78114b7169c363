//! The scheduler, sharded like the controllers: each node schedules the pending pods of the
//! shards it owns. Optimistic and shared-state (as in Google's Omega): every shard sees every
//! node, and a binding is a transaction that compares the node's allocation record as read —
//! bumped by every binding to that node — so two shards binding to one node at once cannot
//! both win, and no node is overcommitted. A pass places its pods in memory first, then binds
//! them with one transaction per node (its record compared once), the nodes' in parallel.
//! The record is read before the pods, so the pods read include every binding the record has
//! counted.
//!
//! Filters: the node is live (gossip) and schedulable, its taints are tolerated, the pod's
//! nodeSelector and required node affinity match, requests fit in allocatable minus what its
//! pods request, host ports are free, the PVs its claims are bound to allow the node (a local
//! volume pins its pods to its node; a missing claim keeps the pod pending), inter-pod
//! affinity and anti-affinity hold (`affinity`). Scores (`scoring`): least allocated, balanced
//! allocation, preferred node affinity, inter-pod affinity, and fewest pods of the same owner
//! (spreading a ReplicaSet over nodes). A pod no node fits gets `PodScheduled=False`
//! and a `FailedScheduling` event worded like Kubernetes'; it is retried whenever pods or
//! nodes change.

use flotilla_api::At;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::internal::{self, Fence};
use flotilla_consensus::{CmpOp, Compare, Op, Read, Store};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::affinity::{self, CountedPod, NamespaceLabels, PodAffinityState, PodsOnNode};
use super::common::toleration_matches;
use super::feed::Feed;
use super::mirror::{self, Mirror};
use super::scoring::{self, RawScore};
use super::shards::{Members, Shards};
use super::spread::{self, Constraint, SpreadNode, SpreadState};
use crate::kubelet::parse_quantity;

pub(crate) const ALLOC_PREFIX: &str = "/flotilla/alloc/";
const PODS: &str = "/registry/core/pods/";
const NODES: &str = "/registry/core/nodes/";
const CLAIMS: &str = "/registry/core/persistentvolumeclaims/";
const VOLUMES: &str = "/registry/core/persistentvolumes/";
const NAMESPACES: &str = "/registry/core/namespaces/";
const MANAGER: &str = "flotilla-scheduler";
/// The pods a pass placed on one node (as stored, with their mod revisions) and the shard
/// fences their bindings need.
type NodeBatch = (Vec<(Value, u64)>, Vec<Compare>);

/// Pods a loop over all of them handles between yields to other tasks.
const YIELD_EVERY: usize = 1024;

/// The most pods one binding transaction carries.
const GROUP_PODS: usize = 128;

/// Binding transactions in flight at once.
const BIND_CONCURRENCY: usize = 16;

pub struct SchedulerConfig {
    pub node: String,
    pub store: Store,
    pub shards: Shards,
    /// Live, ready nodes as gossip sees them.
    pub live: Members,
    /// The node daemons that schedule (they own shards).
    pub members: Members,
    /// The node's parsed registry feed, which the mirrors follow.
    pub feed: Feed,
}

/// What the scheduler reads, mirrored in memory from the store (parsed once per change).
struct Views {
    pods: Mirror<PodEntry>,
    nodes: Mirror<NodeEntry>,
    /// Allocation records: bindings counted per node.
    records: Mirror<u64>,
    claims: Mirror<Value>,
    volumes: Mirror<Value>,
}

/// A stored pod and its requests (worked out once per change, not once per pass).
struct PodEntry {
    /// The pod itself, kept only while it is pending: a bound pod is only counted, and
    /// holding every pod's parsed JSON was most of the scheduler's memory.
    pod: Option<Arc<Value>>,
    req: Resources,
    /// What inter-pod affinity needs of it, shared by every pass that counts it on a node.
    affinity: Arc<CountedPod>,
    /// Its host ports and its controller's uid, worked out once too.
    ports: Vec<(String, i64)>,
    owner: Option<Arc<str>>,
    /// The node it is bound to ("" while pending), and whether it has finished.
    node_name: String,
    terminal: bool,
    /// Waiting for this scheduler: no node, `default-scheduler`, not being deleted.
    pending: bool,
    /// `namespace/name` (what its shard is picked by) and when it was created (queue order).
    key: String,
    created: String,
    placement: Placement,
    /// Its own topologySpreadConstraints.
    spread: Vec<Constraint>,
}

fn parse_pod(pod: &Arc<Value>) -> Option<PodEntry> {
    Some(PodEntry::of(pod.clone()))
}

impl PodEntry {
    fn of(pod: Arc<Value>) -> PodEntry {
        let node_name = str_at(&pod, "/spec/nodeName").to_owned();
        let scheduler = str_at(&pod, "/spec/schedulerName");
        let pending = node_name.is_empty()
            && (scheduler.is_empty() || scheduler == "default-scheduler")
            && pod
                .at("/metadata/deletionTimestamp")
                .is_none_or(Value::is_null);
        PodEntry {
            req: requests(&pod),
            affinity: Arc::new(CountedPod::of(&pod)),
            ports: host_ports(&pod),
            owner: owner_uid(&pod).map(Arc::from),
            pending,
            terminal: is_terminal(&pod),
            node_name,
            key: format!(
                "{}/{}",
                str_at(&pod, "/metadata/namespace"),
                str_at(&pod, "/metadata/name")
            ),
            created: str_at(&pod, "/metadata/creationTimestamp").to_owned(),
            placement: if pending {
                Placement::of(&pod)
            } else {
                Placement::default()
            },
            spread: if pending {
                spread::constraints_of(&pod)
            } else {
                Vec::new()
            },
            pod: pending.then_some(pod),
        }
    }
}

/// A node as the filters see it, worked out once per change of the node (a pass asks each
/// node about hundreds of pods).
struct NodeEntry {
    node: Arc<Value>,
    name: String,
    unschedulable: bool,
    /// Its NoSchedule and NoExecute taints (PreferNoSchedule does not filter).
    hard_taints: Vec<Value>,
    allocatable: Resources,
}

fn parse_node(node: &Arc<Value>) -> Option<NodeEntry> {
    Some(NodeEntry::of(node.clone()))
}

impl NodeEntry {
    fn of(node: Arc<Value>) -> NodeEntry {
        NodeEntry {
            name: str_at(&node, "/metadata/name").to_owned(),
            unschedulable: node.at("/spec/unschedulable").and_then(Value::as_bool) == Some(true),
            hard_taints: node
                .at("/spec/taints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|t| matches!(str_at(t, "/effect"), "NoSchedule" | "NoExecute"))
                .cloned()
                .collect(),
            allocatable: allocatable(&node),
            node,
        }
    }
}

/// A pod's node selection rules (nodeSelector, required node affinity, tolerations), taken
/// out of its JSON once.
#[derive(Default)]
pub(crate) struct Placement {
    node_selector: Vec<(String, Value)>,
    required_terms: Option<Vec<Value>>,
    tolerations: Vec<Value>,
}

impl Placement {
    pub(crate) fn of(pod: &Value) -> Self {
        Placement {
            node_selector: pod
                .at("/spec/nodeSelector")
                .and_then(Value::as_object)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            required_terms: pod
                .at("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
                .and_then(Value::as_array)
                .cloned(),
            tolerations: pod
                .at("/spec/tolerations")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// nodeSelector and required node affinity.
    pub(crate) fn selects(&self, node: &Value) -> bool {
        if !self.node_selector.is_empty() {
            let labels = node.at("/metadata/labels").and_then(Value::as_object);
            if !self
                .node_selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            {
                return false;
            }
        }
        // Terms are ORed; the expressions of a term are ANDed.
        self.required_terms.as_ref().is_none_or(|terms| {
            terms
                .iter()
                .any(|term| affinity::node_selector_term_matches(term, node))
        })
    }
}

fn parse_count(kv: &flotilla_consensus::KeyValue) -> Option<u64> {
    std::str::from_utf8(&kv.value).ok()?.parse().ok()
}

/// Starts the scheduler loop; it stops with `shutdown`.
pub fn start(config: SchedulerConfig, mut shutdown: watch::Receiver<bool>) {
    let store = &config.store;
    let feed = &config.feed;
    // Claims and volumes are few and change seldom.
    fn copy(v: &Arc<Value>) -> Option<Value> {
        Some(Value::clone(v))
    }
    let views = Views {
        pods: Mirror::on_feed(store.clone(), feed, PODS, parse_pod, shutdown.clone()),
        nodes: Mirror::on_feed(store.clone(), feed, NODES, parse_node, shutdown.clone()),
        records: Mirror::start(store.clone(), ALLOC_PREFIX, parse_count, shutdown.clone()),
        claims: Mirror::on_feed(store.clone(), feed, CLAIMS, copy, shutdown.clone()),
        volumes: Mirror::on_feed(store.clone(), feed, VOLUMES, copy, shutdown.clone()),
    };
    tokio::spawn(async move {
        let mut shards = config.shards.clone();
        let (mut pods, mut nodes) = (views.pods.clone(), views.nodes.clone());
        let (mut claims, mut volumes) = (views.claims.clone(), views.volumes.clone());
        // Where the next search over nodes starts; each daemon starts elsewhere, so shards
        // binding at once mostly pick different nodes (fewer lost races).
        let mut next_start = config
            .node
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        loop {
            let began = tokio::time::Instant::now();
            if let Err(e) = pass(&config, &views, &mut next_start).await {
                tracing::debug!(error = %e.message(), "scheduling pass failed");
            }
            // A pass costs about the same for one pod as for a thousand (it counts every
            // bound pod): pause as long as it took, so a busy scheduler takes larger batches
            // and leaves the node's API and Raft at least half the time.
            let took = began.elapsed().min(Duration::from_secs(1));
            // Until something changes (a pod, a node, a volume, shard ownership) or a second
            // passes.
            tokio::select! {
                _ = pods.changed() => {}
                _ = nodes.changed() => {}
                _ = claims.changed() => {}
                _ = volumes.changed() => {}
                _ = shards.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
            // Let a burst of changes settle into one pass.
            tokio::time::sleep(took.max(Duration::from_millis(20))).await;
        }
    });
}

/// The member whose share `node` is in (rendezvous hashing: stable while members stay).
fn home_of<'a>(members: &'a [String], node: &str) -> Option<&'a String> {
    members
        .iter()
        .max_by_key(|m| super::shards::hash(&format!("{m}/{node}")))
}

/// How many feasible nodes a pod's search stops at: kube-scheduler's adaptive
/// percentageOfNodesToScore (every node up to 100, then 50% falling towards 5% as the cluster
/// grows, never fewer than 100).
fn nodes_to_find(total: usize) -> usize {
    if total <= 100 {
        return total;
    }
    let pct = (50 - (total / 125) as i64).max(5) as usize;
    (total * pct / 100).max(100)
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.at(p).and_then(Value::as_str).unwrap_or("")
}

/// A pod's requests: the sum over its containers, or the largest init container's if more.
fn requests(pod: &Value) -> Resources {
    let of = |c: &Value| Resources {
        cpu_milli: c
            .at("/resources/requests/cpu")
            .and_then(Value::as_str)
            .and_then(parse_quantity)
            .map_or(0, |v| (v * 1000.0).ceil() as i64),
        memory: c
            .at("/resources/requests/memory")
            .and_then(Value::as_str)
            .and_then(parse_quantity)
            .map_or(0, |v| v as i64),
        pods: 0,
    };
    let list = |p: &str| {
        pod.at(p)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut sum = Resources::default();
    for c in list("/spec/containers") {
        sum.add(&of(&c));
    }
    for c in list("/spec/initContainers") {
        let r = of(&c);
        sum.cpu_milli = sum.cpu_milli.max(r.cpu_milli);
        sum.memory = sum.memory.max(r.memory);
    }
    sum.pods = 1;
    sum
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Resources {
    cpu_milli: i64,
    memory: i64,
    pods: i64,
}

impl Resources {
    fn add(&mut self, o: &Resources) {
        self.cpu_milli += o.cpu_milli;
        self.memory += o.memory;
        self.pods += o.pods;
    }
}

/// What the scheduler knows of a node.
struct NodeInfo {
    name: String,
    facts: Arc<NodeEntry>,
    /// Live and ready, as gossip sees it at the start of the pass.
    live: bool,
    allocatable: Resources,
    used: Resources,
    host_ports: HashSet<(String, i64)>,
    /// Pods per owner uid (for spreading).
    owners: HashMap<Arc<str>, i64>,
    /// The pods here as inter-pod affinity sees them.
    pods: PodsOnNode,
    /// The allocation record as read: its binding count and mod revision (0: none yet).
    record: (u64, u64),
}

impl NodeInfo {
    /// Counts a pod bound (or just placed) here.
    fn account(&mut self, entry: &PodEntry) {
        self.used.add(&entry.req);
        self.host_ports.extend(entry.ports.iter().cloned());
        if let Some(o) = &entry.owner {
            *self.owners.entry(o.clone()).or_default() += 1;
        }
        self.pods.add(entry.affinity.clone());
    }
}

fn allocatable(node: &Value) -> Resources {
    let q = |k: &str| {
        node.at(&format!("/status/allocatable/{k}"))
            .and_then(Value::as_str)
            .and_then(parse_quantity)
    };
    Resources {
        cpu_milli: q("cpu").map_or(0, |v| (v * 1000.0) as i64),
        memory: q("memory").map_or(0, |v| v as i64),
        pods: q("pods").map_or(110, |v| v as i64),
    }
}

fn owner_uid(pod: &Value) -> Option<&str> {
    pod.at("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
        .and_then(|o| o.get("uid").and_then(Value::as_str))
}

fn host_ports(pod: &Value) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for c in pod
        .at("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for p in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(hp) = p.get("hostPort").and_then(Value::as_i64).filter(|p| *p > 0) {
                let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                out.push((proto.to_owned(), hp));
            }
        }
    }
    out
}

/// Whether `tolerations` tolerate `taint` (Kubernetes' matching rules).
pub(crate) fn tolerates(tolerations: &[Value], taint: &Value) -> bool {
    tolerations.iter().any(|t| toleration_matches(t, taint))
}

/// A nodeSelectorRequirement against the node's labels.
pub(super) fn requirement_matches(req: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    let key = str_at(req, "/key");
    let have = labels.get(key).and_then(Value::as_str);
    let values: Vec<&str> = req
        .get("values")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let num = |s: &str| s.parse::<i64>().ok();
    match str_at(req, "/operator") {
        "In" => have.is_some_and(|h| values.contains(&h)),
        "NotIn" => !have.is_some_and(|h| values.contains(&h)),
        "Exists" => have.is_some(),
        "DoesNotExist" => have.is_none(),
        "Gt" => {
            matches!((have.and_then(num), values.first().and_then(|v| num(v))), (Some(h), Some(v)) if h > v)
        }
        "Lt" => {
            matches!((have.and_then(num), values.first().and_then(|v| num(v))), (Some(h), Some(v)) if h < v)
        }
        _ => false,
    }
}

/// nodeSelector and required node affinity.
pub(crate) fn selects(pod: &Value, node: &Value) -> bool {
    Placement::of(pod).selects(node)
}

/// Whether `node` satisfies every required node affinity of the pod's bound volumes (each
/// entry is one PV's `nodeSelectorTerms`: ORed terms of ANDed expressions).
fn volumes_allow(volume_terms: &[Value], node: &Value) -> bool {
    volume_terms.iter().all(|terms| {
        terms.as_array().is_none_or(|terms| {
            terms
                .iter()
                .any(|term| affinity::node_selector_term_matches(term, node))
        })
    })
}

/// The node affinities of the PVs the pod's claims are bound to; an unbound claim adds none
/// (its volume is provisioned where the pod lands: WaitForFirstConsumer). Err: why the pod
/// cannot be scheduled anywhere yet, in Kubernetes' words.
fn pod_volume_terms(
    pod: &Value,
    claims: &HashMap<String, Value>,
    volumes: &HashMap<String, Value>,
) -> Result<Vec<Value>, String> {
    let ns = str_at(pod, "/metadata/namespace");
    let mut out = Vec::new();
    for v in pod
        .at("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(claim) = v
            .at("/persistentVolumeClaim/claimName")
            .and_then(Value::as_str)
        else {
            continue;
        };
        let Some(pvc) = claims.get(&format!("{ns}/{claim}")) else {
            return Err(format!("persistentvolumeclaim \"{claim}\" not found"));
        };
        if pvc
            .at("/metadata/deletionTimestamp")
            .is_some_and(|t| !t.is_null())
        {
            return Err(format!(
                "persistentvolumeclaim \"{claim}\" is being deleted"
            ));
        }
        let pv_name = str_at(pvc, "/spec/volumeName");
        if pv_name.is_empty() {
            continue;
        }
        let Some(pv) = volumes.get(pv_name) else {
            return Err(format!("persistentvolume \"{pv_name}\" not found"));
        };
        if let Some(terms) = pv.at("/spec/nodeAffinity/required/nodeSelectorTerms") {
            out.push(terms.clone());
        }
    }
    Ok(out)
}

/// Why `node` cannot take `pod`, in the scheduler's words; `None` if it can.
fn unfit(pod: &PodEntry, n: &NodeInfo) -> Option<Cow<'static, str>> {
    if !n.live {
        return Some("node(s) were not ready".into());
    }
    if n.facts.unschedulable {
        return Some("node(s) were unschedulable".into());
    }
    let placement = &pod.placement;
    for taint in &n.facts.hard_taints {
        if !tolerates(&placement.tolerations, taint) {
            return Some(
                format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    str_at(taint, "/key"),
                    str_at(taint, "/value")
                )
                .into(),
            );
        }
    }
    if !placement.selects(&n.facts.node) {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    let req = &pod.req;
    if n.used.pods + 1 > n.allocatable.pods {
        return Some("Too many pods".into());
    }
    if req.cpu_milli > 0 && n.used.cpu_milli + req.cpu_milli > n.allocatable.cpu_milli {
        return Some("Insufficient cpu".into());
    }
    if req.memory > 0 && n.used.memory + req.memory > n.allocatable.memory {
        return Some("Insufficient memory".into());
    }
    if !n.host_ports.is_empty() && pod.ports.iter().any(|p| n.host_ports.contains(p)) {
        return Some("node(s) didn't have free ports for the requested pod ports".into());
    }
    None
}

/// The node's scores for the pod before normalisation (see `scoring`): free share of cpu,
/// memory and pod slots after placing it, balanced allocation, preferred node affinity,
/// inter-pod affinity, and the pods of its controller already there.
fn score(
    entry: &PodEntry,
    n: &NodeInfo,
    preferred: Option<&Vec<Value>>,
    pod_affinity: Option<&PodAffinityState>,
    spread: Option<&SpreadState>,
) -> RawScore {
    let free = |alloc: i64, used: i64| {
        if alloc <= 0 {
            0.0
        } else {
            (alloc - used) as f64 / alloc as f64
        }
    };
    let req = &entry.req;
    let cpu = n.used.cpu_milli + req.cpu_milli;
    let memory = n.used.memory + req.memory;
    let least = (free(n.allocatable.cpu_milli, cpu)
        + free(n.allocatable.memory, memory)
        + free(n.allocatable.pods, n.used.pods + 1))
        / 3.0;
    RawScore {
        least_allocated: least * 100.0,
        balanced: (req.cpu_milli > 0 || req.memory > 0).then(|| {
            scoring::balanced_allocation(
                [cpu, memory],
                [n.allocatable.cpu_milli, n.allocatable.memory],
            )
        }),
        node_affinity: preferred.map_or(0, |t| affinity::preferred_node_score(t, &n.facts.node)),
        inter_pod: pod_affinity.map_or(0, |a| a.score(&n.facts.node)),
        // A pod with constraints of its own is spread by them alone.
        same_owner: entry
            .owner
            .as_ref()
            .filter(|_| spread.is_none())
            .map(|o| n.owners.get(o).copied().unwrap_or(0)),
        topology_spread: spread.and_then(|s| s.score(&n.facts.node)),
    }
}

/// Kubernetes' summary: "0/3 nodes are available: 1 Insufficient cpu, 2 Too many pods."
fn summary(total: usize, reasons: &BTreeMap<Cow<'static, str>, usize>) -> String {
    let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    if parts.is_empty() {
        return format!("0/{total} nodes are available.");
    }
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

fn is_terminal(pod: &Value) -> bool {
    matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed")
}

async fn pass(
    config: &SchedulerConfig,
    views: &Views,
    next_start: &mut usize,
) -> Result<(), flotilla_api::ApiError> {
    let owned = config.shards.owned();
    if owned.is_empty() || views.pods.revision() == 0 || views.nodes.revision() == 0 {
        return Ok(());
    }
    let began = std::time::Instant::now();
    // Most wake-ups are status changes of running pods: nothing to place, nothing to do.
    if !views.pods.any(|e| e.pending) {
        return Ok(());
    }
    // Records first, then pods that include every binding the records count (a binding
    // writes its pods and its node's record in one revision).
    let (_, recs) = views.records.snapshot();
    let records: HashMap<String, (u64, u64)> = recs
        .into_iter()
        .map(|(k, e)| (k, (*e.value, e.mod_revision)))
        .collect();
    let newest = records.values().map(|r| r.1).max().unwrap_or(0);
    if !views.pods.caught_up(newest, Duration::from_secs(2)).await {
        return Ok(());
    }
    let (_, pod_entries) = views.pods.values();
    let live: HashSet<String> = (config.live)().into_iter().collect();
    let (_, node_entries) = views.nodes.values();
    let mut nodes: Vec<NodeInfo> = node_entries
        .into_iter()
        .map(|e| {
            let facts = e.value;
            let name = facts.name.clone();
            NodeInfo {
                live: live.contains(&name),
                allocatable: facts.allocatable,
                used: Resources::default(),
                host_ports: HashSet::new(),
                owners: HashMap::new(),
                pods: PodsOnNode::default(),
                record: records.get(&name).copied().unwrap_or((0, 0)),
                name,
                facts,
            }
        })
        .collect();
    // A stable order, so the rotating search start means the same nodes from pass to pass.
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let by_key = |entries: Vec<(String, mirror::Entry<Value>)>| -> HashMap<String, Value> {
        entries
            .into_iter()
            .map(|(k, e)| (k, (*e.value).clone()))
            .collect()
    };
    let claims = by_key(views.claims.snapshot().1);
    let volumes = by_key(views.volumes.snapshot().1);
    let index: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    let mut pending = Vec::new();
    for (k, entry) in pod_entries.into_iter().enumerate() {
        // Long loops over every pod yield now and then: the node's Raft shares these threads.
        if k % YIELD_EVERY == YIELD_EVERY - 1 {
            tokio::task::yield_now().await;
        }
        let e = &entry.value;
        if !e.node_name.is_empty() {
            if let Some(&i) = index.get(&e.node_name)
                && !e.terminal
            {
                nodes[i].account(e);
            }
            continue;
        }
        if !e.pending {
            continue;
        }
        let shard = config.shards.shard_of(&e.key);
        if owned.contains_key(&shard) {
            pending.push((entry, shard));
        }
    }
    let mut plan: BTreeMap<usize, NodeBatch> = BTreeMap::new();
    let mut nodes_need_namespace_labels = nodes.iter().any(|n| n.pods.need_namespace_labels());
    // Read only once a term with a namespaceSelector needs them.
    let mut namespaces: Option<NamespaceLabels> = None;
    let mut feasible: Vec<(usize, RawScore)> = Vec::with_capacity(nodes.len());
    // Oldest first, as a queue would.
    pending.sort_by(|a, b| a.0.value.created.cmp(&b.0.value.created));
    let to_find = nodes_to_find(nodes.len());
    // Above 100 nodes (where the search is a sample anyway) each daemon searches its own
    // share of the nodes first, picked by rendezvous hashing, so daemons binding at once
    // rarely pick the same node and lose the race on its record; the others only when
    // none of its own fit.
    let members = (config.members)();
    let (home, away): (Vec<usize>, Vec<usize>) = if nodes.len() > 100 && members.len() > 1 {
        (0..nodes.len()).partition(|&i| home_of(&members, &nodes[i].name) == Some(&config.node))
    } else {
        ((0..nodes.len()).collect(), Vec::new())
    };
    for (k, (entry, shard)) in pending.into_iter().enumerate() {
        if k % 64 == 63 {
            tokio::task::yield_now().await;
        }
        let Some(fence) = config.shards.fence(shard) else {
            continue;
        };
        let PodEntry {
            pod: Some(pod),
            affinity,
            ..
        } = &*entry.value
        else {
            continue;
        };
        let volume_terms = match pod_volume_terms(pod, &claims, &volumes) {
            Ok(t) => t,
            Err(why) => {
                let message = format!("0/{} nodes are available: {why}.", nodes.len());
                unschedulable(config, pod, &message, fence).await;
                continue;
            }
        };
        if namespaces.is_none()
            && (affinity.needs_namespace_labels() || nodes_need_namespace_labels)
        {
            let kvs = config
                .store
                .range(NAMESPACES, usize::MAX, Read::Linearizable)
                .await?
                .kvs;
            namespaces = Some(NamespaceLabels::from_objects(
                kvs.iter()
                    .filter_map(|kv| serde_json::from_slice(&kv.value).ok()),
            ));
        }
        // Inter-pod affinity's counts for this pod, over every pod counted so far (those placed
        // earlier in this pass included).
        let pod_affinity = PodAffinityState::prepare(
            affinity,
            nodes.iter().map(|n| (&*n.facts.node, &n.pods)),
            namespaces.as_ref().unwrap_or(&NamespaceLabels::default()),
        );
        let placement = &entry.value.placement;
        let spread = SpreadState::prepare(
            affinity,
            &entry.value.spread,
            nodes.iter().map(|n| SpreadNode {
                node: &n.facts.node,
                pods: &n.pods,
                selected: placement.selects(&n.facts.node),
                tolerated: n
                    .facts
                    .hard_taints
                    .iter()
                    .all(|t| tolerates(&placement.tolerations, t)),
            }),
        );
        let preferred = affinity::preferred_node_terms(pod);
        // Like kube-scheduler, stop once enough feasible nodes were found, and start the
        // next pod's search where this one stopped (every node gets its turn).
        let mut reasons: BTreeMap<Cow<'static, str>, usize> = BTreeMap::new();
        feasible.clear();
        let mut searched = 0;
        'search: for (list, own) in [(&home, true), (&away, false)] {
            if !own && !feasible.is_empty() {
                break;
            }
            for k in 0..list.len() {
                let i = if own {
                    searched = k + 1;
                    list[(*next_start + k) % list.len()]
                } else {
                    list[k]
                };
                let n = &nodes[i];
                let why = if volume_terms.is_empty() || volumes_allow(&volume_terms, &n.facts.node)
                {
                    unfit(&entry.value, n)
                        .or_else(|| {
                            pod_affinity
                                .as_ref()
                                .and_then(|a| a.unfit(&n.facts.node))
                                .map(Cow::Borrowed)
                        })
                        .or_else(|| {
                            spread
                                .as_ref()
                                .and_then(|s| s.unfit(&n.facts.node))
                                .map(Cow::Borrowed)
                        })
                } else {
                    Some("node(s) had volume node affinity conflict".into())
                };
                match why {
                    Some(r) => *reasons.entry(r).or_default() += 1,
                    None => {
                        feasible.push((
                            i,
                            score(
                                &entry.value,
                                n,
                                preferred,
                                pod_affinity.as_ref(),
                                spread.as_ref(),
                            ),
                        ));
                        if feasible.len() >= to_find {
                            break 'search;
                        }
                    }
                }
            }
        }
        if !home.is_empty() {
            *next_start = (*next_start + searched) % home.len();
        }
        let Some(i) = scoring::best(&feasible) else {
            unschedulable(config, pod, &summary(nodes.len(), &reasons), fence).await;
            continue;
        };
        // Placed in memory now, so the next pods see this one's requests; written below.
        nodes[i].account(&entry.value);
        nodes_need_namespace_labels |= affinity.needs_namespace_labels();
        let batch = plan.entry(i).or_default();
        if !batch.1.contains(&fence) {
            batch.1.push(fence);
        }
        batch.0.push((Value::clone(pod), entry.mod_revision));
    }
    let store = &config.store;
    // One transaction per node, comparing its allocation record once for all its pods; the
    // nodes' transactions go concurrently (Raft batches them into few log appends).
    let placed_pods: usize = plan.values().map(|b| b.0.len()).sum();
    // Several nodes' bindings per transaction (fewer, larger Raft entries): each node's
    // record compared and bumped, all or nothing. Lost races are rare (each daemon searches
    // its own share of the nodes first), so a group seldom fails for one node.
    let mut groups: Vec<Vec<(usize, NodeBatch)>> = Vec::new();
    let mut in_group = 0;
    for (i, batch) in plan {
        if groups.is_empty() || in_group + batch.0.len() > GROUP_PODS {
            groups.push(Vec::new());
            in_group = 0;
        }
        in_group += batch.0.len();
        if let Some(g) = groups.last_mut() {
            g.push((i, batch));
        }
    }
    let batches: Vec<_> = groups
        .into_iter()
        .map(|group| {
            let mut compare: Vec<Compare> = Vec::new();
            let mut also = Vec::new();
            let mut binds: Vec<(String, Vec<(Value, u64)>)> = Vec::new();
            for (i, (pods, fences)) in group {
                let n = &nodes[i];
                let record_key = format!("{ALLOC_PREFIX}{}", n.name);
                for f in fences {
                    if !compare.contains(&f) {
                        compare.push(f);
                    }
                }
                compare.push(if n.record.1 == 0 {
                    Compare::Missing {
                        key: record_key.clone(),
                    }
                } else {
                    Compare::ModRevision {
                        key: record_key.clone(),
                        op: CmpOp::Equal,
                        revision: n.record.1,
                    }
                });
                also.push(Op::Put {
                    key: record_key,
                    value: (n.record.0 + pods.len() as u64).to_string().into_bytes(),
                });
                binds.push((n.name.clone(), pods));
            }
            async move {
                let groups: Vec<(&str, &[(Value, u64)])> = binds
                    .iter()
                    .map(|(n, p)| (n.as_str(), p.as_slice()))
                    .collect();
                match internal::bind_groups(store, &groups, Fence { compare, also }).await {
                    Ok(Some(revision)) => revision,
                    // Another shard bound to one of these nodes, or a pod changed: the next
                    // pass re-reads.
                    Ok(None) => 0,
                    Err(e) => {
                        tracing::debug!(error = %e.message(), "binding failed");
                        0
                    }
                }
            }
        })
        .collect();
    let (placed, planned) = (placed_pods, batches.len());
    let binding = std::time::Instant::now();
    let written = futures::stream::iter(batches)
        .buffer_unordered(BIND_CONCURRENCY)
        .collect::<Vec<u64>>()
        .await;
    tracing::debug!(
        placed,
        batches = planned,
        lost = written.iter().filter(|r| **r == 0).count(),
        planning_ms = (binding - began).as_millis() as u64,
        binding_ms = binding.elapsed().as_millis() as u64,
        "scheduling pass"
    );
    // The next pass must see these bindings (or it would place their pods again and lose
    // every race): wait until the mirrors have them.
    if let Some(&last) = written.iter().max().filter(|r| **r > 0) {
        let limit = Duration::from_secs(2);
        views.pods.caught_up(last, limit).await;
        views.records.caught_up(last, limit).await;
    }
    Ok(())
}

/// Marks a pod that fits nowhere: `PodScheduled=False` and a `FailedScheduling` event, once
/// per distinct reason (the pass runs often).
async fn unschedulable(config: &SchedulerConfig, pod: &Value, message: &str, fence: Compare) {
    let current = pod
        .at("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| str_at(c, "/type") == "PodScheduled"));
    if current.is_some_and(|c| str_at(c, "/message") == message) {
        return;
    }
    let ns = str_at(pod, "/metadata/namespace");
    let name = str_at(pod, "/metadata/name");
    let now = flotilla_api::rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    let mut updated = pod.clone();
    let mut conditions: Vec<Value> = pod
        .at("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    conditions.retain(|c| str_at(c, "/type") != "PodScheduled");
    conditions.push(json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message, "lastProbeTime": null, "lastTransitionTime": now}));
    updated["status"]["conditions"] = json!(conditions);
    let written = internal::replace(
        &config.store,
        ("", "v1", "pods"),
        Some(ns),
        name,
        updated,
        true,
        MANAGER,
        Fence {
            compare: vec![fence.clone()],
            also: vec![],
        },
    )
    .await;
    if !matches!(written, Ok(Some(_))) {
        return;
    }
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": ns, "uid": str_at(pod, "/metadata/uid")},
        "reason": "FailedScheduling",
        "message": message,
        "type": "Warning",
        "count": 1,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "source": {"component": "default-scheduler"},
        "reportingComponent": "default-scheduler",
        "reportingInstance": config.node,
    });
    let _ = internal::create(
        &config.store,
        ("", "v1", "events"),
        Some(ns),
        event,
        MANAGER,
        Fence {
            compare: vec![fence],
            also: vec![],
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_local_volumes_pin_pods_to_their_node() {
        let pod = json!({"metadata": {"namespace": "default"}, "spec": {"volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "data-web-0"}}]}});
        let node = |name: &str| json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}});
        let mut claims = HashMap::new();
        let volumes = HashMap::from([(
            "pvc-1".to_owned(),
            json!({"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n2"]}]}]}}}}),
        )]);
        assert_eq!(
            pod_volume_terms(&pod, &claims, &volumes),
            Err("persistentvolumeclaim \"data-web-0\" not found".to_owned())
        );
        // Unbound (WaitForFirstConsumer): any node.
        claims.insert("default/data-web-0".to_owned(), json!({"spec": {}}));
        let terms = pod_volume_terms(&pod, &claims, &volumes).unwrap();
        assert!(volumes_allow(&terms, &node("n1")));
        claims.insert(
            "default/data-web-0".to_owned(),
            json!({"spec": {"volumeName": "pvc-1"}}),
        );
        let terms = pod_volume_terms(&pod, &claims, &volumes).unwrap();
        assert!(!volumes_allow(&terms, &node("n1")));
        assert!(volumes_allow(&terms, &node("n2")));
    }

    #[test]
    fn filters_and_messages() {
        let node = json!({"metadata": {"name": "n1", "labels": {"disk": "ssd", "zone": "a"}},
            "spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": "2", "memory": "1Gi", "pods": "110"}}});
        let mut info = NodeInfo {
            name: "n1".into(),
            allocatable: allocatable(&node),
            facts: Arc::new(NodeEntry::of(Arc::new(node))),
            live: true,
            used: Resources {
                cpu_milli: 1500,
                memory: 0,
                pods: 3,
            },
            host_ports: HashSet::from([("TCP".to_owned(), 8080)]),
            owners: HashMap::new(),
            pods: PodsOnNode::default(),
            record: (0, 0),
        };
        let tolerant = json!([{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]);
        let pod = |extra: Value| {
            let mut p = json!({"spec": {"tolerations": tolerant, "containers": [{"name": "c", "resources": {"requests": {"cpu": "250m"}}}]}});
            if let (Some(spec), Some(more)) = (p["spec"].as_object_mut(), extra.as_object()) {
                for (k, v) in more {
                    spec.insert(k.clone(), v.clone());
                }
            }
            p
        };
        let ok = pod(json!({}));
        assert_eq!(unfit(&PodEntry::of(Arc::new(ok.clone())), &info), None);
        let untolerated = json!({"spec": {"containers": []}});
        assert_eq!(
            unfit(&PodEntry::of(Arc::new(untolerated.clone())), &info).unwrap(),
            "node(s) had untolerated taint {dedicated: db}"
        );
        let big =
            pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "600m"}}}]}));
        assert_eq!(
            unfit(&PodEntry::of(Arc::new(big.clone())), &info).unwrap(),
            "Insufficient cpu"
        );
        let hdd = pod(json!({"nodeSelector": {"disk": "hdd"}}));
        assert!(
            unfit(&PodEntry::of(Arc::new(hdd.clone())), &info)
                .unwrap()
                .contains("affinity/selector")
        );
        let affine = pod(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
            {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}]}}}}),
        );
        assert_eq!(unfit(&PodEntry::of(Arc::new(affine.clone())), &info), None);
        let port = pod(
            json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
        );
        assert!(
            unfit(&PodEntry::of(Arc::new(port.clone())), &info)
                .unwrap()
                .contains("free ports")
        );
        info.live = false;
        assert_eq!(
            unfit(&PodEntry::of(Arc::new(ok.clone())), &info).unwrap(),
            "node(s) were not ready"
        );
        let reasons = BTreeMap::from([("Insufficient cpu".into(), 3)]);
        assert_eq!(
            summary(3, &reasons),
            "0/3 nodes are available: 3 Insufficient cpu."
        );
        let init = json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
            "initContainers": [{"resources": {"requests": {"cpu": "1"}}}]}});
        assert_eq!(
            requests(&init),
            Resources {
                cpu_milli: 1000,
                memory: 64 << 20,
                pods: 1
            }
        );
    }
}
