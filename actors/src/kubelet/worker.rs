//! One pod's worker: drives the runtime towards the pod's spec (sandbox, init containers in
//! order, containers with their restart policy and CrashLoopBackOff), handles graceful
//! deletion, and writes the pod's status when it changes.

use flotilla_api::At;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use flotilla_consensus::{CmpOp, Compare, Op, Read, TxnRequest};
use kameo::Actor;
use kameo::actor::{ActorRef, Spawn};
use kameo::message::{Context, Message};
use serde_json::Value;

mod inputs;

use super::KubeletConfig;
use super::hooks::{self, HookTarget};
use super::status::{Observed, PodView, comparable, pod_status, rfc3339};
use super::{hostport, volumes};
use crate::runtime::{ContainerState, ContainerStatus, Limits, PullPolicy, SandboxConfig};

/// The cluster's DNS domain (the kubelet's `--cluster-domain` default).
const CLUSTER_DOMAIN: &str = "cluster.local";
/// How often a worker re-checks its containers without being told.
const TICK: Duration = Duration::from_secs(1);
/// The sync interval of a pod nothing can change without news (see `tick_for`).
const QUIET_TICK: Duration = Duration::from_secs(10);
/// CrashLoopBackOff: 10 s doubling to 5 min, forgotten after 10 min of running.
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How often configMap, secret, downwardAPI and projected volumes are rewritten from the
/// latest objects (Kubernetes takes up to a minute; a write that changes nothing is cheap).
const VOLUME_REFRESH: Duration = Duration::from_secs(2);
/// The least SIGTERM-to-SIGKILL time left to a container whose preStop hook used up the
/// grace period (the kubelet's `minimumGracePeriodInSeconds`).
const MIN_GRACE_AFTER_HOOK: Duration = Duration::from_secs(2);

/// The pod's latest desired state.
pub struct Desired(pub Arc<Value>);
/// The pod is gone from this node: tear down and stop.
pub struct Removed;
/// Periodic resync.
pub struct Tick;

#[derive(Default)]
struct Record {
    id: Option<String>,
    /// The attempt before the current one, kept for `kubectl logs --previous`.
    previous_id: Option<String>,
    restarts: u32,
    previous: Option<ContainerStatus>,
    backoff: Option<Duration>,
    next_start: Option<Instant>,
    waiting: Option<(String, String)>,
}

