//! Shard placement by rendezvous (highest-random-weight) hashing.

/// FNV-1a, then a splitmix64 finalizer: stable across processes and releases (unlike std's
/// randomly keyed hasher) and well mixed for short inputs.
fn weight(shard: u64, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in shard.to_le_bytes().iter().chain(node.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The node owning `shard`: the one with the highest `weight(shard, node)` (ties broken by
/// name). Order of `nodes` does not matter; removing a node only moves that node's shards.
pub fn rendezvous_owner(shard: u64, nodes: &[String]) -> Option<&String> {
    nodes
        .iter()
        .max_by(|a, b| (weight(shard, a), a.as_str()).cmp(&(weight(shard, b), b.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    #[test]
    fn stable_and_order_independent() {
        let a = nodes(5);
        let mut b = a.clone();
        b.reverse();
        for shard in 0..1000 {
            assert_eq!(rendezvous_owner(shard, &a), rendezvous_owner(shard, &b));
        }
        assert_eq!(rendezvous_owner(7, &[]), None);
        // Pinned values guard against accidental hash changes (placement must not move
        // between releases).
        let owners: Vec<&str> = (0..4)
            .map(|s| rendezvous_owner(s, &a).unwrap().as_str())
            .collect();
        assert_eq!(owners, PINNED);
    }

    const PINNED: [&str; 4] = ["node-3", "node-3", "node-4", "node-0"];

    #[test]
    fn spreads_and_moves_minimally() {
        let all = nodes(5);
        let mut counts = std::collections::HashMap::new();
        for shard in 0..10_000u64 {
            *counts
                .entry(rendezvous_owner(shard, &all).unwrap().clone())
                .or_insert(0usize) += 1;
        }
        for n in &all {
            let c = counts.get(n).copied().unwrap_or(0);
            assert!((1500..2500).contains(&c), "{n} owns {c} of 10000");
        }
        let fewer: Vec<String> = all[..4].to_vec();
        for shard in 0..10_000u64 {
            let before = rendezvous_owner(shard, &all).unwrap();
            let after = rendezvous_owner(shard, &fewer).unwrap();
            if before != "node-4" {
                assert_eq!(before, after);
            }
        }
    }
}
