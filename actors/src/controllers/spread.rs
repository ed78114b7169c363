//! A pod's own `topologySpreadConstraints`, as kube-scheduler's PodTopologySpread plugin
//! applies them.
//!
//! Once per pending pod, [`SpreadState::prepare`] counts for each constraint the pods its
//! `labelSelector` matches (in the pod's namespace) per topology domain: the value of the
//! constraint's `topologyKey` on the nodes. Only eligible nodes' domains count: nodes with every
//! constraint's key, that match the pod's nodeSelector and required node affinity
//! (`nodeAffinityPolicy: Honor`, the default) and, with `nodeTaintsPolicy: Honor`, whose taints
//! it tolerates. `matchLabelKeys` add the pod's own values of those keys to the selector.
//!
//! Filter (`whenUnsatisfiable: DoNotSchedule`): placing the pod on a node must not make its
//! domain's count, minus the smallest count over the eligible domains, exceed `maxSkew`; that
//! smallest count is 0 while fewer domains than `minDomains` exist. A node without a
//! constraint's key fails. Score (`ScheduleAnyway`): fewer matching pods in the node's domains
//! is better, each constraint weighted by the log of its number of domains. A pod with
//! constraints of its own is not also spread by owner (kube-scheduler's system defaults
//! apply only to pods without any).

use std::collections::HashMap;

use flotilla_api::At;
use serde_json::Value;

use super::affinity::{CountedPod, PodsOnNode, Selector};

/// kube-scheduler's words for the two ways this plugin excludes a node.
pub(crate) const SPREAD_REASON: &str = "node(s) didn't match pod topology spread constraints";
pub(crate) const MISSING_LABEL_REASON: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

/// One parsed constraint.
#[derive(Debug)]
pub(crate) struct Constraint {
    max_skew: i64,
    topology_key: String,
    hard: bool,
    selector: Selector,
    min_domains: Option<i64>,
    /// Only nodes matching the pod's node selection count (`nodeAffinityPolicy: Honor`).
    honor_affinity: bool,
    /// Only nodes whose taints the pod tolerates count (`nodeTaintsPolicy: Honor`).
    honor_taints: bool,
}

/// The pod's constraints (empty: none).
pub(crate) fn constraints_of(pod: &Value) -> Vec<Constraint> {
    let labels = pod.at("/metadata/labels").and_then(Value::as_object);
    pod.at("/spec/topologySpreadConstraints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            let mut selector = Selector::parse(c.get("labelSelector"));
            for k in c
                .get("matchLabelKeys")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if let Some(v) = labels.and_then(|l| l.get(k)).and_then(Value::as_str) {
                    selector.require_in(k, v);
                }
            }
            let text = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("");
            Constraint {
                max_skew: c.get("maxSkew").and_then(Value::as_i64).unwrap_or(1).max(1),
                topology_key: text("topologyKey").to_owned(),
                hard: text("whenUnsatisfiable") != "ScheduleAnyway",
                selector,
                min_domains: c.get("minDomains").and_then(Value::as_i64),
                honor_affinity: text("nodeAffinityPolicy") != "Ignore",
                honor_taints: text("nodeTaintsPolicy") == "Honor",
            }
        })
        .collect()
}

/// One node as `prepare` sees it: its object, the pods counted on it, and whether it matches
/// the pod's node selection and tolerates its taints.
pub(crate) struct SpreadNode<'a> {
    pub node: &'a Value,
    pub pods: &'a PodsOnNode,
    pub selected: bool,
    pub tolerated: bool,
}

/// Counts for one constraint.
#[derive(Debug)]
struct Counts {
    /// Matching pods per eligible domain (every eligible domain is here, 0 or more).
    per_domain: HashMap<String, i64>,
    /// The smallest count over the domains, as the filter uses it.
    min: i64,
    /// Whether the pod itself matches the selector (it then adds one where it lands).
    counts_itself: bool,
}

/// One pending pod's constraints with their counts.
#[derive(Debug)]
pub(crate) struct SpreadState<'c> {
    constraints: &'c [Constraint],
    counts: Vec<Counts>,
}

