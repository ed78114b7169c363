//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! A field set is the set of leaf paths a manager owns, in the `FieldsV1` shape Kubernetes
//! uses: `f:<field>` for map keys, `k:{"name":"web"}` for an item of a keyed list (merge key
//! from [`crate::patch::merge_key`]), `.` for the item itself. Lists without a merge key are
//! atomic: the whole list is one leaf. Every write records who changed what; an apply merges
//! the applied configuration, removes the fields the applier stopped sending (unless someone
//! else also owns them), and refuses (409) to change a value another manager owns unless
//! `force` is set.

use crate::At;
use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Elem {
    Field(String),
    /// An item of a keyed list, by the JSON object of its key fields.
    Key(String),
    /// A value of a set-like list (`v:`), kept as written.
    Value(String),
    /// The list item itself.
    Dot,
}

type FieldPath = Vec<Elem>;
type FieldSet = BTreeSet<FieldPath>;

/// Metadata the server owns; never part of a field set.
const SERVER_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

fn key_fields(list_field: &str, items: &[Value]) -> Option<&'static str> {
    let sample = items.iter().find(|x| x.is_object());
    let key = crate::patch::merge_key(list_field, sample)?;
    items
        .iter()
        .all(|i| i.get(key).is_some_and(|k| !k.is_null()))
        .then_some(key)
}

fn item_key(key: &str, item: &Value) -> String {
    let mut m = Map::new();
    m.insert(
        key.to_owned(),
        item.get(key).cloned().unwrap_or(Value::Null),
    );
    Value::Object(m).to_string()
}

fn collect(v: &Value, path: &mut FieldPath, out: &mut FieldSet, top: bool) {
    let Value::Object(map) = v else {
        out.insert(path.clone());
        return;
    };
    for (k, child) in map {
        if top && (k == "apiVersion" || k == "kind") {
            continue;
        }
        let is_meta = top && k == "metadata";
        path.push(Elem::Field(k.clone()));
        match child {
            Value::Object(m) if is_meta => {
                for (mk, mv) in m {
                    if SERVER_META.contains(&mk.as_str()) {
                        continue;
                    }
                    path.push(Elem::Field(mk.clone()));
                    leaf_or_tree(mk, mv, path, out);
                    path.pop();
                }
            }
            _ => leaf_or_tree(k, child, path, out),
        }
        path.pop();
    }
}

fn leaf_or_tree(field: &str, v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => collect(v, path, out, false),
        Value::Array(items) if !items.is_empty() => match key_fields(field, items) {
            Some(key) => {
                for item in items {
                    path.push(Elem::Key(item_key(key, item)));
                    path.push(Elem::Dot);
                    out.insert(path.clone());
                    path.pop();
                    collect(item, path, out, false);
                    path.pop();
                }
            }
            None => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The fields an object (or an applied configuration) sets.
fn fields_of(obj: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    collect(obj, &mut Vec::new(), &mut out, true);
    out
}

fn elem_name(e: &Elem) -> String {
    match e {
        Elem::Field(f) => format!("f:{f}"),
        Elem::Key(k) => format!("k:{k}"),
        Elem::Value(v) => format!("v:{v}"),
        Elem::Dot => ".".into(),
    }
}

fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for e in path {
            let entry = node
                .entry(elem_name(e))
                .or_insert_with(|| Value::Object(Map::new()));
            match entry {
                Value::Object(m) => node = m,
                _ => break,
            }
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value, path: &mut FieldPath, out: &mut FieldSet) {
    let Value::Object(map) = v else { return };
    if map.is_empty() {
        if !path.is_empty() {
            out.insert(path.clone());
        }
        return;
    }
    for (k, child) in map {
        let e = if k == "." {
            Elem::Dot
        } else if let Some(f) = k.strip_prefix("f:") {
            Elem::Field(f.to_owned())
        } else if let Some(key) = k.strip_prefix("k:") {
            Elem::Key(key.to_owned())
        } else if let Some(val) = k.strip_prefix("v:") {
            Elem::Value(val.to_owned())
        } else {
            continue;
        };
        path.push(e);
        from_fields_v1(child, path, out);
        path.pop();
    }
}

/// Finds the item of `list` whose key fields equal `key` (a JSON object).
fn find_item(list: &[Value], key: &str) -> Option<usize> {
    let Ok(Value::Object(key)) = serde_json::from_str::<Value>(key) else {
        return None;
    };
    list.iter()
        .position(|item| key.iter().all(|(k, v)| item.get(k) == Some(v)))
}

fn get_at<'a>(v: &'a Value, path: &[Elem]) -> Option<&'a Value> {
    let mut cur = v;
    for e in path {
        cur = match (e, cur) {
            (Elem::Field(f), Value::Object(m)) => m.get(f)?,
            (Elem::Key(k), Value::Array(items)) => &items[find_item(items, k)?],
            (Elem::Dot, item) => item,
            _ => return None,
        };
    }
    Some(cur)
}

