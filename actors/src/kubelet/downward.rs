//! The downward API: pod fields (`fieldRef`) and container resources (`resourceFieldRef`) as
//! env values and volume files, with Kubernetes' formatting and rounding.

use flotilla_api::At;
use serde_json::Value;

/// What the kubelet knows about a pod beyond its stored object.
pub struct PodFacts<'a> {
    pub node_name: &'a str,
    pub host_ip: &'a str,
    /// None when the pod has no address of its own (host network, or no pod CIDR).
    pub pod_ip: Option<&'a str>,
}

/// The value of a `fieldRef.fieldPath`. Whole label and annotation maps are formatted as
/// Kubernetes writes them into downwardAPI volume files: `key="value"` lines, sorted.
pub fn field_value(pod: &Value, facts: &PodFacts, path: &str) -> Result<String, String> {
    let text = |p: &str| pod.at(p).and_then(Value::as_str).unwrap_or("").to_owned();
    // The pod's own address, or the node's when it shares the node's network.
    let pod_ip = facts.pod_ip.unwrap_or(facts.host_ip).to_owned();
    Ok(match path {
        "metadata.name" => text("/metadata/name"),
        "metadata.namespace" => text("/metadata/namespace"),
        "metadata.uid" => text("/metadata/uid"),
        "metadata.labels" => format_map(pod.at("/metadata/labels")),
        "metadata.annotations" => format_map(pod.at("/metadata/annotations")),
        "spec.nodeName" => facts.node_name.to_owned(),
        "spec.serviceAccountName" => text("/spec/serviceAccountName"),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.to_owned(),
        "status.podIP" | "status.podIPs" => pod_ip,
        other => {
            let (map, key) = if let Some(rest) = other.strip_prefix("metadata.labels") {
                ("labels", rest)
            } else if let Some(rest) = other.strip_prefix("metadata.annotations") {
                ("annotations", rest)
            } else {
                return Err(format!("unsupported fieldRef {other:?}"));
            };
            let key = key
                .strip_prefix("['")
                .and_then(|k| k.strip_suffix("']"))
                .ok_or_else(|| format!("unsupported fieldRef {other:?}"))?;
            pod.at(&format!("/metadata/{map}"))
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        }
    })
}

