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
//! `hostport` (hostPort forwarders into a pod's network namespace), `local_volumes`
//! (node-local PersistentVolumes: provisioned, mounted and reclaimed here), `logs` (kubectl logs over
//! mesh RPC).

mod downward;
pub mod exec;
mod hooks;
mod hostport;
pub mod local_volumes;
pub mod logs;
mod probes;
mod status;
mod volumes;
mod worker;

use flotilla_api::At;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_consensus::{EventKind, Read, Store, StoreError};
use std::ops::ControlFlow;

use kameo::Actor;
use kameo::actor::{ActorId, ActorRef, Spawn, WeakActorRef};
use kameo::error::ActorStopReason;
use kameo::message::{Context, Message};
use serde_json::Value;
use tokio::sync::watch;

use crate::controllers::feed::{Feed, Message as FeedMessage};
use crate::runtime::Runtime;
pub use worker::{PodWorker, parse_quantity};

const PODS_PREFIX: &str = "/registry/core/pods/";

/// What a node's kubelet needs.
#[derive(Clone)]
pub struct KubeletConfig {
    pub node_name: String,
    /// More node names this kubelet serves (hollow nodes for scale trials, `sim` runtime).
    pub hosted: Arc<std::collections::HashSet<String>>,
    /// The node's address, reported as `hostIP`.
    pub host_ip: String,
    /// Per-pod directories (volumes, generated files).
    pub pods_dir: PathBuf,
    /// Where this node's local persistent volumes live (`<data-dir>/volumes`).
    pub volumes_dir: PathBuf,
    pub runtime: Arc<dyn Runtime>,
    pub store: Store,
    /// The node's parsed registry feed: pod changes come from it rather than from a watch
    /// of the kubelet's own (which would parse every pod change, and its previous value, again).
    pub feed: Feed,
}

/// Keeps a pod worker per pod bound to this node, and supervises them: a worker that dies
/// (a panic) is replaced by a new one given the pod's last desired state, which re-adopts
/// the pod's sandbox and containers from the runtime.
pub struct Kubelet {
    config: KubeletConfig,
    workers: HashMap<String, ActorRef<PodWorker>>,
    /// The last desired state of each pod with a worker.
    desired: HashMap<String, Arc<Value>>,
    /// Which pod each linked worker serves.
    serving: HashMap<ActorId, String>,
}

impl Actor for Kubelet {
    type Args = Self;
    type Error = kameo::error::Infallible;

    async fn on_start(state: Self, _: ActorRef<Self>) -> Result<Self, Self::Error> {
        Ok(state)
    }

    async fn on_link_died(
        &mut self,
        me: WeakActorRef<Self>,
        id: ActorId,
        reason: ActorStopReason,
    ) -> Result<ControlFlow<ActorStopReason>, Self::Error> {
        let Some(uid) = self.serving.remove(&id) else {
            return Ok(ControlFlow::Continue(()));
        };
        let current = self.workers.get(&uid).is_some_and(|w| w.id() == id);
        let failed = !matches!(
            reason,
            ActorStopReason::Normal | ActorStopReason::SupervisorRestart
        );
        if current && failed {
            self.workers.remove(&uid);
            if let (Some(pod), Some(me)) = (self.desired.get(&uid).cloned(), me.upgrade()) {
                tracing::warn!(pod = %uid, reason = %reason, "pod worker died; starting a new one");
                let node = pod
                    .at("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let worker = self.worker_for(&me, uid, &node).await;
                let _ = worker.tell(worker::Desired(pod)).try_send();
            }
        }
        Ok(ControlFlow::Continue(()))
    }
}

impl Kubelet {
    /// The pod's worker, started (and linked to us) if it has none.
    async fn worker_for(
        &mut self,
        me: &ActorRef<Self>,
        uid: String,
        node: &str,
    ) -> ActorRef<PodWorker> {
        if let Some(w) = self.workers.get(&uid) {
            return w.clone();
        }
        let mut config = self.config.clone();
        // A hollow node's pods are that node's.
        if !node.is_empty() {
            config.node_name = node.to_owned();
        }
        let worker = PodWorker::start(config, uid.clone());
        me.link(&worker).await;
        self.serving.insert(worker.id(), uid.clone());
        self.workers.insert(uid, worker.clone());
        worker
    }

