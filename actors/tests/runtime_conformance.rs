//! The runtime conformance suite against the `process` runtime: plain mode always (with shims,
//! and supervised in-process), isolated mode when running as root on Linux. This binary has its
//! own main so that it can double as the shim (`<this binary> runtime-shim …`), the way the
//! `flotilla` binary does in production.
//!
//! Arguments: an optional filter — `plain`, `isolated`, or part of a check's name.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_actors::runtime::conformance::{self, ConformanceContext, Report};
use flotilla_actors::runtime::process::{
    self, ImageSource, ProcessConfig, ProcessRuntime, ResolvedImage, ShimBinary, StaticImages,
};
use flotilla_actors::runtime::sim::{SimConfig, SimRuntime};
use flotilla_actors::runtime::{ContainerConfig, ContainerState, Runtime, SandboxConfig};

/// `<this binary> fake-node-daemon ROOT isolated|plain [ROOTFS]`: a stand-in node daemon that
/// starts a container, prints `ready SANDBOX CONTAINER PID` and waits to be killed.
const DAEMON_MODE: &str = "fake-node-daemon";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(process::SHIM_SUBCOMMAND) {
        return process::shim_main(args[2..].to_vec());
    }
    if args.get(1).map(String::as_str) == Some(DAEMON_MODE) {
        return fake_daemon(&args[2..]);
    }
    if args.iter().any(|a| a == "--list") {
        println!("runtime_conformance: test");
        return ExitCode::SUCCESS;
    }
    let filter = args[1..].iter().find(|a| !a.starts_with('-')).cloned();
    let (modes, check_filter) = match filter.as_deref() {
        None => (vec!["plain", "isolated", "sim", "restart"], None),
        Some(f @ ("plain" | "isolated" | "sim" | "restart")) => (vec![f], None),
        Some(f) if conformance::checks().iter().any(|(n, _)| n.contains(f)) => {
            (vec!["plain", "isolated", "sim"], Some(f.to_owned()))
        }
        Some(f) if "runtime_conformance".contains(f) => {
            (vec!["plain", "isolated", "sim", "restart"], None)
        }
        Some(_) => {
            println!("runtime_conformance: filtered out");
            return ExitCode::SUCCESS;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ok = rt.block_on(async move {
        let mut ok = true;
        for mode in modes {
            let result = match mode {
                "plain" => plain(check_filter.as_deref()).await,
                "isolated" => isolated(check_filter.as_deref()).await,
                "sim" => sim(check_filter.as_deref()).await,
                _ => restart().await,
            };
            if let Err(e) = result {
                println!("runtime_conformance {mode}: FAILED: {e}");
                ok = false;
            }
        }
        ok
    });
    if ok {
        println!("runtime_conformance: ok");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `FLOTILLA_SHIM=path/to/flotilla` runs the shims from the real binary instead of this one.
fn shim() -> ShimBinary {
    match std::env::var_os("FLOTILLA_SHIM") {
        Some(path) => ShimBinary::Path(path.into()),
        None => ShimBinary::CurrentExe,
    }
}

fn host_busybox() -> bool {
    std::process::Command::new("busybox")
        .arg("true")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn port() -> u16 {
    20_000 + (std::process::id() % 20_000) as u16
}

fn check(report: &Report, what: &str) -> Result<(), String> {
    let failed: Vec<&str> = report.failures().iter().map(|r| r.name).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: failed checks {failed:?}"))
    }
}

/// Processes whose command line mentions `dir` (shims, containers): none may outlive a test.
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_owned)
        .collect()
}

/// Create → Running for `n` containers (`sleep`), one after another.
async fn start_latency(
    rt: &dyn Runtime,
    image: &str,
    work: &Path,
    n: usize,
) -> Result<Vec<Duration>, String> {
    let dir = work.join("latency");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let sb = rt
        .run_sandbox(SandboxConfig {
            pod_uid: format!("latency-{}", std::process::id()),
            name: "latency".into(),
            namespace: "bench".into(),
            dir: dir.clone(),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut times = Vec::new();
    let mut result = Ok(());
    for i in 0..n {
        let t = Instant::now();
        let config = ContainerConfig {
            name: format!("c{i}"),
            image: image.into(),
            command: vec!["sleep".into(), "30".into()],
            ..Default::default()
        };
        let started = async {
            let id = rt.create_container(&sb.id, config).await?;
            rt.start_container(&id).await?;
            rt.container_status(&id).await
        }
        .await;
        match started {
            Ok(s) if s.state == ContainerState::Running => times.push(t.elapsed()),
            Ok(s) => {
                result = Err(format!("container {i} is {:?} after start", s.state));
                break;
            }
            Err(e) => {
                result = Err(format!("container {i}: {e}"));
                break;
            }
        }
    }
    let t = Instant::now();
    let removed = rt.remove_sandbox(&sb.id).await;
    let teardown = t.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    removed.map_err(|e| format!("removing the latency sandbox: {e}"))?;
    times.sort();
    println!(
        "  start latency (create → running, {n} containers): p50 {:?}, p90 {:?}, max {:?}; teardown {:?}",
        times[times.len() / 2],
        times[times.len() * 9 / 10],
        times[times.len() - 1],
        teardown
    );
    Ok(times)
}

async fn plain(filter: Option<&str>) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = tmp.path().join("runtime");
    let work = tmp.path().join("pods");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let config = ProcessConfig {
        root_dir: root.clone(),
        isolate: false,
        shim: shim(),
        ..Default::default()
    };
    let rt = ProcessRuntime::new(config.clone()).map_err(|e| e.to_string())?;
    if rt.isolated() {
        return Err("isolate: false gave an isolated runtime".into());
    }
    let mut ctx = ConformanceContext::new(work.clone());
    ctx.busybox = host_busybox();
    ctx.port = port();
    let reopen_config = config.clone();
    ctx.reopen = Some(Box::new(move || {
        let config = reopen_config.clone();
        Box::pin(async move {
            let rt: Box<dyn Runtime> = Box::new(ProcessRuntime::new(config)?);
            Ok(rt)
        })
    }));
    if !ctx.busybox {
        println!("  note: no busybox on the host; networking checks are skipped");
    }
    println!("runtime_conformance plain (shim processes):");
    let report = conformance::run_matching(&rt, "busybox", &ctx, filter).await;
    let mut result = check(&report, "plain");
    if result.is_ok() && filter.is_none() {
        result = start_latency(&rt, "busybox", &work, 20).await.map(drop);
    }

    println!("runtime_conformance plain (supervised in-process):");
    let inproc_root = tmp.path().join("runtime-inprocess");
    let inproc = ProcessRuntime::new(ProcessConfig {
        root_dir: inproc_root.clone(),
        isolate: false,
        shim: ShimBinary::InProcess,
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    let mut ctx2 = ConformanceContext::new(work.clone());
    ctx2.busybox = ctx.busybox;
    ctx2.port = port() + 1;
    let report = conformance::run_matching(&inproc, "busybox", &ctx2, filter).await;
    if result.is_ok() {
        result = check(&report, "plain in-process");
    }

    // Nothing may be left behind.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for dir in [&root, &inproc_root] {
        let left = processes_under(dir);
        if !left.is_empty() && result.is_ok() {
            result = Err(format!("processes left behind: {left:?}"));
        }
        let containers = std::fs::read_dir(dir.join("containers"))
            .map(|d| d.count())
            .unwrap_or(0);
        if containers != 0 && result.is_ok() {
            result = Err(format!("{containers} container directories left behind"));
        }
    }
    result
}

async fn isolated(filter: Option<&str>) -> Result<(), String> {
    if let Some(why) = process::isolation_unavailable() {
        println!("runtime_conformance isolated: skipped: {why}");
        return Ok(());
    }
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let rootfs = tmp.path().join("image/rootfs");
    if !conformance::busybox_rootfs(&rootfs).map_err(|e| format!("building a rootfs: {e}"))? {
        println!(
            "runtime_conformance isolated: skipped: no busybox on the host to build an image from (apt-get install busybox-static)"
        );
        return Ok(());
    }
    let image = "busybox:conformance";
    let images: Arc<dyn ImageSource> = Arc::new(StaticImages::new().with(ResolvedImage {
        id: "sha256:conformance-busybox".into(),
        references: vec![image.into()],
        rootfs: rootfs.clone(),
        cmd: vec!["sh".into()],
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        ..Default::default()
    }));
    let root = tmp.path().join("runtime");
    let work = tmp.path().join("pods");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let pid = std::process::id();
    let config = ProcessConfig {
        root_dir: root.clone(),
        isolate: true,
        shim: shim(),
        cgroup_parent: format!("flotilla-test-{pid}"),
        // A test-only range on a bridge of our own.
        pod_cidr: Some("10.244.250.0/24".into()),
        bridge: Some(format!("flt{}", pid % 1_000_000)),
        ..Default::default()
    };
    let netns_before = netns_list();
    let rt = ProcessRuntime::new(config.clone())
        .map_err(|e| e.to_string())?
        .with_images(images.clone());
    if !rt.isolated() {
        return Err("isolation available but the runtime is not isolated".into());
    }
    let mut ctx = ConformanceContext::new(work.clone());
    ctx.isolated = true;
    ctx.busybox = true;
    ctx.pod_ip_reachable = true;
    ctx.port = 8080;
    ctx.missing_image = Some("no-such-image:latest".into());
    let reopen_config = config.clone();
    let reopen_images = images.clone();
    ctx.reopen = Some(Box::new(move || {
        let config = reopen_config.clone();
        let images = reopen_images.clone();
        Box::pin(async move {
            let rt: Box<dyn Runtime> = Box::new(ProcessRuntime::new(config)?.with_images(images));
            Ok(rt)
        })
    }));
    println!("runtime_conformance isolated:");
    let report = conformance::run_matching(&rt, image, &ctx, filter).await;
    let mut result = check(&report, "isolated");
    if result.is_ok() && filter.is_none() {
        result = start_latency(&rt, image, &work, 20).await.map(drop);
    }

    // Clean up node-level resources, then make sure nothing leaked.
    let leftover = rt.list_sandboxes().await.unwrap_or_default();
    for sb in leftover {
        let _ = rt.remove_sandbox(&sb.id).await;
    }
    rt.remove_node_resources().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut leaks = Vec::new();
    let left = processes_under(&root);
    if !left.is_empty() {
        leaks.push(format!("processes: {left:?}"));
    }
    let mounts = mounts_under(tmp.path());
    if !mounts.is_empty() {
        leaks.push(format!("mounts: {mounts:?}"));
    }
    let new_netns: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| !netns_before.contains(n))
        .collect();
    if !new_netns.is_empty() {
        leaks.push(format!("network namespaces: {new_netns:?}"));
    }
    if let Some(bridge) = &config.bridge
        && Path::new("/sys/class/net").join(bridge).exists()
    {
        leaks.push(format!("bridge {bridge}"));
    }
    let cgroups = cgroup_dirs_named(&config.cgroup_parent);
    if !cgroups.is_empty() {
        leaks.push(format!("cgroups: {cgroups:?}"));
    }
    if !leaks.is_empty() && result.is_ok() {
        result = Err(format!("left behind: {}", leaks.join("; ")));
    }
    result
}

fn netns_list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Directories named `name` anywhere in the cgroup hierarchies (two levels below our own).
fn cgroup_dirs_named(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for line in own.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let base = if ctrls.is_empty() {
            PathBuf::from("/sys/fs/cgroup/unified")
        } else {
            PathBuf::from("/sys/fs/cgroup").join(ctrls.split(',').next().unwrap_or(""))
        };
        let dir = base.join(path.trim_start_matches('/')).join(name);
        if dir.exists() {
            found.push(dir);
        }
    }
    found
}

async fn sim(filter: Option<&str>) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let rt = SimRuntime::new(SimConfig::default());
    let mut ctx = ConformanceContext::new(tmp.path().to_owned());
    ctx.real_processes = false;
    println!("runtime_conformance sim:");
    let report = conformance::run_matching(&rt, "busybox", &ctx, filter).await;
    check(&report, "sim")
}

