//! Test support: a single-node store on disk.

use std::time::Duration;

use flotilla_consensus::{Store, StoreConfig};
use flotilla_mesh::{ClusterCa, FaultPlane, RpcEndpoint, RpcLimits};

/// A one-node Raft store under `dir`, once it leads.
pub async fn solo_store(dir: &std::path::Path) -> Store {
    let ca = ClusterCa::generate("test").unwrap();
    let rpc = RpcEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &ca.issue("solo").unwrap(),
        FaultPlane::new(),
        RpcLimits::default(),
    )
    .await
    .unwrap();
    let mut config = StoreConfig::new("solo", dir.join("raft"), rpc.local_addr());
    config.bootstrap = true;
    let store = Store::start(config, rpc).await.unwrap();
    while !store.is_leader() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store
}
