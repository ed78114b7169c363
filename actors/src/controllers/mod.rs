//! Controllers and the scheduler, split into shards owned across the cluster's nodes
//! ([`shards`]); every write they make is fenced by the shard's lease.

pub mod scheduler;
pub mod shards;
