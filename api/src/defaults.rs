//! Defaulting of the built-in kinds: what the apiserver's `SetDefaults_*` functions
//! (k8s.io/kubernetes/pkg/apis/*/v1/defaults.go) and its create-time strategies fill in when a
//! field is absent (or null), so objects read back look as they do on a real cluster. Also
//! what the Go types' serialization adds (`resources: {}`, canonical quantities, a resource
//! field selector's `divisor: "0"`), since `kubectl get -o yaml` shows it.
//!
//! Pure and total: a field of an unexpected shape (a string where an object belongs) is left
//! alone for validation to report.

use serde_json::{Map, Value, json};

use crate::validate::{VOLUME_SOURCES, parse_quantity};

type Obj = Map<String, Value>;

/// Fills in the defaults Kubernetes sets on an object of `kind` in `api_version`.
pub(crate) fn apply_defaults(api_version: &str, kind: &str, obj: &mut Value) {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let Some(o) = obj.as_object_mut() else {
        return;
    };
    match (group, kind) {
        ("", "Pod") => {
            if let Some(spec) = child_or_new(o, "spec") {
                pod_spec(spec, true);
            }
        }
        ("", "ReplicationController") => replication_controller(o),
        ("", "Service") => service(o),
        ("", "Secret") => secret(o),
        ("", "PersistentVolume") => persistent_volume(o),
        ("", "PersistentVolumeClaim") => persistent_volume_claim(o),
        ("", "Endpoints") => {
            for subset in each(o, "subsets") {
                for port in each(subset, "ports") {
                    default_str(port, "protocol", "TCP");
                }
            }
        }
        ("", "Node") => {
            // A node that reports only capacity can allocate all of it.
            if let Some(status) = child(o, "status")
                && unset(status, "allocatable")
                && let Some(capacity) = status.get("capacity").filter(|c| c.is_object()).cloned()
            {
                status.insert("allocatable".into(), capacity);
            }
        }
        ("apps", "Deployment") => deployment(o),
        ("apps", "ReplicaSet") => {
            if let Some(spec) = child_or_new(o, "spec") {
                default(spec, "replicas", json!(1));
                template(spec);
            }
        }
        ("apps", "StatefulSet") => stateful_set(o),
        ("apps", "DaemonSet") => daemon_set(o),
        ("batch", "Job") => job(o),
        ("batch", "CronJob") => cron_job(o),
        ("autoscaling", "HorizontalPodAutoscaler") => {
            horizontal_pod_autoscaler(o, api_version == "autoscaling/v2");
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            for port in each(o, "ports") {
                default(port, "name", json!(""));
                default(port, "protocol", json!("TCP"));
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => role_binding(o),
        ("storage.k8s.io", "StorageClass") => {
            default_str(o, "reclaimPolicy", "Delete");
            default_str(o, "volumeBindingMode", "Immediate");
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// JSON helpers.

/// Absent or null: what a nil pointer looks like in JSON.
fn unset(m: &Obj, key: &str) -> bool {
    matches!(m.get(key), None | Some(Value::Null))
}

/// Unset, or the zero value of a Go string field.
fn unset_or_empty(m: &Obj, key: &str) -> bool {
    unset(m, key) || m.get(key).and_then(Value::as_str) == Some("")
}

/// Unset, or the zero value of a Go int field.
fn unset_or_zero(m: &Obj, key: &str) -> bool {
    unset(m, key) || m.get(key).and_then(Value::as_f64) == Some(0.0)
}

/// Unset or `{}`: a Go map with nothing in it.
fn empty_map(m: &Obj, key: &str) -> bool {
    match m.get(key) {
        None | Some(Value::Null) => true,
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    }
}

fn default(m: &mut Obj, key: &str, value: Value) {
    if unset(m, key) {
        m.insert(key.to_owned(), value);
    }
}

fn default_str(m: &mut Obj, key: &str, value: &str) {
    if unset_or_empty(m, key) {
        m.insert(key.to_owned(), Value::String(value.to_owned()));
    }
}

fn str_of<'a>(m: &'a Obj, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or("")
}

fn child<'a>(m: &'a mut Obj, key: &str) -> Option<&'a mut Obj> {
    m.get_mut(key)?.as_object_mut()
}

/// The object at `key`, created when unset (a non-pointer Go struct is always there).
fn child_or_new<'a>(m: &'a mut Obj, key: &str) -> Option<&'a mut Obj> {
    if unset(m, key) {
        m.insert(key.to_owned(), json!({}));
    }
    child(m, key)
}

/// The objects in the list at `key`.
fn each<'a>(m: &'a mut Obj, key: &str) -> impl Iterator<Item = &'a mut Obj> {
    m.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

// ---------------------------------------------------------------------------------------
// Pods and pod templates.

