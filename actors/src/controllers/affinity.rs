//! Inter-pod affinity and anti-affinity, and preferred node affinity, as kube-scheduler's
//! InterPodAffinity and NodeAffinity plugins do them.
//!
//! Cost follows kube-scheduler's PreFilter/PreScore design: once per pending pod,
//! [`PodAffinityState::prepare`] counts per topology pair (key, value) the existing pods the
//! pod's terms match and the existing pods whose terms match the pod; each node is then
//! filtered and scored by a few lookups of its labels in those counts. A pod with no terms of
//! its own, in a cluster where no pod has terms, looks at no pod: `prepare` only reads each
//! node's counter of pods with terms.
//!
//! Pods are matched by `labelSelector` (a missing one matches nothing, an empty one everything,
//! a malformed one nothing), `namespaces` and `namespaceSelector` (neither given: the term's
//! own pod's namespace), with `matchLabelKeys`/`mismatchLabelKeys` merged into the selector as
//! the apiserver does. A node without a term's topology label is in no domain of it: it fails
//! required affinity and is never excluded by anti-affinity, as in Kubernetes.

use flotilla_api::At;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::scheduler::requirement_matches;

type Labels = serde_json::Map<String, Value>;

/// kube-scheduler's words for the three ways inter-pod affinity excludes a node.
pub(crate) const AFFINITY_REASON: &str = "node(s) didn't match pod affinity rules";
pub(crate) const ANTI_AFFINITY_REASON: &str = "node(s) didn't match pod anti-affinity rules";
pub(crate) const EXISTING_ANTI_AFFINITY_REASON: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";

/// What an existing pod's required affinity term adds to the score of a pod it matches
/// (kube-scheduler's default `hardPodAffinityWeight`).
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// The label every namespace carries with its own name (set by the apiserver).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn labels_of(obj: &Value) -> Option<&Labels> {
    obj.at("/metadata/labels").and_then(Value::as_object)
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.at(p).and_then(Value::as_str).unwrap_or("")
}

fn array<'a>(v: &'a Value, p: &str) -> impl Iterator<Item = &'a Value> {
    v.at(p).and_then(Value::as_array).into_iter().flatten()
}

/// Whether a NodeSelectorTerm selects `node`: its matchExpressions (on labels) and
/// matchFields (on `metadata.name`, the only field Kubernetes allows) all hold. A term with
/// neither matches no node.
pub(crate) fn node_selector_term_matches(term: &Value, node: &Value) -> bool {
    let empty = Labels::new();
    let labels = labels_of(node).unwrap_or(&empty);
    let exprs: Vec<&Value> = array(term, "/matchExpressions").collect();
    let fields: Vec<&Value> = array(term, "/matchFields").collect();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    if !exprs.iter().all(|e| requirement_matches(e, labels)) {
        return false;
    }
    if fields.is_empty() {
        return true;
    }
    let mut name = Labels::new();
    name.insert(
        "metadata.name".into(),
        Value::String(str_at(node, "/metadata/name").to_owned()),
    );
    fields.iter().all(|f| {
        str_at(f, "/key") == "metadata.name"
            && matches!(str_at(f, "/operator"), "In" | "NotIn")
            && requirement_matches(f, &name)
    })
}

/// A pod's preferred node affinity, if any (looked up once per pod, not per node).
pub(crate) fn preferred_node_terms(pod: &Value) -> Option<&Vec<Value>> {
    pod.at("/spec/affinity/nodeAffinity/preferredDuringSchedulingIgnoredDuringExecution")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
}

/// NodeAffinity's score before normalisation: the sum of the weights of the preferred terms
/// `node` matches.
pub(crate) fn preferred_node_score(terms: &[Value], node: &Value) -> i64 {
    terms
        .iter()
        .filter(|t| {
            t.get("preference")
                .is_some_and(|p| node_selector_term_matches(p, node))
        })
        .map(|t| t.get("weight").and_then(Value::as_i64).unwrap_or(0))
        .sum()
}

/// One requirement of a label selector.
#[derive(Debug, Clone)]
enum Requirement {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed `metav1.LabelSelector`.
#[derive(Debug, Clone)]
pub(crate) struct Selector {
    requirements: Vec<Requirement>,
    /// Missing or malformed: matches no pod (Kubernetes' `labels.Nothing()`).
    nothing: bool,
}

impl Selector {
    const NOTHING: Selector = Selector {
        requirements: Vec::new(),
        nothing: true,
    };

