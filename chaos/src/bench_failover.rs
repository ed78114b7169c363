//! `flotilla bench failover`: a cluster of real node processes (default 4) runs a Deployment of
//! `--pods` pods; a non-leader node holding some of them (with `--kill-leader`, the Raft leader,
//! so a new leader must be elected too) is SIGKILLed, and watches (served by a surviving node)
//! record when the cluster notices and when the pods are back:
//!
//! - detect: SIGKILL → the Node's `Ready` condition is `Unknown`;
//! - replaced: SIGKILL → every pod the node held is being deleted and `--pods` pods are
//!   Running on the other nodes;
//! - available: SIGKILL → the Deployment reports `availableReplicas` = `--pods` again (after it
//!   dropped).
//!
//! Each run also prints its timeline (taint, first and last eviction, replacements created,
//! bound, Running) so the time can be traced to a stage. The killed node is restarted, and the
//! cluster settles (its evicted pods gone, every node Ready), before the next run.
//!
//! Anchor: with default settings Kubernetes evicts pods about 5 min 50 s after a node stops
//! answering (40 s `node-monitor-grace-period`, then 300 s of default toleration, plus the
//! taint manager's and the controllers' delays). Aim: p99 ≤ 5 s from SIGKILL to replaced.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::bench_pods::pct;
use crate::launcher::{LocalCluster, LocalClusterConfig, free_base_port};

const DEPLOYMENT: &str = "failover";
const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// Longest one run (kill → available) or one settling (restart → all Ready) may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchRuntime {
    /// No processes: pods are Running as soon as their kubelet takes them.
    Sim,
    /// Real processes from the local busybox image.
    Process,
}

#[derive(clap::Args, Debug, Clone)]
pub struct FailoverBenchArgs {
    /// Node processes in the cluster (3 of them Raft voters).
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Replicas of the Deployment.
    #[arg(long, default_value_t = 30)]
    pub pods: usize,
    /// Kills (the killed node is restarted between runs).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// The nodes' container runtime.
    #[arg(long, value_enum, default_value = "sim")]
    pub runtime: BenchRuntime,
    /// The busybox image archive for `--runtime process` (built with
    /// scripts/build-busybox-image.sh when absent).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Keep the data (node logs) here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// An extra flag for every node, e.g. `--node-arg=--default-unreachable-toleration-seconds=5`
    /// (repeatable).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
    /// Kill the Raft leader (it holds pods too) instead of a non-leader node.
    #[arg(long)]
    pub kill_leader: bool,
}

/// A small JSON-over-HTTP client for one API server.
#[derive(Clone)]
struct Api {
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

impl Api {
    fn new() -> Api {
        Api {
            http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http(),
        }
    }

    async fn send(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(Value::to_string).unwrap_or_default(),
            )))?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.http.request(req))
            .await
            .with_context(|| format!("{method} {url} timed out"))??;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    async fn get(&self, url: &str) -> anyhow::Result<Value> {
        match self.send("GET", url, None).await? {
            (200, v) => Ok(v),
            (s, v) => bail!("GET {url}: {s} {v}"),
        }
    }

    /// Streams the events of `?watch=true` on `url` (from `rv`) into `tx`, tagged with `kind`
    /// and the time they arrived, until the receiver goes away.
    fn watch(&self, url: String, rv: String, kind: Kind, tx: mpsc::Sender<(Instant, Kind, Value)>) {
        let http = self.http.clone();
        tokio::spawn(async move {
            let url = format!("{url}?watch=true&resourceVersion={rv}&timeoutSeconds=3600");
            let req = hyper::Request::builder()
                .uri(url)
                .body(Full::new(Bytes::new()))?;
            let mut body = http.request(req).await?.into_body();
            let mut buf = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame?.into_data() else {
                    continue;
                };
                let now = Instant::now();
                buf.extend_from_slice(&data);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    if let Ok(ev) = serde_json::from_slice::<Value>(&line)
                        && tx.send((now, kind, ev)).await.is_err()
                    {
                        return anyhow::Ok(());
                    }
                }
            }
            anyhow::Ok(())
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Node,
    Pod,
    Deployment,
}

fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    v.pointer(path).and_then(Value::as_str).unwrap_or("")
}

fn node_ready(node: &Value) -> &str {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| str_at(c, "/type") == "Ready"))
        .map_or("", |c| str_at(c, "/status"))
}

fn node_tainted(node: &Value) -> bool {
    node.pointer("/spec/taints")
        .and_then(Value::as_array)
        .is_some_and(|ts| ts.iter().any(|t| str_at(t, "/key") == UNREACHABLE_TAINT))
}

