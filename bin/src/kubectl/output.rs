//! Output formats: server `Table`s aligned like kubectl's tabwriter, JSON, YAML, names; ages
//! and timestamps as kubectl prints them.

use std::collections::BTreeMap;

use k8s_openapi::jiff;
use serde::Serialize;
use serde_json::Value;

/// `-o` of `get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Wide,
    Name,
    Json,
    Yaml,
}

impl Format {
    pub fn parse(o: Option<&str>) -> anyhow::Result<Format> {
        Ok(match o {
            None | Some("") => Format::Table,
            Some("wide") => Format::Wide,
            Some("name") => Format::Name,
            Some("json") => Format::Json,
            Some("yaml") => Format::Yaml,
            Some(other) => anyhow::bail!(
                "unable to match a printer suitable for the output format \"{other}\", allowed formats are: json,name,wide,yaml"
            ),
        })
    }

    pub fn is_table(self) -> bool {
        matches!(self, Format::Table | Format::Wide)
    }
}

/// A `meta.k8s.io/v1` Table as the server sent it.
#[derive(Debug, Default, Clone)]
pub struct Table {
    pub columns: Vec<(String, i64)>,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub cells: Vec<Value>,
    /// From the row's object metadata (for `-A` and `--show-labels`).
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

impl Table {
    /// The table of a response: the server's, or NAME and AGE columns made here when the
    /// server answered with plain objects (as kubectl does for servers without tables).
    pub fn of_response(v: &Value) -> Table {
        if v.get("kind").and_then(Value::as_str) == Some("Table") {
            return Table::parse(v);
        }
        let objects: Vec<&Value> = match v.get("items").and_then(Value::as_array) {
            Some(items) => items.iter().collect(),
            None => vec![v],
        };
        let rows = objects
            .into_iter()
            .map(|o| {
                let age = o
                    .pointer("/metadata/creationTimestamp")
                    .and_then(Value::as_str)
                    .and_then(seconds_since)
                    .map_or_else(|| "<unknown>".to_owned(), human_duration);
                Row {
                    cells: vec![
                        o.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
                        Value::String(age),
                    ],
                    namespace: o
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    labels: string_map(o.pointer("/metadata/labels")),
                }
            })
            .collect();
        Table {
            columns: vec![("Name".into(), 0), ("Age".into(), 0)],
            rows,
        }
    }