/// `key="value"` lines sorted by key, values quoted (JSON quoting matches Go's `%q` for the
/// text labels and annotations hold).
fn format_map(map: Option<&Value>) -> String {
    let Some(map) = map.and_then(Value::as_object) else {
        return String::new();
    };
    let mut pairs: Vec<(&String, String)> = map
        .iter()
        .map(|(k, v)| {
            let v = v.as_str().unwrap_or("");
            (k, serde_json::to_string(v).unwrap_or_default())
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of a `resourceFieldRef` for `container`: `limits.*` fall back to the node's
/// `allocatable` when the container sets no limit (as the kubelet does), `requests.*` to the
/// limit, then to zero. CPU is counted in millicores and rounded up to whole divisors; memory
/// and ephemeral storage in bytes, also rounded up.
pub fn resource_value(
    container: &Value,
    resource: &str,
    divisor: Option<&str>,
    allocatable: Option<&Value>,
) -> Result<String, String> {
    let (kind, name) = resource
        .split_once('.')
        .filter(|(k, _)| matches!(*k, "limits" | "requests"))
        .ok_or_else(|| format!("unsupported resource {resource:?}"))?;
    if !matches!(name, "cpu" | "memory" | "ephemeral-storage") {
        return Err(format!("unsupported resource {resource:?}"));
    }
    let quantity = |section: &str| {
        container
            .at(&format!("/resources/{section}/{name}"))
            .and_then(quantity_text)
    };
    let set = match kind {
        "limits" => quantity("limits").or_else(|| {
            allocatable
                .and_then(|a| a.get(name))
                .and_then(quantity_text)
        }),
        _ => quantity("requests").or_else(|| quantity("limits")),
    };
    let nanos = match set {
        Some(q) => parse_nanos(&q).ok_or_else(|| format!("invalid quantity {q:?}"))?,
        None => 0,
    };
    let divisor = divisor.filter(|d| !d.is_empty()).unwrap_or("1");
    // A zero divisor (what API defaulting may store) means 1, as in the kubelet.
    let div_nanos = match parse_nanos(divisor) {
        Some(0) => 1_000_000_000,
        Some(d) if d > 0 => d,
        _ => return Err(format!("invalid divisor {divisor:?}")),
    };
    // Quantities round up to their unit: MilliValue for CPU, Value for bytes.
    let unit: i128 = if name == "cpu" {
        1_000_000
    } else {
        1_000_000_000
    };
    let value = div_ceil(nanos, unit);
    let div = div_ceil(div_nanos, unit).max(1);
    Ok(div_ceil(value, div).to_string())
}

/// Quantities are strings, but numbers slip in through hand-written JSON.
fn quantity_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn div_ceil(a: i128, b: i128) -> i128 {
    if a <= 0 { 0 } else { (a + b - 1) / b }
}

/// A Kubernetes quantity (`250m`, `1.5`, `128Mi`, `2G`, `1e3`) in exact billionths, so CPU
/// rounding does not suffer from binary floating point (`0.1` cores is exactly 100m).
pub fn parse_nanos(s: &str) -> Option<i128> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let (negative, number) = match number.strip_prefix('-') {
        Some(n) => (true, n),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.len() > 9 {
        return None;
    }
    let digits = |d: &str| -> Option<i128> {
        if d.is_empty() {
            Some(0)
        } else if d.bytes().all(|b| b.is_ascii_digit()) && d.len() <= 20 {
            d.parse().ok()
        } else {
            None
        }
    };
    let frac_nanos = digits(frac)? * 10i128.pow(9 - frac.len() as u32);
    let base = digits(int)? * 1_000_000_000 + frac_nanos;
    // (multiplier, divisor) of the suffix.
    let (mul, div): (i128, i128) = match suffix {
        "" => (1, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1_000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        e => {
            let exp: u32 = e
                .strip_prefix(['e', 'E'])
                .and_then(|x| x.parse().ok())
                .filter(|x| *x <= 18)?;
            (10i128.pow(exp), 1)
        }
    };
    let value = base.checked_mul(mul)? / div;
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_parse_exactly() {
        assert_eq!(parse_nanos("0.1"), Some(100_000_000));
        assert_eq!(parse_nanos("250m"), Some(250_000_000));
        assert_eq!(parse_nanos("1Mi"), Some(1_048_576 * 1_000_000_000));
        assert_eq!(parse_nanos("1e3"), Some(1_000 * 1_000_000_000));
        assert_eq!(parse_nanos("1.5k"), Some(1_500 * 1_000_000_000));
        assert_eq!(parse_nanos("x"), None);
        assert_eq!(parse_nanos("1Qi"), None);
        assert_eq!(parse_nanos(""), None);
    }

    #[test]
    fn cpu_rounds_up_to_whole_divisors() {
        let c = json!({"resources": {"limits": {"cpu": "250m", "memory": "64Mi"},
                                      "requests": {"cpu": "100m"}}});
        // 250m in cores rounds up to 1; in millicores it is 250.
        assert_eq!(resource_value(&c, "limits.cpu", None, None).unwrap(), "1");
        assert_eq!(
            resource_value(&c, "limits.cpu", Some("1m"), None).unwrap(),
            "250"
        );
        assert_eq!(
            resource_value(&c, "limits.cpu", Some("100m"), None).unwrap(),
            "3"
        );
        assert_eq!(
            resource_value(&c, "requests.cpu", Some("1m"), None).unwrap(),
            "100"
        );
        assert_eq!(
            resource_value(&c, "limits.memory", None, None).unwrap(),
            "67108864"
        );
        assert_eq!(
            resource_value(&c, "limits.memory", Some("1Mi"), None).unwrap(),
            "64"
        );
        // 64Mi in megabytes (10^6) is 67.1…, rounded up.
        assert_eq!(
            resource_value(&c, "limits.memory", Some("1M"), None).unwrap(),
            "68"
        );
    }

    #[test]
    fn unset_limits_fall_back_to_the_node_and_requests_to_the_limit() {
        let alloc = json!({"cpu": "2", "memory": "4096Ki", "ephemeral-storage": "0"});
        let none = json!({});
        assert_eq!(
            resource_value(&none, "limits.cpu", None, Some(&alloc)).unwrap(),
            "2"
        );
        assert_eq!(
            resource_value(&none, "limits.memory", Some("1Ki"), Some(&alloc)).unwrap(),
            "4096"
        );
        assert_eq!(
            resource_value(&none, "requests.memory", None, Some(&alloc)).unwrap(),
            "0"
        );
        let limited = json!({"resources": {"limits": {"memory": "1Gi"}}});
        assert_eq!(
            resource_value(&limited, "requests.memory", Some("1Mi"), None).unwrap(),
            "1024"
        );
        assert!(resource_value(&none, "limits.gpu", None, None).is_err());
        assert_eq!(
            resource_value(&none, "limits.cpu", Some("0"), Some(&alloc)).unwrap(),
            "2"
        );
        assert!(resource_value(&none, "limits.cpu", Some("-1"), Some(&alloc)).is_err());
    }

    #[test]
    fn fields_and_label_files() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u1",
                         "labels": {"b": "2", "a": "x\"y"}},
                         "spec": {"serviceAccountName": "sa"}});
        let facts = PodFacts {
            node_name: "node-1",
            host_ip: "10.0.0.1",
            pod_ip: None,
        };
        let f = |p: &str| field_value(&pod, &facts, p).unwrap();
        assert_eq!(f("metadata.labels"), "a=\"x\\\"y\"\nb=\"2\"");
        assert_eq!(f("metadata.labels['b']"), "2");
        assert_eq!(f("metadata.annotations['none']"), "");
        assert_eq!(f("status.podIP"), "10.0.0.1");
        assert_eq!(f("spec.serviceAccountName"), "sa");
        assert_eq!(f("spec.nodeName"), "node-1");
        assert!(field_value(&pod, &facts, "spec.bogus").is_err());
        assert!(field_value(&pod, &facts, "metadata.labels[b]").is_err());
    }
}