fn label<'a>(node: &'a Value, key: &str) -> Option<&'a str> {
    node.at("/metadata/labels")
        .and_then(|l| l.get(key))
        .and_then(Value::as_str)
}

impl<'c> SpreadState<'c> {
    /// `None` when the pod has no constraints.
    pub(crate) fn prepare<'a>(
        pod: &CountedPod,
        constraints: &'c [Constraint],
        nodes: impl Iterator<Item = SpreadNode<'a>>,
    ) -> Option<Self> {
        if constraints.is_empty() {
            return None;
        }
        let mut counts: Vec<Counts> = constraints
            .iter()
            .map(|c| Counts {
                per_domain: HashMap::new(),
                min: 0,
                counts_itself: c.selector.matches(pod.labels()),
            })
            .collect();
        for n in nodes {
            // A node without every key is in no domain of any constraint.
            if constraints
                .iter()
                .any(|c| label(n.node, &c.topology_key).is_none())
            {
                continue;
            }
            for (c, counted) in constraints.iter().zip(counts.iter_mut()) {
                if (c.honor_affinity && !n.selected) || (c.honor_taints && !n.tolerated) {
                    continue;
                }
                let Some(domain) = label(n.node, &c.topology_key) else {
                    continue;
                };
                let matching = n
                    .pods
                    .iter()
                    .filter(|p| p.namespace() == pod.namespace() && c.selector.matches(p.labels()))
                    .count() as i64;
                *counted.per_domain.entry(domain.to_owned()).or_default() += matching;
            }
        }
        for (c, counted) in constraints.iter().zip(counts.iter_mut()) {
            let domains = counted.per_domain.len() as i64;
            counted.min = if c.min_domains.is_some_and(|m| domains < m) {
                0
            } else {
                counted.per_domain.values().copied().min().unwrap_or(0)
            };
        }
        Some(SpreadState {
            constraints,
            counts,
        })
    }

    /// Why the hard constraints exclude `node`, in kube-scheduler's words.
    pub(crate) fn unfit(&self, node: &Value) -> Option<&'static str> {
        for (c, counted) in self.constraints.iter().zip(&self.counts) {
            if !c.hard {
                continue;
            }
            let Some(domain) = label(node, &c.topology_key) else {
                return Some(MISSING_LABEL_REASON);
            };
            let here = counted.per_domain.get(domain).copied().unwrap_or(0);
            if here + i64::from(counted.counts_itself) - counted.min > c.max_skew {
                return Some(SPREAD_REASON);
            }
        }
        None
    }

    /// The raw score of `node` from the soft constraints (lower is better, as kube-scheduler
    /// sums it); `None` without soft constraints.
    pub(crate) fn score(&self, node: &Value) -> Option<f64> {
        let mut total = None;
        for (c, counted) in self.constraints.iter().zip(&self.counts) {
            if c.hard {
                continue;
            }
            let weight = (counted.per_domain.len() as f64 + 2.0).ln();
            let here = label(node, &c.topology_key)
                .and_then(|d| counted.per_domain.get(d))
                .copied()
                .unwrap_or(0);
            *total.get_or_insert(0.0) += here as f64 * weight + (c.max_skew - 1) as f64;
        }
        total
    }

    /// The topology keys of the constraints (a node needs them all to be in any domain).
    #[cfg(test)]
    fn keys(&self) -> std::collections::HashSet<&str> {
        self.constraints
            .iter()
            .map(|c| c.topology_key.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn node(name: &str, zone: Option<&str>) -> Value {
        let mut labels = json!({"kubernetes.io/hostname": name});
        if let Some(z) = zone {
            labels["topology.kubernetes.io/zone"] = json!(z);
        }
        json!({"metadata": {"name": name, "labels": labels}})
    }

    fn pod(app: &str) -> Value {
        json!({"metadata": {"namespace": "default", "labels": {"app": app}}})
    }

    fn with(constraints: Value) -> Value {
        let mut p = pod("web");
        p["spec"] = json!({"topologySpreadConstraints": constraints});
        p
    }

    /// The state for pod `p` over `nodes` (with `pods` on them); `unselected`: a node the
    /// pod's node selection rules out.
    fn prepared<'c>(
        p: &Value,
        cs: &'c [Constraint],
        nodes: &[Value],
        pods: &[PodsOnNode],
        unselected: Option<usize>,
    ) -> SpreadState<'c> {
        SpreadState::prepare(
            &CountedPod::of(p),
            cs,
            nodes
                .iter()
                .zip(pods)
                .enumerate()
                .map(|(i, (node, pods))| SpreadNode {
                    node,
                    pods,
                    selected: Some(i) != unselected,
                    tolerated: true,
                }),
        )
        .unwrap()
    }

    fn on(pods: &[&str]) -> PodsOnNode {
        let mut on = PodsOnNode::default();
        for app in pods {
            on.add(Arc::new(CountedPod::of(&pod(app))));
        }
        on
    }

    #[test]
    fn a_hard_zone_constraint_allows_only_the_emptier_zone_and_needs_the_label() {
        let p = with(
            json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]),
        );
        let cs = constraints_of(&p);
        let nodes = [
            node("a1", Some("a")),
            node("a2", Some("a")),
            node("b1", Some("b")),
            node("x", None),
        ];
        let pods = [on(&["web", "other"]), on(&["web"]), on(&["web"]), on(&[])];
        let state = prepared(&p, &cs, &nodes, &pods, None);
        assert_eq!(
            state.keys(),
            std::collections::HashSet::from(["topology.kubernetes.io/zone"])
        );
        // Zone a has 2, zone b 1: a third in a would make the skew 2.
        assert_eq!(state.unfit(&nodes[0]), Some(SPREAD_REASON));
        assert_eq!(state.unfit(&nodes[2]), None);
        assert_eq!(state.unfit(&nodes[3]), Some(MISSING_LABEL_REASON));
    }

    #[test]
    fn min_domains_and_node_affinity_policy_change_the_minimum() {
        let p = with(
            json!([{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule", "minDomains": 3, "labelSelector": {"matchLabels": {"app": "web"}}}]),
        );
        let cs = constraints_of(&p);
        let nodes = [node("n1", None), node("n2", None)];
        let pods = [on(&["web"]), on(&["web"])];
        let state = prepared(&p, &cs, &nodes, &pods, None);
        // Two domains, fewer than minDomains: the minimum is 0, so 1 + 1 - 0 > 1 everywhere.
        assert_eq!(state.unfit(&nodes[0]), Some(SPREAD_REASON));
        assert_eq!(state.unfit(&nodes[1]), Some(SPREAD_REASON));
        // A node the pod's affinity rules out does not count as a domain.
        let p = with(
            json!([{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]),
        );
        let cs = constraints_of(&p);
        let nodes = [node("n1", None), node("n2", None), node("n3", None)];
        let pods = [on(&["web"]), on(&[]), on(&["web", "web"])];
        let state = prepared(&p, &cs, &nodes, &pods, Some(1));
        // Minimum over n1 and n3 is 1: n1 (1 + 1 - 1) fits, n3 (2 + 1 - 1) does not.
        assert_eq!(state.unfit(&nodes[0]), None);
        assert_eq!(state.unfit(&nodes[2]), Some(SPREAD_REASON));
    }

    #[test]
    fn soft_constraints_score_emptier_domains_better_and_match_label_keys() {
        let mut p = with(
            json!([{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}, "matchLabelKeys": ["rev"]}]),
        );
        p["metadata"]["labels"]["rev"] = json!("2");
        let cs = constraints_of(&p);
        let nodes = [node("n1", None), node("n2", None)];
        let mut rev2 = pod("web");
        rev2["metadata"]["labels"]["rev"] = json!("2");
        let mut busy = PodsOnNode::default();
        busy.add(Arc::new(CountedPod::of(&rev2)));
        // Pods of another revision do not count.
        let other_rev = on(&["web", "web"]);
        let pods = [busy, other_rev];
        let state = prepared(&p, &cs, &nodes, &pods, None);
        assert_eq!(state.unfit(&nodes[0]), None);
        assert!(state.score(&nodes[0]).unwrap() > state.score(&nodes[1]).unwrap());
        assert!(
            SpreadState::prepare(&CountedPod::of(&pod("web")), &[], std::iter::empty()).is_none()
        );
    }
}
