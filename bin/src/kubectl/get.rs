//! `get`: the server's Table for human output (`-o wide` adds priority-1 columns), objects for
//! `-o json|yaml|name`, and `-w` following a watch of the same representation.

use anyhow::bail;
use futures::{AsyncBufReadExt, StreamExt};
use kube::api::{ListParams, WatchParams};
use serde_json::Value;

use super::output::{self, Aligner, Format, Table, TableView};
use super::{Globals, Kube, Reported, ResourceInfo, report};

/// What `Accept` asks for a server-side table (kubectl sends the same, JSON as the fallback).
pub const ACCEPT_TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    g: Globals,
    /// TYPE [NAME...], TYPE/NAME..., or TYPE1,TYPE2 (plural, singular, short name or kind).
    args: Vec<String>,
    /// Output format: wide, name, json or yaml.
    #[arg(short = 'o', long)]
    output: Option<String>,
    /// Label selector, e.g. `app=web,tier!=db`.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Field selector, e.g. `metadata.name=web`.
    #[arg(long)]
    field_selector: Option<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// After listing, watch for changes.
    #[arg(short = 'w', long)]
    watch: bool,
    /// Print no header line.
    #[arg(long)]
    no_headers: bool,
    /// Add a LABELS column.
    #[arg(long)]
    show_labels: bool,
    /// Prefix names with their type (always done when several types are listed).
    #[arg(long)]
    show_kind: bool,
    /// Do not fail when a named object does not exist.
    #[arg(long)]
    ignore_not_found: bool,
    /// Keep metadata.managedFields in json and yaml output.
    #[arg(long)]
    show_managed_fields: bool,
}

/// Drops `metadata.managedFields`, which kubectl hides unless asked for.
fn hide_managed_fields(o: &mut Value) {
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
}

/// Resolves the positional `TYPE [NAME...]` / `TYPE/NAME...` arguments of get, describe and
/// delete into resources and the names asked for (none: all of them).
pub async fn targets(
    kube: &Kube,
    args: &[String],
) -> anyhow::Result<Vec<(ResourceInfo, Vec<String>)>> {
    let mut out: Vec<(ResourceInfo, Vec<String>)> = Vec::new();
    let Some(first) = args.first() else {
        bail!("Required resource not specified.");
    };
    if first.contains('/') {
        for a in args {
            let Some((ty, name)) = super::split_type_name(a) else {
                bail!(
                    "there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (e.g. 'flotilla get resource/<resource_name>' instead of 'flotilla get resource resource/<resource_name>')"
                );
            };
            let r = kube.resolve(ty).await?;
            match out.iter_mut().find(|(x, _)| *x == r) {
                Some((_, names)) => names.push(name.to_owned()),
                None => out.push((r, vec![name.to_owned()])),
            }
        }
    } else {
        let names: Vec<String> = args[1..].to_vec();
        if let Some(bad) = names.iter().find(|n| n.contains('/')) {
            bail!(
                "there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (got {bad:?})"
            );
        }
        for r in kube.resolve_list(first).await? {
            out.push((r, names.clone()));
        }
    }
    Ok(out)
}

/// A request with the Table `Accept` header.
pub fn as_table(mut req: http::Request<Vec<u8>>) -> http::Request<Vec<u8>> {
    req.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static(ACCEPT_TABLE),
    );
    req
}

/// LIST of a resource (as a Table when `table`), in one namespace or all.
pub async fn list(
    kube: &Kube,
    r: &ResourceInfo,
    ns: Option<&str>,
    labels: Option<&str>,
    fields: Option<&str>,
    table: bool,
) -> Result<Value, kube::Error> {
    let mut lp = ListParams::default();
    if let Some(l) = labels {
        lp = lp.labels(l);
    }
    if let Some(f) = fields {
        lp = lp.fields(f);
    }
    let req = kube::core::Request::new(r.collection_path(ns))
        .list(&lp)
        .map_err(kube::Error::BuildRequest)?;
    let req = if table { as_table(req) } else { req };
    kube.client.request::<Value>(req).await
}

