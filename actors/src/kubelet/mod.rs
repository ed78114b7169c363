//! The kubelet: a kameo actor per node that keeps one pod-worker actor per pod bound to the
//! node, and feeds them the pods' desired state from a watch on the store.
//!
//! The watch sees every pod and keeps those whose `spec.nodeName` is this node (a pod that
//! moves away or is deleted stops its worker). After an `Expired` (the watch fell behind the
//! history), it relists. Workers drive the runtime towards the spec and write pod status back
//! only when it changed.
//!
//! Modules: `worker` (one pod's lifecycle), `status` (pod status from observations),
//! `probes` (liveness/readiness/startup; their exec and httpGet handlers are shared with
//! `hooks`, postStart/preStop), `volumes` (configMap, secret, downwardAPI and projected files
//! written atomically; memory emptyDirs), `downward` (fieldRef/resourceFieldRef values),
//! `hostport` (hostPort forwarders into a pod's network namespace), `logs` (kubectl logs over
//! mesh RPC).

mod downward;
mod hooks;
mod hostport;
pub mod logs;
mod probes;
mod status;
mod volumes;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_consensus::{EventKind, Read, Store, StoreError};
use futures::StreamExt;
use kameo::Actor;
use kameo::actor::{ActorRef, Spawn};
use kameo::message::{Context, Message};
use serde_json::Value;
use tokio::sync::watch;

use crate::runtime::Runtime;
pub use worker::PodWorker;

const PODS_PREFIX: &str = "/registry/core/pods/";

/// What a node's kubelet needs.
#[derive(Clone)]
pub struct KubeletConfig {
    pub node_name: String,
    /// The node's address, reported as `hostIP`.
    pub host_ip: String,
    /// Per-pod directories (volumes, generated files).
    pub pods_dir: PathBuf,
    pub runtime: Arc<dyn Runtime>,
    pub store: Store,
}

/// Keeps a pod worker per pod bound to this node.
#[derive(Actor)]
pub struct Kubelet {
    config: KubeletConfig,
    workers: HashMap<String, ActorRef<PodWorker>>,
}

/// A pod bound to this node was created or changed (the stored JSON, with resourceVersion).
pub struct PodChanged(pub Value);
/// A pod left this node: deleted from the store, or bound elsewhere.
pub struct PodGone(pub String);

fn pod_uid(pod: &Value) -> Option<String> {
    pod.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

impl Message<PodChanged> for Kubelet {
    type Reply = ();

    async fn handle(&mut self, msg: PodChanged, _: &mut Context<Self, ()>) {
        let Some(uid) = pod_uid(&msg.0) else { return };
        let worker = self
            .workers
            .entry(uid.clone())
            .or_insert_with(|| PodWorker::start(self.config.clone(), uid));
        // A full mailbox only delays the update: the worker also resyncs on its own tick.
        let _ = worker.tell(worker::Desired(msg.0)).try_send();
    }
}

impl Message<PodGone> for Kubelet {
    type Reply = ();

    async fn handle(&mut self, msg: PodGone, _: &mut Context<Self, ()>) {
        if let Some(worker) = self.workers.remove(&msg.0) {
            // The worker tears down what still runs, then stops itself.
            let _ = worker.tell(worker::Removed).try_send();
        }
    }
}

impl Kubelet {
    /// Starts the kubelet actor and its pod watch; both stop when `shutdown` turns true
    /// (running pods are left running: they survive a restart of the node daemon).
    pub fn start(config: KubeletConfig, shutdown: watch::Receiver<bool>) -> ActorRef<Kubelet> {
        let kubelet = Kubelet::spawn(Kubelet {
            config: config.clone(),
            workers: HashMap::new(),
        });
        tokio::spawn(watch_pods(config, kubelet.clone(), shutdown));
        kubelet
    }
}

fn bound_here(pod: &Value, node: &str) -> bool {
    pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
}

fn with_rv(value: &[u8], rev: u64) -> Option<Value> {
    let mut pod: Value = serde_json::from_slice(value).ok()?;
    pod["metadata"]["resourceVersion"] = Value::String(rev.to_string());
    Some(pod)
}

/// List, then watch; relist after the watch ends or expires.
async fn watch_pods(
    config: KubeletConfig,
    kubelet: ActorRef<Kubelet>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        match list_and_watch(&config, &kubelet, &mut shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(error = %e, "pod watch ended; relisting");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

async fn list_and_watch(
    config: &KubeletConfig,
    kubelet: &ActorRef<Kubelet>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let node = &config.node_name;
    let listed = config
        .store
        .range(PODS_PREFIX, usize::MAX, Read::Linearizable)
        .await?;
    let mut here = std::collections::HashSet::new();
    for kv in &listed.kvs {
        if let Some(pod) = with_rv(&kv.value, kv.mod_revision)
            && bound_here(&pod, node)
        {
            if let Some(uid) = pod_uid(&pod) {
                here.insert(uid);
            }
            let _ = kubelet.tell(PodChanged(pod)).await;
        }
    }
    // Pods deleted while this node was down: their workers find no pod and clean up.
    let _ = kubelet.tell(ReconcileKnown(here)).await;
    let mut events = config.store.watch(PODS_PREFIX, listed.revision + 1)?;
    loop {
        let batch = tokio::select! {
            b = events.next() => b,
            _ = shutdown.changed() => return Ok(()),
        };
        let Some(batch) = batch else {
            return Err(StoreError::Unavailable("pod watch closed".into()));
        };
        for event in batch? {
            let pod = with_rv(&event.kv.value, event.kv.mod_revision);
            let was_here = event
                .prev
                .as_ref()
                .and_then(|p| serde_json::from_slice::<Value>(&p.value).ok())
                .is_some_and(|p| bound_here(&p, node));
            match (event.kind, pod) {
                (EventKind::Put, Some(pod)) if bound_here(&pod, node) => {
                    let _ = kubelet.tell(PodChanged(pod)).await;
                }
                (EventKind::Put, Some(pod)) if was_here => {
                    if let Some(uid) = pod_uid(&pod) {
                        let _ = kubelet.tell(PodGone(uid)).await;
                    }
                }
                (EventKind::Delete, Some(pod)) if bound_here(&pod, node) => {
                    if let Some(uid) = pod_uid(&pod) {
                        let _ = kubelet.tell(PodGone(uid)).await;
                    }
                }
                _ => {}
            }
        }
    }
}

/// The pods bound here at a (re)list: workers for any other pod are stopped.
pub struct ReconcileKnown(pub std::collections::HashSet<String>);

impl Message<ReconcileKnown> for Kubelet {
    type Reply = ();

    async fn handle(&mut self, msg: ReconcileKnown, _: &mut Context<Self, ()>) {
        let gone: Vec<String> = self
            .workers
            .keys()
            .filter(|uid| !msg.0.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(worker) = self.workers.remove(&uid) {
                let _ = worker.tell(worker::Removed).try_send();
            }
        }
        // Sandboxes of pods this kubelet no longer knows (deleted while the node was down).
        let known = msg.0;
        let runtime = self.config.runtime.clone();
        tokio::spawn(async move {
            let Ok(sandboxes) = runtime.list_sandboxes().await else {
                return;
            };
            for sb in sandboxes {
                if !known.contains(&sb.config.pod_uid) {
                    tracing::info!(pod = %sb.config.name, "removing the sandbox of a pod deleted while this node was away");
                    let _ = runtime.stop_sandbox(&sb.id).await;
                    let _ = runtime.remove_sandbox(&sb.id).await;
                }
            }
        });
    }
}
