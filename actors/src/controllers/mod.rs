//! Controllers and the scheduler, split into shards owned across the cluster's nodes
//! ([`shards`]); every write they make is fenced by the shard's lease.

mod affinity;
pub mod common;
pub mod cron;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
mod events;
pub mod feed;
pub mod gc;
pub mod job;
pub mod mirror;
pub mod namespace;
pub mod nodelifecycle;
pub mod replicaset;
pub mod runner;
pub mod scheduler;
mod scoring;
pub mod shards;
mod spread;
pub mod statefulset;

use std::sync::Arc;

use flotilla_consensus::Store;
use tokio::sync::watch;

/// What the controllers are told at start.
pub struct ControllerConfig {
    pub shard_count: u32,
    /// How long a pod without a toleration of `node.kubernetes.io/unreachable` stays bound to
    /// an unreachable node before it is evicted.
    pub default_unreachable_toleration: std::time::Duration,
    /// Nodes (hollow ones included) gossip's failure detector declared dead.
    pub dead: shards::Members,
    /// Node daemons gossip declared dead or that announced their departure.
    pub gone: Option<shards::Members>,
    /// Bumped whenever gossip's view of the members changes, so shard moves and node
    /// lifecycle react at once instead of at their next poll.
    pub membership_changed: Option<watch::Receiver<u64>>,
    /// How long an Event not seen again is kept.
    pub event_ttl: std::time::Duration,
}

/// Starts this node's shard host, scheduler and controllers; they stop with `shutdown`.
/// `members` are the live, ready node daemons (they own shards); `live` adds the hollow
/// nodes they serve (nodes pods can be placed on).
pub fn start(
    node: &str,
    store: Store,
    feed: feed::Feed,
    config: ControllerConfig,
    members: shards::Members,
    live: shards::Members,
    shutdown: watch::Receiver<bool>,
) -> shards::Shards {
    let shard_count = config.shard_count;
    let shards = shards::start(
        shards::ShardConfig {
            node: node.to_owned(),
            count: shard_count,
            store: store.clone(),
            members: members.clone(),
            interval: std::time::Duration::from_millis(500),
            gone: config.gone,
            kicks: config.membership_changed.clone(),
        },
        shutdown.clone(),
    );
    scheduler::start(
        scheduler::SchedulerConfig {
            node: node.to_owned(),
            store: store.clone(),
            shards: shards.clone(),
            live: live.clone(),
            members,
            feed: feed.clone(),
        },
        shutdown.clone(),
    );
    let ctx = Arc::new(runner::Ctx {
        node: node.to_owned(),
        feed,
        store,
        shards: shards.clone(),
    });
    let reconcilers: Vec<Arc<dyn runner::Reconciler>> = vec![
        Arc::new(deployment::DeploymentController),
        Arc::new(disruption::DisruptionController),
        Arc::new(endpoints::EndpointsController::new(
            ctx.store.clone(),
            &ctx.feed,
            shutdown.clone(),
        )),
        Arc::new(namespace::NamespaceController),
        Arc::new(statefulset::StatefulSetController),
        Arc::new(replicaset::ReplicaSetController::replica_sets()),
        Arc::new(replicaset::ReplicaSetController::replication_controllers()),
        Arc::new(job::JobController),
        Arc::new(cronjob::CronJobController),
        Arc::new(daemonset::DaemonSetController::new()),
        Arc::new(nodelifecycle::NodeLifecycleController::new(
            live,
            config.dead,
            config.membership_changed,
            config.default_unreachable_toleration,
        )),
    ];
    for r in reconcilers {
        runner::start(ctx.clone(), r, shutdown.clone());
    }
    events::start(ctx.clone(), config.event_ttl, shutdown.clone());
    gc::start(ctx, shutdown);
    shards
}
