//! How the scheduler's scores combine, as kube-scheduler's default profile does: each score is
//! normalised to 0–100 over the nodes that passed the filters, then weighted (least allocated
//! and balanced allocation 1, preferred node affinity, inter-pod affinity and spreading 2) and
//! summed; the highest sum wins, the first such node on a tie.

/// One feasible node's scores before normalisation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct RawScore {
    /// Free share of cpu, memory and pod slots after placing the pod, 0–100.
    pub least_allocated: f64,
    /// BalancedAllocation, 0–100; `None` for a pod that requests neither cpu nor memory
    /// (kube-scheduler skips it for BestEffort pods: otherwise they would pile up where the
    /// others' requests happen to balance).
    pub balanced: Option<f64>,
    /// The summed weights of the preferred node affinity terms the node matches.
    pub node_affinity: i64,
    /// Inter-pod affinity's sum of weights over the node's topology pairs (may be negative).
    pub inter_pod: i64,
    /// Pods of the same controller already on the node; `None` for a pod without one.
    pub same_owner: Option<i64>,
    /// The pod's own soft topology spread constraints' sum (see `spread`); when present, it
    /// replaces spreading by owner.
    pub topology_spread: Option<f64>,
}

const MAX: f64 = 100.0;
const RESOURCES_WEIGHT: f64 = 1.0;
const BALANCED_WEIGHT: f64 = 1.0;
const NODE_AFFINITY_WEIGHT: f64 = 2.0;
const INTER_POD_WEIGHT: f64 = 2.0;
const SPREAD_WEIGHT: f64 = 2.0;
/// The maxSkew of kube-scheduler's default hostname spreading constraint.
const SPREAD_MAX_SKEW: f64 = 3.0;

/// BalancedAllocation: 100 × (1 − the standard deviation of the requested fractions of cpu and
/// memory after placing the pod), each fraction capped at 1; a resource the node does not
/// offer is left out.
pub(crate) fn balanced_allocation(requested: [i64; 2], allocatable: [i64; 2]) -> f64 {
    let fraction = |i: usize| {
        (allocatable[i] > 0).then(|| (requested[i] as f64 / allocatable[i] as f64).min(1.0))
    };
    // With two resources the standard deviation is half their difference; with one, zero.
    let std = match (fraction(0), fraction(1)) {
        (Some(a), Some(b)) => ((a - b) / 2.0).abs(),
        _ => 0.0,
    };
    (1.0 - std) * MAX
}

/// The index (into `feasible`'s node indices) of the best node, `None` if there is none.
pub(crate) fn best(feasible: &[(usize, RawScore)]) -> Option<usize> {
    let (first, _) = feasible.first()?;
    if feasible.len() == 1 {
        return Some(*first);
    }
    let max_node_affinity = feasible.iter().map(|(_, s)| s.node_affinity).max()?;
    let (min_inter, max_inter) = min_max(feasible.iter().map(|(_, s)| s.inter_pod))?;
    // kube-scheduler's default topology spreading over hostnames, with the controller's pods
    // for its selector: each node scores count × ln(nodes + 2) + maxSkew − 1, normalised so
    // that fewer is better.
    let spread_weight = (feasible.len() as f64 + 2.0).ln();
    let spread_raw = |s: &RawScore| {
        s.topology_spread.or_else(|| {
            s.same_owner
                .map(|c| c as f64 * spread_weight + SPREAD_MAX_SKEW - 1.0)
        })
    };
    let spread = min_max_f(feasible.iter().filter_map(|(_, s)| spread_raw(s)));
    let mut best: Option<(f64, usize)> = None;
    for (i, s) in feasible {
        let mut total = s.least_allocated * RESOURCES_WEIGHT;
        total += s.balanced.unwrap_or(0.0) * BALANCED_WEIGHT;
        if max_node_affinity > 0 {
            total += MAX * s.node_affinity as f64 / max_node_affinity as f64 * NODE_AFFINITY_WEIGHT;
        }
        if max_inter > min_inter {
            total += MAX * (s.inter_pod - min_inter) as f64 / (max_inter - min_inter) as f64
                * INTER_POD_WEIGHT;
        }
        if let (Some(raw), Some((lo, hi))) = (spread_raw(s), spread) {
            let normalised = if hi == 0.0 {
                MAX
            } else {
                MAX * (hi + lo - raw) / hi
            };
            total += normalised * SPREAD_WEIGHT;
        }
        if best.is_none_or(|(b, _)| total > b) {
            best = Some((total, *i));
        }
    }
    best.map(|(_, i)| i)
}

