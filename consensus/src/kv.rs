//! The data model of the versioned store: keys, values, revisions, transactions and events.
//!
//! This is what travels in the Raft log (`Command`) and what readers see (`KeyValue`,
//! `Event`). It knows nothing about openraft or redb.

use serde::{Deserialize, Serialize};

/// One key with its value and its revisions, as etcd reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: u64,
    /// Revision of the last write to the key. An object's `resourceVersion`.
    pub mod_revision: u64,
    /// Number of writes since creation (1 after create).
    pub version: u64,
}

/// A stored value without its key: the form kept in the state machine's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredValue {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

impl StoredValue {
    pub(crate) fn with_key(self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

impl CmpOp {
    fn holds(self, actual: u64, expected: u64) -> bool {
        match self {
            CmpOp::Equal => actual == expected,
            CmpOp::NotEqual => actual != expected,
            CmpOp::Less => actual < expected,
            CmpOp::Greater => actual > expected,
        }
    }
}

/// A condition of a transaction. A missing key has mod_revision, create_revision and version 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compare {
    ModRevision {
        key: String,
        op: CmpOp,
        revision: u64,
    },
    CreateRevision {
        key: String,
        op: CmpOp,
        revision: u64,
    },
    Version {
        key: String,
        op: CmpOp,
        version: u64,
    },
    Exists {
        key: String,
    },
    Missing {
        key: String,
    },
}

impl Compare {
    pub fn key(&self) -> &str {
        match self {
            Compare::ModRevision { key, .. }
            | Compare::CreateRevision { key, .. }
            | Compare::Version { key, .. }
            | Compare::Exists { key }
            | Compare::Missing { key } => key,
        }
    }

    /// Whether the condition holds for the current value of its key.
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        let (create, modr, version) = current
            .map(|kv| (kv.create_revision, kv.mod_revision, kv.version))
            .unwrap_or((0, 0, 0));
        match self {
            Compare::ModRevision { op, revision, .. } => op.holds(modr, *revision),
            Compare::CreateRevision { op, revision, .. } => op.holds(create, *revision),
            Compare::Version { op, version: v, .. } => op.holds(version, *v),
            Compare::Exists { .. } => current.is_some(),
            Compare::Missing { .. } => current.is_none(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    /// Deletes every key that starts with `prefix`.
    DeletePrefix {
        prefix: String,
    },
    /// Reads a key inside the transaction, at the transaction's revision.
    Get {
        key: String,
    },
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
        }
    }
    pub fn delete(key: impl Into<String>) -> Op {
        Op::Delete { key: key.into() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// The value the key had before the put, if any.
    Put {
        prev: Option<KeyValue>,
    },
    /// The values removed.
    Delete {
        deleted: Vec<KeyValue>,
    },
    Get {
        kv: Option<KeyValue>,
    },
}

/// `if all(compare) { success } else { failure }`, applied atomically at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl TxnRequest {
    /// An unconditional write of one key.
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> TxnRequest {
        TxnRequest {
            success: vec![Op::put(key, value)],
            ..Default::default()
        }
    }

    /// Writes `key` only if its mod_revision is still `expected` (0: only if it does not exist).
    pub fn compare_and_put(
        key: impl Into<String>,
        expected: u64,
        value: impl Into<Vec<u8>>,
    ) -> TxnRequest {
        let key = key.into();
        TxnRequest {
            compare: vec![Compare::ModRevision {
                key: key.clone(),
                op: CmpOp::Equal,
                revision: expected,
            }],
            success: vec![Op::put(key, value)],
            failure: vec![],
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    pub succeeded: bool,
    /// The store revision after the transaction (the revision of its writes if it wrote).
    pub revision: u64,
    pub results: Vec<OpResult>,
}

/// What the Raft log carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Txn(TxnRequest),
    /// Forget watch history at and below `revision`.
    Compact {
        revision: u64,
    },
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Txn(t) => write!(
                f,
                "txn(compare: {}, success: {}, failure: {})",
                t.compare.len(),
                t.success.len(),
                t.failure.len()
            ),
            Command::Compact { revision } => write!(f, "compact({revision})"),
        }
    }
}

/// What applying a `Command` returns to the writer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    #[default]
    None,
    Txn(TxnResponse),
    Compacted {
        revision: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// For a put, the new value. For a delete, the last value the key had, with
    /// `mod_revision` set to the revision of the deletion (so events order by it).
    pub kv: KeyValue,
    /// For a put over an existing key, the value it replaced.
    pub prev: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> u64 {
        self.kv.mod_revision
    }
}

/// Read a key range `[prefix, prefix_end)`. An empty prefix means every key.
pub fn prefix_end(prefix: &str) -> Option<String> {
    // Keys are UTF-8 paths; incrementing the last char gives the exclusive upper bound.
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(last as u32 + 1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(modr: u64) -> KeyValue {
        KeyValue {
            key: "k".into(),
            value: b"v".to_vec(),
            create_revision: 1,
            mod_revision: modr,
            version: 2,
        }
    }

    #[test]
    fn compare_on_missing_key_sees_zero_revisions() {
        let c = Compare::ModRevision {
            key: "k".into(),
            op: CmpOp::Equal,
            revision: 0,
        };
        assert!(c.holds(None));
        assert!(!c.holds(Some(&kv(3))));
        assert!(Compare::Missing { key: "k".into() }.holds(None));
        assert!(!Compare::Exists { key: "k".into() }.holds(None));
    }

    #[test]
    fn compare_ops() {
        let c = |op, revision| Compare::ModRevision {
            key: "k".into(),
            op,
            revision,
        };
        assert!(c(CmpOp::Less, 5).holds(Some(&kv(3))));
        assert!(c(CmpOp::Greater, 2).holds(Some(&kv(3))));
        assert!(c(CmpOp::NotEqual, 2).holds(Some(&kv(3))));
        assert!(!c(CmpOp::Equal, 2).holds(Some(&kv(3))));
    }

    #[test]
    fn prefix_end_is_exclusive_upper_bound() {
        assert_eq!(prefix_end("/registry/a").as_deref(), Some("/registry/b"));
        assert_eq!(prefix_end("").as_deref(), None);
    }

    #[test]
    fn named_msgpack_round_trip() {
        let cmd = Command::Txn(TxnRequest::compare_and_put("a", 3, b"x".to_vec()));
        let bytes = rmp_serde::to_vec_named(&cmd).unwrap();
        let back: Command = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(cmd, back);
    }
}