/// `spec.template.spec` of a workload (templates are non-pointer structs there).
fn template(spec: &mut Obj) {
    if let Some(t) = child_or_new(spec, "template")
        && let Some(pod) = child_or_new(t, "spec")
    {
        pod_spec(pod, false);
    }
}

/// `SetDefaults_PodSpec`, plus `SetDefaults_Pod` for a Pod itself (`is_pod`).
fn pod_spec(s: &mut Obj, is_pod: bool) {
    default_str(s, "dnsPolicy", "ClusterFirst");
    // Job templates get Always too; Job validation then asks for OnFailure or Never.
    default_str(s, "restartPolicy", "Always");
    default(s, "securityContext", json!({}));
    default(s, "terminationGracePeriodSeconds", json!(30));
    default_str(s, "schedulerName", "default-scheduler");
    if is_pod {
        default(s, "enableServiceLinks", json!(true));
    }
    // Only pods (not templates) get host ports from container ports on the host network.
    let host_ports = is_pod && s.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    for key in ["initContainers", "containers"] {
        for c in each(s, key) {
            container(c, is_pod, host_ports);
        }
    }
    for v in each(s, "volumes") {
        if !VOLUME_SOURCES.iter().any(|k| !unset(v, k)) {
            v.insert("emptyDir".into(), json!({}));
        }
        volume_source(v);
    }
}

fn container(c: &mut Obj, is_pod: bool, host_ports: bool) {
    if unset_or_empty(c, "imagePullPolicy") {
        let policy = if image_tag(str_of(c, "image")).as_deref() == Some("latest") {
            "Always"
        } else {
            "IfNotPresent"
        };
        c.insert("imagePullPolicy".into(), json!(policy));
    }
    default_str(c, "terminationMessagePath", "/dev/termination-log");
    default_str(c, "terminationMessagePolicy", "File");
    if let Some(r) = child_or_new(c, "resources") {
        resources(r, is_pod);
    }
    for p in each(c, "ports") {
        default_str(p, "protocol", "TCP");
        if host_ports
            && unset_or_zero(p, "hostPort")
            && let Some(port) = p.get("containerPort").cloned()
        {
            p.insert("hostPort".into(), port);
        }
    }
    for env in each(c, "env") {
        if let Some(from) = child(env, "valueFrom") {
            field_selectors(from);
        }
    }
    for key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = child(c, key) {
            for (field, value) in [
                ("timeoutSeconds", 1),
                ("periodSeconds", 10),
                ("successThreshold", 1),
                ("failureThreshold", 3),
            ] {
                if unset_or_zero(p, field) {
                    p.insert(field.into(), json!(value));
                }
            }
            handler(p);
        }
    }
    if let Some(lifecycle) = child(c, "lifecycle") {
        for hook in ["postStart", "preStop"] {
            if let Some(h) = child(lifecycle, hook) {
                handler(h);
            }
        }
    }
}

fn handler(h: &mut Obj) {
    if let Some(get) = child(h, "httpGet") {
        default_str(get, "path", "/");
        default_str(get, "scheme", "HTTP");
    }
    if let Some(grpc) = child(h, "grpc") {
        default(grpc, "service", json!(""));
    }
}

/// The downward API's field and resource selectors (env `valueFrom`, volume items).
fn field_selectors(m: &mut Obj) {
    if let Some(f) = child(m, "fieldRef") {
        default_str(f, "apiVersion", "v1");
    }
    if let Some(r) = child(m, "resourceFieldRef") {
        // `divisor` is a non-pointer quantity: Go always prints it.
        default(r, "divisor", json!("0"));
        canonical_quantity(r, "divisor", false);
    }
}

/// Rewrites a quantity in the canonical form the apiserver stores (`1024Mi` → `1Gi`);
/// `milli` also rounds it up to milli precision as `SetDefaults_ResourceList` does.
fn canonical_quantity(m: &mut Obj, key: &str, milli: bool) {
    let text = match m.get(key) {
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return,
    };
    if let Ok(mut q) = parse_quantity(&text) {
        if milli {
            q.round_up_milli();
        }
        if let Some(c) = q.canonical() {
            m.insert(key.to_owned(), Value::String(c));
        }
    }
}

fn resource_list(m: &mut Obj) {
    let keys: Vec<String> = m.keys().cloned().collect();
    for k in keys {
        canonical_quantity(m, &k, true);
    }
}

fn resources(r: &mut Obj, is_pod: bool) {
    // Pods (not templates) request what they limit unless they say otherwise.
    if is_pod
        && let Some(limits) = r.get("limits").and_then(Value::as_object).cloned()
        && !limits.is_empty()
        && let Some(requests) = child_or_new(r, "requests")
    {
        for (k, v) in limits {
            default(requests, &k, v);
        }
    }
    for key in ["limits", "requests"] {
        if let Some(list) = child(r, key) {
            resource_list(list);
        }
    }
}