    pub fn parse(v: &Value) -> Table {
        let columns = v
            .get("columnDefinitions")
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        (
                            c.get("name")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_owned(),
                            c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let rows = v
            .get("rows")
            .and_then(Value::as_array)
            .map(|rs| {
                rs.iter()
                    .map(|r| Row {
                        cells: r
                            .get("cells")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default(),
                        namespace: r
                            .pointer("/object/metadata/namespace")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                        labels: string_map(r.pointer("/object/metadata/labels")),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Table { columns, rows }
    }
}

/// How a table is shown: which columns and extra decorations.
#[derive(Debug, Clone, Default)]
pub struct TableView {
    pub wide: bool,
    pub namespace_column: bool,
    pub show_labels: bool,
    /// Prefix of the name cell, `deployment.apps/` when several types are printed.
    pub kind_prefix: Option<String>,
    pub no_headers: bool,
}

impl TableView {
    /// The header line's cells.
    pub fn header(&self, t: &Table) -> Vec<String> {
        let mut h = Vec::new();
        if self.namespace_column {
            h.push("NAMESPACE".to_owned());
        }
        for (name, priority) in &t.columns {
            if *priority == 0 || self.wide {
                h.push(name.to_uppercase());
            }
        }
        if self.show_labels {
            h.push("LABELS".to_owned());
        }
        h
    }

    /// One row's cells, in header order.
    pub fn row(&self, t: &Table, r: &Row) -> Vec<String> {
        let mut out = Vec::new();
        if self.namespace_column {
            out.push(r.namespace.clone());
        }
        for (i, (_, priority)) in t.columns.iter().enumerate() {
            if *priority != 0 && !self.wide {
                continue;
            }
            let mut cell = r.cells.get(i).map(cell_text).unwrap_or_default();
            if i == 0
                && let Some(p) = &self.kind_prefix
            {
                cell = format!("{p}{cell}");
            }
            out.push(cell);
        }
        if self.show_labels {
            out.push(labels_text(&r.labels));
        }
        out
    }
}

/// A cell as kubectl's printer shows it.
pub fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => "<none>".to_owned(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

/// `a=1,b=2`, or `<none>`.
pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "<none>".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Column alignment of kubectl's tabwriter (minimum width 6, padding 3, remembered widths so
/// rows printed later by `--watch` stay aligned with the header).
#[derive(Debug, Default)]
pub struct Aligner {
    widths: Vec<usize>,
    min_width: usize,
    padding: usize,
}

impl Aligner {
    /// kubectl `get`'s settings.
    pub fn kubectl() -> Aligner {
        Aligner {
            widths: Vec::new(),
            min_width: 6,
            padding: 3,
        }
    }

    /// `describe`'s and `rollout history`'s settings.
    pub fn compact() -> Aligner {
        Aligner {
            widths: Vec::new(),
            min_width: 0,
            padding: 2,
        }
    }

    /// Aligns a block of lines; the last cell of a line is not padded.
    pub fn format(&mut self, lines: &[Vec<String>]) -> Vec<String> {
        for line in lines {
            for (i, cell) in line.iter().enumerate() {
                if i + 1 == line.len() {
                    break;
                }
                let w = (cell.chars().count() + self.padding).max(self.min_width);
                if self.widths.len() <= i {
                    self.widths.resize(i + 1, 0);
                }
                self.widths[i] = self.widths[i].max(w);
            }
        }
        lines
            .iter()
            .map(|line| {
                let mut s = String::new();
                for (i, cell) in line.iter().enumerate() {
                    s.push_str(cell);
                    if i + 1 < line.len() {
                        let pad = self.widths[i].saturating_sub(cell.chars().count());
                        s.extend(std::iter::repeat_n(' ', pad));
                    }
                }
                s
            })
            .collect()
    }
}

/// JSON with kubectl's four-space indentation.
pub fn to_json(v: &Value) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    match v.serialize(&mut ser) {
        Ok(()) => String::from_utf8(buf).unwrap_or_default(),
        Err(_) => v.to_string(),
    }
}

/// YAML, block style, ending in a newline.
pub fn to_yaml(v: &Value) -> anyhow::Result<String> {
    let mut s = serde_saphyr::to_string(v)?;
    if !s.ends_with('\n') {
        s.push('\n');
    }
    Ok(s)
}

/// A list of objects as kubectl prints several (`kind: List`).
pub fn list_of(items: Vec<Value>) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "items": items,
        "kind": "List",
        "metadata": {"resourceVersion": ""},
    })
}

/// Parses an RFC 3339 timestamp.
pub fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse::<jiff::Timestamp>().ok()
}

/// Seconds since `s` (RFC 3339); `None` if it does not parse.
pub fn seconds_since(s: &str) -> Option<i64> {
    parse_time(s).map(|t| jiff::Timestamp::now().as_second() - t.as_second())
}

/// kubectl's human durations: `45s`, `3m20s`, `15m`, `5h3m`, `30h`, `4d2h`, `300d`, `3y10d`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".to_owned();
    }
    if secs < 0 {
        return "0s".to_owned();
    }
    if secs < 60 * 2 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// `Sun, 22 Nov 2026 03:04:21 +0000`, as `describe` prints timestamps.
pub fn rfc1123(s: &str) -> String {
    match parse_time(s) {
        Some(t) => t.strftime("%a, %d %b %Y %H:%M:%S +0000").to_string(),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_like_kubectl() {
        let mut a = Aligner::kubectl();
        let lines = a.format(&[
            vec!["NAME".into(), "READY".into(), "AGE".into(), "IP".into()],
            vec!["web".into(), "0/2".into(), "1s".into(), "10.0.0.1".into()],
        ]);
        assert_eq!(lines[0], "NAME   READY   AGE   IP");
        assert_eq!(lines[1], "web    0/2     1s    10.0.0.1");
        // Widths are remembered for rows printed later.
        let later = a.format(&[vec!["x".into(), "1/1".into(), "2s".into(), "-".into()]]);
        assert_eq!(later[0], "x      1/1     2s    -");
    }

    #[test]
    fn table_view_columns() {
        let t = Table::parse(&json!({
            "columnDefinitions": [
                {"name": "Name", "priority": 0}, {"name": "Ready", "priority": 0},
                {"name": "Images", "priority": 1}],
            "rows": [{"cells": ["web", "1/1", "nginx"],
                      "object": {"metadata": {"namespace": "ns1", "labels": {"app": "web"}}}}]
        }));
        let mut v = TableView::default();
        assert_eq!(v.header(&t), ["NAME", "READY"]);
        v.wide = true;
        v.namespace_column = true;
        v.show_labels = true;
        v.kind_prefix = Some("deployment.apps/".into());
        assert_eq!(
            v.header(&t),
            ["NAMESPACE", "NAME", "READY", "IMAGES", "LABELS"]
        );
        assert_eq!(
            v.row(&t, &t.rows[0]),
            ["ns1", "deployment.apps/web", "1/1", "nginx", "app=web"]
        );
    }

    #[test]
    fn objects_without_a_table_get_name_and_age() {
        let t = Table::of_response(&json!({"kind": "ConfigMapList", "items": [
            {"metadata": {"name": "a", "namespace": "n"}}]}));
        assert_eq!(t.columns.len(), 2);
        assert_eq!(t.rows[0].cells, [json!("a"), json!("<unknown>")]);
        assert_eq!(t.rows[0].namespace, "n");
        let t = Table::of_response(&json!({"kind": "Table", "columnDefinitions": [], "rows": []}));
        assert!(t.rows.is_empty());
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(900), "15m");
        assert_eq!(human_duration(5 * 3600 + 180), "5h3m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(4 * 86400 + 7200), "4d2h");
        assert_eq!(human_duration(-5), "<invalid>");
    }

    #[test]
    fn formats() {
        assert_eq!(Format::parse(Some("wide")).unwrap(), Format::Wide);
        assert!(Format::parse(Some("xml")).is_err());
        assert_eq!(to_json(&json!({"a": 1})), "{\n    \"a\": 1\n}");
        assert_eq!(
            rfc1123("2026-11-22T03:04:21Z"),
            "Sun, 22 Nov 2026 03:04:21 +0000"
        );
    }
}