fn restart_config(root: &Path, isolate: bool) -> ProcessConfig {
    ProcessConfig {
        root_dir: root.to_owned(),
        isolate,
        shim: shim(),
        cgroup_parent: format!("flotilla-restart-{}", std::process::id()),
        ..Default::default()
    }
}

fn restart_images(rootfs: &Path) -> Arc<dyn ImageSource> {
    Arc::new(StaticImages::new().with(ResolvedImage {
        id: "sha256:restart".into(),
        references: vec!["busybox".into()],
        rootfs: rootfs.to_owned(),
        ..Default::default()
    }))
}

fn fake_daemon(args: &[String]) -> ExitCode {
    let (Some(root), Some(mode)) = (args.first(), args.get(1)) else {
        return ExitCode::from(2);
    };
    let isolate = mode == "isolated";
    let Ok(rt) = tokio::runtime::Runtime::new() else {
        return ExitCode::FAILURE;
    };
    let result: Result<String, String> = rt.block_on(async {
        let mut config = restart_config(Path::new(root), isolate);
        config.cgroup_parent = args.get(3).cloned().unwrap_or(config.cgroup_parent);
        let mut runtime = ProcessRuntime::new(config).map_err(|e| e.to_string())?;
        if let Some(rootfs) = args.get(2).filter(|r| !r.is_empty()) {
            runtime = runtime.with_images(restart_images(Path::new(rootfs)));
        }
        let sb = runtime
            .run_sandbox(SandboxConfig {
                pod_uid: "restart".into(),
                name: "restart".into(),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let id = runtime
            .create_container(
                &sb.id,
                ContainerConfig {
                    name: "survivor".into(),
                    image: "busybox".into(),
                    command: vec![
                        "sh".into(),
                        "-c".into(),
                        "while true; do echo tick; sleep 0.2; done".into(),
                    ],
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        runtime
            .start_container(&id)
            .await
            .map_err(|e| e.to_string())?;
        let status = runtime
            .container_status(&id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!("ready {} {id} {}", sb.id, status.pid.unwrap_or(0)))
    });
    match result {
        Ok(line) => {
            println!("{line}");
            // Wait to be SIGKILLed.
            std::thread::sleep(Duration::from_secs(120));
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error {e}");
            ExitCode::FAILURE
        }
    }
}

/// A node daemon is SIGKILLed with a container running: the container keeps running and
/// logging, and a new runtime instance re-adopts, stops and removes it.
async fn restart() -> Result<(), String> {
    let mut modes = vec!["plain"];
    if process::isolation_unavailable().is_none() {
        modes.push("isolated");
    }
    for mode in modes {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let root = tmp.path().join("runtime");
        let rootfs = tmp.path().join("rootfs");
        let rootfs_arg = if mode == "isolated" {
            if !conformance::busybox_rootfs(&rootfs).map_err(|e| e.to_string())? {
                println!("runtime_conformance restart isolated: skipped: no busybox");
                continue;
            }
            rootfs.display().to_string()
        } else {
            String::new()
        };
        let config = restart_config(&root, mode == "isolated");
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut daemon = tokio::process::Command::new(exe)
            .arg(DAEMON_MODE)
            .arg(&root)
            .arg(mode)
            .arg(&rootfs_arg)
            .arg(&config.cgroup_parent)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        if let Some(out) = daemon.stdout.take() {
            use tokio::io::AsyncBufReadExt as _;
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                tokio::io::BufReader::new(out).read_line(&mut line),
            )
            .await;
        }
        let _ = daemon.start_kill();
        let _ = daemon.wait().await;
        let result = async {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ["ready", sandbox, id, pid] = fields[..] else {
                return Err(format!("fake daemon said {line:?}"));
            };
            let mut rt = ProcessRuntime::new(config.clone()).map_err(|e| e.to_string())?;
            if mode == "isolated" {
                rt = rt.with_images(restart_images(&rootfs));
            }
            let status = rt.container_status(id).await.map_err(|e| e.to_string())?;
            if status.state != ContainerState::Running
                || status.pid.map(|p| p.to_string()).as_deref() != Some(pid)
            {
                return Err(format!(
                    "after the daemon's SIGKILL: {:?} pid {:?}",
                    status.state, status.pid
                ));
            }
            // Still logging: the supervisor outlived the daemon.
            let before = std::fs::metadata(&status.log_path)
                .map(|m| m.len())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(600)).await;
            let after = std::fs::metadata(&status.log_path)
                .map(|m| m.len())
                .unwrap_or(0);
            if after <= before {
                return Err(format!("log stopped growing at {before} bytes"));
            }
            rt.stop_container(id, Duration::from_secs(2))
                .await
                .map_err(|e| e.to_string())?;
            let status = rt.container_status(id).await.map_err(|e| e.to_string())?;
            if status.state != ContainerState::Exited || status.exit_code.is_none() {
                return Err(format!(
                    "after stop: {:?} {:?}",
                    status.state, status.exit_code
                ));
            }
            rt.remove_sandbox(sandbox)
                .await
                .map_err(|e| e.to_string())?;
            rt.remove_node_resources().await;
            Ok(())
        }
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let left = processes_under(&root);
        match (&result, left.is_empty()) {
            (Ok(()), true) => {
                println!("  ok      restart {mode}: container survived the daemon's SIGKILL")
            }
            (Ok(()), false) => return Err(format!("restart {mode}: left behind {left:?}")),
            (Err(e), _) => {
                // Best-effort cleanup before reporting.
                if let Ok(rt) = ProcessRuntime::new(config.clone()) {
                    for sb in rt.list_sandboxes().await.unwrap_or_default() {
                        let _ = rt.remove_sandbox(&sb.id).await;
                    }
                    rt.remove_node_resources().await;
                }
                return Err(format!("restart {mode}: {e}"));
            }
        }
    }
    Ok(())
}
