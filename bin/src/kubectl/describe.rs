//! `describe`: an object's metadata as key/value lines, its other fields as indented YAML,
//! then the core/v1 Events about it.

use anyhow::bail;
use serde_json::Value;

use super::get::{self, items_of};
use super::output::{self, Aligner};
use super::{Globals, Kube, Reported, ResourceInfo, report};

#[derive(clap::Args, Debug)]
pub struct DescribeArgs {
    #[command(flatten)]
    g: Globals,
    /// TYPE [NAME...] or TYPE/NAME...; without a name, every object of the type.
    args: Vec<String>,
    /// Describe the objects matching this label selector.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Across all namespaces.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Show the events about the object.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    show_events: bool,
}

pub async fn describe(a: DescribeArgs) -> anyhow::Result<()> {
    if a.args.is_empty() {
        bail!("Required resource not specified.");
    }
    let kube = Kube::connect(&a.g).await?;
    let targets = get::targets(&kube, &a.args).await?;
    let mut objects: Vec<(ResourceInfo, Value)> = Vec::new();
    let mut failed = false;
    for (r, names) in &targets {
        let ns = if a.all_namespaces {
            None
        } else {
            kube.ns_for(r)
        };
        if names.is_empty() {
            let list = get::list(&kube, r, ns, a.selector.as_deref(), None, false).await?;
            objects.extend(items_of(r, list).into_iter().map(|o| (r.clone(), o)));
        } else {
            for name in names {
                match get::get_one(&kube, r, kube.ns_for(r), name, false).await {
                    Ok(o) => objects.push((r.clone(), o)),
                    Err(e) => {
                        failed = true;
                        report(&e.into());
                    }
                }
            }
        }
    }
    if objects.is_empty() && !failed {
        if a.all_namespaces || targets.iter().any(|(r, _)| !r.namespaced) {
            eprintln!("No resources found");
        } else {
            eprintln!("No resources found in {} namespace.", kube.namespace);
        }
    }
    for (i, (r, o)) in objects.iter().enumerate() {
        if i > 0 {
            println!();
            println!();
        }
        let events = if a.show_events {
            Some(events_for(&kube, r, o).await)
        } else {
            None
        };
        print!("{}", render(r, o, events.as_ref())?);
    }
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}

/// The core/v1 Events about an object, oldest first. Errors listing them leave the section
/// out rather than failing the describe (kubectl does the same).
async fn events_for(kube: &Kube, r: &ResourceInfo, o: &Value) -> Result<Vec<Value>, String> {
    let Ok(events) = kube.resolve("events").await else {
        return Err("events are not served".into());
    };
    let name = get::name_of(o);
    let ns = o.pointer("/metadata/namespace").and_then(Value::as_str);
    let uid = o.pointer("/metadata/uid").and_then(Value::as_str);
    let mut fields = format!("involvedObject.name={name}");
    if let Some(ns) = ns {
        fields.push_str(&format!(",involvedObject.namespace={ns}"));
    }
    // Cluster-scoped objects' events may be in any namespace.
    let list = match get::list(kube, &events, ns, None, Some(&fields), false).await {
        Ok(l) => l,
        // A server that cannot select on involvedObject fields: filter here instead.
        Err(kube::Error::Api(s)) if s.code == 400 => {
            get::list(kube, &events, ns, None, None, false)
                .await
                .map_err(|e| super::error_message(&e.into()))?
        }
        Err(e) => return Err(super::error_message(&e.into())),
    };
    let mut out: Vec<Value> = items_of(&events, list)
        .into_iter()
        .filter(|e| {
            let io = |f: &str| {
                e.pointer(&format!("/involvedObject/{f}"))
                    .and_then(Value::as_str)
            };
            io("name") == Some(name)
                && (ns.is_none() || io("namespace") == ns)
                && (io("kind").is_none() || io("kind") == Some(r.kind.as_str()))
                && (uid.is_none() || io("uid").is_none() || io("uid") == uid)
        })
        .collect();
    out.sort_by_key(|e| event_time(e).map(|t| t.as_second()).unwrap_or(0));
    Ok(out)
}

fn event_time(e: &Value) -> Option<k8s_openapi::jiff::Timestamp> {
    [
        "/lastTimestamp",
        "/eventTime",
        "/firstTimestamp",
        "/metadata/creationTimestamp",
    ]
    .iter()
    .find_map(|p| {
        e.pointer(p)
            .and_then(Value::as_str)
            .and_then(output::parse_time)
    })
}

