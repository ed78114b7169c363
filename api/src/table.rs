//! `meta.k8s.io/v1` Table responses, the way kubectl prints `get`.
//!
//! Kinds without their own printer yet get `Name` and `Age`, like the apiserver's default.

use serde_json::{Value, json};

use crate::meta;
use crate::resources::Resource;

fn column(name: &str, format: &str, description: &str) -> Value {
    json!({"name": name, "type": "string", "format": format, "description": description, "priority": 0})
}

/// A column definition and how to compute its cell from an object.
type Column = (Value, fn(&Value) -> Value);

/// Extra columns (between Name and Age) and their cells, per kind.
fn extra_columns(r: &Resource) -> Vec<Column> {
    match (r.group, r.plural) {
        ("", "namespaces") => vec![(column("Status", "", "The status of the namespace"), |o| {
            json!(
                o.pointer("/status/phase")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            )
        })],
        ("", "configmaps") => vec![(column("Data", "", "Number of data items"), |o| {
            let n = o
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + o.get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            json!(n)
        })],
        ("", "secrets") => vec![
            (column("Type", "", "The type of the secret"), |o| {
                json!(o.get("type").and_then(Value::as_str).unwrap_or("Opaque"))
            }),
            (column("Data", "", "Number of data items"), |o| {
                json!(
                    o.get("data")
                        .and_then(Value::as_object)
                        .map_or(0, |m| m.len())
                )
            }),
        ],
        _ => vec![],
    }
}

pub fn table(r: &Resource, items: &[Value], resource_version: &str) -> Value {
    let extras = extra_columns(r);
    let mut columns = vec![column(
        "Name",
        "name",
        "Name must be unique within a namespace.",
    )];
    columns.extend(extras.iter().map(|(c, _)| c.clone()));
    columns.push(column(
        "Age",
        "",
        "CreationTimestamp is a timestamp representing when this object was created.",
    ));
    let now = meta::now_secs();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let name = o.pointer("/metadata/name").cloned().unwrap_or(json!(""));
            let age = o
                .pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str)
                .and_then(meta::parse_rfc3339)
                .map(|t| meta::human_age(now.saturating_sub(t)))
                .unwrap_or_else(|| "<unknown>".into());
            let mut cells = vec![name];
            cells.extend(extras.iter().map(|(_, cell)| cell(o)));
            cells.push(json!(age));
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": rows,
    })
}
