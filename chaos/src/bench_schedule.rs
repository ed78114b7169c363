//! `flotilla bench schedule`: a 3-node cluster serving about `--nodes` hollow nodes (the `sim`
//! runtime; each node daemon runs the kubelet of its share), then `--pods` pods created with
//! no node: how fast the sharded schedulers bind them (pods bound per second), scheduling
//! latency (create acknowledged → bound, seen through a watch) p50/p99, the time until all are
//! Running, and the node daemons' resident memory.
//!
//! Anchors: kube-scheduler's own benchmark expects 680–810 pods/s at 5,000 nodes; Nomad's C1M
//! placed about 3,750 containers/s. No peer runs here (no kube-scheduler can be installed).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::bench_pods::{pct, rss_mib};
use crate::launcher::{LocalCluster, LocalClusterConfig, free_base_port};

#[derive(clap::Args, Debug, Clone)]
pub struct ScheduleBenchArgs {
    /// Hollow nodes in all (split over the 3 node daemons).
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Pods to create.
    #[arg(long, default_value_t = 30_000)]
    pub pods: usize,
    /// Concurrent creators.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
}

type Send = Arc<
    dyn Fn(
            &'static str,
            String,
            Option<Value>,
        ) -> futures::future::BoxFuture<'static, anyhow::Result<(u16, Bytes)>>
        + Sync
        + std::marker::Send,
>;

