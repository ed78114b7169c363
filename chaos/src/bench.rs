//! `flotilla bench store`: write throughput and latency of a 3-node cluster on loopback, the
//! same workload against a 3-member etcd in the same run, and leader failover time.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use flotilla_consensus::{Read, StoreClient};
use flotilla_mesh::RpcEndpoint;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::etcd::EtcdKv;
use crate::launcher::{LocalCluster, LocalClusterConfig, free_base_port};

#[derive(clap::Args, Debug, Clone)]
pub struct StoreBenchArgs {
    /// Concurrent clients per row.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub clients: Vec<usize>,
    /// Seconds of load per row.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Bytes per value.
    #[arg(long, default_value_t = 1024)]
    pub value_size: usize,
    /// Also run the workload against a 3-member etcd (installs Debian's etcd-server if missing).
    #[arg(long)]
    pub vs_etcd: bool,
    /// Leader failover measurements (SIGKILL of the leader to the first acknowledged write).
    #[arg(long, default_value_t = 5)]
    pub failover_runs: usize,
    /// Send every Flotilla write to the leader instead of spreading clients over all nodes
    /// (shows what forwarding from followers costs).
    #[arg(long)]
    pub leader_only: bool,
    /// Keep the data here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Clone)]
pub struct LoadStats {
    pub ok: u64,
    pub errors: u64,
    pub writes_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Runs `clients` loops of `put(client, seq)` for `duration`; latencies in microseconds.
pub async fn run_load<F, Fut>(clients: usize, duration: Duration, put: F) -> LoadStats
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let put = put.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut seq = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match put(c, seq).await {
                    Ok(()) => lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
                    Err(_) => errors += 1,
                }
                seq += 1;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            all.extend(lat);
            errors += e;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    LoadStats {
        ok: all.len() as u64,
        errors,
        writes_per_sec: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
    }
}

fn rss_mib(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub async fn store(args: StoreBenchArgs) -> anyhow::Result<()> {
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
    cluster
        .wait_for_status(Duration::from_secs(60), "3 voters", |s| {
            s.raft.members.iter().filter(|m| m.role == "voter").count() == 3
        })
        .await?;
    println!("flotilla: 3 nodes on loopback, leader {leader}");
    let rpc = RpcEndpoint::client(&cluster.client_identity("bench")?).await?;
    let clients: Vec<StoreClient> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(cluster.store_client(&rpc, i).await?);
        }
        v
    };
    // Idle footprint before any load.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss: Vec<String> = (0..3)
        .map(|i| {
            cluster
                .pid(i)
                .and_then(rss_mib)
                .map(|m| format!("{}={m:.1} MiB", cluster.name(i)))
                .unwrap_or_default()
        })
        .collect();
    println!("idle resident memory: {}", rss.join(", "));

    let mut etcd = if args.vs_etcd {
        Some(EtcdCluster::start(&data_dir.join("etcd")).await?)
    } else {
        None
    };

