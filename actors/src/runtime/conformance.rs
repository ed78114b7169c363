//! The runtime conformance suite: checks every [`Runtime`] implementation must pass. Each check
//! is a pub async fn creating (and removing) its own sandbox; [`run_all`] runs them in turn and
//! prints a line per check. Checks that need what a runtime does not offer (real commands,
//! isolation, busybox, a reopenable state) are skipped according to [`ConformanceContext`].
//!
//! Commands used: `sh`, `sleep`, `cat`, `echo`, `printf`, `pwd`, and `busybox` (httpd, wget,
//! awk, hostname) where `ctx.busybox` says it is there.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{
    ContainerConfig, ContainerState, ContainerStatus, Limits, Mount, Runtime, SandboxConfig,
    SandboxState,
};

/// Opens a fresh runtime over the same state (a restarted node daemon).
pub type Reopen =
    Box<dyn Fn() -> BoxFuture<'static, super::Result<Box<dyn Runtime>>> + Send + Sync>;

/// What the runtime under test can do, and where checks may put files.
pub struct ConformanceContext {
    /// Parent of the sandbox directories the checks create (it must exist).
    pub work_dir: PathBuf,
    /// Containers run their commands for real (output, exit codes, signals, exec).
    pub real_processes: bool,
    /// Namespaces, image root, cgroups: per-pod localhost, hostname, volumes, memory limits.
    pub isolated: bool,
    /// `busybox` can be run inside containers.
    pub busybox: bool,
    /// Sandboxes get an IP the node (this process) can connect to.
    pub pod_ip_reachable: bool,
    /// For the re-adoption check; None skips it.
    pub reopen: Option<Reopen>,
    /// A TCP port the networking check may listen on (free on the host in plain mode).
    pub port: u16,
    /// An image the runtime cannot have, for the pull error check; None skips that part.
    pub missing_image: Option<String>,
}