fn min_max(values: impl Iterator<Item = i64>) -> Option<(i64, i64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

fn min_max_f(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(least: f64) -> RawScore {
        RawScore {
            least_allocated: least,
            ..RawScore::default()
        }
    }

    #[test]
    fn balanced_allocation_is_one_minus_the_spread_of_fractions() {
        assert_eq!(balanced_allocation([0, 0], [4000, 8 << 30]), 100.0);
        assert_eq!(balanced_allocation([2000, 4 << 30], [4000, 8 << 30]), 100.0);
        // cpu 100%, memory 0%: std 0.5.
        assert_eq!(balanced_allocation([4000, 0], [4000, 8 << 30]), 50.0);
        // Over-requested fractions are capped at 1.
        assert_eq!(balanced_allocation([8000, 0], [4000, 8 << 30]), 50.0);
        // A node without memory figures: cpu alone is balanced.
        assert_eq!(balanced_allocation([1000, 5], [4000, 0]), 100.0);
    }

    #[test]
    fn the_best_node_by_weighted_normalised_scores() {
        assert_eq!(best(&[]), None);
        assert_eq!(best(&[(7, raw(0.0))]), Some(7));
        // Least allocated alone; ties go to the first.
        assert_eq!(
            best(&[(0, raw(50.0)), (1, raw(60.0)), (2, raw(60.0))]),
            Some(1)
        );
        // Any preferred node affinity outweighs a lot of free room (2 × 100 vs 1 × 90).
        let preferred = RawScore {
            node_affinity: 1,
            ..raw(10.0)
        };
        assert_eq!(best(&[(0, raw(100.0)), (1, preferred)]), Some(1));
        // Inter-pod scores are normalised between the lowest and the highest.
        let near = RawScore {
            inter_pod: -10,
            ..raw(50.0)
        };
        let far = RawScore {
            inter_pod: -40,
            ..raw(80.0)
        };
        assert_eq!(best(&[(0, far), (1, near)]), Some(1));
        // Balanced allocation breaks an equal least-allocated score.
        let lopsided = RawScore {
            balanced: Some(60.0),
            ..raw(50.0)
        };
        let even = RawScore {
            balanced: Some(95.0),
            ..raw(50.0)
        };
        assert_eq!(best(&[(0, lopsided), (1, even)]), Some(1));
    }

    #[test]
    fn a_controllers_pods_spread_unless_a_preference_says_otherwise() {
        let owned = |n: i64, least: f64| RawScore {
            same_owner: Some(n),
            ..raw(least)
        };
        // One more pod of the owner costs more than a fuller node.
        assert_eq!(best(&[(0, owned(1, 90.0)), (1, owned(0, 40.0))]), Some(1));
        assert_eq!(
            best(&[
                (0, owned(2, 50.0)),
                (1, owned(1, 50.0)),
                (2, owned(2, 50.0))
            ]),
            Some(1)
        );
        // A preferred node keeps winning over its own pods (as with kube-scheduler's default
        // spreading, which is soft).
        let preferred = |n: i64| RawScore {
            node_affinity: 100,
            ..owned(n, 50.0)
        };
        assert_eq!(
            best(&[(0, owned(0, 50.0)), (1, preferred(5)), (2, owned(0, 50.0))]),
            Some(1)
        );
    }
}