/// Defaults inside a volume source (pod volumes, persistent volume specs).
fn volume_source(v: &mut Obj) {
    for key in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(src) = child(v, key) {
            default(src, "defaultMode", json!(420));
        }
    }
    if let Some(d) = child(v, "downwardAPI") {
        for item in each(d, "items") {
            field_selectors(item);
        }
    }
    if let Some(p) = child(v, "projected") {
        for source in each(p, "sources") {
            if let Some(token) = child(source, "serviceAccountToken") {
                default(token, "expirationSeconds", json!(3600));
            }
            if let Some(d) = child(source, "downwardAPI") {
                for item in each(d, "items") {
                    field_selectors(item);
                }
            }
        }
    }
    if let Some(h) = child(v, "hostPath") {
        default(h, "type", json!(""));
    }
    if let Some(e) = child(v, "emptyDir") {
        canonical_quantity(e, "sizeLimit", false);
    }
    if let Some(i) = child(v, "iscsi") {
        default_str(i, "iscsiInterface", "default");
    }
    if let Some(r) = child(v, "rbd") {
        default_str(r, "pool", "rbd");
        default_str(r, "user", "admin");
        default_str(r, "keyring", "/etc/ceph/keyring");
    }
    if let Some(a) = child(v, "azureDisk") {
        default(a, "cachingMode", json!("ReadWrite"));
        default(a, "kind", json!("Shared"));
        default(a, "fsType", json!("ext4"));
        default(a, "readOnly", json!(false));
    }
    if let Some(s) = child(v, "scaleIO") {
        default_str(s, "storageMode", "ThinProvisioned");
        default_str(s, "fsType", "xfs");
    }
    if let Some(e) = child(v, "ephemeral")
        && let Some(t) = child(e, "volumeClaimTemplate")
        && let Some(spec) = child(t, "spec")
    {
        claim_spec(spec);
    }
}

/// The tag Kubernetes' image-name parser reports: `latest` when neither a tag nor a digest
/// is given, "" for a digest alone, None when the reference does not parse.
fn image_tag(image: &str) -> Option<String> {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    // The tag follows a ':' after the last '/' (an earlier ':' is a registry port).
    let last = name.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match name.get(last..).and_then(|tail| tail.rfind(':')) {
        Some(i) => (
            name.get(..last + i).unwrap_or(""),
            Some(name.get(last + i + 1..).unwrap_or("")),
        ),
        None => (name, None),
    };
    let components: Vec<&str> = repo.split('/').collect();
    let has_domain = components.len() > 1
        && components
            .first()
            .is_some_and(|d| d.contains(['.', ':']) || *d == "localhost");
    let path_ok = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty()
            && b.iter().all(|x| {
                x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-')
            })
            && b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
    };
    let domain_ok = |d: &str| {
        !d.is_empty()
            && d.bytes()
                .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'.' | b'-' | b':'))
    };
    let repo_ok = components.iter().enumerate().all(|(i, c)| {
        if i == 0 && has_domain {
            domain_ok(c)
        } else {
            path_ok(c)
        }
    });
    let tag_ok = tag.is_none_or(|t| {
        (1..=128).contains(&t.len())
            && t.bytes()
                .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
            && !t.starts_with(['.', '-'])
    });
    let digest_ok = digest.is_none_or(|d| {
        d.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty()
                && algo
                    .bytes()
                    .all(|x| x.is_ascii_alphanumeric() || matches!(x, b'+' | b'.' | b'_' | b'-'))
                && hex.len() >= 32
                && hex.bytes().all(|x| x.is_ascii_hexdigit())
        })
    });
    if !(repo_ok && tag_ok && digest_ok) {
        return None;
    }
    Some(match (tag, digest) {
        (Some(t), _) => t.to_owned(),
        (None, Some(_)) => String::new(),
        (None, None) => "latest".to_owned(),
    })
}

// ---------------------------------------------------------------------------------------
// Core kinds.

fn replication_controller(o: &mut Obj) {
    let template_labels = o
        .get("spec")
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("labels"))
        .filter(|l| l.is_object())
        .cloned();
    let Some(spec) = child_or_new(o, "spec") else {
        return;
    };
    if let Some(labels) = &template_labels
        && empty_map(spec, "selector")
    {
        spec.insert("selector".into(), labels.clone());
    }
    default(spec, "replicas", json!(1));
    if let Some(t) = child(spec, "template")
        && let Some(pod) = child_or_new(t, "spec")
    {
        pod_spec(pod, false);
    }
    if let Some(labels) = template_labels
        && let Some(meta) = child_or_new(o, "metadata")
        && empty_map(meta, "labels")
    {
        meta.insert("labels".into(), labels);
    }
}

