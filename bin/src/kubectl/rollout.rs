//! `rollout status|history|undo` for deployments, `logs`, `exec` and `cluster-info`.

use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::LogParams;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::get::{self, items_of, name_of};
use super::output::{self, Aligner};
use super::{Globals, Kube, ResourceInfo};

/// The ReplicaSet annotation holding the deployment revision it belongs to.
const REVISION: &str = "deployment.kubernetes.io/revision";
/// The label the deployment controller adds to tell ReplicaSets' pods apart.
const HASH_LABEL: &str = "pod-template-hash";
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

#[derive(clap::Args, Debug)]
pub struct RolloutArgs {
    #[command(flatten)]
    g: Globals,
    #[command(subcommand)]
    what: RolloutWhat,
}

#[derive(Subcommand, Debug)]
enum RolloutWhat {
    /// Wait until the rollout is complete, printing its progress.
    Status {
        /// deployment/NAME or deployment NAME.
        args: Vec<String>,
        /// Give up after this long (e.g. 5m; 0: wait as long as it takes).
        #[arg(long, default_value = "0")]
        timeout: String,
        /// Keep watching until done (false: print the current state once).
        #[arg(short = 'w', long, default_value_t = true, action = clap::ArgAction::Set,
              num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        watch: bool,
    },
    /// List the revisions of a deployment.
    History {
        args: Vec<String>,
        /// Show the pod template of this revision.
        #[arg(long, default_value_t = 0)]
        revision: i64,
    },
    /// Roll back to the previous revision, or to --to-revision.
    Undo {
        args: Vec<String>,
        /// The revision to roll back to (0: the previous one).
        #[arg(long, default_value_t = 0)]
        to_revision: i64,
    },
}

pub async fn rollout(a: RolloutArgs) -> anyhow::Result<()> {
    let kube = Kube::connect(&a.g).await?;
    let args = match &a.what {
        RolloutWhat::Status { args, .. }
        | RolloutWhat::History { args, .. }
        | RolloutWhat::Undo { args, .. } => args,
    };
    let (ty, name) = super::one_object(args, "rollout")?;
    let r = kube.resolve(&ty).await?;
    if !(r.group == "apps" && r.plural == "deployments") {
        bail!(
            "no rollout support has been implemented for {:?} yet (deployments only)",
            r.kind
        );
    }
    let ns = kube.namespace.clone();
    match a.what {
        RolloutWhat::Status { timeout, watch, .. } => {
            let timeout = super::parse_duration(&timeout)?;
            status(&kube, &r, &ns, &name, timeout, watch).await
        }
        RolloutWhat::History { revision, .. } => history(&kube, &r, &ns, &name, revision).await,
        RolloutWhat::Undo { to_revision, .. } => undo(&kube, &r, &ns, &name, to_revision).await,
    }
}

fn int_at(o: &Value, ptr: &str) -> i64 {
    o.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

/// kubectl's deployment status message, and whether the rollout is done.
pub fn deployment_status(d: &Value) -> anyhow::Result<(String, bool)> {
    let name = name_of(d);
    let generation = int_at(d, "/metadata/generation");
    let observed = int_at(d, "/status/observedGeneration");
    if generation > observed {
        return Ok((
            "Waiting for deployment spec update to be observed...".into(),
            false,
        ));
    }
    let deadline_exceeded = d
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            c.get("type").and_then(Value::as_str) == Some("Progressing")
                && c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded")
        });
    if deadline_exceeded {
        bail!("deployment {name:?} exceeded its progress deadline");
    }
    let replicas = d
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let updated = int_at(d, "/status/updatedReplicas");
    let total = int_at(d, "/status/replicas");
    let available = int_at(d, "/status/availableReplicas");
    let waiting = |what: String| {
        (
            format!("Waiting for deployment {name:?} rollout to finish: {what}..."),
            false,
        )
    };
    if updated < replicas {
        return Ok(waiting(format!(
            "{updated} out of {replicas} new replicas have been updated"
        )));
    }
    if total > updated {
        return Ok(waiting(format!(
            "{} old replicas are pending termination",
            total - updated
        )));
    }
    if available < updated {
        return Ok(waiting(format!(
            "{available} of {updated} updated replicas are available"
        )));
    }
    Ok((format!("deployment {name:?} successfully rolled out"), true))
}