impl ConformanceContext {
    pub fn new(work_dir: PathBuf) -> ConformanceContext {
        ConformanceContext {
            work_dir,
            real_processes: true,
            isolated: false,
            busybox: false,
            pod_ip_reachable: false,
            reopen: None,
            port: 18_080,
            missing_image: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Skipped(String),
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct CheckResult {
    pub name: &'static str,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub results: Vec<CheckResult>,
}

impl Report {
    pub fn failures(&self) -> Vec<&CheckResult> {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
            .collect()
    }

    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.results {
            let ms = r.elapsed.as_millis();
            match &r.outcome {
                Outcome::Passed => writeln!(f, "  ok      {} ({ms} ms)", r.name)?,
                Outcome::Skipped(why) => writeln!(f, "  skipped {}: {why}", r.name)?,
                Outcome::Failed(why) => writeln!(f, "  FAILED  {} ({ms} ms): {why}", r.name)?,
            }
        }
        Ok(())
    }
}

/// Ok(None): passed; Ok(Some(reason)): skipped; Err: failed.
type Check = Result<Option<String>, String>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// A check function's signature.
pub type CheckFn =
    for<'a> fn(&'a dyn Runtime, &'a str, &'a ConformanceContext) -> BoxFuture<'a, Outcome>;

/// Every check, by name.
pub fn checks() -> Vec<(&'static str, CheckFn)> {
    vec![
        ("sandbox_lifecycle", |rt, i, c| {
            Box::pin(sandbox_lifecycle(rt, i, c))
        }),
        ("image_status", |rt, i, c| Box::pin(image_status(rt, i, c))),
        ("container_lifecycle", |rt, i, c| {
            Box::pin(container_lifecycle(rt, i, c))
        }),
        ("exit_codes", |rt, i, c| Box::pin(exit_codes(rt, i, c))),
        ("logs_cri_format", |rt, i, c| {
            Box::pin(logs_cri_format(rt, i, c))
        }),
        ("stop_grace_period", |rt, i, c| {
            Box::pin(stop_grace_period(rt, i, c))
        }),
        ("exec_sync", |rt, i, c| Box::pin(exec_sync(rt, i, c))),
        ("exec_interactive", |rt, i, c| {
            Box::pin(exec_interactive(rt, i, c))
        }),
        ("exec_terminal", |rt, i, c| {
            Box::pin(exec_terminal(rt, i, c))
        }),
        ("env_and_working_dir", |rt, i, c| {
            Box::pin(env_and_working_dir(rt, i, c))
        }),
        ("pod_localhost", |rt, i, c| {
            Box::pin(pod_localhost(rt, i, c))
        }),
        ("isolation_basics", |rt, i, c| {
            Box::pin(isolation_basics(rt, i, c))
        }),
        ("volume_mounts", |rt, i, c| {
            Box::pin(volume_mounts(rt, i, c))
        }),
        ("memory_limit_oom", |rt, i, c| {
            Box::pin(memory_limit_oom(rt, i, c))
        }),
        ("readoption", |rt, i, c| Box::pin(readoption(rt, i, c))),
    ]
}

/// Runs every check (those whose name contains `filter`, if given), printing one line each.
pub async fn run_all(rt: &dyn Runtime, image: &str, ctx: &ConformanceContext) -> Report {
    run_matching(rt, image, ctx, None).await
}

pub async fn run_matching(
    rt: &dyn Runtime,
    image: &str,
    ctx: &ConformanceContext,
    filter: Option<&str>,
) -> Report {
    let mut report = Report::default();
    for (name, check) in checks() {
        if filter.is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let started = Instant::now();
        let outcome = check(rt, image, ctx).await;
        let result = CheckResult {
            name,
            outcome,
            elapsed: started.elapsed(),
        };
        print!(
            "{}",
            Report {
                results: vec![result.clone()]
            }
        );
        report.results.push(result);
    }
    report
}

fn outcome(check: Check) -> Outcome {
    match check {
        Ok(None) => Outcome::Passed,
        Ok(Some(why)) => Outcome::Skipped(why),
        Err(why) => Outcome::Failed(why),
    }
}

fn need_real(ctx: &ConformanceContext) -> Option<Outcome> {
    (!ctx.real_processes).then(|| Outcome::Skipped("the runtime runs no real commands".into()))
}

fn need_isolated(ctx: &ConformanceContext) -> Option<Outcome> {
    need_real(ctx)
        .or_else(|| (!ctx.isolated).then(|| Outcome::Skipped("containers are not isolated".into())))
}

fn sandbox_config(ctx: &ConformanceContext, name: &str) -> SandboxConfig {
    let uid = format!("conformance-{name}-{}", unique());
    let dir = ctx.work_dir.join(&uid);
    let _ = std::fs::create_dir_all(&dir);
    SandboxConfig {
        pod_uid: uid,
        namespace: "conformance".into(),
        name: name.replace('_', "-"),
        hostname: name.replace('_', "-"),
        dir,
        ..Default::default()
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `body` in a fresh sandbox and removes the sandbox whatever happens.
async fn in_sandbox<'a, F, Fut>(
    rt: &'a dyn Runtime,
    ctx: &'a ConformanceContext,
    name: &str,
    body: F,
) -> Outcome
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Check> + 'a,
{
    let config = sandbox_config(ctx, name);
    let dir = config.dir.clone();
    let sb = match rt.run_sandbox(config).await {
        Ok(sb) => sb,
        Err(e) => return Outcome::Failed(format!("run_sandbox: {e}")),
    };
    let result = body(sb.id.clone()).await;
    let cleanup = rt.remove_sandbox(&sb.id).await;
    let _ = std::fs::remove_dir_all(&dir);
    match (result, cleanup) {
        (Ok(_), Err(e)) => Outcome::Failed(format!("remove_sandbox: {e}")),
        (result, _) => outcome(result),
    }
}

fn container(name: &str, image: &str, cmd: &[&str]) -> ContainerConfig {
    ContainerConfig {
        name: name.into(),
        image: image.into(),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn sh(name: &str, image: &str, script: &str) -> ContainerConfig {
    container(name, image, &["sh", "-c", script])
}

async fn run(rt: &dyn Runtime, sandbox: &str, config: ContainerConfig) -> Result<String, String> {
    let name = config.name.clone();
    let id = rt
        .create_container(sandbox, config)
        .await
        .map_err(|e| format!("create {name}: {e}"))?;
    rt.start_container(&id)
        .await
        .map_err(|e| format!("start {name}: {e}"))?;
    Ok(id)
}

async fn wait_for(
    rt: &dyn Runtime,
    id: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&ContainerStatus) -> bool,
) -> Result<ContainerStatus, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = rt
            .container_status(id)
            .await
            .map_err(|e| format!("container_status: {e}"))?;
        if pred(&status) {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "container {} not {what} after {timeout:?}: {:?} exit {:?} reason {:?} {:?}",
                status.name, status.state, status.exit_code, status.reason, status.message
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_exited(
    rt: &dyn Runtime,
    id: &str,
    timeout: Duration,
) -> Result<ContainerStatus, String> {
    wait_for(rt, id, timeout, "exited", |s| {
        s.state == ContainerState::Exited
    })
    .await
}

async fn wait_running(rt: &dyn Runtime, id: &str) -> Result<ContainerStatus, String> {
    wait_for(rt, id, Duration::from_secs(10), "running", |s| {
        s.state == ContainerState::Running
    })
    .await
}

/// The `(stream, tag, text)` records of a CRI log file, each timestamp checked.
pub fn read_cri_log(path: &Path) -> Result<Vec<(String, String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut records = Vec::new();
    for line in text.lines() {
        let mut it = line.splitn(4, ' ');
        let (Some(ts), Some(stream), Some(tag)) = (it.next(), it.next(), it.next()) else {
            return Err(format!("malformed log line {line:?}"));
        };
        let text = it.next().unwrap_or("");
        let ts_ok = ts.len() >= 20
            && ts.as_bytes().get(10) == Some(&b'T')
            && (ts.ends_with('Z') || ts[19..].contains(['+', '-']))
            && ts[..4].bytes().all(|b| b.is_ascii_digit());
        ensure!(ts_ok, "bad timestamp in log line {line:?}");
        ensure!(
            stream == "stdout" || stream == "stderr",
            "bad stream in log line {line:?}"
        );
        ensure!(tag == "F" || tag == "P", "bad tag in log line {line:?}");
        records.push((stream.to_owned(), tag.to_owned(), text.to_owned()));
    }
    Ok(records)
}

/// The text of a container's log (stdout and stderr, full lines joined).
fn log_text(status: &ContainerStatus) -> String {
    read_cri_log(&status.log_path)
        .map(|recs| {
            recs.into_iter()
                .map(|(_, tag, text)| if tag == "F" { text + "\n" } else { text })
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_log(rt: &dyn Runtime, id: &str, needle: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = rt.container_status(id).await.map_err(|e| e.to_string())?;
        if log_text(&status).contains(needle) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "log of {} lacks {needle:?}: {:?}",
                status.name,
                log_text(&status)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sandboxes: Ready after run, listed, NotReady after stop; stop and remove are idempotent;
/// a removed sandbox is gone.
pub async fn sandbox_lifecycle(
    rt: &dyn Runtime,
    _image: &str,
    ctx: &ConformanceContext,
) -> Outcome {
    let config = sandbox_config(ctx, "sandbox-lifecycle");
    let dir = config.dir.clone();
    let result = async {
        let sb = rt
            .run_sandbox(config.clone())
            .await
            .map_err(|e| format!("run_sandbox: {e}"))?;
        ensure!(
            sb.state == SandboxState::Ready,
            "new sandbox is {:?}",
            sb.state
        );
        ensure!(
            sb.config.pod_uid == config.pod_uid,
            "sandbox config not kept"
        );
        let status = rt.sandbox_status(&sb.id).await.map_err(|e| e.to_string())?;
        ensure!(
            status.state == SandboxState::Ready,
            "status {:?}",
            status.state
        );
        let listed = rt.list_sandboxes().await.map_err(|e| e.to_string())?;
        ensure!(listed.iter().any(|s| s.id == sb.id), "sandbox not listed");
        rt.stop_sandbox(&sb.id)
            .await
            .map_err(|e| format!("stop: {e}"))?;
        rt.stop_sandbox(&sb.id)
            .await
            .map_err(|e| format!("second stop: {e}"))?;
        let status = rt.sandbox_status(&sb.id).await.map_err(|e| e.to_string())?;
        ensure!(
            status.state == SandboxState::NotReady,
            "stopped sandbox is {:?}",
            status.state
        );
        rt.remove_sandbox(&sb.id)
            .await
            .map_err(|e| format!("remove: {e}"))?;
        rt.remove_sandbox(&sb.id)
            .await
            .map_err(|e| format!("second remove: {e}"))?;
        ensure!(
            rt.sandbox_status(&sb.id).await.is_err(),
            "removed sandbox still has a status"
        );
        let listed = rt.list_sandboxes().await.map_err(|e| e.to_string())?;
        ensure!(
            !listed.iter().any(|s| s.id == sb.id),
            "removed sandbox listed"
        );
        rt.stop_sandbox("no-such-sandbox")
            .await
            .map_err(|e| format!("stop of an unknown sandbox: {e}"))?;
        rt.remove_sandbox("no-such-sandbox")
            .await
            .map_err(|e| format!("remove of an unknown sandbox: {e}"))?;
        Ok(None)
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    outcome(result)
}

/// The test image is present; a missing one fails to pull with `ImagePull`.
pub async fn image_status(rt: &dyn Runtime, image: &str, ctx: &ConformanceContext) -> Outcome {
    outcome(
        async {
            let info = rt
                .pull_image(image, super::PullPolicy::IfNotPresent)
                .await
                .map_err(|e| format!("pull {image}: {e}"))?;
            ensure!(!info.id.is_empty(), "image without id");
            let status = rt.image_status(image).await.map_err(|e| e.to_string())?;
            ensure!(status.is_some(), "image_status of {image} is None");
            if let Some(missing) = &ctx.missing_image {
                let pulled = rt.pull_image(missing, super::PullPolicy::Never).await;
                ensure!(
                    matches!(pulled, Err(super::RuntimeError::ImagePull { .. })),
                    "pulling {missing}: {pulled:?}"
                );
                ensure!(
                    matches!(rt.image_status(missing).await, Ok(None)),
                    "image_status of {missing} is not None"
                );
            }
            Ok(None)
        }
        .await,
    )
}

/// Create → Created, start → Running (with a pid and start time), listed, stop → Exited,
/// remove twice, then gone.
pub async fn container_lifecycle(
    rt: &dyn Runtime,
    image: &str,
    ctx: &ConformanceContext,
) -> Outcome {
    in_sandbox(rt, ctx, "container_lifecycle", |sb| async move {
        let config = sh("main", image, "echo hello; sleep 30");
        let id = rt
            .create_container(&sb, config)
            .await
            .map_err(|e| format!("create: {e}"))?;
        let status = rt.container_status(&id).await.map_err(|e| e.to_string())?;
        ensure!(
            status.state == ContainerState::Created,
            "created container is {:?}",
            status.state
        );
        ensure!(
            status.sandbox_id == sb && status.name == "main",
            "wrong identity {status:?}"
        );
        rt.start_container(&id)
            .await
            .map_err(|e| format!("start: {e}"))?;
        let status = wait_running(rt, &id).await?;
        ensure!(status.started_at.is_some(), "running without started_at");
        if ctx.real_processes {
            ensure!(status.pid.is_some(), "running without a pid");
            wait_log(rt, &id, "hello").await?;
        }
        let listed = rt.list_containers().await.map_err(|e| e.to_string())?;
        ensure!(listed.iter().any(|c| c.id == id), "container not listed");
        rt.stop_container(&id, Duration::from_secs(1))
            .await
            .map_err(|e| format!("stop: {e}"))?;
        let status = wait_exited(rt, &id, Duration::from_secs(10)).await?;
        ensure!(status.exit_code.is_some(), "exited without exit code");
        ensure!(status.finished_at.is_some(), "exited without finished_at");
        rt.stop_container(&id, Duration::from_secs(1))
            .await
            .map_err(|e| format!("second stop: {e}"))?;
        rt.remove_container(&id)
            .await
            .map_err(|e| format!("remove: {e}"))?;
        rt.remove_container(&id)
            .await
            .map_err(|e| format!("second remove: {e}"))?;
        ensure!(
            rt.container_status(&id).await.is_err(),
            "removed container has a status"
        );
        let listed = rt.list_containers().await.map_err(|e| e.to_string())?;
        ensure!(
            !listed.iter().any(|c| c.id == id),
            "removed container listed"
        );
        Ok(None)
    })
    .await
}

/// 0 → Completed; 3 → Error with exit code 3; a missing program → exited non-zero.
pub async fn exit_codes(rt: &dyn Runtime, image: &str, ctx: &ConformanceContext) -> Outcome {
    if let Some(skip) = need_real(ctx) {
        return skip;
    }
    in_sandbox(rt, ctx, "exit_codes", |sb| async move {
        let ok = run(rt, &sb, sh("ok", image, "exit 0")).await?;
        let bad = run(rt, &sb, sh("bad", image, "exit 3")).await?;
        let s = wait_exited(rt, &ok, Duration::from_secs(10)).await?;
        ensure!(
            s.exit_code == Some(0) && s.reason.as_deref() == Some("Completed"),
            "exit 0 gave {:?} {:?}",
            s.exit_code,
            s.reason
        );
        let s = wait_exited(rt, &bad, Duration::from_secs(10)).await?;
        ensure!(
            s.exit_code == Some(3) && s.reason.as_deref() == Some("Error"),
            "exit 3 gave {:?} {:?}",
            s.exit_code,
            s.reason
        );
        let missing = rt
            .create_container(&sb, container("missing", image, &["/no/such/program"]))
            .await
            .map_err(|e| format!("create: {e}"))?;
        let started = rt.start_container(&missing).await;
        let s = wait_exited(rt, &missing, Duration::from_secs(10)).await?;
        ensure!(
            s.exit_code.is_some_and(|c| c != 0),
            "missing program: start {started:?}, exit {:?}",
            s.exit_code
        );
        Ok(None)
    })
    .await
}

/// The log file is in CRI format with both streams, and an unterminated last line is kept.
pub async fn logs_cri_format(rt: &dyn Runtime, image: &str, ctx: &ConformanceContext) -> Outcome {
    if let Some(skip) = need_real(ctx) {
        return skip;
    }
    in_sandbox(rt, ctx, "logs_cri_format", |sb| async move {
        let id = run(
            rt,
            &sb,
            sh(
                "logger",
                image,
                "echo out-line; echo err-line >&2; printf no-newline",
            ),
        )
        .await?;
        let s = wait_exited(rt, &id, Duration::from_secs(10)).await?;
        let recs = read_cri_log(&s.log_path)?;
        let has = |stream: &str, text: &str| {
            recs.iter()
                .any(|(s, tag, t)| s == stream && tag == "F" && t == text)
        };
        ensure!(
            has("stdout", "out-line"),
            "no stdout F out-line in {recs:?}"
        );
        ensure!(
            has("stderr", "err-line"),
            "no stderr F err-line in {recs:?}"
        );
        ensure!(
            has("stdout", "no-newline"),
            "unterminated line lost: {recs:?}"
        );
        Ok(None)
    })
    .await
}

/// SIGTERM reaches a process that traps it (which exits at once, well within the grace
/// period); one that ignores it is killed (137) once the grace period is over.
pub async fn stop_grace_period(rt: &dyn Runtime, image: &str, ctx: &ConformanceContext) -> Outcome {
    if let Some(skip) = need_real(ctx) {
        return skip;
    }
    in_sandbox(rt, ctx, "stop_grace_period", |sb| async move {
        let polite = run(
            rt,
            &sb,
            sh(
                "polite",
                image,
                "trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
            ),
        )
        .await?;
        let stubborn = run(
            rt,
            &sb,
            sh(
                "stubborn",
                image,
                "trap '' TERM; echo ready; while true; do sleep 0.1; done",
            ),
        )
        .await?;
        wait_log(rt, &polite, "ready").await?;
        wait_log(rt, &stubborn, "ready").await?;

        let t = Instant::now();
        rt.stop_container(&polite, Duration::from_secs(20))
            .await
            .map_err(|e| format!("stop: {e}"))?;
        let took = t.elapsed();
        let s = wait_exited(rt, &polite, Duration::from_secs(5)).await?;
        ensure!(took < Duration::from_secs(5), "trapped TERM took {took:?}");
        ensure!(
            s.exit_code == Some(0),
            "trapped TERM exit {:?}",
            s.exit_code
        );
        wait_log(rt, &polite, "got-term").await?;

        let t = Instant::now();
        rt.stop_container(&stubborn, Duration::from_secs(1))
            .await
            .map_err(|e| format!("stop: {e}"))?;
        let took = t.elapsed();
        let s = wait_exited(rt, &stubborn, Duration::from_secs(5)).await?;
        ensure!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(8),
            "ignored TERM with 1 s grace took {took:?}"
        );
        ensure!(
            s.exit_code == Some(137),
            "killed container exit {:?}",
            s.exit_code
        );
        Ok(None)
    })
    .await
}

/// exec_sync returns output and exit code, sees the container's env, and times out.
pub async fn exec_sync(rt: &dyn Runtime, image: &str, ctx: &ConformanceContext) -> Outcome {
    if let Some(skip) = need_real(ctx) {
        return skip;
    }
    in_sandbox(rt, ctx, "exec_sync", |sb| async move {
        let mut config = container("main", image, &["sleep", "60"]);
        config.env = vec![("GREETING".into(), "from-env".into())];
        let id = run(rt, &sb, config).await?;
        wait_running(rt, &id).await?;
        let cmd = |s: &str| vec!["sh".to_string(), "-c".into(), s.into()];
        let out = rt
            .exec_sync(
                &id,
                cmd("echo out; echo err >&2; exit 5"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|e| format!("exec_sync: {e}"))?;
        ensure!(out.exit_code == 5, "exit code {}", out.exit_code);
        ensure!(
            out.stdout == b"out\n",
            "stdout {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        ensure!(
            out.stderr == b"err\n",
            "stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = rt
            .exec_sync(&id, cmd("echo $GREETING"), Duration::from_secs(10))
            .await
            .map_err(|e| format!("exec_sync: {e}"))?;
        ensure!(
            out.stdout == b"from-env\n",
            "exec env: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        let t = Instant::now();
        let timed_out = rt
            .exec_sync(
                &id,
                vec!["sleep".into(), "30.123".into()],
                Duration::from_millis(300),
            )
            .await;
        ensure!(
            timed_out.is_err(),
            "a 30 s command within 300 ms: {timed_out:?}"
        );
        ensure!(
            t.elapsed() < Duration::from_secs(5),
            "timeout took {:?}",
            t.elapsed()
        );
        // The timed-out command is gone (the pattern does not match its own command line).
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let left = sh_output(rt, &id, "grep -l '30[.]123' /proc/[0-9]*/cmdline; true").await?;
            if left.trim().is_empty() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "timed-out exec still running: {left}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(None)
    })
    .await
}

/// An interactive exec: stdin in, stdout out, exit code.
pub async fn exec_interactive(rt: &dyn Runtime, image: &str, ctx: &ConformanceContext) -> Outcome {
    if let Some(skip) = need_real(ctx) {
        return skip;
    }
    in_sandbox(rt, ctx, "exec_interactive", |sb| async move {
        let id = run(rt, &sb, container("main", image, &["sleep", "60"])).await?;
        wait_running(rt, &id).await?;
        let mut session = rt
            .exec(&id, vec!["cat".into()], true, false)
            .await
            .map_err(|e| format!("exec: {e}"))?;
        let mut stdin = session.stdin.take().ok_or("no stdin")?;
        stdin
            .write_all(b"ping\n")
            .await
            .map_err(|e| e.to_string())?;
        stdin.shutdown().await.map_err(|e| e.to_string())?;
        drop(stdin);
        let mut out = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            session.stdout.read_to_end(&mut out),
        )
        .await
        .map_err(|_| "no EOF on stdout".to_string())?
        .map_err(|e| e.to_string())?;
        ensure!(
            out == b"ping\n",
            "stdout {:?}",
            String::from_utf8_lossy(&out)
        );
        let code = tokio::time::timeout(Duration::from_secs(10), session.exit)
            .await
            .map_err(|_| "exec did not exit".to_string())?
            .map_err(|e| e.to_string())?;
        ensure!(code == 0, "exit code {code}");
        Ok(None)
    })
    .await
}

/// `exec -t`: the command's stdio is a terminal of the size the client set, input is echoed
/// and output arrives on stdout alone.
pub async fn exec_terminal(rt: &dyn Runtime, image: &str, ctx: &ConformanceContext) -> Outcome {
    if let Some(skip) = need_real(ctx) {
        return skip;
    }
    in_sandbox(rt, ctx, "exec_terminal", |sb| async move {
        let id = run(rt, &sb, container("main", image, &["sleep", "60"])).await?;
        wait_running(rt, &id).await?;
        let script = "read line; [ -t 0 ] && [ -t 1 ] && echo tty=yes; echo size=$(stty size); echo got=$line";
        let mut session = rt
            .exec(&id, vec!["sh".into(), "-c".into(), script.into()], true, true)
            .await
            .map_err(|e| format!("exec: {e}"))?;
        ensure!(session.stderr.is_none(), "a terminal session has a separate stderr");
        let resize = session.resize.take().ok_or("no resize on a terminal session")?;
        resize(123, 45);
        let mut stdin = session.stdin.take().ok_or("no stdin")?;
        stdin
            .write_all(b"hello\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            session.stdout.read_to_end(&mut out),
        )
        .await
        .map_err(|_| "no end of output".to_string())?
        .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out).replace('\r', "");
        // The terminal echoes what was typed, as a terminal does.
        for want in ["hello\n", "tty=yes\n", "size=45 123\n", "got=hello\n"] {
            ensure!(text.contains(want), "output lacks {want:?}: {text:?}");
        }
        let code = tokio::time::timeout(Duration::from_secs(10), session.exit)
            .await
            .map_err(|_| "exec did not exit".to_string())?
            .map_err(|e| e.to_string())?;
        ensure!(code == 0, "exit code {code}");
        Ok(None)
    })
    .await
}

/// env (with a space in a value) and the working directory are applied.
pub async fn env_and_working_dir(
    rt: &dyn Runtime,
    image: &str,
    ctx: &ConformanceContext,
) -> Outcome {
    if let Some(skip) = need_real(ctx) {
        return skip;
    }
    in_sandbox(rt, ctx, "env_and_working_dir", |sb| async move {
        let mut config = sh(
            "env",
            image,
            "echo \"FOO=$FOO\"; echo \"BAZ=$BAZ\"; echo \"PWD=$(pwd)\"",
        );
        config.env = vec![
            ("FOO".into(), "bar".into()),
            ("BAZ".into(), "with space".into()),
        ];
        config.working_dir = Some("/tmp".into());
        let id = run(rt, &sb, config).await?;
        let s = wait_exited(rt, &id, Duration::from_secs(10)).await?;
        let text = log_text(&s);
        for want in ["FOO=bar\n", "BAZ=with space\n", "PWD=/tmp\n"] {
            ensure!(text.contains(want), "log lacks {want:?}: {text:?}");
        }
        ensure!(s.exit_code == Some(0), "exit {:?}", s.exit_code);
        Ok(None)
    })
    .await
}

/// Two containers of a pod talk over localhost (busybox httpd and wget); with pod IPs, the
/// node reaches the pod at its IP.
pub async fn pod_localhost(rt: &dyn Runtime, image: &str, ctx: &ConformanceContext) -> Outcome {
    if let Some(skip) = need_real(ctx) {
        return skip;
    }
    if !ctx.busybox {
        return Outcome::Skipped("no busybox for httpd/wget".into());
    }
    let port = ctx.port;
    in_sandbox(rt, ctx, "pod_localhost", |sb| async move {
        let www = format!("/tmp/flotilla-conformance-www-{}", unique());
        // Plain mode shares the host's network: bind loopback only there.
        let bind = if ctx.isolated {
            format!("0.0.0.0:{port}")
        } else {
            format!("127.0.0.1:{port}")
        };
        let server = run(
            rt,
            &sb,
            sh(
                "server",
                image,
                &format!(
                    "mkdir -p {www} && echo pong > {www}/index.html && exec busybox httpd -f -p {bind} -h {www}"
                ),
            ),
        )
        .await?;
        let client = run(rt, &sb, container("client", image, &["sleep", "60"])).await?;
        wait_running(rt, &server).await?;
        wait_running(rt, &client).await?;
        let url = format!("http://127.0.0.1:{port}/");
        let deadline = Instant::now() + Duration::from_secs(10);
        let result = loop {
            let out = rt
                .exec_sync(
                    &client,
                    vec!["busybox".into(), "wget".into(), "-q".into(), "-O".into(), "-".into(), url.clone()],
                    Duration::from_secs(5),
                )
                .await;
            match out {
                Ok(o) if o.exit_code == 0 && o.stdout == b"pong\n" => break Ok(()),
                other if Instant::now() >= deadline => {
                    break Err(format!("wget {url} from the other container: {other:?}"));
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let sandbox_ip = rt.sandbox_status(&sb).await.map_err(|e| e.to_string())?.ip;
        let from_node = match (result.is_ok(), ctx.pod_ip_reachable) {
            (true, true) => match sandbox_ip {
                Some(ip) => http_get(ip, port).await,
                None => Err("sandbox without an IP".into()),
            },
            _ => Ok(()),
        };
        let _ = rt
            .exec_sync(&server, vec!["rm".into(), "-rf".into(), www.clone()], Duration::from_secs(5))
            .await;
        result?;
        from_node?;
        Ok(None)
    })
    .await
}

/// GET / from this process (the node) must answer `pong`.
async fn http_get(ip: std::net::IpAddr, port: u16) -> Result<(), String> {
    let mut stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((ip, port)),
    )
    .await
    .map_err(|_| format!("connecting to the pod at {ip}:{port} timed out"))?
    .map_err(|e| format!("connecting to the pod at {ip}:{port}: {e}"))?;
    stream
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    ensure!(reply.contains("pong"), "pod IP answered {reply:?}");
    Ok(())
}

/// Isolated containers: PID 1 in their namespace, the pod's hostname, generated /etc files,
/// only their own processes visible.
pub async fn isolation_basics(rt: &dyn Runtime, image: &str, ctx: &ConformanceContext) -> Outcome {
    if let Some(skip) = need_isolated(ctx) {
        return skip;
    }
    in_sandbox(rt, ctx, "isolation_basics", |sb| async move {
        let id = run(
            rt,
            &sb,
            sh(
                "main",
                image,
                "echo pid=$$; echo host=$(cat /proc/sys/kernel/hostname); exec sleep 60",
            ),
        )
        .await?;
        wait_log(rt, &id, "host=").await?;
        let s = rt.container_status(&id).await.map_err(|e| e.to_string())?;
        let text = log_text(&s);
        ensure!(text.contains("pid=1\n"), "not PID 1: {text:?}");
        ensure!(
            text.contains("host=isolation-basics\n"),
            "hostname: {text:?}"
        );
        let hosts = sh_output(rt, &id, "cat /etc/hosts").await?;
        ensure!(hosts.contains("isolation-basics"), "/etc/hosts: {hosts:?}");
        let hostname = sh_output(rt, &id, "cat /etc/hostname").await?;
        ensure!(
            hostname.trim() == "isolation-basics",
            "/etc/hostname: {hostname:?}"
        );
        let procs = sh_output(rt, &id, "ls /proc | grep -c '^[0-9]'").await?;
        let n: u32 = procs
            .trim()
            .parse()
            .map_err(|_| format!("process count {procs:?}"))?;
        ensure!(n <= 5, "{n} processes visible in the container");
        let init = sh_output(rt, &id, "cat /proc/1/cmdline | tr '\\0' ' '").await?;
        ensure!(init.starts_with("sleep 60"), "PID 1 is {init:?}");
        Ok(None)
    })
    .await
}

async fn sh_output(rt: &dyn Runtime, id: &str, script: &str) -> Result<String, String> {
    let cmd = vec!["sh".to_string(), "-c".into(), script.to_owned()];
    rt.exec_sync(id, cmd, Duration::from_secs(10))
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .map_err(|e| format!("exec {script:?}: {e}"))
}

/// Bind mounts: a host directory read-write (both ways) and one read-only.
pub async fn volume_mounts(rt: &dyn Runtime, image: &str, ctx: &ConformanceContext) -> Outcome {
    if let Some(skip) = need_isolated(ctx) {
        return skip;
    }
    let vol = ctx.work_dir.join(format!("volume-{}", unique()));
    let (rw, ro) = (vol.join("rw"), vol.join("ro"));
    for d in [&rw, &ro] {
        if let Err(e) = std::fs::create_dir_all(d) {
            return Outcome::Failed(format!("{}: {e}", d.display()));
        }
    }
    if let Err(e) = std::fs::write(rw.join("in.txt"), "from-host\n") {
        return Outcome::Failed(e.to_string());
    }
    let result = in_sandbox(rt, ctx, "volume_mounts", |sb| {
        let (rw, ro) = (rw.clone(), ro.clone());
        async move {
            let mut config = sh(
                "main",
                image,
                "cat /data/in.txt; echo from-container > /data/out.txt; \
                 if touch /config/x 2>/dev/null; then echo ro-writable; else echo ro-ok; fi",
            );
            config.mounts = vec![
                Mount {
                    host_path: rw.clone(),
                    container_path: "/data".into(),
                    read_only: false,
                },
                Mount {
                    host_path: ro.clone(),
                    container_path: "/config".into(),
                    read_only: true,
                },
            ];
            let id = run(rt, &sb, config).await?;
            let s = wait_exited(rt, &id, Duration::from_secs(10)).await?;
            let text = log_text(&s);
            ensure!(
                text.contains("from-host\n"),
                "volume not readable: {text:?}"
            );
            ensure!(text.contains("ro-ok\n"), "read-only volume: {text:?}");
            let out = std::fs::read_to_string(rw.join("out.txt")).unwrap_or_default();
            ensure!(out == "from-container\n", "host sees {out:?}");
            Ok(None)
        }
    })
    .await;
    let _ = std::fs::remove_dir_all(&vol);
    result
}

/// A container allocating past its memory limit ends OOMKilled with exit code 137.
pub async fn memory_limit_oom(rt: &dyn Runtime, image: &str, ctx: &ConformanceContext) -> Outcome {
    if let Some(skip) = need_isolated(ctx) {
        return skip;
    }
    if !ctx.busybox {
        return Outcome::Skipped("no busybox for awk".into());
    }
    in_sandbox(rt, ctx, "memory_limit_oom", |sb| async move {
        let mut config = container(
            "hog",
            image,
            &["busybox", "awk", "BEGIN { s = \"x\"; while (1) s = s s }"],
        );
        config.limits = Limits {
            memory_bytes: Some(32 << 20),
            cpu_millis: Some(500),
            pids: Some(64),
        };
        let id = run(rt, &sb, config).await?;
        let s = wait_exited(rt, &id, Duration::from_secs(30)).await?;
        ensure!(
            s.reason.as_deref() == Some("OOMKilled") && s.exit_code == Some(137),
            "memory hog ended {:?} {:?}",
            s.reason,
            s.exit_code
        );
        Ok(None)
    })
    .await
}

/// A fresh runtime over the same state (a restarted node daemon) lists the running container,
/// execs in it and stops it.
pub async fn readoption(rt: &dyn Runtime, image: &str, ctx: &ConformanceContext) -> Outcome {
    let Some(reopen) = &ctx.reopen else {
        return Outcome::Skipped("the runtime cannot be reopened over its state".into());
    };
    in_sandbox(rt, ctx, "readoption", |sb| async move {
        let id = run(rt, &sb, container("main", image, &["sleep", "60"])).await?;
        let before = wait_running(rt, &id).await?;
        let rt2 = reopen().await.map_err(|e| format!("reopening: {e}"))?;
        let sandboxes = rt2.list_sandboxes().await.map_err(|e| e.to_string())?;
        ensure!(
            sandboxes
                .iter()
                .any(|s| s.id == sb && s.state == SandboxState::Ready),
            "reopened runtime lacks the sandbox"
        );
        let listed = rt2.list_containers().await.map_err(|e| e.to_string())?;
        let found = listed
            .iter()
            .find(|c| c.id == id)
            .ok_or("container not re-adopted")?;
        ensure!(
            found.state == ContainerState::Running,
            "re-adopted container is {:?}",
            found.state
        );
        ensure!(
            found.pid == before.pid,
            "pid {:?} became {:?}",
            before.pid,
            found.pid
        );
        if ctx.real_processes {
            let out = rt2
                .exec_sync(
                    &id,
                    vec!["echo".into(), "still-here".into()],
                    Duration::from_secs(10),
                )
                .await
                .map_err(|e| format!("exec after re-adoption: {e}"))?;
            ensure!(
                out.stdout == b"still-here\n",
                "exec output {:?}",
                out.stdout
            );
        }
        rt2.stop_container(&id, Duration::from_secs(1))
            .await
            .map_err(|e| format!("stop after re-adoption: {e}"))?;
        let s = wait_exited(rt2.as_ref(), &id, Duration::from_secs(10)).await?;
        ensure!(s.exit_code.is_some(), "no exit code after re-adoption");
        rt2.remove_sandbox(&sb)
            .await
            .map_err(|e| format!("remove via the new runtime: {e}"))?;
        Ok(None)
    })
    .await
}

/// A root filesystem with the host's (static) busybox and its applets, `/etc/passwd` and the
/// usual directories, for isolated-mode tests. False when the host has no busybox.
pub fn busybox_rootfs(dir: &Path) -> std::io::Result<bool> {
    let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox", "/sbin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
    else {
        return Ok(false);
    };
    for sub in [
        "bin", "etc", "tmp", "proc", "sys", "dev", "root", "usr/bin", "var",
    ] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::copy(busybox, dir.join("bin/busybox"))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    let list = std::process::Command::new(busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = dir.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    Ok(true)
}