#[derive(Actor)]
pub struct PodWorker {
    config: KubeletConfig,
    uid: String,
    /// Shared, so the once-a-second sync does not copy the whole object.
    pod: Option<Arc<Value>>,
    sandbox: Option<(String, Option<String>)>,
    records: HashMap<String, Record>,
    last_status: Option<Value>,
    start_time: String,
    done: bool,
    /// Probe tallies by (container id, probe kind).
    probes: HashMap<(String, &'static str), super::probes::ProbeState>,
    /// The sandbox's own network namespace, if it has one.
    netns: Option<PathBuf>,
    /// Host ports being forwarded into the sandbox; dropped with the pod.
    host_ports: hostport::Forwarders,
    /// Host-port problems already reported as events (reported once, retried every sync).
    host_port_errors: HashSet<String>,
    /// When the volumes were last written (None: not since this worker started).
    volumes_written: Option<Instant>,
    /// The periodic sync's interval in milliseconds, read by the ticker task.
    tick_ms: Arc<AtomicU64>,
}

/// How often a pod is looked at without news: every second, unless its containers only
/// change when told to and it has no probes to run and no volumes to refresh; then as
/// rarely as kubelet's own resync.
fn tick_for(containers_change: bool, pod: &Value) -> Duration {
    let mut containers = ["/spec/containers", "/spec/initContainers"]
        .iter()
        .filter_map(|p| pod.at(p).and_then(Value::as_array))
        .flatten();
    let probes = containers.any(|c| {
        ["livenessProbe", "readinessProbe", "startupProbe"]
            .iter()
            .any(|k| c.get(k).is_some())
    });
    let refreshed = pod
        .at("/spec/volumes")
        .and_then(Value::as_array)
        .is_some_and(|vs| {
            vs.iter().any(|v| {
                ["configMap", "secret", "projected", "downwardAPI"]
                    .iter()
                    .any(|k| v.get(k).is_some())
            })
        });
    if containers_change || probes || refreshed {
        TICK
    } else {
        QUIET_TICK
    }
}

/// A volume as a host path to bind into containers.
struct PreparedVolume {
    path: PathBuf,
    /// Kubernetes mounts configMap, secret, downwardAPI and projected volumes read-only.
    read_only: bool,
}

impl PodWorker {
    pub fn start(config: KubeletConfig, uid: String) -> ActorRef<PodWorker> {
        let tick_ms = Arc::new(AtomicU64::new(TICK.as_millis() as u64));
        let worker = PodWorker::spawn(PodWorker {
            config,
            uid,
            pod: None,
            sandbox: None,
            records: HashMap::new(),
            last_status: None,
            start_time: rfc3339(SystemTime::now()),
            done: false,
            probes: HashMap::new(),
            netns: None,
            host_ports: hostport::Forwarders::default(),
            host_port_errors: HashSet::new(),
            volumes_written: None,
            tick_ms: tick_ms.clone(),
        });
        let ticker = worker.downgrade();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(tick_ms.load(Ordering::Relaxed))).await;
                let Some(w) = ticker.upgrade() else { return };
                if !w.is_alive() || w.tell(Tick).try_send().is_err() && !w.is_alive() {
                    return;
                }
            }
        });
        worker
    }

    fn pod_dir(&self) -> PathBuf {
        self.config.pods_dir.join(&self.uid)
    }

    async fn sync(&mut self) {
        if self.done {
            return;
        }
        let Some(pod) = self.pod.clone() else { return };
        if pod
            .at("/metadata/deletionTimestamp")
            .is_some_and(|t| !t.is_null())
        {
            self.terminate(&pod).await;
            return;
        }
        let phase = self
            .last_status
            .as_ref()
            .and_then(|s| s.get("phase"))
            .and_then(Value::as_str);
        if matches!(phase, Some("Succeeded" | "Failed")) {
            // A finished pod keeps its final status; nothing restarts.
            return;
        }
        if let Err(e) = self.ensure_sandbox(&pod).await {
            tracing::warn!(pod = %name_of(&pod), error = %e, "sandbox failed");
            return;
        }
        self.publish_host_ports(&pod).await;
        self.refresh_volumes(&pod).await;
        let restart_policy = pod
            .at("/spec/restartPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Always")
            .to_owned();
        let init: Vec<Value> = list(&pod, "/spec/initContainers");
        let main: Vec<Value> = list(&pod, "/spec/containers");
        let mut init_obs = Vec::new();
        let mut init_done = true;
        for c in &init {
            let o = self.drive(&pod, c, true, &restart_policy).await;
            let ok = o
                .current
                .as_ref()
                .is_some_and(|s| s.state == ContainerState::Exited && s.exit_code == Some(0));
            init_obs.push(o);
            if !ok {
                init_done = false;
                break;
            }
        }
        // Containers after a failed or running init container have not started.
        for c in init.iter().skip(init_obs.len()) {
            init_obs.push(Observed {
                name: str_at(c, "/name"),
                image: str_at(c, "/image"),
                waiting: Some(("PodInitializing".into(), String::new())),
                ..Default::default()
            });
        }
        let mut main_obs = Vec::new();
        for c in &main {
            if init_done {
                main_obs.push(self.drive(&pod, c, false, &restart_policy).await);
            } else {
                main_obs.push(Observed {
                    name: str_at(c, "/name"),
                    image: str_at(c, "/image"),
                    waiting: Some(("PodInitializing".into(), String::new())),
                    ..Default::default()
                });
            }
        }
        let view = PodView {
            init: &init_obs,
            main: &main_obs,
            init_done,
            restart_policy: &restart_policy,
            pod_ip: self.sandbox.as_ref().and_then(|(_, ip)| ip.clone()),
            host_ip: &self.config.host_ip,
            start_time: &self.start_time,
            qos: pod.at("/status/qosClass").cloned(),
            previous: pod.get("status"),
        };
        let status = pod_status(&view, &rfc3339(SystemTime::now()));
        self.write_status(status).await;
    }

    async fn ensure_sandbox(&mut self, pod: &Value) -> crate::runtime::Result<()> {
        if self.sandbox.is_some() {
            return Ok(());
        }
        let rt = &self.config.runtime;
        // Re-adopt the sandbox of a pod this node ran before the daemon restarted. Only pods
        // that have reported a container are looked up: listing every container for each new
        // pod made starting many pods quadratic.
        let ran_before = pod
            .at("/status/containerStatuses")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| c.get("containerID").is_some()));
        if ran_before
            && let Ok(sandboxes) = rt.list_sandboxes().await
            && let Some(sb) = sandboxes.into_iter().find(|s| s.config.pod_uid == self.uid)
        {
            if let Ok(containers) = rt.list_containers().await {
                for c in containers.into_iter().filter(|c| c.sandbox_id == sb.id) {
                    let rec = self.records.entry(c.name.clone()).or_default();
                    if rec.id.is_none() || c.attempt >= rec.restarts {
                        rec.restarts = c.attempt;
                        rec.id = Some(c.id.clone());
                    }
                }
            }
            self.netns = sb.netns;
            self.sandbox = Some((sb.id, sb.ip.map(|ip| ip.to_string())));
            return Ok(());
        }
        let dir = self.pod_dir();
        std::fs::create_dir_all(&dir)?;
        let config = SandboxConfig {
            pod_uid: self.uid.clone(),
            namespace: str_at(pod, "/metadata/namespace"),
            name: name_of(pod),
            hostname: pod
                .at("/spec/hostname")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| name_of(pod)),
            domain: match pod.at("/spec/subdomain").and_then(Value::as_str) {
                Some(sub) if !sub.is_empty() => format!(
                    "{sub}.{}.svc.{CLUSTER_DOMAIN}",
                    str_at(pod, "/metadata/namespace")
                ),
                _ => String::new(),
            },
            host_network: pod
                .at("/spec/hostNetwork")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            dir,
            ..Default::default()
        };
        let sb = rt.run_sandbox(config).await?;
        self.netns = sb.netns;
        self.sandbox = Some((sb.id, sb.ip.map(|ip| ip.to_string())));
        Ok(())
    }

    /// Brings one container towards its spec; returns what to report about it.
    async fn drive(
        &mut self,
        pod: &Value,
        spec: &Value,
        init: bool,
        restart_policy: &str,
    ) -> Observed {
        let name = str_at(spec, "/name");
        let image = str_at(spec, "/image");
        let rt = self.config.runtime.clone();
        let sandbox = self
            .sandbox
            .as_ref()
            .map(|(id, _)| id.clone())
            .unwrap_or_default();
        let mut obs = Observed {
            name: name.clone(),
            image: image.clone(),
            ..Default::default()
        };
        let current = match self.records.get(&name).and_then(|r| r.id.clone()) {
            Some(id) => rt.container_status(&id).await.ok(),
            None => None,
        };
        let rec = self.records.entry(name.clone()).or_default();
        let restart = match &current {
            None => true,
            Some(s) if s.state == ContainerState::Exited => {
                let code = s.exit_code.unwrap_or(-1);
                match (init, restart_policy) {
                    // Init containers run until they succeed (unless the pod never restarts).
                    (true, "Never") => false,
                    (true, _) => code != 0,
                    (false, "Always") => true,
                    (false, "OnFailure") => code != 0,
                    _ => false,
                }
            }
            Some(s) if s.state == ContainerState::Running => {
                // Long enough up: the next crash starts the backoff afresh.
                if s.started_at
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|d| d > BACKOFF_RESET)
                {
                    rec.backoff = None;
                }
                false
            }
            Some(_) => false,
        };
        if !restart {
            obs.current = current;
            obs.previous = rec.previous.clone();
            obs.restarts = rec.restarts;
            let running = obs
                .current
                .clone()
                .filter(|s| s.state == ContainerState::Running);
            obs.ready = running.is_some();
            if let Some(status) = running
                && !init
            {
                obs.ready = self.probe(pod, spec, &status).await;
            }
            return obs;
        }
        let now = Instant::now();
        if let Some(exited) = &current {
            // A restart: wait out the backoff first.
            if rec.next_start.is_none() {
                let delay = match rec.backoff {
                    None => Duration::ZERO,
                    Some(d) => d,
                };
                rec.next_start = Some(now + delay);
                rec.backoff = Some(
                    rec.backoff
                        .map_or(BACKOFF_START, |d| (d * 2).min(BACKOFF_MAX)),
                );
            }
            if rec.next_start.is_some_and(|t| t > now) {
                obs.current = current.clone();
                obs.previous = rec.previous.clone();
                obs.restarts = rec.restarts;
                obs.waiting = Some((
                    "CrashLoopBackOff".into(),
                    format!(
                        "back-off restarting failed container {name} in pod {}",
                        name_of(pod)
                    ),
                ));
                obs.current = Some(exited.clone());
                return obs;
            }
            rec.previous = Some(exited.clone());
            rec.restarts += 1;
            if let Some(older) = rec.previous_id.take() {
                let _ = rt.remove_container(&older).await;
            }
            rec.previous_id = rec.id.take();
        }
        rec.next_start = None;
        let attempt = rec.restarts;
        let policy = match spec.get("imagePullPolicy").and_then(Value::as_str) {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            _ => PullPolicy::IfNotPresent,
        };
        if let Err(e) = rt.pull_image(&image, policy).await {
            let rec = self.records.entry(name.clone()).or_default();
            let reason = if rec
                .waiting
                .as_ref()
                .is_some_and(|(r, _)| r == "ErrImagePull")
            {
                "ImagePullBackOff"
            } else {
                "ErrImagePull"
            };
            let first = reason == "ErrImagePull";
            rec.waiting = Some((reason.into(), e.to_string()));
            obs.waiting = rec.waiting.clone();
            obs.restarts = rec.restarts;
            if first {
                self.event(
                    pod,
                    "Warning",
                    "Failed",
                    format!("Failed to pull image \"{image}\": {e}"),
                )
                .await;
            }
            return obs;
        }
        let config = match self.container_config(pod, spec, attempt).await {
            Ok(c) => c,
            Err(message) => {
                let waiting = ("CreateContainerConfigError".to_owned(), message.clone());
                let rec = self.records.entry(name.clone()).or_default();
                // Said once per distinct problem, not on every retry.
                if rec.waiting.as_ref() != Some(&waiting) {
                    rec.waiting = Some(waiting.clone());
                    self.event(pod, "Warning", "Failed", format!("Error: {message}"))
                        .await;
                }
                obs.waiting = Some(waiting);
                return obs;
            }
        };
        let started = async {
            let id = rt.create_container(&sandbox, config).await?;
            if let Err(e) = rt.start_container(&id).await {
                // Not left behind: the next attempt creates a fresh one.
                let _ = rt.remove_container(&id).await;
                return Err(e);
            }
            crate::runtime::Result::Ok(id)
        }
        .await;
        let rec = self.records.entry(name.clone()).or_default();
        rec.waiting = None;
        let mut started_id = None;
        let event = match started {
            Ok(id) => {
                obs.current = rt.container_status(&id).await.ok();
                rec.id = Some(id.clone());
                started_id = Some(id);
                ("Normal", "Started", format!("Started container {name}"))
            }
            Err(e) => {
                obs.waiting = Some(("CreateContainerError".into(), e.to_string()));
                ("Warning", "Failed", format!("Error: {e}"))
            }
        };
        obs.previous = rec.previous.clone();
        obs.restarts = rec.restarts;
        self.event(pod, event.0, event.1, event.2).await;
        if let Some(id) = started_id
            && let Some(handler) = hooks::handler(spec, "postStart")
        {
            self.post_start(pod, spec, &id, handler, &mut obs).await;
        }
        obs.ready = obs
            .current
            .as_ref()
            .is_some_and(|s| s.state == ContainerState::Running);
        obs
    }

    /// Runs a container's postStart hook right after it started. A failed hook kills the
    /// container (as the kubelet does), and the restart policy takes it from there.
    async fn post_start(
        &self,
        pod: &Value,
        spec: &Value,
        id: &str,
        handler: &Value,
        obs: &mut Observed,
    ) {
        let rt = self.config.runtime.clone();
        let pod_ip = self.pod_ip();
        let target = HookTarget {
            container_id: id,
            container: spec,
            isolated_pid: obs.current.as_ref().and_then(|s| s.pid),
            pod_ip: pod_ip.as_deref(),
        };
        let Err(message) =
            hooks::run(rt.as_ref(), &target, handler, hooks::POST_START_TIMEOUT).await
        else {
            return;
        };
        tracing::info!(pod = %name_of(pod), container = %obs.name, error = %message, "postStart hook failed");
        self.event(
            pod,
            "Warning",
            "FailedPostStartHook",
            format!("PostStartHook failed: {message}"),
        )
        .await;
        self.stop_gracefully(pod, Some(spec), id, grace_of(pod))
            .await;
        obs.current = rt.container_status(id).await.ok();
    }

    /// Stops a container the way the kubelet kills one: its preStop hook first, then SIGTERM,
    /// then SIGKILL, all within `grace` (a hook that used it all still leaves a short
    /// SIGTERM window).
    async fn stop_gracefully(&self, pod: &Value, spec: Option<&Value>, id: &str, grace: Duration) {
        let rt = self.config.runtime.clone();
        let deadline = Instant::now() + grace;
        let mut left = grace;
        // No grace (a forced stop) leaves no time for a hook.
        if let Some(handler) = spec.and_then(|s| hooks::handler(s, "preStop"))
            && !grace.is_zero()
            && let Ok(status) = rt.container_status(id).await
            && status.state == ContainerState::Running
        {
            let pod_ip = self.pod_ip();
            let target = HookTarget {
                container_id: id,
                container: spec.unwrap_or(&Value::Null),
                isolated_pid: status.pid,
                pod_ip: pod_ip.as_deref(),
            };
            if let Err(message) = hooks::run(rt.as_ref(), &target, handler, grace).await {
                tracing::info!(pod = %name_of(pod), container = %status.name, error = %message, "preStop hook failed");
                self.event(
                    pod,
                    "Warning",
                    "FailedPreStopHook",
                    format!("PreStopHook failed: {message}"),
                )
                .await;
            }
            left = deadline
                .saturating_duration_since(Instant::now())
                .max(MIN_GRACE_AFTER_HOOK);
        }
        let _ = rt.stop_container(id, left).await;
    }

    fn pod_ip(&self) -> Option<String> {
        self.sandbox.as_ref().and_then(|(_, ip)| ip.clone())
    }

    /// Forwards the pod's host ports into its network namespace (see `hostport`). Pods
    /// without a namespace of their own (host network, unisolated runtime) already listen on
    /// the node's ports.
    async fn publish_host_ports(&mut self, pod: &Value) {
        let Some(netns) = self.netns.clone() else {
            return;
        };
        let (ports, errors) = hostport::host_ports(pod, &self.config.host_ip);
        let mut problems = errors;
        let target: std::net::IpAddr = self
            .pod_ip()
            .and_then(|ip| ip.parse().ok())
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
        for port in ports {
            if self.host_ports.is_published(&port) {
                continue;
            }
            let text = port.to_string();
            match self.host_ports.publish(port, netns.clone(), target).await {
                Ok(()) => tracing::debug!(pod = %name_of(pod), port = %text, "host port published"),
                Err(e) => problems.push(format!("publishing host port {text}: {e}")),
            }
        }
        for p in problems {
            if self.host_port_errors.insert(p.clone()) {
                self.event(pod, "Warning", "FailedHostPort", p).await;
            }
        }
    }

    /// Records a core/v1 Event about this pod, as the kubelet does (what `kubectl describe`
    /// lists). Best effort: a lost event loses nothing else.
    async fn event(&self, pod: &Value, kind: &str, reason: &str, message: String) {
        let ns = str_at(pod, "/metadata/namespace");
        let name = format!(
            "{}.{:x}",
            name_of(pod),
            SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let now = rfc3339(SystemTime::now());
        let event = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": name,
                "namespace": ns,
                "uid": flotilla_api::new_uid(),
                "creationTimestamp": now,
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": name_of(pod),
                "namespace": ns,
                "uid": self.uid,
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": "kubelet", "host": self.config.node_name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.config.node_name,
        });
        let key = format!("/registry/core/events/{ns}/{name}");
        let Ok(value) = serde_json::to_vec(&event) else {
            return;
        };
        let _ = self
            .config
            .store
            .txn(TxnRequest {
                compare: vec![Compare::Missing { key: key.clone() }],
                success: vec![Op::Put { key, value }],
                failure: vec![],
            })
            .await;
    }

    /// Runs the container's due probes; returns whether it is ready. A failed liveness or
    /// startup probe stops the container, and the restart policy takes it from there.
    async fn probe(&mut self, pod: &Value, spec: &Value, status: &ContainerStatus) -> bool {
        use super::probes::{self, timing};
        let rt = self.config.runtime.clone();
        // The sim runtime has no network to probe; its exec probes still run.
        let sim = rt.name() == "sim";
        let running_for = status
            .started_at
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        let pod_ip = self.pod_ip();
        let grace = grace_of(pod);
        let mut run = |kind: &'static str| {
            let probe = spec.get(kind).cloned();
            let state = self
                .probes
                .entry((status.id.clone(), kind))
                .or_default()
                .clone();
            (probe, state)
        };
        let (startup, startup_state) = run("startupProbe");
        let (liveness, liveness_state) = run("livenessProbe");
        let (readiness, readiness_state) = run("readinessProbe");
        let check = |probe: &Value| !sim || probe.get("exec").is_some();
        // Startup first: until it passes, nothing else runs and the container is not ready.
        if let Some(p) = &startup
            && startup_state.passing != Some(true)
        {
            let t = timing(p);
            if startup_state.due(&t, running_for) {
                let ok = !check(p)
                    || probes::run(
                        rt.as_ref(),
                        &status.id,
                        spec,
                        p,
                        status.pid,
                        pod_ip.as_deref(),
                    )
                    .await;
                let st = self
                    .probes
                    .entry((status.id.clone(), "startupProbe"))
                    .or_default();
                if st.record(&t, ok) == Some(false) {
                    tracing::info!(container = %status.name, "startup probe failed; restarting");
                    self.stop_gracefully(pod, Some(spec), &status.id, grace)
                        .await;
                }
            }
            return false;
        }
        if let Some(p) = &liveness {
            let t = timing(p);
            if liveness_state.due(&t, running_for) {
                let ok = !check(p)
                    || probes::run(
                        rt.as_ref(),
                        &status.id,
                        spec,
                        p,
                        status.pid,
                        pod_ip.as_deref(),
                    )
                    .await;
                let st = self
                    .probes
                    .entry((status.id.clone(), "livenessProbe"))
                    .or_default();
                if st.record(&t, ok) == Some(false) {
                    tracing::info!(container = %status.name, "liveness probe failed; restarting");
                    self.event(
                        pod,
                        "Warning",
                        "Unhealthy",
                        format!(
                            "Liveness probe failed; container {} will be restarted",
                            status.name
                        ),
                    )
                    .await;
                    self.stop_gracefully(pod, Some(spec), &status.id, grace)
                        .await;
                    return false;
                }
            }
        }
        match &readiness {
            None => true,
            Some(p) => {
                let t = timing(p);
                if readiness_state.due(&t, running_for) {
                    let ok = !check(p)
                        || probes::run(
                            rt.as_ref(),
                            &status.id,
                            spec,
                            p,
                            status.pid,
                            pod_ip.as_deref(),
                        )
                        .await;
                    self.probes
                        .entry((status.id.clone(), "readinessProbe"))
                        .or_default()
                        .record(&t, ok);
                }
                self.probes
                    .get(&(status.id.clone(), "readinessProbe"))
                    .and_then(|s| s.passing)
                    .unwrap_or(false)
            }
        }
    }

    /// Graceful deletion: stop containers within the grace period, remove the sandbox, then
    /// remove the pod object.
    async fn terminate(&mut self, pod: &Value) {
        let grace = Duration::from_secs(
            pod.at("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(30),
        );
        let specs: Vec<Value> = list(pod, "/spec/containers")
            .into_iter()
            .chain(list(pod, "/spec/initContainers"))
            .collect();
        let rt = self.config.runtime.clone();
        let mut targets: Vec<(String, String)> = self
            .records
            .iter()
            .filter_map(|(name, rec)| Some((name.clone(), rec.id.clone()?)))
            .collect();
        // A pod deleted while this node was down: its worker is new and knows nothing of
        // what the runtime still runs for it.
        let mut orphans = Vec::new();
        let mut orphan_containers = Vec::new();
        if self.sandbox.is_none()
            && let Ok(sandboxes) = rt.list_sandboxes().await
        {
            orphans = sandboxes
                .into_iter()
                .filter(|s| s.config.pod_uid == self.uid)
                .map(|s| s.id)
                .collect();
            if let Ok(containers) = rt.list_containers().await {
                for c in containers
                    .into_iter()
                    .filter(|c| orphans.contains(&c.sandbox_id))
                {
                    orphan_containers.push(c.id.clone());
                    targets.push((c.name, c.id));
                }
            }
        }
        // All containers at once: each one's preStop hook and SIGTERM share the grace period.
        let this = &*self;
        let stops = targets.iter().map(|(name, id)| {
            let spec = specs.iter().find(|s| str_at(s, "/name") == *name);
            async move { this.stop_gracefully(pod, spec, id, grace).await }
        });
        futures::future::join_all(stops).await;
        for id in &orphan_containers {
            let _ = rt.remove_container(id).await;
        }
        for id in &orphans {
            let _ = rt.stop_sandbox(id).await;
            let _ = rt.remove_sandbox(id).await;
        }
        self.teardown().await;
        let key = format!(
            "/registry/core/pods/{}/{}",
            str_at(pod, "/metadata/namespace"),
            name_of(pod)
        );
        // Only this pod (same uid), and only if it is still being deleted.
        if let Ok(got) = self.config.store.get(&key, Read::Linearizable).await
            && let Some(kv) = got.kv
            && let Ok(current) = serde_json::from_slice::<Value>(&kv.value)
            && current.at("/metadata/uid").and_then(Value::as_str) == Some(self.uid.as_str())
            && current.at("/metadata/deletionTimestamp").is_some()
        {
            let _ = self
                .config
                .store
                .txn(TxnRequest {
                    compare: vec![Compare::ModRevision {
                        key: key.clone(),
                        op: CmpOp::Equal,
                        revision: kv.mod_revision,
                    }],
                    success: vec![Op::Delete { key }],
                    failure: vec![],
                })
                .await;
        }
        self.done = true;
    }

    async fn teardown(&mut self) {
        let rt = self.config.runtime.clone();
        for rec in self.records.values() {
            if let Some(id) = &rec.id {
                let _ = rt.stop_container(id, Duration::ZERO).await;
                let _ = rt.remove_container(id).await;
            }
            if let Some(id) = &rec.previous_id {
                let _ = rt.remove_container(id).await;
            }
        }
        // Host ports close before the sandbox goes, so nothing forwards into a dead namespace.
        self.host_ports = hostport::Forwarders::default();
        if let Some((id, _)) = self.sandbox.take() {
            let _ = rt.stop_sandbox(&id).await;
            let _ = rt.remove_sandbox(&id).await;
        }
        let dir = self.pod_dir();
        let _ = tokio::task::spawn_blocking(move || {
            volumes::unmount_all(&dir.join("volumes"));
            std::fs::remove_dir_all(dir)
        })
        .await;
    }

    /// Writes `status` if it differs from what was last written, onto the latest stored pod.
    async fn write_status(&mut self, status: Value) {
        if self
            .last_status
            .as_ref()
            .is_some_and(|s| comparable(s) == comparable(&status))
        {
            return;
        }
        let Some(pod) = self.pod.clone() else { return };
        let key = format!(
            "/registry/core/pods/{}/{}",
            str_at(&pod, "/metadata/namespace"),
            name_of(&pod)
        );
        for attempt in 0..5 {
            // First onto the pod as last seen (usually the latest: no read needed), then,
            // after a conflict, onto a fresh read.
            let seen = pod
                .at("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|rv| rv.parse::<u64>().ok());
            let (mut current, mod_revision) = match seen {
                Some(rv) if attempt == 0 => (Value::clone(&pod), rv),
                _ => {
                    let Ok(got) = self.config.store.get(&key, Read::Linearizable).await else {
                        return;
                    };
                    let Some(kv) = got.kv else { return };
                    let Ok(current) = serde_json::from_slice::<Value>(&kv.value) else {
                        return;
                    };
                    (current, kv.mod_revision)
                }
            };
            if let Some(m) = current["metadata"].as_object_mut() {
                // Not part of the stored object (the API sets it from the mod revision).
                m.remove("resourceVersion");
            }
            if current.at("/metadata/uid").and_then(Value::as_str) != Some(self.uid.as_str()) {
                return;
            }
            current["status"] = status.clone();
            let Ok(bytes) = serde_json::to_vec(&current) else {
                return;
            };
            let written = self
                .config
                .store
                .txn(TxnRequest {
                    compare: vec![Compare::ModRevision {
                        key: key.clone(),
                        op: CmpOp::Equal,
                        revision: mod_revision,
                    }],
                    success: vec![Op::Put {
                        key: key.clone(),
                        value: bytes,
                    }],
                    failure: vec![],
                })
                .await;
            if written.is_ok_and(|r| r.succeeded) {
                self.last_status = Some(status);
                return;
            }
        }
    }
}

impl PodWorker {
    /// Whether a container is still on its way up: worth a look sooner than the next tick.
    fn starting(&self) -> bool {
        self.last_status.as_ref().is_none_or(|s| {
            s.get("containerStatuses")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.at("/state/waiting/reason").and_then(Value::as_str)
                            == Some("ContainerCreating")
                    })
                })
        })
    }

    fn resync_soon(&self, ctx: &mut Context<Self, ()>) {
        if !self.done && self.starting() {
            // The timer task runs detached; its handle is not needed.
            let _timer = ctx
                .actor_ref()
                .tell(Tick)
                .send_after(Duration::from_millis(50));
        }
    }
}