fn remove_at(v: &mut Value, path: &[Elem]) {
    match path {
        [] => {}
        [Elem::Field(f)] => {
            if let Value::Object(m) = v {
                m.remove(f);
            }
        }
        [Elem::Key(k), Elem::Dot] => {
            if let Value::Array(items) = v
                && let Some(i) = find_item(items, k)
            {
                items.remove(i);
            }
        }
        [first, rest @ ..] => {
            let next = match (first, v) {
                (Elem::Field(f), Value::Object(m)) => m.get_mut(f),
                (Elem::Key(k), Value::Array(items)) => {
                    find_item(items, k).and_then(|i| items.get_mut(i))
                }
                (Elem::Dot, item) => Some(item),
                _ => None,
            };
            if let Some(next) = next {
                remove_at(next, rest);
            }
        }
    }
}

/// Merges an applied configuration into the live object: maps by key, keyed lists by item,
/// everything else replaced.
fn merge_applied(live: &mut Value, config: &Value, field: &str) {
    match (live, config) {
        (Value::Object(l), Value::Object(c)) => {
            for (k, cv) in c {
                match l.get_mut(k) {
                    Some(lv) => merge_applied(lv, cv, k),
                    None => {
                        l.insert(k.clone(), cv.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(c)) => match key_fields(field, c) {
            Some(key) if l.iter().all(|i| i.get(key).is_some()) => {
                let mut out = Vec::with_capacity(c.len());
                // Applied items first, in the applied order; then the items others keep.
                for item in c {
                    match find_item(l, &item_key(key, item)) {
                        Some(i) => {
                            let mut merged = l.remove(i);
                            merge_applied(&mut merged, item, "");
                            out.push(merged);
                        }
                        None => out.push(item.clone()),
                    }
                }
                out.append(l);
                *l = out;
            }
            _ => *l = c.clone(),
        },
        (l, c) => *l = c.clone(),
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    fields: FieldSet,
}

fn entries_of(obj: &Value) -> Vec<Entry> {
    let Some(Value::Array(list)) = obj.at("/metadata/managedFields") else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            let mut fields = FieldSet::new();
            from_fields_v1(e.get("fieldsV1")?, &mut Vec::new(), &mut fields);
            Some(Entry {
                manager: e.get("manager")?.as_str()?.to_owned(),
                operation: e.get("operation")?.as_str()?.to_owned(),
                api_version: e
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                time: e
                    .get("time")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                subresource: e
                    .get("subresource")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                fields,
            })
        })
        .collect()
}

fn store_entries(obj: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if let Some(s) = e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Who wrote and when, for [`record_update`] and [`apply`].
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub subresource: Option<&'a str>,
    pub time: &'a str,
}

/// Records a create, update or patch by `w.manager`: the fields it changed move to its
/// `Update` entry; fields that disappeared leave every entry.
pub fn record_update(new: &mut Value, old: Option<&Value>, w: &Writer) {
    let mut entries = old.map(entries_of).unwrap_or_default();
    let new_fields = fields_of(new);
    let changed: FieldSet = new_fields
        .iter()
        .filter(|p| old.is_none_or(|o| get_at(o, p) != get_at(new, p)))
        .cloned()
        .collect();
    for e in &mut entries {
        e.fields
            .retain(|p| new_fields.contains(p) && !changed.contains(p));
    }
    if !changed.is_empty() {
        let sub = w.subresource.map(str::to_owned);
        match entries
            .iter_mut()
            .find(|e| e.manager == w.manager && e.operation == "Update" && e.subresource == sub)
        {
            Some(e) => {
                e.fields.extend(changed);
                e.time = w.time.to_owned();
                e.api_version = w.api_version.to_owned();
            }
            None => entries.push(Entry {
                manager: w.manager.to_owned(),
                operation: "Update".into(),
                api_version: w.api_version.to_owned(),
                time: w.time.to_owned(),
                subresource: sub,
                fields: changed,
            }),
        }
    }
    store_entries(new, entries);
}

/// A field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    /// `.spec.template.spec.containers[name="web"].image`
    pub field: String,
}

fn display(path: &[Elem]) -> String {
    let mut s = String::new();
    for e in path {
        match e {
            Elem::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Elem::Key(k) => {
                let inner = serde_json::from_str::<Value>(k)
                    .ok()
                    .and_then(|v| v.as_object().cloned())
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                s.push_str(&format!("[{inner}]"));
            }
            Elem::Value(v) => s.push_str(&format!("[={v}]")),
            Elem::Dot => {}
        }
    }
    s
}

/// Server-side apply of `config` by `w.manager` onto `live` (`None`: the object is new).
/// Returns the object to write, with its managedFields, or the conflicts.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    w: &Writer,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let mut entries = live.map(entries_of).unwrap_or_default();
    let applied = fields_of(config);
    let empty = Value::Object(Map::new());
    let live_obj = live.unwrap_or(&empty);
    let mine = |e: &Entry| e.manager == w.manager && e.operation == "Apply";
    let mut conflicts = Vec::new();
    for e in entries.iter_mut().filter(|e| !mine(e)) {
        let clashing: Vec<FieldPath> = e
            .fields
            .intersection(&applied)
            .filter(|p| p.last() != Some(&Elem::Dot))
            .filter(|p| get_at(config, p) != get_at(live_obj, p))
            .cloned()
            .collect();
        if force {
            for p in &clashing {
                e.fields.remove(p);
            }
        } else {
            conflicts.extend(clashing.iter().map(|p| Conflict {
                manager: e.manager.clone(),
                api_version: e.api_version.clone(),
                field: display(p),
            }));
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    let mut merged = live_obj.clone();
    merge_applied(&mut merged, config, "");
    let previously: FieldSet = entries
        .iter()
        .filter(|e| mine(e))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    // Fields this manager stopped applying go, unless another manager still owns them.
    let mut dropped: Vec<&FieldPath> = previously
        .iter()
        .filter(|p| !applied.contains(*p))
        .filter(|p| !entries.iter().any(|e| !mine(e) && e.fields.contains(*p)))
        .collect();
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in dropped {
        remove_at(&mut merged, p);
    }
    entries.retain(|e| !mine(e));
    entries.push(Entry {
        manager: w.manager.to_owned(),
        operation: "Apply".into(),
        api_version: w.api_version.to_owned(),
        time: w.time.to_owned(),
        subresource: None,
        fields: applied,
    });
    store_entries(&mut merged, entries);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "apps/v1",
            subresource: None,
            time: "2026-01-01T00:00:00Z",
        }
    }

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "nginx", "image": image, "ports": [{"containerPort": 80}]}]}}}})
    }

    #[test]
    fn fields_v1_round_trip_and_shape() {
        let set = fields_of(&deploy(2, "nginx"));
        let v1 = to_fields_v1(&set);
        assert!(v1.at("/f:spec/f:replicas").is_some());
        assert!(v1.get("f:apiVersion").is_none());
        assert!(v1.at("/f:metadata/f:name").is_none());
        let c = v1
            .at("/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"nginx\"}")
            .unwrap();
        assert!(c.get(".").is_some() && c.get("f:image").is_some());
        let mut back = FieldSet::new();
        from_fields_v1(&v1, &mut Vec::new(), &mut back);
        assert_eq!(back, set);
    }

    #[test]
    fn apply_creates_then_conflicts_with_another_manager() {
        let created = apply(None, &deploy(2, "nginx:1"), &w("kubectl"), false).unwrap();
        assert_eq!(created["spec"]["replicas"], 2);
        // `kubectl scale` (an Update by another manager) takes spec.replicas.
        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(&mut scaled, Some(&created), &w("kubectl-scale"));
        // Re-applying the old replicas conflicts…
        let err = apply(Some(&scaled), &deploy(2, "nginx:1"), &w("kubectl"), false).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].manager, "kubectl-scale");
        assert_eq!(err[0].field, ".spec.replicas");
        // …an apply that agrees with the live value does not…
        assert!(apply(Some(&scaled), &deploy(5, "nginx:1"), &w("kubectl"), false).is_ok());
        // …and force takes the field back.
        let forced = apply(Some(&scaled), &deploy(2, "nginx:1"), &w("kubectl"), true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 2);
        let entries = entries_of(&forced);
        let scale = entries.iter().find(|e| e.manager == "kubectl-scale");
        assert!(scale.is_none_or(|e| !e.fields.iter().any(|p| display(p) == ".spec.replicas")));
    }

    #[test]
    fn apply_removes_fields_no_longer_applied() {
        let mut with_label = deploy(2, "nginx:1");
        with_label["metadata"]["labels"]["tier"] = json!("front");
        let first = apply(None, &with_label, &w("helm"), false).unwrap();
        assert_eq!(first["metadata"]["labels"]["tier"], "front");
        let second = apply(Some(&first), &deploy(2, "nginx:2"), &w("helm"), false).unwrap();
        assert!(second["metadata"]["labels"].get("tier").is_none());
        assert_eq!(
            second["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:2"
        );
        // Ports kept: the container item was merged, not replaced.
        assert_eq!(
            second["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
            80
        );
    }

    #[test]
    fn fields_owned_by_others_survive_an_apply_that_drops_them() {
        let first = apply(None, &deploy(2, "nginx:1"), &w("a"), false).unwrap();
        let second = apply(Some(&first), &deploy(2, "nginx:1"), &w("b"), false).unwrap();
        let mut without_labels = deploy(2, "nginx:1");
        without_labels["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("labels");
        let third = apply(Some(&second), &without_labels, &w("a"), false).unwrap();
        assert_eq!(third["metadata"]["labels"]["app"], "web");
    }

    #[test]
    fn record_update_moves_ownership() {
        let created = apply(None, &deploy(2, "nginx:1"), &w("kubectl"), false).unwrap();
        let mut edited = created.clone();
        edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
        record_update(&mut edited, Some(&created), &w("kubectl-set"));
        let entries = entries_of(&edited);
        let image = ".spec.template.spec.containers[name=\"nginx\"].image";
        let owner = |m: &str| {
            entries
                .iter()
                .find(|e| e.manager == m)
                .is_some_and(|e| e.fields.iter().any(|p| display(p) == image))
        };
        assert!(owner("kubectl-set"));
        assert!(!owner("kubectl"));
    }
}