#[derive(Debug, Clone)]
struct PodState {
    node: String,
    running: bool,
    deleting: bool,
}

fn pod_state(pod: &Value) -> PodState {
    PodState {
        node: str_at(pod, "/spec/nodeName").to_owned(),
        running: str_at(pod, "/status/phase") == "Running",
        deleting: pod.pointer("/metadata/deletionTimestamp").is_some(),
    }
}

/// What one run saw, as offsets from the SIGKILL.
#[derive(Default, Debug)]
struct Timeline {
    tainted: Option<Duration>,
    detected: Option<Duration>,
    first_evicted: Option<Duration>,
    all_evicted: Option<Duration>,
    first_created: Option<Duration>,
    all_created: Option<Duration>,
    all_bound: Option<Duration>,
    replaced: Option<Duration>,
    dropped: bool,
    available: Option<Duration>,
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.0}", d.as_secs_f64() * 1000.0))
}

pub async fn failover(args: FailoverBenchArgs) -> anyhow::Result<()> {
    if args.nodes < 3 {
        bail!("--nodes must be at least 3 (a quorum must survive the kill)");
    }
    let tmp = tempfile::tempdir()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
    let mut extra_args = vec![
        "--runtime".to_owned(),
        match args.runtime {
            BenchRuntime::Sim => "sim",
            BenchRuntime::Process => "process",
        }
        .to_owned(),
    ];
    extra_args.extend(args.node_args.iter().cloned());
    let base_port = free_base_port(args.nodes)?;
    let mut cluster = LocalCluster::prepare(LocalClusterConfig {
        binary: std::env::current_exe()?,
        data_dir: data_dir.join("flotilla"),
        nodes: args.nodes,
        base_port,
        voters: 3,
        extra_args,
    })?;
    if args.runtime == BenchRuntime::Process {
        let image = crate::bench_pods::busybox_image(args.image.as_deref(), &data_dir)?;
        for i in 0..cluster.len() {
            let import = std::process::Command::new(std::env::current_exe()?)
                .args(["image", "import"])
                .arg(&image)
                .arg("--data-dir")
                .arg(cluster.node_dir(i))
                .output()?;
            if !import.status.success() {
                bail!("image import: {}", String::from_utf8_lossy(&import.stderr));
            }
        }
    }
    cluster.start_all()?;
    let result = run(&args, &mut cluster).await;
    // Pods go by graceful deletion (their containers with them) before the nodes stop.
    let api = Api::new();
    let base = cluster.layout.api_url(0);
    let _ = api
        .send(
            "DELETE",
            &format!("{base}/apis/apps/v1/namespaces/default/deployments/{DEPLOYMENT}"),
            None,
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let left = api
            .get(&format!("{base}/api/v1/namespaces/default/pods"))
            .await
            .map(|l| l["items"].as_array().map_or(0, Vec::len))
            .unwrap_or(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster
        .stop_all(Duration::from_secs(10))
        .await
        .context("stopping the cluster")?;
    result
}

async fn run(args: &FailoverBenchArgs, cluster: &mut LocalCluster) -> anyhow::Result<()> {
    let api = Api::new();
    cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let n = args.nodes;
    println!(
        "{n} nodes ({} runtime), a Deployment of {} pods, {} runs, killing {}",
        match args.runtime {
            BenchRuntime::Sim => "sim",
            BenchRuntime::Process => "process",
        },
        args.pods,
        args.runs,
        if args.kill_leader {
            "the Raft leader"
        } else {
            "a non-leader node"
        }
    );
    settle(cluster, &api, args.pods, false).await?;
    let base = cluster.layout.api_url(0);
    let container = match args.runtime {
        BenchRuntime::Sim => json!({"name": "app", "image": "busybox"}),
        BenchRuntime::Process => json!({"name": "app", "image": "busybox:1.36",
            "imagePullPolicy": "IfNotPresent", "command": ["sleep", "100000"]}),
    };
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT},
        "spec": {"replicas": args.pods, "selector": {"matchLabels": {"app": DEPLOYMENT}},
            "template": {"metadata": {"labels": {"app": DEPLOYMENT}},
                "spec": {"terminationGracePeriodSeconds": 0, "containers": [container]}}}});
    let (s, v) = api
        .send(
            "POST",
            &format!("{base}/apis/apps/v1/namespaces/default/deployments"),
            Some(&deployment),
        )
        .await?;
    if s != 201 {
        bail!("creating the Deployment: {s} {v}");
    }
    let t = Instant::now();
    settle(cluster, &api, args.pods, true).await?;
    println!(
        "{} pods Running and available in {:.1} s",
        args.pods,
        t.elapsed().as_secs_f64()
    );

    let mut detect = Vec::new();
    let mut replaced = Vec::new();
    let mut available = Vec::new();
    println!(
        "run  node    pods  taint  detect  evict1  evictN  create1  createN  boundN  replaced  available   (ms after SIGKILL)"
    );
    for r in 0..args.runs {
        let (victim, line) = one_run(cluster, &api, args.pods, r, args.kill_leader).await?;
        println!("{line}");
        if let Some(d) = victim.detected {
            detect.push(d.as_secs_f64() * 1000.0);
        }
        if let Some(d) = victim.replaced {
            replaced.push(d.as_secs_f64() * 1000.0);
        }
        if let Some(d) = victim.available {
            available.push(d.as_secs_f64() * 1000.0);
        }
    }
    for v in [&mut detect, &mut replaced, &mut available] {
        v.sort_by(f64::total_cmp);
    }
    let line = |what: &str, v: &[f64]| {
        println!(
            "{what}: p50 {:.0} ms, p99 {:.0} ms ({} of {} runs)",
            pct(v, 0.5),
            pct(v, 0.99),
            v.len(),
            args.runs
        );
    };
    line("time to detect (SIGKILL → Ready=Unknown)", &detect);
    line(
        "time to replace (SIGKILL → its pods Running elsewhere)",
        &replaced,
    );
    line(
        "time to available (SIGKILL → Deployment available again)",
        &available,
    );
    println!(
        "(aim: replaced p99 <= 5 s; Kubernetes with default settings evicts about 5 min 50 s after a node stops answering)"
    );
    Ok(())
}