    /// Stops a pod's worker (it tears down what still runs, then stops itself).
    fn remove(&mut self, uid: &str) {
        self.desired.remove(uid);
        if let Some(worker) = self.workers.remove(uid) {
            let _ = worker.tell(worker::Removed).try_send();
        }
    }
}

/// A pod bound to this node was created or changed (the stored JSON, with resourceVersion).
pub struct PodChanged(pub Arc<Value>);
/// A pod left this node: deleted from the store, or bound elsewhere.
pub struct PodGone(pub String);

fn pod_uid(pod: &Value) -> Option<String> {
    pod.at("/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

impl Message<PodChanged> for Kubelet {
    type Reply = ();

    async fn handle(&mut self, msg: PodChanged, ctx: &mut Context<Self, ()>) {
        let Some(uid) = pod_uid(&msg.0) else { return };
        self.desired.insert(uid.clone(), Arc::clone(&msg.0));
        let node = msg
            .0
            .at("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let worker = self.worker_for(ctx.actor_ref(), uid, &node).await;
        // A full mailbox only delays the update: the worker also resyncs on its own tick.
        let _ = worker.tell(worker::Desired(msg.0)).try_send();
    }
}

impl Message<PodGone> for Kubelet {
    type Reply = ();

    async fn handle(&mut self, msg: PodGone, _: &mut Context<Self, ()>) {
        self.remove(&msg.0);
    }
}

impl Kubelet {
    /// Starts the kubelet actor and its pod watch; both stop when `shutdown` turns true
    /// (running pods are left running: they survive a restart of the node daemon).
    pub fn start(config: KubeletConfig, shutdown: watch::Receiver<bool>) -> ActorRef<Kubelet> {
        let kubelet = Kubelet::spawn(Kubelet {
            config: config.clone(),
            workers: HashMap::new(),
            desired: HashMap::new(),
            serving: HashMap::new(),
        });
        tokio::spawn(local_volumes::run_reclaimer(
            config.store.clone(),
            config.node_name.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(watch_pods(config, kubelet.clone(), shutdown));
        kubelet
    }
}

fn bound_here(pod: &Value, config: &KubeletConfig) -> bool {
    pod.at("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| n == config.node_name || config.hosted.contains(n))
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
    // Subscribed before listing: every change after the list's revision arrives here.
    let mut changes = config.feed.subscribe();
    let listed = config
        .store
        .range(PODS_PREFIX, usize::MAX, Read::Linearizable)
        .await?;
    // The uids of the pods bound here: how a change tells that one left (the feed carries no
    // old values).
    let mut here = std::collections::HashSet::new();
    for kv in &listed.kvs {
        if let Some(pod) = with_rv(&kv.value, kv.mod_revision)
            && bound_here(&pod, config)
        {
            if let Some(uid) = pod_uid(&pod) {
                here.insert(uid);
            }
            let _ = kubelet.tell(PodChanged(Arc::new(pod))).await;
        }
    }
    // Pods deleted while this node was down: their workers find no pod and clean up.
    let _ = kubelet.tell(ReconcileKnown(here.clone())).await;
    loop {
        let message = tokio::select! {
            m = changes.next() => m,
            _ = shutdown.changed() => return Ok(()),
        };
        let batch = match message {
            Some(FeedMessage::Changes(batch)) => batch,
            Some(FeedMessage::Restart) => {
                return Err(StoreError::Unavailable("registry feed restarted".into()));
            }
            None => return Err(StoreError::Unavailable("registry feed closed".into())),
        };
        for c in batch
            .iter()
            .filter(|c| c.revision > listed.revision && c.key.starts_with(PODS_PREFIX))
        {
            let uid = c.obj.as_deref().and_then(pod_uid);
            let was_here = uid.as_ref().is_some_and(|u| here.contains(u));
            match (c.kind, c.obj.as_deref()) {
                (EventKind::Put, Some(pod)) if bound_here(pod, config) => {
                    if let Some(u) = uid {
                        here.insert(u);
                    }
                    let mut pod = pod.clone();
                    pod["metadata"]["resourceVersion"] = Value::String(c.revision.to_string());
                    let _ = kubelet.tell(PodChanged(Arc::new(pod))).await;
                }
                (EventKind::Put, Some(_)) if was_here => {
                    if let Some(u) = uid {
                        here.remove(&u);
                        let _ = kubelet.tell(PodGone(u)).await;
                    }
                }
                (EventKind::Delete, Some(pod)) if bound_here(pod, config) || was_here => {
                    if let Some(u) = uid {
                        here.remove(&u);
                        let _ = kubelet.tell(PodGone(u)).await;
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
            self.remove(&uid);
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

/// The worker serving a pod (supervision tests).
#[cfg(test)]
struct WorkerOf(String);

#[cfg(test)]
impl Message<WorkerOf> for Kubelet {
    type Reply = Option<ActorRef<PodWorker>>;

    async fn handle(&mut self, msg: WorkerOf, _: &mut Context<Self, Self::Reply>) -> Self::Reply {
        self.workers.get(&msg.0).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::solo_store;
    use flotilla_consensus::{Op, TxnRequest};

    async fn pod_status(store: &Store) -> Value {
        let kv = store
            .get("/registry/core/pods/default/p", Read::Linearizable)
            .await
            .unwrap()
            .kv
            .unwrap();
        serde_json::from_slice::<Value>(&kv.value).unwrap()["status"].clone()
    }

    /// A killed pod worker is replaced; the pod keeps its container (no restart).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_pod_worker_is_replaced_and_readopts_its_pod() {
        let dir = tempfile::tempdir().unwrap();
        let store = solo_store(dir.path()).await;
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default", "uid": "uid-p"},
            "spec": {"nodeName": "solo", "containers": [{"name": "c", "image": "img"}]},
        });
        store
            .txn(TxnRequest {
                compare: vec![],
                success: vec![Op::Put {
                    key: "/registry/core/pods/default/p".into(),
                    value: serde_json::to_vec(&pod).unwrap(),
                }],
                failure: vec![],
            })
            .await
            .unwrap();
        let runtime: Arc<dyn Runtime> =
            Arc::new(crate::runtime::sim::SimRuntime::new(Default::default()));
        let (_stop, shutdown) = watch::channel(false);
        let kubelet = Kubelet::start(
            KubeletConfig {
                node_name: "solo".into(),
                hosted: Default::default(),
                host_ip: "127.0.0.1".into(),
                pods_dir: dir.path().join("pods"),
                volumes_dir: dir.path().join("volumes"),
                runtime: runtime.clone(),
                store: store.clone(),
                feed: Feed::start(store.clone(), "/registry/", shutdown.clone()),
            },
            shutdown,
        );
        let running = || async {
            let s = pod_status(&store).await;
            s["phase"] == "Running" && s["containerStatuses"][0]["ready"] == true
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !running().await {
            assert!(tokio::time::Instant::now() < deadline, "pod never ran");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let before = pod_status(&store).await["containerStatuses"][0].clone();
        let first = kubelet
            .ask(WorkerOf("uid-p".into()))
            .await
            .unwrap()
            .unwrap();
        first.kill();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now = kubelet.ask(WorkerOf("uid-p".into())).await.unwrap();
            if now.is_some_and(|w| w.id() != first.id() && w.is_alive()) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no new worker");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The new worker found the same container running: same start, no restart.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = pod_status(&store).await["containerStatuses"][0].clone();
        assert_eq!(after["containerID"], before["containerID"]);
        assert_eq!(after["restartCount"], 0);
        assert_eq!(runtime.list_containers().await.unwrap().len(), 1);
    }
}
