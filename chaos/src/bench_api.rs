//! `flotilla bench api`: the Kubernetes API of a 3-node cluster on loopback, measured the way
//! clients use it: create / get / list throughput and latency at several concurrencies (clients
//! spread over the nodes), a full list of 10,000 stored pods (in one response and in kubectl's
//! 500-item pages), and how long a change takes to reach 1,000 concurrent watchers.
//!
//! There is no peer in this run: a kube-apiserver cannot be installed on this machine (no
//! Debian or PyPI package); the figures are printed next to the Kubernetes SLOs and this
//! project's targets.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::bench::{LoadStats, run_load};
use crate::launcher::{LocalCluster, LocalClusterConfig, free_base_port};

#[derive(clap::Args, Debug, Clone)]
pub struct ApiBenchArgs {
    /// Concurrent clients per row.
    #[arg(long, value_delimiter = ',', default_value = "1,16,100")]
    pub clients: Vec<usize>,
    /// Seconds of load per row.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Pods stored for the large-list measurement.
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    /// Concurrent watchers for the delivery measurement.
    #[arg(long, default_value_t = 1_000)]
    pub watchers: usize,
    /// Changes made while the watchers listen.
    #[arg(long, default_value_t = 100)]
    pub changes: usize,
    /// Keep the data here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

type Http = Client<HttpConnector, Full<Bytes>>;

fn http_client() -> Http {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector)
}