    pub(crate) fn parse(v: Option<&Value>) -> Selector {
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Selector::NOTHING;
        };
        let Some(obj) = v.as_object() else {
            return Selector::NOTHING;
        };
        let mut requirements = Vec::new();
        if let Some(ml) = obj.get("matchLabels").filter(|m| !m.is_null()) {
            let Some(ml) = ml.as_object() else {
                return Selector::NOTHING;
            };
            for (k, v) in ml {
                let Some(v) = v.as_str() else {
                    return Selector::NOTHING;
                };
                requirements.push(Requirement::Equals(k.clone(), v.to_owned()));
            }
        }
        for e in obj
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = str_at(e, "/key").to_owned();
            let values: Vec<String> = array(e, "/values")
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            let r = match (str_at(e, "/operator"), values.is_empty()) {
                ("In", false) => Requirement::In(key, values),
                ("NotIn", false) => Requirement::NotIn(key, values),
                ("Exists", true) => Requirement::Exists(key),
                ("DoesNotExist", true) => Requirement::DoesNotExist(key),
                // What LabelSelectorAsSelector refuses.
                _ => return Selector::NOTHING,
            };
            requirements.push(r);
        }
        Selector {
            requirements,
            nothing: false,
        }
    }

    /// Adds `key In (value)` (what `matchLabelKeys` merges in); nothing for a selector that
    /// matches nothing anyway.
    pub(crate) fn require_in(&mut self, key: &str, value: &str) {
        if !self.nothing {
            self.requirements
                .push(Requirement::In(key.to_owned(), vec![value.to_owned()]));
        }
    }

    pub(crate) fn matches(&self, labels: &Labels) -> bool {
        if self.nothing {
            return false;
        }
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|h| vs.iter().any(|v| v == h)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|h| vs.iter().any(|v| v == h)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

/// Namespaces' labels, for terms with a `namespaceSelector`. A namespace not in it is taken to
/// carry only its name label (what every namespace has).
#[derive(Debug, Default)]
pub(crate) struct NamespaceLabels(HashMap<String, Labels>);

impl NamespaceLabels {
    pub(crate) fn from_objects(namespaces: impl IntoIterator<Item = Value>) -> Self {
        NamespaceLabels(
            namespaces
                .into_iter()
                .map(|ns| {
                    let name = str_at(&ns, "/metadata/name").to_owned();
                    let mut labels = labels_of(&ns).cloned().unwrap_or_default();
                    labels
                        .entry(NAMESPACE_NAME_LABEL)
                        .or_insert_with(|| Value::String(name.clone()));
                    (name, labels)
                })
                .collect(),
        )
    }

    fn selects(&self, selector: &Selector, namespace: &str) -> bool {
        match self.0.get(namespace) {
            Some(labels) => selector.matches(labels),
            None => {
                let mut labels = Labels::new();
                labels.insert(NAMESPACE_NAME_LABEL.into(), namespace.into());
                selector.matches(&labels)
            }
        }
    }
}

/// A parsed PodAffinityTerm.
#[derive(Debug)]
struct Term {
    selector: Selector,
    namespaces: Vec<String>,
    /// `None`: no namespaceSelector (selects no namespace); `{}` selects every namespace.
    namespace_selector: Option<Selector>,
    topology_key: String,
}

impl Term {
    /// `owner_namespace` and `owner_labels` are those of the pod the term belongs to.
    fn parse(t: &Value, owner_namespace: &str, owner_labels: Option<&Labels>) -> Term {
        let mut selector = Selector::parse(t.get("labelSelector"));
        // matchLabelKeys/mismatchLabelKeys: the owner's own values of those keys join the
        // selector (as the apiserver merges them at creation; merging twice changes nothing).
        if !selector.nothing {
            let own = |k: &str| {
                owner_labels
                    .and_then(|l| l.get(k))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            for k in array(t, "/matchLabelKeys").filter_map(Value::as_str) {
                if let Some(v) = own(k) {
                    selector
                        .requirements
                        .push(Requirement::In(k.to_owned(), vec![v]));
                }
            }
            for k in array(t, "/mismatchLabelKeys").filter_map(Value::as_str) {
                if let Some(v) = own(k) {
                    selector
                        .requirements
                        .push(Requirement::NotIn(k.to_owned(), vec![v]));
                }
            }
        }
        let mut namespaces: Vec<String> = array(t, "/namespaces")
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        let namespace_selector = t
            .get("namespaceSelector")
            .filter(|s| !s.is_null())
            .map(|s| Selector::parse(Some(s)));
        if namespaces.is_empty() && namespace_selector.is_none() {
            namespaces.push(owner_namespace.to_owned());
        }
        Term {
            selector,
            namespaces,
            namespace_selector,
            topology_key: str_at(t, "/topologyKey").to_owned(),
        }
    }

    fn matches(&self, namespace: &str, labels: &Labels, ns_labels: &NamespaceLabels) -> bool {
        self.selector.matches(labels)
            && (self.namespaces.iter().any(|n| n == namespace)
                || self
                    .namespace_selector
                    .as_ref()
                    .is_some_and(|s| ns_labels.selects(s, namespace)))
    }

    /// Whether matching needs namespaces' labels (a selector other than `{}`).
    fn needs_namespace_labels(&self) -> bool {
        self.namespace_selector
            .as_ref()
            .is_some_and(|s| s.nothing || !s.requirements.is_empty())
    }
}

/// A pod's inter-pod affinity and anti-affinity terms.
#[derive(Debug, Default)]
pub(crate) struct PodTerms {
    required_affinity: Vec<Term>,
    required_anti: Vec<Term>,
    preferred_affinity: Vec<(i64, Term)>,
    preferred_anti: Vec<(i64, Term)>,
}

impl PodTerms {
    /// `None` when the pod has no inter-pod terms (the common case costs two lookups).
    pub(crate) fn of(pod: &Value) -> Option<PodTerms> {
        let affinity = pod.at("/spec/affinity/podAffinity");
        let anti = pod.at("/spec/affinity/podAntiAffinity");
        if affinity.is_none_or(Value::is_null) && anti.is_none_or(Value::is_null) {
            return None;
        }
        let ns = str_at(pod, "/metadata/namespace");
        let labels = labels_of(pod);
        let required = |v: Option<&Value>| -> Vec<Term> {
            v.into_iter()
                .flat_map(|v| array(v, "/requiredDuringSchedulingIgnoredDuringExecution"))
                .map(|t| Term::parse(t, ns, labels))
                .collect()
        };
        let preferred = |v: Option<&Value>| -> Vec<(i64, Term)> {
            v.into_iter()
                .flat_map(|v| array(v, "/preferredDuringSchedulingIgnoredDuringExecution"))
                .filter_map(|t| {
                    let weight = t.get("weight").and_then(Value::as_i64).unwrap_or(0);
                    let term = t.get("podAffinityTerm")?;
                    (weight != 0).then(|| (weight, Term::parse(term, ns, labels)))
                })
                .collect()
        };
        let terms = PodTerms {
            required_affinity: required(affinity),
            required_anti: required(anti),
            preferred_affinity: preferred(affinity),
            preferred_anti: preferred(anti),
        };
        let none = terms.required_affinity.is_empty()
            && terms.required_anti.is_empty()
            && terms.preferred_affinity.is_empty()
            && terms.preferred_anti.is_empty();
        (!none).then_some(terms)
    }

    fn all(&self) -> impl Iterator<Item = &Term> {
        self.required_affinity
            .iter()
            .chain(&self.required_anti)
            .chain(self.preferred_affinity.iter().map(|(_, t)| t))
            .chain(self.preferred_anti.iter().map(|(_, t)| t))
    }

    pub(crate) fn needs_namespace_labels(&self) -> bool {
        self.all().any(Term::needs_namespace_labels)
    }
}

/// What inter-pod affinity needs of a pod counted on a node; made once per change of the pod
/// and shared (an `Arc`) by every pass that counts it.
#[derive(Debug)]
pub(crate) struct CountedPod {
    namespace: String,
    labels: Labels,
    terms: Option<PodTerms>,
}

impl CountedPod {
    pub(crate) fn of(pod: &Value) -> Self {
        CountedPod {
            namespace: str_at(pod, "/metadata/namespace").to_owned(),
            labels: labels_of(pod).cloned().unwrap_or_default(),
            terms: PodTerms::of(pod),
        }
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    pub(crate) fn labels(&self) -> &Labels {
        &self.labels
    }

    /// Whether its terms need namespaces' labels (a namespaceSelector other than `{}`).
    pub(crate) fn needs_namespace_labels(&self) -> bool {
        self.terms
            .as_ref()
            .is_some_and(PodTerms::needs_namespace_labels)
    }
}

/// The pods counted on one node, as inter-pod affinity sees them.
#[derive(Debug, Default)]
pub(crate) struct PodsOnNode {
    pods: Vec<Arc<CountedPod>>,
    /// How many of them have inter-pod terms of their own.
    with_terms: usize,
    /// How many have terms whose namespaceSelector needs namespaces' labels.
    with_namespace_selectors: usize,
}

impl PodsOnNode {
    pub(crate) fn add(&mut self, pod: Arc<CountedPod>) {
        if pod.terms.is_some() {
            self.with_terms += 1;
            if pod.needs_namespace_labels() {
                self.with_namespace_selectors += 1;
            }
        }
        self.pods.push(pod);
    }

    pub(crate) fn need_namespace_labels(&self) -> bool {
        self.with_namespace_selectors > 0
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &CountedPod> {
        self.pods.iter().map(|p| &**p)
    }
}

/// Topology key → topology value → count (or summed weight).
#[derive(Debug, Default)]
struct TopologyCounts(HashMap<String, HashMap<String, i64>>);

impl TopologyCounts {
    /// Adds `n` to the pair (`key`, the node's value of `key`); nothing if the node has no
    /// such label.
    fn add(&mut self, node_labels: &Labels, key: &str, n: i64) {
        let Some(value) = node_labels.get(key).and_then(Value::as_str) else {
            return;
        };
        let values = match self.0.get_mut(key) {
            Some(v) => v,
            None => self.0.entry(key.to_owned()).or_default(),
        };
        match values.get_mut(value) {
            Some(c) => *c += n,
            None => {
                values.insert(value.to_owned(), n);
            }
        }
    }

    fn get(&self, key: &str, value: &str) -> i64 {
        self.0
            .get(key)
            .and_then(|v| v.get(value))
            .copied()
            .unwrap_or(0)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The sum over the pairs `node_labels` are in.
    fn sum_at(&self, node_labels: &Labels) -> i64 {
        self.0
            .iter()
            .filter_map(|(k, values)| {
                let v = node_labels.get(k)?.as_str()?;
                values.get(v)
            })
            .sum()
    }

    fn any_at(&self, node_labels: &Labels) -> bool {
        self.0.iter().any(|(k, values)| {
            node_labels
                .get(k)
                .and_then(Value::as_str)
                .and_then(|v| values.get(v))
                .is_some_and(|c| *c > 0)
        })
    }
}

/// One pending pod's inter-pod affinity, computed once (kube-scheduler's PreFilter and
/// PreScore state), then asked about each node.
#[derive(Debug)]
pub(crate) struct PodAffinityState {
    pod: Arc<CountedPod>,
    /// Pairs holding existing pods that match all the pod's required affinity terms.
    affinity_counts: TopologyCounts,
    /// Pairs holding existing pods that match one of its required anti-affinity terms.
    anti_counts: TopologyCounts,
    /// Pairs holding existing pods whose required anti-affinity matches this pod.
    existing_anti_counts: TopologyCounts,
    /// The pod matches all its own required affinity terms (the first of a group that wants
    /// to be together may go anywhere its topology keys exist).
    matches_own_affinity: bool,
    /// InterPodAffinity's score per pair, from both sides' preferred terms and existing pods'
    /// required affinity.
    score: TopologyCounts,
}

impl PodAffinityState {
    /// `nodes`: every node (its object) with the pods counted on it, including those placed
    /// earlier in this pass. `None`: inter-pod affinity neither filters nor scores this pod.
    pub(crate) fn prepare<'a, I>(
        pod: &Arc<CountedPod>,
        nodes: I,
        ns_labels: &NamespaceLabels,
    ) -> Option<Self>
    where
        I: Iterator<Item = (&'a Value, &'a PodsOnNode)> + Clone,
    {
        let own = pod.terms.as_ref();
        if own.is_none() && nodes.clone().all(|(_, pods)| pods.with_terms == 0) {
            return None;
        }
        let mut state = PodAffinityState {
            matches_own_affinity: own.is_some_and(|t| {
                t.required_affinity
                    .iter()
                    .all(|term| term.matches(&pod.namespace, &pod.labels, ns_labels))
            }),
            pod: Arc::clone(pod),
            affinity_counts: TopologyCounts::default(),
            anti_counts: TopologyCounts::default(),
            existing_anti_counts: TopologyCounts::default(),
            score: TopologyCounts::default(),
        };
        for (node, pods) in nodes {
            // Without terms of its own, only pods with terms can concern this pod.
            if own.is_none() && pods.with_terms == 0 {
                continue;
            }
            let Some(node_labels) = labels_of(node) else {
                continue;
            };
            for existing in &pods.pods {
                state.count(pod, existing, node_labels, ns_labels);
            }
        }
        if own.is_none() && state.existing_anti_counts.is_empty() && state.score.is_empty() {
            return None;
        }
        Some(state)
    }

    /// Adds what one existing pod means for this pod to the counts of its node's pairs.
    fn count(
        &mut self,
        pod: &CountedPod,
        existing: &CountedPod,
        node_labels: &Labels,
        ns_labels: &NamespaceLabels,
    ) {
        let matches = |t: &Term| t.matches(&existing.namespace, &existing.labels, ns_labels);
        if let Some(own) = &pod.terms {
            if !own.required_affinity.is_empty() && own.required_affinity.iter().all(matches) {
                for t in &own.required_affinity {
                    self.affinity_counts.add(node_labels, &t.topology_key, 1);
                }
            }
            for t in own.required_anti.iter().filter(|t| matches(t)) {
                self.anti_counts.add(node_labels, &t.topology_key, 1);
            }
            for (w, t) in own.preferred_affinity.iter().filter(|(_, t)| matches(t)) {
                self.score.add(node_labels, &t.topology_key, *w);
            }
            for (w, t) in own.preferred_anti.iter().filter(|(_, t)| matches(t)) {
                self.score.add(node_labels, &t.topology_key, -*w);
            }
        }
        // The symmetric side: the existing pod's terms against this pod.
        if let Some(theirs) = &existing.terms {
            let matched = |t: &Term| t.matches(&pod.namespace, &pod.labels, ns_labels);
            for t in theirs.required_anti.iter().filter(|t| matched(t)) {
                self.existing_anti_counts
                    .add(node_labels, &t.topology_key, 1);
            }
            for t in theirs.required_affinity.iter().filter(|t| matched(t)) {
                self.score
                    .add(node_labels, &t.topology_key, HARD_POD_AFFINITY_WEIGHT);
            }
            for (w, t) in theirs.preferred_affinity.iter().filter(|(_, t)| matched(t)) {
                self.score.add(node_labels, &t.topology_key, *w);
            }
            for (w, t) in theirs.preferred_anti.iter().filter(|(_, t)| matched(t)) {
                self.score.add(node_labels, &t.topology_key, -*w);
            }
        }
    }

    /// Why inter-pod affinity excludes `node`, in kube-scheduler's words (its order: the pod's
    /// affinity, its anti-affinity, then existing pods' anti-affinity).
    pub(crate) fn unfit(&self, node: &Value) -> Option<&'static str> {
        let empty = Labels::new();
        let node_labels = labels_of(node).unwrap_or(&empty);
        let value = |k: &str| node_labels.get(k).and_then(Value::as_str);
        if let Some(own) = &self.pod.terms {
            if !own.required_affinity.is_empty() {
                let mut all_there = true;
                for t in &own.required_affinity {
                    match value(&t.topology_key) {
                        Some(v) => all_there &= self.affinity_counts.get(&t.topology_key, v) > 0,
                        None => return Some(AFFINITY_REASON),
                    }
                }
                // The first of a group with affinity to itself may go anywhere.
                let first_of_group = self.affinity_counts.is_empty() && self.matches_own_affinity;
                if !all_there && !first_of_group {
                    return Some(AFFINITY_REASON);
                }
            }
            if !self.anti_counts.is_empty()
                && own.required_anti.iter().any(|t| {
                    value(&t.topology_key)
                        .is_some_and(|v| self.anti_counts.get(&t.topology_key, v) > 0)
                })
            {
                return Some(ANTI_AFFINITY_REASON);
            }
        }
        if self.existing_anti_counts.any_at(node_labels) {
            return Some(EXISTING_ANTI_AFFINITY_REASON);
        }
        None
    }

    /// InterPodAffinity's score of `node` before normalisation.
    pub(crate) fn score(&self, node: &Value) -> i64 {
        labels_of(node).map_or(0, |l| self.score.sum_at(l))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str, zone: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone}}})
    }

    fn pod(ns: &str, labels: Value, affinity: Value) -> Value {
        json!({"metadata": {"namespace": ns, "labels": labels}, "spec": {"affinity": affinity}})
    }

    /// Three nodes, two zones: n1 and n2 in zone a, n3 in zone b.
    struct Cluster {
        nodes: Vec<(Value, PodsOnNode)>,
        namespaces: NamespaceLabels,
    }

    impl Cluster {
        fn new() -> Self {
            Cluster {
                nodes: vec![
                    (node("n1", "a"), PodsOnNode::default()),
                    (node("n2", "a"), PodsOnNode::default()),
                    (node("n3", "b"), PodsOnNode::default()),
                ],
                namespaces: NamespaceLabels::default(),
            }
        }

        fn place(&mut self, i: usize, pod: &Value) {
            self.nodes[i].1.add(Arc::new(CountedPod::of(pod)));
        }

        fn state(&self, pod: &Value) -> Option<PodAffinityState> {
            PodAffinityState::prepare(
                &Arc::new(CountedPod::of(pod)),
                self.nodes.iter().map(|(n, p)| (n, p)),
                &self.namespaces,
            )
        }

        /// Each node's reason, `None` where the pod fits.
        fn reasons(&self, pod: &Value) -> Vec<Option<&'static str>> {
            let state = self.state(pod);
            self.nodes
                .iter()
                .map(|(n, _)| state.as_ref().and_then(|s| s.unfit(n)))
                .collect()
        }

        fn scores(&self, pod: &Value) -> Vec<i64> {
            let state = self.state(pod);
            self.nodes
                .iter()
                .map(|(n, _)| state.as_ref().map_or(0, |s| s.score(n)))
                .collect()
        }
    }

    fn anti_on(key: &str) -> Value {
        json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": key}]}})
    }

    #[test]
    fn without_terms_nothing_is_computed() {
        let mut c = Cluster::new();
        c.place(0, &pod("default", json!({"app": "web"}), json!(null)));
        assert!(
            c.state(&pod("default", json!({"app": "web"}), json!(null)))
                .is_none()
        );
        // An existing pod's preferred terms that don't match leave nothing either.
        c.place(
            1,
            &pod(
                "default",
                json!({"app": "db"}),
                json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}}]}}),
            ),
        );
        assert!(
            c.state(&pod("default", json!({"app": "web"}), json!(null)))
                .is_none()
        );
    }

    #[test]
    fn required_anti_affinity_on_hostname_and_zone() {
        let mut c = Cluster::new();
        let web = pod(
            "default",
            json!({"app": "web"}),
            anti_on("kubernetes.io/hostname"),
        );
        assert_eq!(c.reasons(&web), [None, None, None]);
        c.place(0, &web);
        assert_eq!(c.reasons(&web), [Some(ANTI_AFFINITY_REASON), None, None]);
        c.place(1, &web);
        c.place(2, &web);
        assert_eq!(c.reasons(&web), [Some(ANTI_AFFINITY_REASON); 3]);
        // Another namespace is not concerned by default (namespaces default to the term's
        // own pod's), either way.
        let other = pod(
            "other",
            json!({"app": "web"}),
            anti_on("kubernetes.io/hostname"),
        );
        assert_eq!(c.reasons(&other), [None, None, None]);

        let mut c = Cluster::new();
        let zonal = pod(
            "default",
            json!({"app": "web"}),
            anti_on("topology.kubernetes.io/zone"),
        );
        c.place(0, &zonal);
        assert_eq!(
            c.reasons(&zonal),
            [Some(ANTI_AFFINITY_REASON), Some(ANTI_AFFINITY_REASON), None]
        );
    }

    #[test]
    fn existing_pods_anti_affinity_is_symmetric() {
        let mut c = Cluster::new();
        // The existing pod refuses company of app=web in its zone; the incoming pod has no
        // terms at all.
        c.place(
            2,
            &pod(
                "default",
                json!({"app": "db"}),
                anti_on("topology.kubernetes.io/zone"),
            ),
        );
        let web = pod("default", json!({"app": "web"}), json!(null));
        assert_eq!(
            c.reasons(&web),
            [None, None, Some(EXISTING_ANTI_AFFINITY_REASON)]
        );
        let api = pod("default", json!({"app": "api"}), json!(null));
        assert!(c.state(&api).is_none());
    }

    #[test]
    fn required_affinity_follows_matching_pods_and_lets_the_first_one_in() {
        let mut c = Cluster::new();
        let affine = |key: &str| {
            pod(
                "default",
                json!({"app": "sidecar"}),
                json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]},
                     "topologyKey": key}]}}),
            )
        };
        let sidecar = affine("kubernetes.io/hostname");
        // No pod matches anywhere, and the pod does not match its own term: nowhere.
        assert_eq!(c.reasons(&sidecar), [Some(AFFINITY_REASON); 3]);
        c.place(1, &pod("default", json!({"app": "web"}), json!(null)));
        assert_eq!(
            c.reasons(&sidecar),
            [Some(AFFINITY_REASON), None, Some(AFFINITY_REASON)]
        );
        assert_eq!(
            c.reasons(&affine("topology.kubernetes.io/zone")),
            [None, None, Some(AFFINITY_REASON)]
        );
        // A node without the topology label is in no domain.
        assert_eq!(c.reasons(&affine("rack")), [Some(AFFINITY_REASON); 3]);

        // A group with affinity to itself: the first one goes anywhere, the rest follow it.
        let mut c = Cluster::new();
        let group = pod(
            "default",
            json!({"app": "web"}),
            json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}),
        );
        assert_eq!(c.reasons(&group), [None, None, None]);
        c.place(2, &group);
        assert_eq!(
            c.reasons(&group),
            [Some(AFFINITY_REASON), Some(AFFINITY_REASON), None]
        );
    }

    #[test]
    fn namespaces_and_namespace_selectors() {
        let mut c = Cluster::new();
        c.namespaces = NamespaceLabels::from_objects([
            json!({"metadata": {"name": "prod", "labels": {"env": "prod"}}}),
            json!({"metadata": {"name": "dev"}}),
        ]);
        c.place(0, &pod("prod", json!({"app": "web"}), json!(null)));
        c.place(1, &pod("dev", json!({"app": "web"}), json!(null)));
        let with = |term: Value| {
            let mut t = json!({"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"});
            t.as_object_mut()
                .unwrap()
                .extend(term.as_object().unwrap().clone());
            pod(
                "default",
                json!({}),
                json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [t]}}),
            )
        };
        let a = Some(ANTI_AFFINITY_REASON);
        assert_eq!(c.reasons(&with(json!({}))), [None, None, None]);
        assert_eq!(
            c.reasons(&with(json!({"namespaces": ["dev"]}))),
            [None, a, None]
        );
        assert_eq!(
            c.reasons(&with(json!({"namespaceSelector": {}}))),
            [a, a, None]
        );
        assert_eq!(
            c.reasons(&with(
                json!({"namespaceSelector": {"matchLabels": {"env": "prod"}}})
            )),
            [a, None, None]
        );
        // Every namespace carries its name label.
        assert_eq!(
            c.reasons(&with(
                json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dev"}}})
            )),
            [None, a, None]
        );
        assert!(
            PodTerms::of(&with(
                json!({"namespaceSelector": {"matchLabels": {"env": "prod"}}})
            ))
            .unwrap()
            .needs_namespace_labels()
        );
        assert!(
            !PodTerms::of(&with(json!({"namespaceSelector": {}})))
                .unwrap()
                .needs_namespace_labels()
        );
    }

    #[test]
    fn odd_selectors_match_nothing_and_never_panic() {
        let mut c = Cluster::new();
        c.place(0, &pod("default", json!({"app": "web"}), json!(null)));
        for selector in [
            json!(null),
            json!("app=web"),
            json!({"matchLabels": {"app": 3}}),
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": []}]}),
            json!({"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]}),
            json!({"matchExpressions": [{"key": "app", "operator": "Like", "values": ["web"]}]}),
        ] {
            let p = pod(
                "default",
                json!({}),
                json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": selector, "topologyKey": "kubernetes.io/hostname"}]}}),
            );
            assert_eq!(c.reasons(&p), [None, None, None], "{selector}");
        }
        // An empty selector matches every pod.
        let p = pod(
            "default",
            json!({}),
            json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {}, "topologyKey": "kubernetes.io/hostname"}]}}),
        );
        assert_eq!(c.reasons(&p), [Some(ANTI_AFFINITY_REASON), None, None]);
        // Malformed terms and weights.
        for affinity in [
            json!({"podAffinity": "yes"}),
            json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{}]}}),
            json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": "x"}, {"podAffinityTerm": {}}]}}),
        ] {
            let p = pod("default", json!({}), affinity);
            let _ = c.reasons(&p);
            let _ = c.scores(&p);
        }
    }

    #[test]
    fn match_label_keys_narrow_the_selector_to_the_pods_own_values() {
        let mut c = Cluster::new();
        let web = |hash: &str| {
            pod(
                "default",
                json!({"app": "web", "pod-template-hash": hash}),
                json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "web"}}, "matchLabelKeys": ["pod-template-hash"],
                     "topologyKey": "kubernetes.io/hostname"}]}}),
            )
        };
        c.place(0, &web("old"));
        // The new revision's pods ignore the old one's (but the old one's term, of its own
        // revision, ignores the new ones too).
        assert_eq!(c.reasons(&web("new")), [None, None, None]);
        assert_eq!(c.reasons(&web("old"))[0], Some(ANTI_AFFINITY_REASON));
    }

    #[test]
    fn preferred_terms_score_both_ways() {
        let mut c = Cluster::new();
        c.place(0, &pod("default", json!({"app": "cache"}), json!(null)));
        c.place(2, &pod("default", json!({"app": "web"}), json!(null)));
        let p = pod(
            "default",
            json!({"app": "web"}),
            json!({
                "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 50, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "topology.kubernetes.io/zone"}}]},
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 30, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}}]}}),
        );
        assert_eq!(c.scores(&p), [50, 50, -30]);
        // An existing pod's required affinity to this pod adds the hard weight, its preferred
        // anti-affinity subtracts.
        c.place(
            1,
            &pod(
                "default",
                json!({"app": "db"}),
                json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]},
                  "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 7, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "topology.kubernetes.io/zone"}}]}}),
            ),
        );
        assert_eq!(c.scores(&p), [50 - 7, 50 - 7 + 1, -30]);
        let plain = pod("default", json!({"app": "web"}), json!(null));
        assert_eq!(c.scores(&plain), [-7, -7 + 1, 0]);
        assert_eq!(c.reasons(&plain), [None, None, None]);
    }

    #[test]
    fn node_selector_terms_and_preferred_node_affinity() {
        let n1 = node("n1", "a");
        let expr = |op: &str, v: &str| json!({"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": op, "values": [v]}]});
        assert!(node_selector_term_matches(&expr("In", "a"), &n1));
        assert!(!node_selector_term_matches(&expr("NotIn", "a"), &n1));
        assert!(!node_selector_term_matches(&json!({}), &n1));
        assert!(!node_selector_term_matches(
            &json!({"matchExpressions": []}),
            &n1
        ));
        let field = |op: &str, v: &str| json!({"matchFields": [{"key": "metadata.name", "operator": op, "values": [v]}]});
        assert!(node_selector_term_matches(&field("In", "n1"), &n1));
        assert!(!node_selector_term_matches(&field("In", "n2"), &n1));
        assert!(node_selector_term_matches(&field("NotIn", "n2"), &n1));
        assert!(!node_selector_term_matches(
            &json!({"matchFields": [{"key": "spec.unschedulable", "operator": "In", "values": ["n1"]}]}),
            &n1
        ));
        let p = json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 80, "preference": expr("In", "a")},
            {"weight": 20, "preference": field("In", "n3")},
            {"weight": 5},
            {"preference": expr("In", "a")}]}}}});
        let terms = preferred_node_terms(&p).unwrap();
        assert_eq!(preferred_node_score(terms, &n1), 80);
        assert_eq!(preferred_node_score(terms, &node("n3", "b")), 20);
        assert!(preferred_node_terms(&json!({"spec": {}})).is_none());
    }
}