async fn status(
    kube: &Kube,
    r: &ResourceInfo,
    ns: &str,
    name: &str,
    timeout: Duration,
    watch: bool,
) -> anyhow::Result<()> {
    let deadline = (timeout > Duration::ZERO).then(|| Instant::now() + timeout);
    let mut last = String::new();
    loop {
        let d = get::get_one(kube, r, Some(ns), name, false).await?;
        let (msg, done) = deployment_status(&d)?;
        if msg != last {
            println!("{msg}");
            last = msg;
        }
        if done || !watch {
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            bail!("timed out waiting for the condition");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The ReplicaSets the deployment controls, with their revisions, oldest first.
async fn replica_sets(kube: &Kube, ns: &str, d: &Value) -> anyhow::Result<Vec<(i64, Value)>> {
    let uid = d
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("");
    let labels = output::labels_text(&output::string_map(d.pointer("/spec/selector/matchLabels")));
    let selector = (labels != "<none>").then_some(labels);
    let rs = kube.resolve("replicasets.apps").await?;
    let list = get::list(kube, &rs, Some(ns), selector.as_deref(), None, false).await?;
    let mut out: Vec<(i64, Value)> = items_of(&rs, list)
        .into_iter()
        .filter(|o| {
            o.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|r| {
                    r.get("uid").and_then(Value::as_str) == Some(uid)
                        && r.get("controller").and_then(Value::as_bool) == Some(true)
                })
        })
        .map(|o| {
            let rev = o
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(REVISION))
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(0);
            (rev, o)
        })
        .collect();
    out.sort_by_key(|(rev, _)| *rev);
    Ok(out)
}

async fn history(
    kube: &Kube,
    r: &ResourceInfo,
    ns: &str,
    name: &str,
    revision: i64,
) -> anyhow::Result<()> {
    let d = get::get_one(kube, r, Some(ns), name, false).await?;
    let sets = replica_sets(kube, ns, &d).await?;
    if revision > 0 {
        let Some((_, rs)) = sets.iter().find(|(rev, _)| *rev == revision) else {
            bail!("unable to find the specified revision");
        };
        println!("{} with revision #{revision}", r.object_name(name));
        println!("Pod Template:");
        let template = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
        for line in output::to_yaml(&template)?.lines() {
            println!("  {line}");
        }
        return Ok(());
    }
    println!("{} ", r.object_name(name));
    if !sets.iter().any(|(rev, _)| *rev > 0) {
        println!("No rollout history found.");
        return Ok(());
    }
    let mut lines = vec![vec!["REVISION".to_owned(), "CHANGE-CAUSE".to_owned()]];
    for (rev, rs) in sets.iter().filter(|(rev, _)| *rev > 0) {
        let cause = rs
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(CHANGE_CAUSE))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("<none>");
        lines.push(vec![rev.to_string(), cause.to_owned()]);
    }
    for l in Aligner::compact().format(&lines) {
        println!("{l}");
    }
    println!();
    Ok(())
}

/// Annotations a rollback keeps from the deployment instead of taking the ReplicaSet's.
const SKIPPED_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

/// The JSON patch kubectl's rollback sends: the ReplicaSet's pod template (minus the hash
/// label) and annotations merged as kubectl merges them; `None` when the deployment already
/// runs that template.
pub fn rollback_patch(d: &Value, rs: &Value) -> Option<Value> {
    let mut template = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
    if let Some(labels) = template
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH_LABEL);
    }
    if d.pointer("/spec/template") == Some(&template) {
        return None;
    }
    let mut annotations = serde_json::Map::new();
    let d_ann = d
        .pointer("/metadata/annotations")
        .and_then(Value::as_object);
    for k in SKIPPED_ANNOTATIONS {
        if let Some(v) = d_ann.and_then(|a| a.get(*k)) {
            annotations.insert((*k).to_owned(), v.clone());
        }
    }
    if let Some(rs_ann) = rs
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        for (k, v) in rs_ann {
            if !SKIPPED_ANNOTATIONS.contains(&k.as_str()) {
                annotations.insert(k.clone(), v.clone());
            }
        }
    }
    // `replace` needs the member to exist; a deployment no controller has annotated yet has
    // no annotations, and `add` sets them the same way.
    let op = if d_ann.is_some() { "replace" } else { "add" };
    Some(json!([
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": op, "path": "/metadata/annotations", "value": annotations},
    ]))
}

