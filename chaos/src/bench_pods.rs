//! `flotilla bench pods`: start N pods on one node of a 3-node cluster (the `process`
//! runtime, the local busybox image) and report pod start latency — from the create request to
//! `Running` as seen through a watch — and the node daemon's resident memory with them running.
//!
//! Anchors: Kubernetes' SLO is p99 ≤ 5 s for pod startup; runc starts a container in about
//! 33 ms. No peer runs here (no kubelet or containerd can be installed on this machine).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::launcher::{LocalCluster, LocalClusterConfig, free_base_port};

#[derive(clap::Args, Debug, Clone)]
pub struct PodBenchArgs {
    /// Pods to start on the node.
    #[arg(long, default_value_t = 100)]
    pub pods: usize,
    /// Concurrent creators.
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    /// The busybox image archive (built with scripts/build-busybox-image.sh when absent).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Keep the data here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

pub fn rss_mib(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

pub async fn pods(args: PodBenchArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
    let image = busybox_image(args.image.as_deref(), &data_dir)?;
    let base_port = free_base_port(3)?;
    let mut cluster = LocalCluster::prepare(LocalClusterConfig {
        binary: std::env::current_exe()?,
        data_dir: data_dir.join("flotilla"),
        nodes: 3,
        base_port,
        voters: 3,
        extra_args: vec![],
    })?;
    cluster.start_all()?;
    cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let import = std::process::Command::new(std::env::current_exe()?)
        .args(["image", "import"])
        .arg(&image)
        .arg("--data-dir")
        .arg(cluster.node_dir(1))
        .output()?;
    if !import.status.success() {
        bail!("image import: {}", String::from_utf8_lossy(&import.stderr));
    }
    let base = cluster.layout.api_url(0);
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let client = http.clone();
    let send = move |method: &'static str, url: String, body: Option<Value>| {
        let http = client.clone();
        async move {
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
        }
    };
    let start = Instant::now();
    loop {
        let (s, _) = send("GET", format!("{base}/api/v1/namespaces/default"), None)
            .await
            .unwrap_or((0, Bytes::new()));
        if s == 200 {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the default namespace never appeared");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, list) = send(
        "GET",
        format!("{base}/api/v1/namespaces/default/pods"),
        None,
    )
    .await?;
    let rv = serde_json::from_slice::<Value>(&list)?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    let node_pid = cluster.pid(1).context("node-2 is not running")?;
    let idle_rss = rss_mib(node_pid).unwrap_or(f64::NAN);

    // A watch sees each pod turn Running; creators record when they sent the create.
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let running: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch_url = format!(
        "{base}/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}&timeoutSeconds=600"
    );
    let watcher = {
        let (http, running, total) = (http.clone(), running.clone(), args.pods);
        tokio::spawn(async move {
            let req = hyper::Request::builder()
                .uri(watch_url)
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
                    if ev.pointer("/object/status/phase").and_then(Value::as_str) == Some("Running")
                        && let Some(name) =
                            ev.pointer("/object/metadata/name").and_then(Value::as_str)
                    {
                        running.lock().await.entry(name.to_owned()).or_insert(now);
                    }
                }
            }
            anyhow::Ok(())
        })
    };
    let t = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut creators = Vec::new();
    for _ in 0..args.clients {
        let (send, next, created, total) = (send.clone(), next.clone(), created.clone(), args.pods);
        let base = base.clone();
        creators.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(());
                }
                let name = format!("bench-{i}");
                let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                    "spec": {"nodeName": "node-2", "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "c", "image": "busybox:1.36",
                            "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}]}});
                created.lock().await.insert(name.clone(), Instant::now());
                let (s, b) = send(
                    "POST",
                    format!("{base}/api/v1/namespaces/default/pods"),
                    Some(pod),
                )
                .await?;
                if s != 201 {
                    bail!("create {name}: {s} {}", String::from_utf8_lossy(&b));
                }
            }
        }));
    }
    for c in creators {
        c.await??;
    }
    let _ = tokio::time::timeout(Duration::from_secs(120), watcher).await;
    let all_running = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy_rss = rss_mib(node_pid).unwrap_or(f64::NAN);
    let created = created.lock().await;
    let running = running.lock().await;
    let mut lat: Vec<f64> = running
        .iter()
        .filter_map(|(n, at)| {
            created
                .get(n)
                .map(|c| at.duration_since(*c).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    println!(
        "{} of {} pods Running on node-2 in {:.2} s ({} creators)",
        running.len(),
        args.pods,
        all_running.as_secs_f64(),
        args.clients
    );
    println!(
        "pod start latency (create → Running through a watch): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "node-2 daemon resident memory: {idle_rss:.1} MiB idle, {busy_rss:.1} MiB with {} pods",
        running.len()
    );
    println!("(aims: p99 <= 300 ms and <= 60 MiB with 100 pods; Kubernetes SLO p99 <= 5 s)");
    // Pods go away by graceful deletion: the kubelet tears each one down, then removes it;
    // the cluster stops only after that.
    for name in created.keys() {
        let _ = send(
            "DELETE",
            format!("{base}/api/v1/namespaces/default/pods/{name}"),
            None,
        )
        .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let (_, b) = send(
            "GET",
            format!("{base}/api/v1/namespaces/default/pods"),
            None,
        )
        .await?;
        let left = serde_json::from_slice::<Value>(&b)?["items"]
            .as_array()
            .map_or(0, Vec::len);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.stop_all(Duration::from_secs(10)).await?;
    Ok(())
}

/// The busybox image archive the real-container benches run: `image` if given, else built
/// by `scripts/build-busybox-image.sh` into `data_dir`.
pub fn busybox_image(
    image: Option<&std::path::Path>,
    data_dir: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    if let Some(p) = image {
        return Ok(p.to_owned());
    }
    let out = data_dir.join("busybox.tar");
    let script = std::env::current_dir()?.join("scripts/build-busybox-image.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        anyhow::bail!(
            "{} could not build the image; pass --image",
            script.display()
        );
    }
    Ok(out)
}