async fn call(
    http: &Http,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Bytes)> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| serde_json::to_vec(b).unwrap_or_default())
                .unwrap_or_default(),
        )))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), http.request(req))
        .await
        .context("timed out")??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn expect(
    http: &Http,
    method: &str,
    url: &str,
    body: Option<&Value>,
    want: u16,
) -> anyhow::Result<Bytes> {
    let (status, bytes) = call(http, method, url, body).await?;
    if status != want {
        bail!(
            "{method} {url}: {status} {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(bytes)
}

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench", "tier": "web"}},
        "spec": {"containers": [{
            "name": "web", "image": "nginx:1.27",
            "ports": [{"containerPort": 80}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
        }]},
    })
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn row(what: &str, clients: usize, s: &LoadStats) {
    println!(
        "{what:<8} {clients:>7} {:>10.0} {:>9.2} {:>9.2} {:>8}",
        s.writes_per_sec, s.p50_ms, s.p99_ms, s.errors
    );
}

fn percentile_ms(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

async fn ensure_namespace(http: &Http, base: &str, name: &str) -> anyhow::Result<()> {
    let (status, body) = call(
        http,
        "POST",
        &format!("{base}/api/v1/namespaces"),
        Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})),
    )
    .await?;
    if status != 201 && status != 409 {
        bail!(
            "creating namespace {name}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

pub async fn api(args: ApiBenchArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
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
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let bases: Arc<Vec<String>> = Arc::new((0..3).map(|i| cluster.layout.api_url(i)).collect());
    let http = http_client();
    let start = Instant::now();
    loop {
        if call(
            &http,
            "GET",
            &format!("{}/api/v1/namespaces/default", bases[0]),
            None,
        )
        .await
        .is_ok_and(|(s, _)| s == 200)
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the default namespace never appeared");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("flotilla: 3 nodes on loopback, leader {leader}; clients spread over all nodes");
    let result = run(&args, &http, bases).await;
    cluster.stop_all(Duration::from_secs(10)).await?;
    result
}

async fn run(args: &ApiBenchArgs, http: &Http, bases: Arc<Vec<String>>) -> anyhow::Result<()> {
    let duration = Duration::from_secs_f64(args.seconds);
    ensure_namespace(http, &bases[0], "bench").await?;
    ensure_namespace(http, &bases[0], "small").await?;
    for i in 0..100 {
        expect(
            http,
            "POST",
            &format!("{}/api/v1/namespaces/small/configmaps", bases[0]),
            Some(&json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("cm-{i}")}, "data": {"k": "v".repeat(200)}})),
            201,
        )
        .await?;
    }
    println!();
    println!(
        "{:<8} {:>7} {:>10} {:>9} {:>9} {:>8}",
        "call", "clients", "calls/s", "p50 ms", "p99 ms", "errors"
    );
    let created = Arc::new(Mutex::new(Vec::<String>::new()));
    for (r, &clients) in args.clients.iter().enumerate() {
        let (h, b, names) = (http.clone(), bases.clone(), created.clone());
        let s = run_load(clients, duration, move |c, seq| {
            let (h, b, names) = (h.clone(), b.clone(), names.clone());
            async move {
                let name = format!("p{r}-{c}-{seq}");
                let url = format!("{}/api/v1/namespaces/bench/pods", b[c % b.len()]);
                expect(&h, "POST", &url, Some(&pod(&name)), 201).await?;
                names.lock().await.push(name);
                Ok(())
            }
        })
        .await;
        row("create", clients, &s);
    }
    let names: Arc<Vec<String>> = Arc::new(created.lock().await.clone());
    if names.is_empty() {
        bail!("no pod was created");
    }
    for &clients in &args.clients {
        let (h, b, n) = (http.clone(), bases.clone(), names.clone());
        let s = run_load(clients, duration, move |c, seq| {
            let (h, b, n) = (h.clone(), b.clone(), n.clone());
            async move {
                let name = &n[(seq as usize * 7919 + c) % n.len()];
                let url = format!("{}/api/v1/namespaces/bench/pods/{name}", b[c % b.len()]);
                expect(&h, "GET", &url, None, 200).await?;
                Ok(())
            }
        })
        .await;
        row("get", clients, &s);
    }
    for &clients in &args.clients {
        let (h, b) = (http.clone(), bases.clone());
        let s = run_load(clients, duration, move |c, _| {
            let (h, b) = (h.clone(), b.clone());
            async move {
                let url = format!("{}/api/v1/namespaces/small/configmaps", b[c % b.len()]);
                expect(&h, "GET", &url, None, 200).await?;
                Ok(())
            }
        })
        .await;
        row("list100", clients, &s);
    }

    // A namespace of exactly `pods` pods, then lists of all of them.
    ensure_namespace(http, &bases[0], "large").await?;
    let t = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..64 {
        let (h, b, next) = (http.clone(), bases.clone(), next.clone());
        let todo = args.pods;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= todo {
                    return anyhow::Ok(());
                }
                let url = format!("{}/api/v1/namespaces/large/pods", b[c % b.len()]);
                expect(&h, "POST", &url, Some(&pod(&format!("fill-{i}"))), 201).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!(
        "\nstored {} pods in {:.1} s (64 clients)",
        args.pods,
        t.elapsed().as_secs_f64()
    );
    let mut whole = Vec::new();
    let mut paged = Vec::new();
    let mut bytes = 0;
    let mut count = 0;
    for i in 0..10 {
        let base = &bases[i % bases.len()];
        let t = Instant::now();
        let body = expect(
            http,
            "GET",
            &format!("{base}/api/v1/namespaces/large/pods"),
            None,
            200,
        )
        .await?;
        whole.push(t.elapsed().as_secs_f64() * 1000.0);
        bytes = body.len();
        count = serde_json::from_slice::<Value>(&body)?["items"]
            .as_array()
            .map_or(0, Vec::len);
        let t = Instant::now();
        let mut cont = String::new();
        loop {
            let url = format!("{base}/api/v1/namespaces/large/pods?limit=500&continue={cont}");
            let page: Value = serde_json::from_slice(&expect(http, "GET", &url, None, 200).await?)?;
            match page["metadata"]["continue"].as_str() {
                Some(c) if !c.is_empty() => cont = c.to_owned(),
                _ => break,
            }
        }
        paged.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    whole.sort_by(f64::total_cmp);
    paged.sort_by(f64::total_cmp);
    println!(
        "list of {count} pods ({:.1} MiB): p50 {:.0} ms, p99 {:.0} ms in one response; p50 {:.0} ms, p99 {:.0} ms in pages of 500",
        bytes as f64 / 1048576.0,
        percentile_ms(&whole, 0.5),
        percentile_ms(&whole, 0.99),
        percentile_ms(&paged, 0.5),
        percentile_ms(&paged, 0.99),
    );

    watch_delivery(args, http, &bases).await
}

/// Opens `watchers` watches spread over the nodes, makes `changes` changes, and measures from
/// the moment each change was sent to its arrival at every watcher.
async fn watch_delivery(
    args: &ApiBenchArgs,
    http: &Http,
    bases: &Arc<Vec<String>>,
) -> anyhow::Result<()> {
    ensure_namespace(http, &bases[0], "watched").await?;
    let cms = format!("{}/api/v1/namespaces/watched/configmaps", bases[0]);
    let list: Value = serde_json::from_slice(&expect(http, "GET", &cms, None, 200).await?)?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = Vec::new();
    // Watchers get their own connections (one watch per HTTP/1.1 connection, as clients do).
    for w in 0..args.watchers {
        let url = format!(
            "{}/api/v1/namespaces/watched/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=600",
            bases[w % bases.len()]
        );
        let (latencies, ready) = (latencies.clone(), ready.clone());
        let expected = args.changes;
        tasks.push(tokio::spawn(async move {
            let client = http_client();
            let req = hyper::Request::builder()
                .uri(&url)
                .body(Full::new(Bytes::new()))?;
            let resp = client.request(req).await?;
            ready.add_permits(1);
            let mut body = resp.into_body();
            let mut buf = Vec::new();
            let mut seen = 0;
            let mut mine = Vec::with_capacity(expected);
            while seen < expected {
                let Some(frame) = body.frame().await else {
                    break;
                };
                let Ok(data) = frame?.into_data() else {
                    continue;
                };
                let arrived = now_nanos();
                buf.extend_from_slice(&data);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    if let Some(sent) = event
                        .pointer("/object/data/sent")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse::<u128>().ok())
                    {
                        mine.push(arrived.saturating_sub(sent) as f64 / 1e6);
                        seen += 1;
                    }
                }
            }
            latencies.lock().await.extend(mine);
            anyhow::Ok(())
        }));
    }
    let t = Instant::now();
    let connected = tokio::time::timeout(
        Duration::from_secs(120),
        ready.acquire_many(args.watchers as u32),
    )
    .await;
    let Ok(Ok(permit)) = connected else {
        bail!("not all {} watchers connected", args.watchers);
    };
    permit.forget();
    println!(
        "\n{} watchers connected in {:.1} s",
        args.watchers,
        t.elapsed().as_secs_f64()
    );
    for i in 0..args.changes {
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("w-{i}")}, "data": {"sent": now_nanos().to_string()}});
        let url = format!(
            "{}/api/v1/namespaces/watched/configmaps",
            bases[i % bases.len()]
        );
        expect(http, "POST", &url, Some(&obj), 201).await?;
        // A change every 20 ms: delivery, not write throughput, is measured here.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for task in tasks {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => println!("a watcher failed: {e:#}"),
            _ => println!("a watcher did not finish"),
        }
    }
    let mut all = latencies.lock().await.clone();
    all.sort_by(f64::total_cmp);
    println!(
        "watch delivery to {} watchers: {} of {} events, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.watchers,
        all.len(),
        args.watchers * args.changes,
        percentile_ms(&all, 0.5),
        percentile_ms(&all, 0.99),
        all.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "\ntargets: create p99 <= 50 ms at 100 clients; list of 10,000 pods <= 300 ms; watch delivery p99 <= 100 ms"
    );
    println!("(Kubernetes SLOs: mutating calls p99 <= 1 s; cluster-wide lists p99 <= 30 s)");
    Ok(())
}