async fn undo(
    kube: &Kube,
    r: &ResourceInfo,
    ns: &str,
    name: &str,
    to_revision: i64,
) -> anyhow::Result<()> {
    let d = get::get_one(kube, r, Some(ns), name, false).await?;
    if d.pointer("/spec/paused").and_then(Value::as_bool) == Some(true) {
        bail!(
            "you cannot rollback a paused deployment; resume it first with 'kubectl rollout resume' and try again"
        );
    }
    let sets = replica_sets(kube, ns, &d).await?;
    let chosen = if to_revision > 0 {
        sets.iter()
            .find(|(rev, _)| *rev == to_revision)
            .ok_or_else(|| {
                anyhow::anyhow!("unable to find specified revision {to_revision} in history")
            })?
    } else {
        // The previous revision: the highest one below the current (highest).
        let current = sets.iter().map(|(rev, _)| *rev).max().unwrap_or(0);
        sets.iter()
            .filter(|(rev, _)| *rev > 0 && *rev < current)
            .max_by_key(|(rev, _)| *rev)
            .ok_or_else(|| anyhow::anyhow!("no rollout history found for deployment {name:?}"))?
    };
    let Some(patch) = rollback_patch(&d, &chosen.1) else {
        println!(
            "{} skipped rollback (current template already matches revision {})",
            r.object_name(name),
            chosen.0
        );
        return Ok(());
    };
    // kube-rs's typed JSON patch needs its `jsonpatch` feature; the raw request needs none.
    let path = format!(
        "{}?fieldManager=flotilla-rollout",
        r.object_path(Some(ns), name)
    );
    let req = http::Request::patch(path)
        .header(http::header::CONTENT_TYPE, "application/json-patch+json")
        .body(serde_json::to_vec(&patch)?)?;
    kube.client.request::<Value>(req).await?;
    println!("{} rolled back", r.object_name(name));
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    g: Globals,
    /// POD or pod/POD.
    pod: String,
    /// The container (default: the pod's only or default container).
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Keep streaming new lines.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Lines from the end to show (-1: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    tail: i64,
    /// The previous instance of the container.
    #[arg(short = 'p', long)]
    previous: bool,
    /// Prefix each line with its timestamp.
    #[arg(long)]
    timestamps: bool,
}

/// The pod a `logs` or `exec` names, read from the server.
async fn named_pod(kube: &Kube, what: &str, arg: &str) -> anyhow::Result<(Api<Pod>, Pod)> {
    let pod_name = match super::split_type_name(arg) {
        Some(("pod" | "pods" | "po", n)) => n.to_owned(),
        Some((t, _)) => bail!("{what}: only pods are supported, got {t:?}"),
        None => arg.to_owned(),
    };
    let pods: Api<Pod> = Api::namespaced(kube.client.clone(), &kube.namespace);
    match pods.get(&pod_name).await {
        Ok(p) => Ok((pods, p)),
        // kubectl's wording for this one case.
        Err(kube::Error::Api(s)) if s.code == 404 => bail!(
            "error from server (NotFound): pods \"{pod_name}\" not found in namespace \"{}\"",
            kube.namespace
        ),
        Err(e) => Err(e.into()),
    }
}

/// The container asked for (checked), else the pod's default one, said the way kubectl says
/// it when the pod has several.
fn pick_container(pod: &Pod, asked: Option<&String>) -> anyhow::Result<String> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let names: Vec<String> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    if let Some(c) = asked {
        if !names.contains(c) {
            bail!("container {c} is not valid for pod {pod_name}");
        }
        return Ok(c.clone());
    }
    let default = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubectl.kubernetes.io/default-container"))
        .filter(|c| names.contains(c))
        .or(names.first())
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("pod {pod_name} has no containers"))?;
    if names.len() > 1 {
        eprintln!(
            "Defaulted container \"{default}\" out of: {}",
            names.join(", ")
        );
    }
    Ok(default)
}