pub async fn schedule(args: ScheduleBenchArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let per_node = args.nodes.div_ceil(3);
    let base_port = free_base_port(3)?;
    let mut cluster = LocalCluster::prepare(LocalClusterConfig {
        binary: std::env::current_exe()?,
        data_dir: tmp.path().join("flotilla"),
        nodes: 3,
        base_port,
        voters: 3,
        extra_args: vec![
            "--runtime".into(),
            "sim".into(),
            "--hollow-nodes".into(),
            per_node.to_string(),
        ],
    })?;
    cluster.start_all()?;
    cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let client = http.clone();
    let send: Send = Arc::new(move |method, url, body| {
        let http = client.clone();
        Box::pin(async move {
            let req = hyper::Request::builder()
                .method(method)
                .uri(url)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(
                    body.map(|b| b.to_string()).unwrap_or_default(),
                )))?;
            let resp = http.request(req).await?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        })
    });
    let bases: Vec<String> = (0..3).map(|i| cluster.layout.api_url(i)).collect();
    let total_nodes = per_node * 3 + 3;
    let start = Instant::now();
    loop {
        let (s, b) = send("GET", format!("{}/api/v1/nodes", bases[0]), None)
            .await
            .unwrap_or((0, Bytes::new()));
        let n = serde_json::from_slice::<Value>(&b)
            .ok()
            .and_then(|v| v["items"].as_array().map(Vec::len))
            .unwrap_or(0);
        if s == 200 && n >= total_nodes {
            break;
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("only {n} of {total_nodes} nodes registered");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{total_nodes} nodes registered in {:.1} s ({per_node} hollow nodes per daemon)",
        start.elapsed().as_secs_f64()
    );
    let pids: Vec<u32> = (0..3).filter_map(|i| cluster.pid(i)).collect();
    let idle: Vec<f64> = pids
        .iter()
        .map(|p| rss_mib(*p).unwrap_or(f64::NAN))
        .collect();
    let (_, list) = send(
        "GET",
        format!("{}/api/v1/namespaces/default/pods?limit=1", bases[0]),
        None,
    )
    .await?;
    let rv = serde_json::from_slice::<Value>(&list)?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();

    // A watch records when each pod is bound and when it runs.
    let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let running: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watcher = {
        let (http, bound, running, total) =
            (http.clone(), bound.clone(), running.clone(), args.pods);
        let url = format!(
            "{}/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}&timeoutSeconds=3600",
            bases[1]
        );
        tokio::spawn(async move {
            let req = hyper::Request::builder()
                .uri(url)
                .body(Full::new(Bytes::new()))?;
            let mut body = http.request(req).await?.into_body();
            let mut buf = Vec::new();
            while running.lock().await.len() < total {
                let Some(frame) = body.frame().await else {
                    break;
                };
                let Ok(data) = frame?.into_data() else {
                    continue;
                };
                let now = Instant::now();
                buf.extend_from_slice(&data);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    let Some(name) = ev.pointer("/object/metadata/name").and_then(Value::as_str)
                    else {
                        continue;
                    };
                    if ev
                        .pointer("/object/spec/nodeName")
                        .and_then(Value::as_str)
                        .is_some_and(|n| !n.is_empty())
                    {
                        bound.lock().await.entry(name.to_owned()).or_insert(now);
                    }
                    if ev.pointer("/object/status/phase").and_then(Value::as_str) == Some("Running")
                    {
                        running.lock().await.entry(name.to_owned()).or_insert(now);
                    }
                }
            }
            anyhow::Ok(())
        })
    };
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let t = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let retries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut creators = Vec::new();
    for c in 0..args.clients {
        let (send, next, created, total) = (send.clone(), next.clone(), created.clone(), args.pods);
        let retries = retries.clone();
        let base = bases[c % 3].clone();
        creators.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(());
                }
                let name = format!("sched-{i}");
                let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "bench"}},
                    "spec": {"terminationGracePeriodSeconds": 0,
                        "containers": [{"name": "c", "image": "busybox",
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}});
                // A 429 or 503 (no quorum for a moment under load) is retried after a pause, as
                // client-go does, and so is a 504 (the leader changed mid-request); the
                // retries are counted and printed.
                let mut attempt = 0;
                loop {
                    let (s, b) = send("POST", format!("{base}/api/v1/namespaces/default/pods"), Some(pod.clone())).await?;
                    match s {
                        201 => break,
                        // After a 504 ("outcome unknown") the first try may have been written.
                        409 if attempt > 0 => break,
                        429 | 503 | 504 if attempt < 10 => {
                            attempt += 1;
                            retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                        }
                        _ => bail!("create {name}: {s} {}", String::from_utf8_lossy(&b)),
                    }
                }
                created.lock().await.insert(name, Instant::now());
            }
        }));
    }
    for c in creators {
        c.await??;
    }
    let created_in = t.elapsed();
    let wait = Duration::from_secs(60 + (args.pods / 100) as u64);
    let _ = tokio::time::timeout(wait, watcher).await;
    let all_running = t.elapsed();
    let busy: Vec<f64> = pids
        .iter()
        .map(|p| rss_mib(*p).unwrap_or(f64::NAN))
        .collect();
    let created = created.lock().await;
    let bound = bound.lock().await;
    let running = running.lock().await;
    let mut lat: Vec<f64> = bound
        .iter()
        .filter_map(|(n, at)| {
            created
                .get(n)
                .map(|c| at.saturating_duration_since(*c).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let last_bound = bound
        .values()
        .max()
        .map_or(0.0, |l| l.duration_since(t).as_secs_f64());
    println!(
        "{} pods created in {:.1} s ({:.0}/s, {} clients over 3 API servers)",
        created.len(),
        created_in.as_secs_f64(),
        created.len() as f64 / created_in.as_secs_f64(),
        args.clients
    );
    let retries = retries.load(std::sync::atomic::Ordering::Relaxed);
    if retries > 0 {
        println!("{retries} creates were answered 429/503/504 and retried");
    }
    println!(
        "bound {} of {} in {last_bound:.1} s from the first create: {:.0} pods/s",
        bound.len(),
        args.pods,
        bound.len() as f64 / last_bound.max(1e-9)
    );
    // The binding rate the schedulers reach, apart from how fast pods arrive: the busiest
    // second, and the backlog's drain once the last create was acknowledged.
    let mut per_second: HashMap<u64, usize> = HashMap::new();
    for at in bound.values() {
        *per_second
            .entry(at.saturating_duration_since(t).as_secs())
            .or_default() += 1;
    }
    let peak = per_second.values().max().copied().unwrap_or(0);
    let after_creates = bound
        .values()
        .filter(|at| at.saturating_duration_since(t) > created_in)
        .count();
    let drain = (last_bound - created_in.as_secs_f64()).max(0.0);
    println!("busiest second: {peak} pods bound");
    if after_creates > 0 && drain > 0.0 {
        println!(
            "backlog after the last create: {after_creates} pods bound in {drain:.1} s ({:.0} pods/s)",
            after_creates as f64 / drain
        );
    }
    println!(
        "scheduling latency (create acknowledged → bound, through a watch): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "{} of {} Running after {:.1} s",
        running.len(),
        args.pods,
        all_running.as_secs_f64()
    );
    for (i, (a, b)) in idle.iter().zip(&busy).enumerate() {
        println!(
            "node-{} resident memory: {a:.0} MiB idle, {b:.0} MiB with its pods",
            i + 1
        );
    }
    println!(
        "(aim: >= 5,000 pods/s bound; kube-scheduler's benchmark: 680-810 pods/s at 5,000 nodes)"
    );
    cluster
        .stop_all(Duration::from_secs(10))
        .await
        .context("stopping the cluster")?;
    Ok(())
}