fn service(o: &mut Obj) {
    let Some(spec) = child_or_new(o, "spec") else {
        return;
    };
    default_str(spec, "sessionAffinity", "None");
    match str_of(spec, "sessionAffinity") {
        "None" => {
            spec.remove("sessionAffinityConfig");
        }
        "ClientIP" => {
            let timeout_set = spec
                .get("sessionAffinityConfig")
                .and_then(|c| c.get("clientIP"))
                .and_then(|c| c.get("timeoutSeconds"))
                .is_some_and(|t| !t.is_null());
            if !timeout_set {
                spec.insert(
                    "sessionAffinityConfig".into(),
                    json!({"clientIP": {"timeoutSeconds": 10800}}),
                );
            }
        }
        _ => {}
    }
    default_str(spec, "type", "ClusterIP");
    for port in each(spec, "ports") {
        default_str(port, "protocol", "TCP");
        let target_unset = unset_or_zero(port, "targetPort") || unset_or_empty(port, "targetPort");
        if target_unset && let Some(p) = port.get("port").cloned() {
            port.insert("targetPort".into(), p);
        }
    }
    let kind = str_of(spec, "type").to_owned();
    if matches!(kind.as_str(), "NodePort" | "LoadBalancer") {
        default_str(spec, "externalTrafficPolicy", "Cluster");
    }
    if matches!(kind.as_str(), "NodePort" | "LoadBalancer" | "ClusterIP") {
        default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if kind == "LoadBalancer" {
        default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    // IP families, as the service registry assigns them on a single-stack IPv4 cluster.
    if kind != "ExternalName" {
        let ip = spec
            .get("clusterIPs")
            .and_then(|ips| ips.get(0))
            .or_else(|| spec.get("clusterIP"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let selectorless = spec
            .get("selector")
            .and_then(Value::as_object)
            .is_none_or(Map::is_empty);
        // Headless services without selectors may front endpoints of either family.
        let policy = if ip == "None" && selectorless {
            "RequireDualStack"
        } else {
            "SingleStack"
        };
        default(spec, "ipFamilyPolicy", json!(policy));
        let family = if ip.contains(':') { "IPv6" } else { "IPv4" };
        let families_unset = spec
            .get("ipFamilies")
            .is_none_or(|f| f.is_null() || f.as_array().is_some_and(Vec::is_empty));
        if families_unset {
            spec.insert("ipFamilies".into(), json!([family]));
        }
    }
}

fn secret(o: &mut Obj) {
    default_str(o, "type", "Opaque");
    // `stringData` is write-only: merged into `data` (base64), overriding, and dropped.
    let data_ok = unset(o, "data") || o.get("data").is_some_and(Value::is_object);
    if data_ok && o.get("stringData").is_some_and(Value::is_object) {
        let Some(Value::Object(strings)) = o.remove("stringData") else {
            return;
        };
        if let Some(data) = child_or_new(o, "data") {
            for (k, v) in strings {
                if let Some(s) = v.as_str() {
                    data.insert(k, Value::String(base64(s.as_bytes())));
                }
            }
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sym = |i: u32| char::from(ALPHABET.get((i & 63) as usize).copied().unwrap_or(b'='));
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(sym(n >> 18));
        out.push(sym(n >> 12));
        out.push(if chunk.len() > 1 { sym(n >> 6) } else { '=' });
        out.push(if chunk.len() > 2 { sym(n) } else { '=' });
    }
    out
}

fn persistent_volume(o: &mut Obj) {
    if let Some(status) = child_or_new(o, "status") {
        default_str(status, "phase", "Pending");
    }
    if let Some(spec) = child_or_new(o, "spec") {
        default_str(spec, "persistentVolumeReclaimPolicy", "Retain");
        default(spec, "volumeMode", json!("Filesystem"));
        if let Some(capacity) = child(spec, "capacity") {
            resource_list(capacity);
        }
        volume_source(spec);
    }
}

fn persistent_volume_claim(o: &mut Obj) {
    if let Some(status) = child_or_new(o, "status") {
        default_str(status, "phase", "Pending");
    }
    if let Some(spec) = child_or_new(o, "spec") {
        claim_spec(spec);
    }
}

fn claim_spec(spec: &mut Obj) {
    default(spec, "volumeMode", json!("Filesystem"));
    if let Some(r) = child(spec, "resources") {
        for key in ["limits", "requests"] {
            if let Some(list) = child(r, key) {
                resource_list(list);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Workloads.

fn deployment(o: &mut Obj) {
    let Some(spec) = child_or_new(o, "spec") else {
        return;
    };
    default(spec, "replicas", json!(1));
    if let Some(strategy) = child_or_new(spec, "strategy") {
        default_str(strategy, "type", "RollingUpdate");
        if str_of(strategy, "type") == "RollingUpdate"
            && let Some(rolling) = child_or_new(strategy, "rollingUpdate")
        {
            default(rolling, "maxUnavailable", json!("25%"));
            default(rolling, "maxSurge", json!("25%"));
        }
    }
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, "progressDeadlineSeconds", json!(600));
    template(spec);
}

fn stateful_set(o: &mut Obj) {
    let Some(spec) = child_or_new(o, "spec") else {
        return;
    };
    default_str(spec, "podManagementPolicy", "OrderedReady");
    if let Some(strategy) = child_or_new(spec, "updateStrategy") {
        if unset_or_empty(strategy, "type") {
            strategy.insert("type".into(), json!("RollingUpdate"));
            default(strategy, "rollingUpdate", json!({}));
        }
        // An explicit RollingUpdate without rollingUpdate stays without it, as in Kubernetes.
        if str_of(strategy, "type") == "RollingUpdate"
            && let Some(rolling) = child(strategy, "rollingUpdate")
        {
            default(rolling, "partition", json!(0));
        }
    }
    if let Some(retention) = child_or_new(spec, "persistentVolumeClaimRetentionPolicy") {
        default_str(retention, "whenDeleted", "Retain");
        default_str(retention, "whenScaled", "Retain");
    }
    default(spec, "replicas", json!(1));
    default(spec, "revisionHistoryLimit", json!(10));
    for claim in each(spec, "volumeClaimTemplates") {
        if let Some(status) = child_or_new(claim, "status") {
            default_str(status, "phase", "Pending");
        }
        if let Some(claim_spec_obj) = child_or_new(claim, "spec") {
            claim_spec(claim_spec_obj);
        }
    }
    template(spec);
}

fn daemon_set(o: &mut Obj) {
    let Some(spec) = child_or_new(o, "spec") else {
        return;
    };
    if let Some(strategy) = child_or_new(spec, "updateStrategy") {
        default_str(strategy, "type", "RollingUpdate");
        if str_of(strategy, "type") == "RollingUpdate"
            && let Some(rolling) = child_or_new(strategy, "rollingUpdate")
        {
            default(rolling, "maxUnavailable", json!(1));
            default(rolling, "maxSurge", json!(0));
        }
    }
    default(spec, "revisionHistoryLimit", json!(10));
    template(spec);
}

/// `SetDefaults_Job`, plus the selector and labels the job strategy generates on create
/// (only once the object has its uid).
fn job(o: &mut Obj) {
    let meta = o.get("metadata");
    let uid = meta
        .and_then(|m| m.get("uid"))
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .map(str::to_owned);
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let Some(spec) = child_or_new(o, "spec") else {
        return;
    };
    // A non-parallel job may leave both unset; completions alone stays unset otherwise
    // (a work queue), while parallelism always defaults to 1.
    if unset(spec, "completions") && unset(spec, "parallelism") {
        spec.insert("completions".into(), json!(1));
    }
    default(spec, "parallelism", json!(1));
    let backoff = if unset(spec, "backoffLimitPerIndex") {
        6
    } else {
        i64::from(i32::MAX)
    };
    default(spec, "backoffLimit", json!(backoff));
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    let has_failure_policy = !unset(spec, "podFailurePolicy");
    if let Some(policy) = child(spec, "podFailurePolicy") {
        for rule in each(policy, "rules") {
            for pattern in each(rule, "onPodConditions") {
                default_str(pattern, "status", "True");
            }
        }
    }
    let replacement = if has_failure_policy {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    default(spec, "podReplacementPolicy", json!(replacement));
    template(spec);

    let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
    if let Some(uid) = uid.filter(|_| !manual) {
        generate_job_selector(spec, &uid, &name);
    }
    let template_labels = spec
        .get("template")
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("labels"))
        .filter(|l| l.is_object())
        .cloned();
    if let Some(labels) = template_labels
        && let Some(meta) = child_or_new(o, "metadata")
        && empty_map(meta, "labels")
    {
        meta.insert("labels".into(), labels);
    }
}

fn generate_job_selector(spec: &mut Obj, uid: &str, name: &str) {
    if let Some(t) = child_or_new(spec, "template")
        && let Some(meta) = child_or_new(t, "metadata")
        && let Some(labels) = child_or_new(meta, "labels")
    {
        // Labels the user set are kept; validation rejects them if they conflict.
        for (key, value) in [
            ("batch.kubernetes.io/controller-uid", uid),
            ("batch.kubernetes.io/job-name", name),
            ("controller-uid", uid),
            ("job-name", name),
        ] {
            default(labels, key, json!(value));
        }
    }
    if let Some(selector) = child_or_new(spec, "selector")
        && let Some(match_labels) = child_or_new(selector, "matchLabels")
    {
        default(
            match_labels,
            "batch.kubernetes.io/controller-uid",
            json!(uid),
        );
    }
}

/// `SetDefaults_CronJob`; the job template gets pod defaults only (Kubernetes applies no
/// Job defaults to a JobTemplateSpec).
fn cron_job(o: &mut Obj) {
    let Some(spec) = child_or_new(o, "spec") else {
        return;
    };
    default_str(spec, "concurrencyPolicy", "Allow");
    default(spec, "suspend", json!(false));
    default(spec, "successfulJobsHistoryLimit", json!(3));
    default(spec, "failedJobsHistoryLimit", json!(1));
    if let Some(jt) = child_or_new(spec, "jobTemplate")
        && let Some(job_spec) = child_or_new(jt, "spec")
    {
        template(job_spec);
    }
}

fn horizontal_pod_autoscaler(o: &mut Obj, v2: bool) {
    let Some(spec) = child_or_new(o, "spec") else {
        return;
    };
    default(spec, "minReplicas", json!(1));
    if !v2 {
        return;
    }
    let no_metrics = spec
        .get("metrics")
        .is_none_or(|m| m.is_null() || m.as_array().is_some_and(Vec::is_empty));
    if no_metrics {
        spec.insert(
            "metrics".into(),
            json!([{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80}}}]),
        );
    }
    // A given behavior gets every rule it leaves out; an absent one stays absent.
    if let Some(behavior) = child(spec, "behavior") {
        let up = json!({"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
            {"type": "Pods", "value": 4, "periodSeconds": 15},
            {"type": "Percent", "value": 100, "periodSeconds": 15}]});
        let down = json!({"selectPolicy": "Max", "policies": [
            {"type": "Percent", "value": 100, "periodSeconds": 15}]});
        for (key, rules) in [("scaleUp", up), ("scaleDown", down)] {
            if unset(behavior, key) {
                behavior.insert(key.into(), rules);
            } else if let Some(given) = child(behavior, key)
                && let Value::Object(rules) = rules
            {
                for (k, v) in rules {
                    default(given, &k, v);
                }
            }
        }
    }
}

fn role_binding(o: &mut Obj) {
    const GROUP: &str = "rbac.authorization.k8s.io";
    if let Some(role) = child(o, "roleRef") {
        default_str(role, "apiGroup", GROUP);
    }
    for subject in each(o, "subjects") {
        // ServiceAccounts default to the core group, which is "" and so stays unset.
        if matches!(str_of(subject, "kind"), "User" | "Group") {
            default_str(subject, "apiGroup", GROUP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaulted(api_version: &str, kind: &str, mut obj: Value) -> Value {
        apply_defaults(api_version, kind, &mut obj);
        obj
    }

    #[test]
    fn deployment_gets_what_kubectl_shows() {
        let d = defaulted(
            "apps/v1",
            "Deployment",
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {
                            "containers": [{
                                "name": "web",
                                "image": "nginx",
                                "ports": [{"containerPort": 80}],
                                "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 80}},
                                "resources": {"limits": {"cpu": "0.5", "memory": "1024Mi"}},
                                "volumeMounts": [{"name": "conf", "mountPath": "/etc/nginx"}]
                            }],
                            "volumes": [{"name": "conf", "configMap": {"name": "nginx"}}, {"name": "tmp"}]
                        }
                    }
                }
            }),
        );
        let want = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "progressDeadlineSeconds": 600,
                "replicas": 1,
                "revisionHistoryLimit": 10,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {
                    "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
                    "type": "RollingUpdate"
                },
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{
                            "env": [{"name": "POD", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
                            "image": "nginx",
                            "imagePullPolicy": "Always",
                            "name": "web",
                            "ports": [{"containerPort": 80, "protocol": "TCP"}],
                            "readinessProbe": {
                                "failureThreshold": 3,
                                "httpGet": {"path": "/healthz", "port": 80, "scheme": "HTTP"},
                                "periodSeconds": 10,
                                "successThreshold": 1,
                                "timeoutSeconds": 1
                            },
                            // Templates do not get requests from limits (pods do).
                            "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}},
                            "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "File",
                            "volumeMounts": [{"mountPath": "/etc/nginx", "name": "conf"}]
                        }],
                        "dnsPolicy": "ClusterFirst",
                        "restartPolicy": "Always",
                        "schedulerName": "default-scheduler",
                        "securityContext": {},
                        "terminationGracePeriodSeconds": 30,
                        "volumes": [
                            {"configMap": {"defaultMode": 420, "name": "nginx"}, "name": "conf"},
                            {"emptyDir": {}, "name": "tmp"}
                        ]
                    }
                }
            }
        });
        assert_eq!(d, want);
        // Defaulting twice changes nothing.
        assert_eq!(defaulted("apps/v1", "Deployment", d.clone()), d);
    }

    #[test]
    fn rolling_update_filled_in_when_partly_given() {
        for strategy in [
            json!({}),
            json!({"type": "RollingUpdate"}),
            json!({"rollingUpdate": {"maxSurge": 2}}),
        ] {
            let d = defaulted(
                "apps/v1",
                "Deployment",
                json!({"spec": {"strategy": strategy}}),
            );
            assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
            assert_eq!(
                d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
                "25%"
            );
        }
        let d = defaulted(
            "apps/v1",
            "Deployment",
            json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": 2}}}}),
        );
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], 2);
        let d = defaulted(
            "apps/v1",
            "Deployment",
            json!({"spec": {"strategy": {"type": "Recreate"}}}),
        );
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn pods_get_pod_only_defaults() {
        let p = defaulted(
            "v1",
            "Pod",
            json!({"spec": {"hostNetwork": true, "containers": [{
                "name": "c", "image": "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "ports": [{"containerPort": 53, "protocol": "UDP"}],
                "resources": {"limits": {"cpu": "1", "memory": "100u"}, "requests": {"cpu": "250m"}}
            }]}}),
        );
        let c = &p["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(
            c["ports"][0],
            json!({"containerPort": 53, "hostPort": 53, "protocol": "UDP"})
        );
        assert_eq!(
            c["resources"],
            json!({"limits": {"cpu": "1", "memory": "1m"}, "requests": {"cpu": "250m", "memory": "1m"}})
        );
        assert_eq!(p["spec"]["enableServiceLinks"], true);
        for (image, policy) in [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("nginx:1.27", "IfNotPresent"),
            ("localhost:5000/app", "Always"),
            ("localhost:5000/app:v2", "IfNotPresent"),
            ("Bad/Name", "IfNotPresent"),
            ("", "IfNotPresent"),
        ] {
            assert_eq!(
                image_tag(image).as_deref() == Some("latest"),
                policy == "Always",
                "{image}"
            );
        }
    }

    #[test]
    fn statefulset_daemonset_and_replicaset() {
        let s = defaulted(
            "apps/v1",
            "StatefulSet",
            json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"resources": {"requests": {"storage": "1024Mi"}}}}]}}),
        );
        let spec = &s["spec"];
        assert_eq!(spec["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            spec["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(
            spec["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(
            spec["volumeClaimTemplates"][0],
            json!({"metadata": {"name": "data"}, "status": {"phase": "Pending"},
                "spec": {"resources": {"requests": {"storage": "1Gi"}}, "volumeMode": "Filesystem"}})
        );
        let ds = defaulted("apps/v1", "DaemonSet", json!({"spec": {}}));
        assert_eq!(
            ds["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        let rs = defaulted("apps/v1", "ReplicaSet", json!({"spec": {}}));
        assert_eq!(rs["spec"]["replicas"], 1);
        assert_eq!(rs["spec"]["template"]["spec"]["restartPolicy"], "Always");
    }

    #[test]
    fn replication_controller_selector_and_labels_from_template() {
        let rc = defaulted(
            "v1",
            "ReplicationController",
            json!({"metadata": {"name": "rc"}, "spec": {"template": {"metadata": {"labels": {"app": "x"}}, "spec": {}}}}),
        );
        assert_eq!(rc["spec"]["selector"], json!({"app": "x"}));
        assert_eq!(rc["metadata"]["labels"], json!({"app": "x"}));
        assert_eq!(rc["spec"]["replicas"], 1);
    }

    #[test]
    fn jobs_and_cronjobs() {
        let j = defaulted(
            "batch/v1",
            "Job",
            json!({"metadata": {"name": "pi", "uid": "u-1"},
                "spec": {"template": {"spec": {"restartPolicy": "Never"}}}}),
        );
        let spec = &j["spec"];
        assert_eq!(spec["completions"], 1);
        assert_eq!(spec["parallelism"], 1);
        assert_eq!(spec["backoffLimit"], 6);
        assert_eq!(spec["completionMode"], "NonIndexed");
        assert_eq!(spec["suspend"], false);
        assert_eq!(spec["podReplacementPolicy"], "TerminatingOrFailed");
        assert!(spec.get("manualSelector").is_none());
        let labels = json!({
            "batch.kubernetes.io/controller-uid": "u-1",
            "batch.kubernetes.io/job-name": "pi",
            "controller-uid": "u-1",
            "job-name": "pi"
        });
        assert_eq!(spec["template"]["metadata"]["labels"], labels);
        assert_eq!(j["metadata"]["labels"], labels);
        assert_eq!(
            spec["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
        );

        // A work queue (parallelism only) keeps completions unset; no uid, no selector.
        let j = defaulted("batch/v1", "Job", json!({"spec": {"parallelism": 3}}));
        assert!(j["spec"].get("completions").is_none());
        assert!(j["spec"].get("selector").is_none());

        let c = defaulted(
            "batch/v1",
            "CronJob",
            json!({"spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}}}),
        );
        let spec = &c["spec"];
        assert_eq!(spec["concurrencyPolicy"], "Allow");
        assert_eq!(spec["suspend"], false);
        assert_eq!(spec["successfulJobsHistoryLimit"], 3);
        assert_eq!(spec["failedJobsHistoryLimit"], 1);
        assert!(spec["jobTemplate"]["spec"].get("backoffLimit").is_none());
        assert_eq!(
            spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
    }

    #[test]
    fn services() {
        let s = defaulted(
            "v1",
            "Service",
            json!({"spec": {"type": "NodePort", "selector": {"app": "web"},
                "ports": [{"port": 80}, {"port": 443, "targetPort": "https", "protocol": "TCP"}]}}),
        );
        assert_eq!(
            s["spec"],
            json!({
                "externalTrafficPolicy": "Cluster",
                "internalTrafficPolicy": "Cluster",
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "ports": [
                    {"port": 80, "protocol": "TCP", "targetPort": 80},
                    {"port": 443, "protocol": "TCP", "targetPort": "https"}
                ],
                "selector": {"app": "web"},
                "sessionAffinity": "None",
                "type": "NodePort"
            })
        );
        let headless = defaulted("v1", "Service", json!({"spec": {"clusterIP": "None"}}));
        assert_eq!(headless["spec"]["ipFamilyPolicy"], "RequireDualStack");
        let ext = defaulted(
            "v1",
            "Service",
            json!({"spec": {"type": "ExternalName", "externalName": "x.example"}}),
        );
        assert!(ext["spec"].get("ipFamilies").is_none());
        assert!(ext["spec"].get("internalTrafficPolicy").is_none());
        let sticky = defaulted(
            "v1",
            "Service",
            json!({"spec": {"sessionAffinity": "ClientIP"}}),
        );
        assert_eq!(
            sticky["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
            10800
        );
    }

    #[test]
    fn secrets_volumes_and_others() {
        let s = defaulted(
            "v1",
            "Secret",
            json!({"data": {"a": "eA=="}, "stringData": {"b": "hello", "a": "yz"}}),
        );
        assert_eq!(
            s,
            json!({"type": "Opaque", "data": {"a": "eXo=", "b": "aGVsbG8="}})
        );
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");

        let pvc = defaulted("v1", "PersistentVolumeClaim", json!({"spec": {}}));
        assert_eq!(
            pvc,
            json!({"spec": {"volumeMode": "Filesystem"}, "status": {"phase": "Pending"}})
        );
        let pv = defaulted(
            "v1",
            "PersistentVolume",
            json!({"spec": {"hostPath": {"path": "/d"}}}),
        );
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(pv["spec"]["hostPath"]["type"], "");

        let hpa = defaulted(
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            json!({"spec": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}}}),
        );
        assert_eq!(hpa["spec"]["minReplicas"], 1);
        assert_eq!(
            hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
        assert_eq!(
            hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            60
        );
        assert_eq!(hpa["spec"]["behavior"]["scaleDown"]["selectPolicy"], "Max");
        assert_eq!(
            hpa["spec"]["behavior"]["scaleUp"]["policies"][0]["value"],
            4
        );
        let hpa1 = defaulted(
            "autoscaling/v1",
            "HorizontalPodAutoscaler",
            json!({"spec": {}}),
        );
        assert_eq!(hpa1, json!({"spec": {"minReplicas": 1}}));

        let pod = defaulted(
            "v1",
            "Pod",
            json!({"spec": {"volumes": [
                {"name": "s", "secret": {"secretName": "x"}},
                {"name": "h", "hostPath": {"path": "/x"}},
                {"name": "p", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}},
                    {"downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}}
            ]}}),
        );
        let v = &pod["spec"]["volumes"];
        assert_eq!(v[0]["secret"]["defaultMode"], 420);
        assert_eq!(v[1]["hostPath"]["type"], "");
        assert_eq!(v[2]["projected"]["defaultMode"], 420);
        assert_eq!(
            v[2]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3600
        );
        assert_eq!(
            v[2]["projected"]["sources"][1]["downwardAPI"]["items"][0]["fieldRef"]["apiVersion"],
            "v1"
        );

        let rb = defaulted(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            json!({"roleRef": {"kind": "Role", "name": "r"}, "subjects": [{"kind": "User", "name": "u"}, {"kind": "ServiceAccount", "name": "sa"}]}),
        );
        assert_eq!(rb["roleRef"]["apiGroup"], "rbac.authorization.k8s.io");
        assert_eq!(rb["subjects"][0]["apiGroup"], "rbac.authorization.k8s.io");
        assert!(rb["subjects"][1].get("apiGroup").is_none());
    }

    #[test]
    fn odd_shapes_are_left_alone() {
        let d = defaulted("apps/v1", "Deployment", json!({"spec": "nope"}));
        assert_eq!(d, json!({"spec": "nope"}));
        let d = defaulted(
            "apps/v1",
            "Deployment",
            json!({"spec": {"strategy": 3, "template": {"spec": {"containers": "x", "volumes": [1]}}}}),
        );
        assert_eq!(d["spec"]["strategy"], 3);
        assert_eq!(d["spec"]["template"]["spec"]["containers"], "x");
        let mut v = json!([1, 2]);
        apply_defaults("v1", "Pod", &mut v);
        assert_eq!(v, json!([1, 2]));
    }
}