pub async fn logs(a: LogsArgs) -> anyhow::Result<()> {
    let kube = Kube::connect(&a.g).await?;
    let (pods, pod) = named_pod(&kube, "logs", &a.pod).await?;
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let container = Some(pick_container(&pod, a.container.as_ref())?);
    let params = LogParams {
        container,
        follow: a.follow,
        tail_lines: (a.tail >= 0).then_some(a.tail),
        previous: a.previous,
        timestamps: a.timestamps,
        ..LogParams::default()
    };
    if a.follow {
        let mut lines = pods.log_stream(&pod_name, &params).await?.lines();
        while let Some(line) = lines.next().await {
            println!("{}", line?);
        }
    } else {
        print!("{}", pods.logs(&pod_name, &params).await?);
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    g: Globals,
    /// POD or pod/POD.
    pod: String,
    /// The container.
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Pass stdin to the container.
    #[arg(short = 'i', long)]
    stdin: bool,
    /// Stdin is a TTY.
    #[arg(short = 't', long)]
    tty: bool,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub async fn exec(a: ExecArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let kube = Kube::connect(&a.g).await?;
    let (pods, pod) = named_pod(&kube, "exec", &a.pod).await?;
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let container = pick_container(&pod, a.container.as_ref())?;
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        bail!("cannot exec into a container in a completed pod; current phase is {phase}");
    }
    let tty = a.tty && a.stdin && std::io::stdin().is_terminal();
    if a.tty && !tty {
        eprintln!("Unable to use a TTY - input is not a terminal or the right kind of file");
    }
    let params = kube::api::AttachParams::default()
        .container(container)
        .stdin(a.stdin)
        .stdout(true)
        .stderr(!tty)
        .tty(tty);
    let mut session = pods
        .exec(&pod_name, a.command.clone(), &params)
        .await
        .map_err(|e| anyhow::anyhow!("unable to upgrade connection: {e}"))?;
    // Raw mode while the remote terminal is in charge; restored on the way out.
    let raw = if tty { RawTerminal::enter() } else { None };
    if let Some(mut sizes) = session.terminal_size() {
        // The size now, then again whenever the local window changes.
        tokio::spawn(async move {
            use futures::SinkExt as _;
            use tokio::signal::unix::{SignalKind, signal};
            let mut winch = signal(SignalKind::window_change()).ok();
            loop {
                if let Ok((width, height)) = terminal_size()
                    && sizes
                        .send(kube::api::TerminalSize { width, height })
                        .await
                        .is_err()
                {
                    return;
                }
                let Some(w) = winch.as_mut() else { return };
                if w.recv().await.is_none() {
                    return;
                }
            }
        });
    }
    if let Some(mut remote) = session.stdin() {
        // Not joined: a read of our stdin cannot be cancelled, and the exit ends it anyway.
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut remote).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut remote).await;
        });
    }
    let out = session.stdout().map(|mut r| {
        tokio::spawn(async move {
            let mut o = tokio::io::stdout();
            let _ = tokio::io::copy(&mut r, &mut o).await;
            let _ = tokio::io::AsyncWriteExt::flush(&mut o).await;
        })
    });
    let err = session.stderr().map(|mut r| {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut r, &mut tokio::io::stderr()).await;
        })
    });
    let status = match session.take_status() {
        Some(s) => s.await,
        None => None,
    };
    for task in [out, err].into_iter().flatten() {
        let _ = task.await;
    }
    drop(raw);
    let Some(status) = status else {
        bail!("the exec session ended without reporting how the command ended");
    };
    match (status.status.as_deref(), status.reason.as_deref()) {
        // Exits rather than returns: a runtime shutting down would wait for the blocked read
        // of our stdin.
        (Some("Success"), _) => {
            let _ = std::io::Write::flush(&mut std::io::stdout());
            std::process::exit(0)
        }
        (_, Some("NonZeroExitCode")) => {
            let code: i32 = status
                .details
                .and_then(|d| d.causes)
                .and_then(|c| {
                    c.into_iter()
                        .find(|c| c.reason.as_deref() == Some("ExitCode"))
                })
                .and_then(|c| c.message)
                .and_then(|m| m.parse().ok())
                .unwrap_or(1);
            eprintln!("command terminated with exit code {code}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
            std::process::exit(code);
        }
        _ => bail!("{}", status.message.unwrap_or_default()),
    }
}

/// The local terminal's size (columns, rows).
fn terminal_size() -> std::io::Result<(u16, u16)> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout())?;
    Ok((size.ws_col, size.ws_row))
}