/// GET of one object (as a Table when `table`).
pub async fn get_one(
    kube: &Kube,
    r: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
    table: bool,
) -> Result<Value, kube::Error> {
    let req = http::Request::get(r.object_path(ns, name))
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    let req = if table { as_table(req) } else { req };
    kube.client.request::<Value>(req).await
}

/// Items of a list response, with the `apiVersion` and `kind` list items may leave out.
pub fn items_of(r: &ResourceInfo, list: Value) -> Vec<Value> {
    let items = match list {
        Value::Object(mut m) => match m.remove("items") {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    items
        .into_iter()
        .map(|mut o| {
            if let Value::Object(m) = &mut o {
                m.entry("apiVersion")
                    .or_insert_with(|| Value::String(r.api_version()));
                m.entry("kind")
                    .or_insert_with(|| Value::String(r.kind.clone()));
            }
            o
        })
        .collect()
}

pub fn name_of(o: &Value) -> &str {
    o.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub async fn get(a: GetArgs) -> anyhow::Result<()> {
    let format = Format::parse(a.output.as_deref())?;
    if a.args.is_empty() {
        bail!(
            "Required resource not specified.\nUse \"flotilla get TYPE\" with a type such as pods, deployments or services."
        );
    }
    let kube = Kube::connect(&a.g).await?;
    let targets = targets(&kube, &a.args).await?;
    let scope = (!a.all_namespaces).then_some(kube.namespace.as_str());
    if a.all_namespaces && targets.iter().any(|(r, n)| r.namespaced && !n.is_empty()) {
        bail!("a resource cannot be retrieved by name across all namespaces");
    }
    if a.watch {
        return watch(&kube, &a, format, &targets, scope).await;
    }
    let show_kind = a.show_kind || targets.len() > 1;
    let mut errors: Vec<anyhow::Error> = Vec::new();
    let mut objects: Vec<Value> = Vec::new();
    let mut tables_printed = 0;
    for (r, names) in &targets {
        let ns = if r.namespaced { scope } else { None };
        if format.is_table() {
            let mut table: Option<Table> = None;
            if names.is_empty() {
                match list(
                    &kube,
                    r,
                    ns,
                    a.selector.as_deref(),
                    a.field_selector.as_deref(),
                    true,
                )
                .await
                {
                    Ok(v) => table = Some(Table::of_response(&v)),
                    Err(e) => errors.push(e.into()),
                }
            } else {
                for name in names {
                    match get_one(&kube, r, ns, name, true).await {
                        Ok(v) => {
                            let t = Table::of_response(&v);
                            match &mut table {
                                Some(all) => all.rows.extend(t.rows),
                                None => table = Some(t),
                            }
                        }
                        Err(kube::Error::Api(s)) if s.code == 404 && a.ignore_not_found => {}
                        Err(e) => errors.push(e.into()),
                    }
                }
            }
            let Some(table) = table.filter(|t| !t.rows.is_empty()) else {
                continue;
            };
            let view = TableView {
                wide: format == Format::Wide,
                namespace_column: a.all_namespaces && r.namespaced,
                show_labels: a.show_labels,
                kind_prefix: show_kind.then(|| format!("{}/", r.kind_group())),
                no_headers: a.no_headers,
            };
            if tables_printed > 0 {
                println!();
            }
            tables_printed += 1;
            print_table(&view, &table, &mut Aligner::kubectl());
        } else if names.is_empty() {
            match list(
                &kube,
                r,
                ns,
                a.selector.as_deref(),
                a.field_selector.as_deref(),
                false,
            )
            .await
            {
                Ok(v) => objects.extend(items_of(r, v)),
                Err(e) => errors.push(e.into()),
            }
        } else {
            for name in names {
                match get_one(&kube, r, ns, name, false).await {
                    Ok(v) => objects.push(v),
                    Err(kube::Error::Api(s)) if s.code == 404 && a.ignore_not_found => {}
                    Err(e) => errors.push(e.into()),
                }
            }
        }
    }
    if !a.show_managed_fields {
        objects.iter_mut().for_each(hide_managed_fields);
    }
    let single = targets.len() == 1 && targets[0].1.len() == 1;
    match format {
        Format::Table | Format::Wide => {
            if tables_printed == 0 && errors.is_empty() {
                no_resources(&targets, a.all_namespaces, &kube.namespace);
            }
        }
        Format::Name => {
            for o in &objects {
                println!("{}", object_name(&targets, o));
            }
        }
        Format::Json | Format::Yaml => {
            let doc = if single && errors.is_empty() {
                objects.pop()
            } else if single && objects.is_empty() {
                None
            } else {
                Some(output::list_of(objects))
            };
            if let Some(doc) = doc {
                if format == Format::Json {
                    println!("{}", output::to_json(&doc));
                } else {
                    print!("{}", output::to_yaml(&doc)?);
                }
            }
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    for e in &errors {
        report(e);
    }
    Err(Reported.into())
}

/// `deployment.apps/web` for an object, using its apiVersion/kind to find its resource.
fn object_name(targets: &[(ResourceInfo, Vec<String>)], o: &Value) -> String {
    let kind = o.get("kind").and_then(Value::as_str).unwrap_or("");
    let api_version = o.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let r = targets
        .iter()
        .map(|(r, _)| r)
        .find(|r| r.kind == kind && r.api_version() == api_version)
        .or_else(|| targets.first().map(|(r, _)| r));
    match r {
        Some(r) => r.object_name(name_of(o)),
        None => name_of(o).to_owned(),
    }
}

/// kubectl's note on stderr when a list comes back empty.
fn no_resources(targets: &[(ResourceInfo, Vec<String>)], all: bool, ns: &str) {
    if !all && targets.iter().all(|(r, _)| r.namespaced) {
        eprintln!("No resources found in {ns} namespace.");
    } else {
        eprintln!("No resources found");
    }
}

/// Prints a table: header (unless disabled) and rows, aligned.
pub fn print_table(view: &TableView, t: &Table, aligner: &mut Aligner) {
    let mut lines = Vec::new();
    if !view.no_headers {
        lines.push(view.header(t));
    }
    for r in &t.rows {
        lines.push(view.row(t, r));
    }
    for l in aligner.format(&lines) {
        println!("{l}");
    }
}

/// `get -w`: the current state, then every change as it arrives, until interrupted.
async fn watch(
    kube: &Kube,
    a: &GetArgs,
    format: Format,
    targets: &[(ResourceInfo, Vec<String>)],
    scope: Option<&str>,
) -> anyhow::Result<()> {
    let [(r, names)] = targets else {
        bail!("you may only specify a single resource type");
    };
    if names.len() > 1 {
        bail!(
            "watch is only supported on individual resources and resource collections, but {} resources were found",
            names.len()
        );
    }
    let ns = if r.namespaced { scope } else { None };
    let fields = match (names.first(), a.field_selector.as_deref()) {
        (Some(n), Some(f)) => Some(format!("metadata.name={n},{f}")),
        (Some(n), None) => Some(format!("metadata.name={n}")),
        (None, f) => f.map(str::to_owned),
    };
    let table = format.is_table();
    let view = TableView {
        wide: format == Format::Wide,
        namespace_column: a.all_namespaces && r.namespaced,
        show_labels: a.show_labels,
        kind_prefix: a.show_kind.then(|| format!("{}/", r.kind_group())),
        no_headers: a.no_headers,
    };
    let mut w = Watcher {
        view,
        show_managed_fields: a.show_managed_fields,
        format,
        resource: r.clone(),
        columns: Table::default(),
        aligner: Aligner::kubectl(),
        header_done: a.no_headers,
        printed: 0,
    };
    let mut rv = w
        .relist(kube, ns, a.selector.as_deref(), fields.as_deref(), table)
        .await?;
    if w.printed == 0 && names.is_empty() && table {
        no_resources(targets, a.all_namespaces, &kube.namespace);
    }
    loop {
        let mut wp = WatchParams::default().timeout(290);
        if let Some(l) = a.selector.as_deref() {
            wp = wp.labels(l);
        }
        if let Some(f) = fields.as_deref() {
            wp = wp.fields(f);
        }
        let mut req = kube::core::Request::new(r.collection_path(ns))
            .watch(&wp, &rv)
            .map_err(kube::Error::BuildRequest)?;
        if table {
            req = as_table(req);
        }
        // One event per line; no compression so each line arrives when it is sent.
        req.headers_mut().insert(
            http::header::ACCEPT_ENCODING,
            http::HeaderValue::from_static("identity"),
        );
        let stream = kube.client.request_stream(req).await?;
        let mut lines = stream.lines();
        while let Some(line) = lines.next().await {
            let line = match line {
                Ok(l) => l,
                // The connection ended mid-stream: watch again from the last version seen.
                Err(_) => break,
            };
            if line.trim().is_empty() {
                continue;
            }
            let event: Value = serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("malformed watch event from the server: {e}"))?;
            let object = event.get("object").cloned().unwrap_or(Value::Null);
            match event.get("type").and_then(Value::as_str).unwrap_or("") {
                "ERROR" => {
                    let status: kube::core::Status = serde_json::from_value(object)
                        .map_err(|e| anyhow::anyhow!("malformed watch error event: {e}"))?;
                    if status.code == 410 {
                        // Too old to resume from: start over from a fresh list.
                        rv = w
                            .relist(kube, ns, a.selector.as_deref(), fields.as_deref(), table)
                            .await?;
                        break;
                    }
                    return Err(kube::Error::Api(Box::new(status)).into());
                }
                kind => {
                    if let Some(v) = object
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .filter(|v| !v.is_empty())
                    {
                        rv = v.to_owned();
                    }
                    if kind != "BOOKMARK" {
                        w.print(object)?;
                    }
                }
            }
        }
    }
}

/// Prints what a watch sees, keeping table columns aligned across events.
struct Watcher {
    view: TableView,
    show_managed_fields: bool,
    format: Format,
    resource: ResourceInfo,
    /// Column definitions (watch events after the first carry none).
    columns: Table,
    aligner: Aligner,
    header_done: bool,
    printed: usize,
}

impl Watcher {
    /// Lists and prints the current state; returns the list's resourceVersion.
    async fn relist(
        &mut self,
        kube: &Kube,
        ns: Option<&str>,
        labels: Option<&str>,
        fields: Option<&str>,
        table: bool,
    ) -> anyhow::Result<String> {
        let v = list(kube, &self.resource, ns, labels, fields, table).await?;
        let rv = v
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if table {
            self.print(v)?;
        } else {
            for o in items_of(&self.resource, v) {
                self.print(o)?;
            }
        }
        Ok(rv)
    }

    fn print(&mut self, mut object: Value) -> anyhow::Result<()> {
        if !self.show_managed_fields {
            hide_managed_fields(&mut object);
        }
        match self.format {
            Format::Table | Format::Wide => {
                let mut t = Table::of_response(&object);
                if t.columns.is_empty() {
                    t.columns = self.columns.columns.clone();
                } else {
                    self.columns.columns = t.columns.clone();
                }
                if t.rows.is_empty() {
                    return Ok(());
                }
                let mut lines = Vec::new();
                if !self.header_done {
                    lines.push(self.view.header(&t));
                    self.header_done = true;
                }
                for r in &t.rows {
                    lines.push(self.view.row(&t, r));
                }
                for l in self.aligner.format(&lines) {
                    println!("{l}");
                }
            }
            Format::Name => println!("{}", self.resource.object_name(name_of(&object))),
            Format::Json => println!("{}", output::to_json(&object)),
            Format::Yaml => {
                if self.printed > 0 {
                    println!("---");
                }
                print!("{}", output::to_yaml(&object)?);
            }
        }
        self.printed += 1;
        Ok(())
    }
}
