//! openraft's own storage conformance suite, run against the redb log and state machine.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};

use crate::log_store::LogStore;
use crate::state_machine::{HistoryLimits, StateMachine};
use crate::types::TypeConfig;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        // Test scaffolding: a failure to create a temp dir is a broken test machine.
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open(&dir.path().join("raft-log.redb"), 1 << 20).expect("open");
        let sm = StateMachine::open(
            dir.path(),
            HistoryLimits {
                max_events: 1000,
                max_bytes: 1 << 20,
            },
            1 << 20,
        )
        .expect("open");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() {
    Suite::test_all(RedbBuilder).await.unwrap();
}
