//! Cluster launcher, fault injection, workloads and benchmarks: everything that drives a
//! Flotilla cluster from outside, shared by `flotilla up`, `flotilla bench` and the tests.

pub mod bench;
pub mod bench_api;
pub mod bench_failover;
pub mod bench_pods;
pub mod bench_schedule;
pub mod etcd;
pub mod http;
pub mod kubeconfig;
pub mod launcher;
pub mod status;

pub use launcher::{
    ClusterLayout, LocalCluster, LocalClusterConfig, NodeSpec, find_binary, free_base_port,
};
pub use status::NodeStatus;