impl Message<Desired> for PodWorker {
    type Reply = ();

    async fn handle(&mut self, msg: Desired, ctx: &mut Context<Self, ()>) {
        if self.last_status.is_none() {
            self.last_status = msg
                .0
                .get("status")
                .filter(|s| s.get("containerStatuses").is_some())
                .cloned();
            if let Some(t) = msg.0.at("/status/startTime").and_then(Value::as_str) {
                self.start_time = t.to_owned();
            }
        }
        self.tick_ms.store(
            tick_for(
                self.config.runtime.containers_change_by_themselves(),
                &msg.0,
            )
            .as_millis() as u64,
            Ordering::Relaxed,
        );
        // The echo of this worker's own status write changes nothing it acts on: no sync.
        let echo = self
            .pod
            .as_deref()
            .is_some_and(|p| same_but_status(p, &msg.0))
            && msg.0.get("status") == self.last_status.as_ref();
        self.pod = Some(msg.0);
        if echo {
            return;
        }
        self.sync().await;
        self.resync_soon(ctx);
    }
}

impl Message<Tick> for PodWorker {
    type Reply = ();

    async fn handle(&mut self, _: Tick, ctx: &mut Context<Self, ()>) {
        if self.done {
            ctx.stop();
            return;
        }
        self.sync().await;
        self.resync_soon(ctx);
    }
}