/// The local terminal in raw mode (keys go to the remote terminal as typed); restores the
/// previous mode when dropped.
struct RawTerminal(nix::sys::termios::Termios);

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let saved = tcgetattr(std::io::stdin()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(std::io::stdin(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}

#[derive(clap::Args, Debug)]
pub struct ClusterInfoArgs {
    #[command(flatten)]
    g: Globals,
}

pub async fn cluster_info(a: ClusterInfoArgs) -> anyhow::Result<()> {
    let kube = Kube::connect(&a.g).await?;
    // Reaching the server is part of what cluster-info reports.
    kube.get_json("/version").await?;
    println!("Kubernetes control plane is running at {}", kube.server);
    let services = kube.resolve("services").await?;
    let listed = get::list(
        &kube,
        &services,
        Some("kube-system"),
        Some("kubernetes.io/cluster-service=true"),
        None,
        false,
    )
    .await?;
    let mut svcs = items_of(&services, listed);
    if !svcs.iter().any(|s| name_of(s) == "kube-dns")
        && let Some(dns) = kube
            .get_opt(&services, Some("kube-system"), "kube-dns")
            .await?
    {
        svcs.push(dns);
    }
    for s in &svcs {
        let name = name_of(s);
        let port = s.pointer("/spec/ports/0");
        let port_name = port
            .and_then(|p| p.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let https = port_name == "https"
            || port.and_then(|p| p.get("port")).and_then(Value::as_i64) == Some(443);
        // `<scheme>:<name>:<port name>`, empty parts left out, as kubectl builds it.
        let segment = [if https { "https" } else { "" }, name, port_name]
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join(":");
        let label = s
            .pointer("/metadata/labels/kubernetes.io~1name")
            .and_then(Value::as_str)
            .unwrap_or(if name == "kube-dns" { "CoreDNS" } else { name });
        println!(
            "{label} is running at {}/api/v1/namespaces/kube-system/services/{segment}/proxy",
            kube.server
        );
    }
    println!();
    println!("To further debug and diagnose cluster problems, use 'flotilla cluster status'.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_status_messages() {
        let mut d = json!({"metadata": {"name": "web", "generation": 2},
            "spec": {"replicas": 3}, "status": {"observedGeneration": 1}});
        assert_eq!(
            deployment_status(&d).unwrap(),
            (
                "Waiting for deployment spec update to be observed...".into(),
                false
            )
        );
        d["status"] = json!({"observedGeneration": 2, "updatedReplicas": 1, "replicas": 3});
        assert_eq!(
            deployment_status(&d).unwrap().0,
            "Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated..."
        );
        d["status"] = json!({"observedGeneration": 2, "updatedReplicas": 3, "replicas": 4});
        assert_eq!(
            deployment_status(&d).unwrap().0,
            "Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination..."
        );
        d["status"] = json!({"observedGeneration": 2, "updatedReplicas": 3, "replicas": 3, "availableReplicas": 2});
        assert_eq!(
            deployment_status(&d).unwrap().0,
            "Waiting for deployment \"web\" rollout to finish: 2 of 3 updated replicas are available..."
        );
        d["status"]["availableReplicas"] = json!(3);
        assert_eq!(
            deployment_status(&d).unwrap(),
            ("deployment \"web\" successfully rolled out".into(), true)
        );
        d["status"]["conditions"] =
            json!([{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]);
        assert!(deployment_status(&d).is_err());
    }

    #[test]
    fn rollback_patch_drops_the_hash_label() {
        let d = json!({"metadata": {"annotations": {REVISION: "2", "team": "a"}},
            "spec": {"template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "v2"}]}}}});
        let rs = json!({"metadata": {"annotations": {REVISION: "1", "note": "x"}},
            "spec": {"template": {"metadata": {"labels": {"app": "web", HASH_LABEL: "abc"}},
                                  "spec": {"containers": [{"name": "c", "image": "v1"}]}}}});
        let p = rollback_patch(&d, &rs).unwrap();
        assert_eq!(p[0]["path"], "/spec/template");
        assert_eq!(p[0]["value"]["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(p[0]["value"]["spec"]["containers"][0]["image"], "v1");
        assert_eq!(p[1]["value"], json!({REVISION: "2", "note": "x"}));
        assert_eq!(p[1]["op"], "replace");
        let mut bare = d.clone();
        bare["metadata"] = json!({});
        assert_eq!(rollback_patch(&bare, &rs).unwrap()[1]["op"], "add");
        // Rolling back to the template already running is skipped.
        let mut same = rs.clone();
        same["spec"]["template"] = d["spec"]["template"].clone();
        assert!(rollback_patch(&d, &same).is_none());
    }
}