    let duration = Duration::from_secs_f64(args.seconds);
    let value = Arc::new(vec![b'x'; args.value_size]);
    println!();
    println!(
        "{:>8} | {:>12} {:>8} {:>8} | {:>12} {:>8} {:>8} | {:>7}",
        "clients", "flotilla w/s", "p50 ms", "p99 ms", "etcd w/s", "p50 ms", "p99 ms", "ratio"
    );
    let leader_index = (0..cluster.len())
        .find(|i| cluster.name(*i) == leader)
        .unwrap_or(0);
    let targets: Vec<StoreClient> = if args.leader_only {
        vec![clients[leader_index].clone()]
    } else {
        clients.clone()
    };
    for &n in &args.clients {
        let f = {
            let clients = targets.clone();
            let value = value.clone();
            run_load(n, duration, move |c, seq| {
                // Clients spread over the nodes, as etcd clients spread over endpoints.
                let client = clients[c % clients.len()].clone();
                let value = value.clone();
                async move {
                    client
                        .put(&format!("/bench/{c}/{}", seq % 1000), value.to_vec())
                        .await?;
                    Ok(())
                }
            })
            .await
        };
        let e = match &etcd {
            Some(etcd) => {
                let kvs = etcd.clients.clone();
                let value = value.clone();
                Some(
                    run_load(n, duration, move |c, seq| {
                        let kv = kvs[c % kvs.len()].clone();
                        let value = value.clone();
                        async move {
                            kv.put(format!("/bench/{c}/{}", seq % 1000).as_bytes(), &value)
                                .await
                        }
                    })
                    .await,
                )
            }
            None => None,
        };
        let (ew, ep50, ep99, ratio) = match &e {
            Some(e) => (
                format!("{:.0}", e.writes_per_sec),
                format!("{:.2}", e.p50_ms),
                format!("{:.2}", e.p99_ms),
                format!("{:.2}", f.writes_per_sec / e.writes_per_sec),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "{n:>8} | {:>12.0} {:>8.2} {:>8.2} | {ew:>12} {ep50:>8} {ep99:>8} | {ratio:>7}",
            f.writes_per_sec, f.p50_ms, f.p99_ms
        );
        if f.errors > 0 || e.as_ref().is_some_and(|e| e.errors > 0) {
            println!(
                "         (errors: flotilla {}, etcd {})",
                f.errors,
                e.as_ref().map(|e| e.errors).unwrap_or(0)
            );
        }
    }
    if let Some(etcd) = &mut etcd {
        etcd.stop().await;
    }

    if args.failover_runs > 0 {
        println!();
        let mut times = Vec::new();
        for run in 0..args.failover_runs {
            match failover_once(&mut cluster, &clients).await {
                Ok(t) => {
                    println!(
                        "failover run {}: {:.0} ms",
                        run + 1,
                        t.as_secs_f64() * 1000.0
                    );
                    times.push(t);
                }
                Err(e) => println!("failover run {}: failed: {e:#}", run + 1),
            }
        }
        times.sort();
        if !times.is_empty() {
            println!(
                "failover (SIGKILL of the leader to the first acknowledged write after it): median {:.0} ms, max {:.0} ms over {} runs",
                times[times.len() / 2].as_secs_f64() * 1000.0,
                times[times.len() - 1].as_secs_f64() * 1000.0,
                times.len()
            );
        }
    }
    cluster.stop_all(Duration::from_secs(10)).await?;
    Ok(())
}

/// Kills the leader under a steady write load and measures the time to the first write that
/// was sent after the kill and acknowledged; then restarts the node and waits for it.
async fn failover_once(
    cluster: &mut LocalCluster,
    clients: &[StoreClient],
) -> anyhow::Result<Duration> {
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let li = (0..cluster.len())
        .find(|i| cluster.name(*i) == leader)
        .context("leader not in layout")?;
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let survivors: Vec<StoreClient> = (0..clients.len())
        .filter(|i| *i != li)
        .map(|i| clients[i].clone().with_timeout(Duration::from_secs(5)))
        .collect();
    let writer = {
        let killed_at = killed_at.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let client = &survivors[(seq as usize) % survivors.len()];
                let sent = Instant::now();
                let ok = client
                    .put(&format!("/bench/failover/{seq}"), b"v".to_vec())
                    .await
                    .is_ok();
                seq += 1;
                if ok
                    && let Some(k) = *killed_at.lock().await
                    && sent >= k
                {
                    return Some(Instant::now() - k);
                }
            }
            None
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    *killed_at.lock().await = Some(Instant::now());
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    tracing::info!(node = %leader, unix_ms = wall.as_millis() as u64, "killing the leader");
    cluster.kill(li).await?;
    let measured = tokio::time::timeout(Duration::from_secs(30), writer).await;
    stop.store(true, Ordering::Relaxed);
    cluster.start_node(li)?;
    // Let the node rejoin and catch up before the next run.
    let name = cluster.name(li).to_owned();
    cluster
        .wait_for_status(
            Duration::from_secs(60),
            "the restarted node to catch up",
            |s| {
                let last = s.raft.last_log_index.unwrap_or(0);
                s.raft
                    .members
                    .iter()
                    .any(|m| m.name == name && m.matched_index.is_some_and(|i| i + 10 >= last))
            },
        )
        .await?;
    // A read through the restarted node proves it serves again.
    clients[li]
        .get("/bench/failover/0", Read::Linearizable)
        .await?;
    match measured {
        Ok(Ok(Some(d))) => Ok(d),
        Ok(Ok(None)) => bail!("writer stopped without an acknowledged write"),
        Ok(Err(e)) => bail!("writer task failed: {e}"),
        Err(_) => bail!("no write acknowledged within 30 s of the kill"),
    }
}

/// A 3-member etcd on loopback with fsync'd WAL (its default), for comparison.
struct EtcdCluster {
    children: Vec<Child>,
    clients: Vec<EtcdKv>,
}

impl EtcdCluster {
    async fn start(dir: &std::path::Path) -> anyhow::Result<EtcdCluster> {
        let etcd = which("etcd").or_else(|| {
            println!("etcd not found; installing Debian's etcd-server");
            let ok = std::process::Command::new("apt-get")
                .args(["install", "-y", "-qq", "etcd-server"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok { which("etcd") } else { None }
        });
        let etcd = etcd.context(
            "etcd is not installed and could not be installed (apt-get install etcd-server)",
        )?;
        let base = free_base_port(3)?;
        let peer = |i: u16| format!("http://127.0.0.1:{}", base + 100 + i);
        let client = |i: u16| format!("http://127.0.0.1:{}", base + i);
        let initial: Vec<String> = (0..3).map(|i| format!("e{i}={}", peer(i))).collect();
        let mut children = Vec::new();
        for i in 0..3u16 {
            let data = dir.join(format!("e{i}"));
            std::fs::create_dir_all(&data)?;
            let log = std::fs::File::create(dir.join(format!("e{i}.log")))?;
            children.push(
                Command::new(&etcd)
                    .args([
                        "--name",
                        &format!("e{i}"),
                        "--data-dir",
                        &data.display().to_string(),
                        "--listen-client-urls",
                        &client(i),
                        "--advertise-client-urls",
                        &client(i),
                        "--listen-peer-urls",
                        &peer(i),
                        "--initial-advertise-peer-urls",
                        &peer(i),
                        "--initial-cluster",
                        &initial.join(","),
                        "--initial-cluster-state",
                        "new",
                        "--initial-cluster-token",
                        "flotilla-bench",
                    ])
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .kill_on_drop(true)
                    .spawn()?,
            );
        }
        let mut clients = Vec::new();
        for i in 0..3u16 {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let kv = EtcdKv::new(&client(i));
                match kv.put(b"/bench/ready", b"1").await {
                    Ok(()) => {
                        clients.push(kv);
                        break;
                    }
                    Err(e) if Instant::now() > deadline => {
                        return Err(e).context(format!("etcd member {i} did not become ready"));
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        println!("etcd: 3 members on loopback ({})", etcd.display());
        Ok(EtcdCluster { children, clients })
    }

    async fn stop(&mut self) {
        for c in &mut self.children {
            if let Some(pid) = c.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