impl Message<Removed> for PodWorker {
    type Reply = ();

    async fn handle(&mut self, _: Removed, ctx: &mut Context<Self, ()>) {
        if !self.done {
            self.teardown().await;
            self.done = true;
        }
        ctx.stop();
    }
}

/// Whether two versions of a pod differ at most in status and resourceVersion.
fn same_but_status(a: &Value, b: &Value) -> bool {
    if a.get("spec") != b.get("spec") {
        return false;
    }
    let (Some(ma), Some(mb)) = (
        a.get("metadata").and_then(Value::as_object),
        b.get("metadata").and_then(Value::as_object),
    ) else {
        return false;
    };
    let others = |m: &serde_json::Map<String, Value>| {
        m.iter()
            .filter(|(k, _)| k.as_str() != "resourceVersion")
            .count()
    };
    others(ma) == others(mb)
        && ma
            .iter()
            .filter(|(k, _)| k.as_str() != "resourceVersion")
            .all(|(k, v)| mb.get(k) == Some(v))
}

fn list(v: &Value, pointer: &str) -> Vec<Value> {
    v.at(pointer)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn str_at(v: &Value, pointer: &str) -> String {
    v.at(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

fn name_of(pod: &Value) -> String {
    str_at(pod, "/metadata/name")
}

/// `terminationGracePeriodSeconds` (Kubernetes' default 30 s).
fn grace_of(pod: &Value) -> Duration {
    Duration::from_secs(
        pod.at("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(30),
    )
}

/// Memory, CPU (millicores) and pid limits from `resources.limits`.
fn limits_of(spec: &Value) -> Limits {
    let get = |k: &str| {
        spec.at(&format!("/resources/limits/{k}"))
            .and_then(Value::as_str)
            .and_then(parse_quantity)
    };
    Limits {
        memory_bytes: get("memory").map(|v| v.ceil() as u64),
        cpu_millis: get("cpu").map(|v| (v * 1000.0).ceil() as u64),
        pids: None,
    }
}

/// A Kubernetes quantity as a number (`128Mi`, `500m`, `1.5`, `2G`).
pub fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some(n * mult)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            b'\n' | b'\r' => continue,
            _ => return None,
        };
        buf = (buf << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_and_base64() {
        assert_eq!(parse_quantity("128Mi"), Some(134217728.0));
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("x"), None);
        assert_eq!(base64_decode("czNjcjN0").unwrap(), b"s3cr3t");
    }
}