/// Waits until every node is Ready and untainted and, if `deployed`, the Deployment has
/// exactly `pods` pods, all Running and none terminating, and reports them available.
async fn settle(
    cluster: &LocalCluster,
    api: &Api,
    pods: usize,
    deployed: bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut last = String::new();
    loop {
        for i in 0..cluster.len() {
            if !cluster.is_running(i) {
                continue;
            }
            let base = cluster.layout.api_url(i);
            match settled(api, &base, cluster.len(), pods, deployed).await {
                Ok(()) => return Ok(()),
                Err(e) => last = format!("{e:#}"),
            }
            break;
        }
        if Instant::now() > deadline {
            bail!("the cluster did not settle: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn settled(
    api: &Api,
    base: &str,
    nodes: usize,
    pods: usize,
    deployed: bool,
) -> anyhow::Result<()> {
    let list = api.get(&format!("{base}/api/v1/nodes")).await?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let ready = items
        .iter()
        .filter(|n| node_ready(n) == "True" && !node_tainted(n))
        .count();
    if ready != nodes {
        bail!("{ready} of {nodes} nodes Ready and untainted");
    }
    api.get(&format!("{base}/api/v1/namespaces/default"))
        .await?;
    if !deployed {
        return Ok(());
    }
    let list = api
        .get(&format!(
            "{base}/api/v1/namespaces/default/pods?labelSelector=app%3D{DEPLOYMENT}"
        ))
        .await?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let running = items
        .iter()
        .map(pod_state)
        .filter(|p| p.running && !p.deleting)
        .count();
    if items.len() != pods || running != pods {
        bail!("{} pods, {running} of them Running", items.len());
    }
    let d = api
        .get(&format!(
            "{base}/apis/apps/v1/namespaces/default/deployments/{DEPLOYMENT}"
        ))
        .await?;
    let avail = d
        .pointer("/status/availableReplicas")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if avail != pods as u64 {
        bail!("the Deployment has {avail} available");
    }
    Ok(())
}

/// One kill: the timeline, and its line in the table.
async fn one_run(
    cluster: &mut LocalCluster,
    api: &Api,
    pods: usize,
    run: usize,
    kill_leader: bool,
) -> anyhow::Result<(Timeline, String)> {
    let leader_name = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let leader = (0..cluster.len())
        .find(|i| cluster.name(*i) == leader_name)
        .context("the leader is not one of ours")?;
    // Watches are served by a node that survives: the leader, unless it is the one killed.
    let watcher = if kill_leader {
        (leader + 1) % cluster.len()
    } else {
        leader
    };
    let base = cluster.layout.api_url(watcher);
    let node_list = api.get(&format!("{base}/api/v1/nodes")).await?;
    let pod_list = api
        .get(&format!("{base}/api/v1/namespaces/default/pods"))
        .await?;
    let dep_list = api
        .get(&format!(
            "{base}/apis/apps/v1/namespaces/default/deployments"
        ))
        .await?;
    let mut state: HashMap<String, PodState> = pod_list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| (str_at(p, "/metadata/name").to_owned(), pod_state(p)))
        .collect();
    // A non-leader node holding pods, a different one each run where possible; or the leader.
    let mut candidates: Vec<usize> = (0..cluster.len())
        .filter(|i| {
            (*i == leader) == kill_leader
                && state
                    .values()
                    .any(|p| p.node == cluster.name(*i) && !p.deleting)
        })
        .collect();
    candidates.sort();
    let Some(&victim) = candidates.get(run % candidates.len().max(1)) else {
        bail!(
            "no {} holds a pod",
            if kill_leader {
                "leader"
            } else {
                "non-leader node"
            }
        );
    };
    let victim_name = cluster.name(victim).to_owned();
    let held: Vec<String> = state
        .iter()
        .filter(|(_, p)| p.node == victim_name && !p.deleting)
        .map(|(n, _)| n.clone())
        .collect();
    let (tx, mut rx) = mpsc::channel(65_536);
    let rv = |l: &Value| str_at(l, "/metadata/resourceVersion").to_owned();
    api.watch(
        format!("{base}/api/v1/nodes"),
        rv(&node_list),
        Kind::Node,
        tx.clone(),
    );
    api.watch(
        format!("{base}/api/v1/namespaces/default/pods"),
        rv(&pod_list),
        Kind::Pod,
        tx.clone(),
    );
    api.watch(
        format!("{base}/apis/apps/v1/namespaces/default/deployments"),
        rv(&dep_list),
        Kind::Deployment,
        tx,
    );
    // Let the watches connect before the kill, so no event is timed late.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let killed = Instant::now();
    cluster.kill(victim).await?;
    let mut tl = Timeline::default();
    let deadline = killed + RUN_TIMEOUT;
    let mut available_now = pods as u64;
    while tl.available.is_none() || tl.replaced.is_none() {
        let Ok(Some((at, kind, ev))) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        let since = at.saturating_duration_since(killed);
        let obj = &ev["object"];
        let deleted = str_at(&ev, "/type") == "DELETED";
        match kind {
            Kind::Node if str_at(obj, "/metadata/name") == victim_name => {
                if tl.tainted.is_none() && node_tainted(obj) {
                    tl.tainted = Some(since);
                }
                if tl.detected.is_none() && node_ready(obj) == "Unknown" {
                    tl.detected = Some(since);
                }
            }
            Kind::Node => {}
            Kind::Pod => {
                let name = str_at(obj, "/metadata/name").to_owned();
                if deleted {
                    state.remove(&name);
                } else {
                    if !state.contains_key(&name) && tl.first_created.is_none() {
                        tl.first_created = Some(since);
                    }
                    state.insert(name, pod_state(obj));
                }
                let evicted = held
                    .iter()
                    .filter(|h| state.get(*h).is_none_or(|p| p.deleting))
                    .count();
                if evicted > 0 && tl.first_evicted.is_none() {
                    tl.first_evicted = Some(since);
                }
                if evicted == held.len() && tl.all_evicted.is_none() {
                    tl.all_evicted = Some(since);
                }
                let live: Vec<&PodState> = state.values().filter(|p| !p.deleting).collect();
                if evicted == held.len() && tl.all_created.is_none() && live.len() == pods {
                    tl.all_created = Some(since);
                }
                if evicted == held.len()
                    && tl.all_bound.is_none()
                    && live.len() == pods
                    && live.iter().all(|p| !p.node.is_empty())
                {
                    tl.all_bound = Some(since);
                }
                if evicted == held.len()
                    && tl.replaced.is_none()
                    && live.len() == pods
                    && live.iter().all(|p| p.running && p.node != victim_name)
                {
                    tl.replaced = Some(since);
                }
            }
            Kind::Deployment => {
                available_now = obj
                    .pointer("/status/availableReplicas")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
            }
        }
        if available_now < pods as u64 {
            tl.dropped = true;
        }
        if tl.dropped
            && tl.replaced.is_some()
            && tl.available.is_none()
            && available_now == pods as u64
        {
            tl.available = Some(since);
        }
    }
    drop(rx);
    let line = format!(
        "{:>3}  {:<7} {:>4}  {:>5}  {:>6}  {:>6}  {:>6}  {:>7}  {:>7}  {:>6}  {:>8}  {:>9}",
        run + 1,
        victim_name,
        held.len(),
        ms(tl.tainted),
        ms(tl.detected),
        ms(tl.first_evicted),
        ms(tl.all_evicted),
        ms(tl.first_created),
        ms(tl.all_created),
        ms(tl.all_bound),
        ms(tl.replaced),
        ms(tl.available),
    );
    // Back to full strength: the node returns, finishes its evicted pods and is Ready.
    cluster.start_node(victim)?;
    settle(cluster, api, pods, true).await?;
    Ok((tl, line))
}