fn str_at<'a>(o: &'a Value, ptr: &str) -> &'a str {
    o.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn int_at(o: &Value, ptr: &str) -> i64 {
    o.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

/// `Key:` lines whose values line up, continuation lines under the first value.
struct KeyValues {
    entries: Vec<(String, Vec<String>)>,
}

impl KeyValues {
    fn push(&mut self, key: &str, values: Vec<String>) {
        self.entries.push((format!("{key}:"), values));
    }

    fn render(&self, width: usize) -> String {
        let mut out = String::new();
        for (key, values) in &self.entries {
            let mut values = values.iter();
            let first = values.next().map(String::as_str).unwrap_or("");
            if first.is_empty() {
                out.push_str(key);
            } else {
                out.push_str(&format!("{key:<width$}{first}"));
            }
            out.push('\n');
            for v in values {
                out.push_str(&format!("{:width$}{v}\n", ""));
            }
        }
        out
    }
}

/// Capitalised field name: `spec` → `Spec`, `involvedObject` → `InvolvedObject`.
fn title(key: &str) -> String {
    let mut c = key.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn map_lines(v: Option<&Value>, sep: &str) -> Vec<String> {
    let m = output::string_map(v);
    if m.is_empty() {
        return vec!["<none>".into()];
    }
    m.iter().map(|(k, v)| format!("{k}{sep}{v}")).collect()
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

/// The whole description of one object.
pub fn render(
    r: &ResourceInfo,
    o: &Value,
    events: Option<&Result<Vec<Value>, String>>,
) -> anyhow::Result<String> {
    let mut head = KeyValues {
        entries: Vec::new(),
    };
    head.push("Name", vec![get::name_of(o).to_owned()]);
    if r.namespaced {
        head.push(
            "Namespace",
            vec![str_at(o, "/metadata/namespace").to_owned()],
        );
    }
    head.push("Labels", map_lines(o.pointer("/metadata/labels"), "="));
    head.push(
        "Annotations",
        map_lines(o.pointer("/metadata/annotations"), ": "),
    );
    head.push(
        "CreationTimestamp",
        vec![output::rfc1123(str_at(o, "/metadata/creationTimestamp"))],
    );
    if let Some(t) = o
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
    {
        head.push("DeletionTimestamp", vec![output::rfc1123(t)]);
    }
    if matches!(
        r.plural.as_str(),
        "deployments" | "replicasets" | "statefulsets"
    ) && r.group == "apps"
    {
        let selector =
            output::labels_text(&output::string_map(o.pointer("/spec/selector/matchLabels")));
        head.push("Selector", vec![selector]);
        let desired = o
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let line = if r.plural == "deployments" {
            format!(
                "{desired} desired | {} updated | {} total | {} available | {} unavailable",
                int_at(o, "/status/updatedReplicas"),
                int_at(o, "/status/replicas"),
                int_at(o, "/status/availableReplicas"),
                int_at(o, "/status/unavailableReplicas"),
            )
        } else {
            format!(
                "{} current / {desired} desired",
                int_at(o, "/status/replicas")
            )
        };
        head.push("Replicas", vec![line]);
    }
    let mut body = String::new();
    let obj = o.as_object().cloned().unwrap_or_default();
    // spec and status first, the rest (data, type, ...) in the object's order.
    let mut keys: Vec<&String> = obj
        .keys()
        .filter(|k| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
        .collect();
    keys.sort_by_key(|k| match k.as_str() {
        "spec" => 0,
        "status" => 1,
        _ => 2,
    });
    let secret = r.group.is_empty() && r.plural == "secrets";
    for key in keys {
        let v = &obj[key.as_str()];
        match v {
            Value::Object(m) if secret && matches!(key.as_str(), "data" | "stringData") => {
                // Secret values are not printed, only their sizes.
                body.push_str(&format!("{}:\n", title(key)));
                let sizes: Vec<Vec<String>> = m
                    .iter()
                    .map(|(k, v)| {
                        let s = v.as_str().unwrap_or("");
                        let n = if key == "data" {
                            (s.len() / 4 * 3).saturating_sub(s.matches('=').count())
                        } else {
                            s.len()
                        };
                        vec![format!("  {k}:"), format!("{n} bytes")]
                    })
                    .collect();
                for l in Aligner::compact().format(&sizes) {
                    body.push_str(&format!("{l}\n"));
                }
            }
            Value::Object(m) if m.is_empty() => {}
            Value::Array(a) if a.is_empty() => {}
            Value::Object(_) | Value::Array(_) => {
                body.push_str(&format!("{}:\n", title(key)));
                body.push_str(&indent(&output::to_yaml(v)?, "  "));
            }
            scalar => head.push(&title(key), vec![output::cell_text(scalar)]),
        }
    }
    let mut events_block = String::new();
    match events {
        None => {}
        Some(Ok(list)) if list.is_empty() => head.push("Events", vec!["<none>".into()]),
        Some(Ok(list)) => {
            events_block.push_str("Events:\n");
            let mut lines = vec![
                vec!["  Type", "Reason", "Age", "From", "Message"]
                    .into_iter()
                    .map(String::from)
                    .collect::<Vec<_>>(),
                vec!["  ----", "------", "----", "----", "-------"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
            ];
            for e in list {
                lines.push(vec![
                    format!("  {}", str_at(e, "/type")),
                    str_at(e, "/reason").to_owned(),
                    event_age(e),
                    event_source(e),
                    str_at(e, "/message").trim().to_owned(),
                ]);
            }
            for l in Aligner::compact().format(&lines) {
                events_block.push_str(&format!("{l}\n"));
            }
        }
        Some(Err(e)) => head.push("Events", vec![format!("<unavailable: {e}>")]),
    }
    let width = head
        .entries
        .iter()
        .map(|(k, _)| k.chars().count() + 2)
        .max()
        .unwrap_or(0);
    // Events go last, after the body, but line up with the header keys.
    let events_line = head
        .entries
        .iter()
        .position(|(k, _)| k == "Events:")
        .map(|i| head.entries.remove(i));
    let mut out = head.render(width);
    out.push_str(&body);
    if let Some(e) = events_line {
        out.push_str(&KeyValues { entries: vec![e] }.render(width));
    }
    out.push_str(&events_block);
    Ok(out)
}

/// `10s`, or `2m (x3 over 10m)` for repeated events.
fn event_age(e: &Value) -> String {
    let since = |p: &str| {
        e.pointer(p)
            .and_then(Value::as_str)
            .and_then(output::seconds_since)
            .map(output::human_duration)
    };
    let count = int_at(e, "/count");
    let first = since("/firstTimestamp")
        .or_else(|| since("/eventTime"))
        .or_else(|| since("/metadata/creationTimestamp"));
    if count > 1 {
        let last = since("/lastTimestamp").or_else(|| first.clone());
        format!(
            "{} (x{count} over {})",
            last.unwrap_or_else(|| "<unknown>".into()),
            first.unwrap_or_else(|| "<unknown>".into())
        )
    } else {
        first.unwrap_or_else(|| "<unknown>".into())
    }
}

fn event_source(e: &Value) -> String {
    let component = str_at(e, "/source/component");
    let component = if component.is_empty() {
        str_at(e, "/reportingComponent")
    } else {
        component
    };
    let host = str_at(e, "/source/host");
    match (component.is_empty(), host.is_empty()) {
        (true, _) => String::new(),
        (false, true) => component.to_owned(),
        (false, false) => format!("{component}, {host}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn describes_a_configmap_with_events() {
        let r = ResourceInfo {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            plural: "configmaps".into(),
            singular: "configmap".into(),
            short_names: vec![],
            categories: vec![],
            namespaced: true,
            preferred: true,
        };
        let o = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "ns1", "labels": {"a": "1", "b": "2"},
                         "creationTimestamp": "2026-11-22T03:04:21Z"},
            "data": {"k": "v"}});
        let none = render(&r, &o, Some(&Ok(vec![]))).unwrap();
        assert!(none.starts_with("Name:               c\nNamespace:          ns1\nLabels:             a=1\n                    b=2\n"), "{none}");
        assert!(none.contains("CreationTimestamp:  Sun, 22 Nov 2026 03:04:21 +0000\n"));
        assert!(none.contains("Data:\n  k: v\n"), "{none}");
        assert!(none.ends_with("Events:             <none>\n"), "{none}");
        let ev = json!({"type": "Normal", "reason": "Tested", "message": "hello",
            "source": {"component": "me"}, "count": 1,
            "firstTimestamp": "2020-01-01T00:00:00Z"});
        let with = render(&r, &o, Some(&Ok(vec![ev]))).unwrap();
        assert!(with.contains("Events:\n  Type    Reason  Age"), "{with}");
        assert!(with.contains("  Normal  Tested  "), "{with}");
        assert!(with.trim_end().ends_with("me    hello"), "{with}");
    }
}
