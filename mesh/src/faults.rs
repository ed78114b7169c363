//! The fault plane: per-node rules that drop, delay or duplicate traffic to chosen peers.
//! Applied by both the RPC transport and the gossip socket.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Fault rules, keyed by peer node name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultRules {
    /// Peers whose traffic (both directions) is dropped.
    #[serde(default)]
    pub drop: Vec<String>,
    /// Extra delay (ms) added to messages sent to a peer.
    #[serde(default)]
    pub delay_ms: BTreeMap<String, u64>,
    /// Peers to which every message is sent twice.
    #[serde(default)]
    pub duplicate: Vec<String>,
    /// When set, only peers named in this group are reachable; all other *known* peers are
    /// dropped both ways. Peers the plane has never learned (CLI clients, unknown addresses)
    /// are not affected, so a partitioned node can still be administered.
    #[serde(default)]
    pub partition: Option<Vec<String>>,
}

impl FaultRules {
    fn is_empty(&self) -> bool {
        self.drop.is_empty()
            && self.delay_ms.is_empty()
            && self.duplicate.is_empty()
            && self.partition.is_none()
    }
}

/// What to do with one outgoing message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outbound {
    pub drop: bool,
    pub delay: Option<Duration>,
    pub duplicate: bool,
}

#[derive(Default)]
struct Inner {
    /// Fast path: false means no rules, so hot paths skip the locks.
    active: AtomicBool,
    rules: RwLock<FaultRules>,
    names: RwLock<HashMap<SocketAddr, String>>,
    known: RwLock<HashSet<String>>,
}

/// Shared handle to a node's fault rules. Cheap to clone; all clones see the same rules.
#[derive(Clone, Default)]
pub struct FaultPlane {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FaultPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultPlane")
            .field("rules", &self.rules())
            .finish()
    }
}

impl FaultPlane {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&self, rules: FaultRules) {
        let active = !rules.is_empty();
        // Lock poisoning only happens if a holder panicked; the data is still a plain value.
        *self.inner.rules.write().unwrap_or_else(|e| e.into_inner()) = rules;
        self.inner.active.store(active, Ordering::Release);
    }

    pub fn clear(&self) {
        self.set(FaultRules::default());
    }

    pub fn rules(&self) -> FaultRules {
        self.inner
            .rules
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records that `addrs` (gossip and RPC addresses) belong to node `name`; transports only
    /// see addresses while rules name nodes. Called by the gossip layer for every member.
    pub fn learn_peer(&self, name: &str, addrs: &[SocketAddr]) {
        {
            let mut names = self.inner.names.write().unwrap_or_else(|e| e.into_inner());
            for addr in addrs {
                if names.get(addr).map(String::as_str) != Some(name) {
                    names.insert(*addr, name.to_string());
                }
            }
        }
        let mut known = self.inner.known.write().unwrap_or_else(|e| e.into_inner());
        if !known.contains(name) {
            known.insert(name.to_string());
        }
    }

    /// The node name learned for `addr`, if any.
    pub fn peer_name(&self, addr: SocketAddr) -> Option<String> {
        self.inner
            .names
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
            .cloned()
    }

    fn is_active(&self) -> bool {
        self.inner.active.load(Ordering::Acquire)
    }

    /// True when all traffic with node `name` must be dropped (either direction).
    pub fn blocks_peer(&self, name: &str) -> bool {
        if !self.is_active() {
            return false;
        }
        let rules = self.inner.rules.read().unwrap_or_else(|e| e.into_inner());
        self.blocks_with(&rules, name)
    }

    fn blocks_with(&self, rules: &FaultRules, name: &str) -> bool {
        if rules.drop.iter().any(|n| n == name) {
            return true;
        }
        match &rules.partition {
            Some(group) if !group.iter().any(|n| n == name) => self
                .inner
                .known
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(name),
            _ => false,
        }
    }

    /// True when messages arriving from `addr` must be discarded.
    pub fn blocks_addr(&self, addr: SocketAddr) -> bool {
        if !self.is_active() {
            return false;
        }
        match self.peer_name(addr) {
            Some(name) => self.blocks_peer(&name),
            None => false,
        }
    }

    /// Decision for one outgoing message to `addr`.
    pub fn outbound(&self, addr: SocketAddr) -> Outbound {
        if !self.is_active() {
            return Outbound::default();
        }
        match self.peer_name(addr) {
            Some(name) => self.outbound_to(&name),
            None => Outbound::default(),
        }
    }

    /// Decision for one outgoing message to node `name`.
    pub fn outbound_to(&self, name: &str) -> Outbound {
        if !self.is_active() {
            return Outbound::default();
        }
        let rules = self.inner.rules.read().unwrap_or_else(|e| e.into_inner());
        if self.blocks_with(&rules, name) {
            return Outbound {
                drop: true,
                ..Outbound::default()
            };
        }
        Outbound {
            drop: false,
            delay: rules
                .delay_ms
                .get(name)
                .filter(|ms| **ms > 0)
                .map(|ms| Duration::from_millis(*ms)),
            duplicate: rules.duplicate.iter().any(|n| n == name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_apply_by_name() {
        let fp = FaultPlane::new();
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2000".parse().unwrap();
        let unknown: SocketAddr = "127.0.0.1:3000".parse().unwrap();
        fp.learn_peer("a", &[a]);
        fp.learn_peer("b", &[b]);
        assert_eq!(fp.outbound(a), Outbound::default());

        fp.set(FaultRules {
            drop: vec!["a".into()],
            delay_ms: [("b".to_string(), 50)].into(),
            duplicate: vec!["b".into()],
            partition: None,
        });
        assert!(fp.outbound(a).drop);
        assert!(fp.blocks_addr(a));
        let ob = fp.outbound(b);
        assert!(!ob.drop && ob.duplicate);
        assert_eq!(ob.delay, Some(Duration::from_millis(50)));

        fp.set(FaultRules {
            partition: Some(vec!["a".into()]),
            ..Default::default()
        });
        assert!(!fp.blocks_peer("a"));
        assert!(fp.blocks_peer("b"));
        // Unknown peers (e.g. an admin CLI) are not partitioned away.
        assert!(!fp.blocks_peer("cli"));
        assert!(!fp.blocks_addr(unknown));

        fp.clear();
        assert!(!fp.blocks_peer("b"));
        assert_eq!(fp.rules(), FaultRules::default());
    }
}
