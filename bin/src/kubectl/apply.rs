//! `apply` (server-side apply of manifests) and `delete` (by name, selector or manifest, then
//! waiting until the objects are gone).

use std::time::Duration;

use anyhow::bail;
use kube::Api;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::Value;
use tokio::time::Instant;

use super::get::{self, items_of, name_of};
use super::manifest::{self, Manifest};
use super::{Globals, Kube, Reported, ResourceInfo, error_message, is_not_found};

/// The field manager of `apply`.
const FIELD_MANAGER: &str = "flotilla";

#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    g: Globals,
    /// Files, directories (their .yaml, .yml and .json files) or `-` for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    /// Process directories recursively.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Take over fields other field managers own instead of failing with a conflict.
    #[arg(long)]
    force_conflicts: bool,
    /// Field manager name recorded for the applied fields.
    #[arg(long, default_value = FIELD_MANAGER)]
    field_manager: String,
    /// Submit server-side without persisting (`--dry-run=server`).
    #[arg(long, value_parser = ["none", "server"], default_value = "none")]
    dry_run: String,
}

/// Where a manifest's object goes: its resource and namespace.
async fn place<'a>(
    kube: &Kube,
    m: &'a Manifest,
) -> anyhow::Result<(ResourceInfo, Option<String>, &'a str)> {
    let r = kube
        .for_kind(m.api_version(), m.kind())
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "resource mapping not found for name: \"{}\" namespace: \"{}\" from \"{}\": {e}",
                m.name(),
                m.namespace().unwrap_or(""),
                m.source
            )
        })?;
    let name = m.name();
    if name.is_empty() {
        bail!(
            "error when retrieving current configuration of {} from \"{}\": resource name may not be empty",
            r.kind_group(),
            m.source
        );
    }
    super::check_path_segment("name", name)?;
    if let Some(ns) = m.namespace() {
        super::check_path_segment("namespace", ns)?;
    }
    let ns = if r.namespaced {
        match m.namespace() {
            Some(ns) if kube.namespace_flag && ns != kube.namespace => bail!(
                "the namespace from the provided object \"{ns}\" does not match the namespace \"{}\". You must pass '--namespace={ns}' to perform this operation.",
                kube.namespace
            ),
            Some(ns) => Some(ns.to_owned()),
            None => Some(kube.namespace.clone()),
        }
    } else {
        None
    };
    Ok((r, ns, name))
}

fn dynamic_api(kube: &Kube, r: &ResourceInfo, ns: Option<&str>) -> Api<DynamicObject> {
    match ns {
        Some(ns) => Api::namespaced_with(kube.client.clone(), ns, &r.api_resource()),
        None => Api::all_with(kube.client.clone(), &r.api_resource()),
    }
}

pub async fn apply(a: ApplyArgs) -> anyhow::Result<()> {
    let manifests = manifest::read_all(&a.files, a.recursive)?;
    let kube = Kube::connect(&a.g).await?;
    let mut params = PatchParams::apply(&a.field_manager);
    if a.force_conflicts {
        params = params.force();
    }
    if a.dry_run == "server" {
        params = params.dry_run();
    }
    let suffix = if a.dry_run == "server" {
        " (server dry run)"
    } else {
        ""
    };
    let mut failed = false;
    for m in &manifests {
        let result = async {
            let (r, ns, name) = place(&kube, m).await?;
            let mut object = m.object.clone();
            if let Some(ns) = &ns {
                object["metadata"]["namespace"] = Value::String(ns.clone());
            }
            dynamic_api(&kube, &r, ns.as_deref())
                .patch(name, &params, &Patch::Apply(&object))
                .await?;
            anyhow::Ok(r.object_name(name))
        }
        .await;
        match result {
            Ok(n) => println!("{n} serverside-applied{suffix}"),
            Err(e) => {
                failed = true;
                eprintln!("{}", apply_error(&e));
            }
        }
    }
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}

/// A conflict reads as kubectl prints it, with its advice on resolving it.
fn apply_error(e: &anyhow::Error) -> String {
    let conflict = e
        .chain()
        .find_map(|c| match c.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(s)) if s.code == 409 && s.message.starts_with("Apply failed") => {
                Some(s.message.clone())
            }
            _ => None,
        });
    match conflict {
        Some(message) => format!(
            "error: {message}
Please review the fields above--they currently have other managers. Here
are the ways you can resolve this warning:
* If you intend to manage all of these fields, please re-run the apply
  command with the `--force-conflicts` flag.
* If you do not intend to manage all of the fields, please edit your
  manifest to remove references to the fields that should keep their
  current managers.
* You may co-own fields by updating your manifest to match the existing
  value; in which case, you'll become the manager if the value changes."
        ),
        None => error_message(e),
    }
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    g: Globals,
    /// TYPE NAME..., TYPE/NAME..., or TYPE with -l / --all.
    args: Vec<String>,
    /// Delete the objects of these files, directories or stdin (`-`).
    #[arg(short = 'f', long = "filename")]
    files: Vec<String>,
    /// Process directories recursively.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Delete the objects matching this label selector.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Delete every object of the type in the namespace.
    #[arg(long)]
    all: bool,
    /// With --all or -l, across all namespaces.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Wait until the objects are gone.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    wait: bool,
    /// Give up waiting after this long (0: wait as long as it takes).
    #[arg(long, default_value = "0")]
    timeout: String,
    /// Treat objects that do not exist as deleted.
    #[arg(long)]
    ignore_not_found: bool,
    /// Seconds the objects get to terminate gracefully (-1: their default).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    grace_period: i64,
}

/// One object to delete.
struct Doomed {
    r: ResourceInfo,
    ns: Option<String>,
    name: String,
}

pub async fn delete(a: DeleteArgs) -> anyhow::Result<()> {
    let timeout = super::parse_duration(&a.timeout)?;
    let kube = Kube::connect(&a.g).await?;
    let mut doomed = Vec::new();
    let mut failed = false;
    if !a.files.is_empty() {
        if !a.args.is_empty() {
            bail!("resource(s) were provided, but no name was specified");
        }
        for m in manifest::read_all(&a.files, a.recursive)? {
            match place(&kube, &m).await {
                Ok((r, ns, name)) => doomed.push(Doomed {
                    r,
                    ns,
                    name: name.to_owned(),
                }),
                Err(e) => {
                    failed = true;
                    super::report(&e);
                }
            }
        }
    } else {
        if a.args.is_empty() {
            bail!(
                "You must provide one or more resources by argument or filename.\nExample resource specifications include:\n   '-f rsrc.yaml'\n   '--filename=rsrc.json'\n   '<resource> <name>'\n   '<resource>'"
            );
        }
        for (r, names) in get::targets(&kube, &a.args).await? {
            let ns = r.namespaced.then(|| kube.namespace.clone());
            if !names.is_empty() {
                doomed.extend(names.into_iter().map(|name| Doomed {
                    r: r.clone(),
                    ns: ns.clone(),
                    name,
                }));
                continue;
            }
            if !a.all && a.selector.is_none() {
                bail!("resource(s) were provided, but no name was specified");
            }
            let scope = if a.all_namespaces {
                None
            } else {
                ns.as_deref()
            };
            let list = get::list(&kube, &r, scope, a.selector.as_deref(), None, false).await?;
            for o in items_of(&r, list) {
                let ns = o
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                doomed.push(Doomed {
                    r: r.clone(),
                    ns: if r.namespaced { ns } else { None },
                    name: name_of(&o).to_owned(),
                });
            }
        }
        if doomed.is_empty() && !failed {
            println!("No resources found");
            return Ok(());
        }
    }
    let mut params = DeleteParams::background();
    if a.grace_period >= 0 {
        params = params.grace_period(u32::try_from(a.grace_period).unwrap_or(u32::MAX));
    }
    // Delete everything first, then wait for all of it, as kubectl does.
    let mut waiting: Vec<(&Doomed, Option<String>)> = Vec::new();
    for d in &doomed {
        let api = dynamic_api(&kube, &d.r, d.ns.as_deref());
        match api.delete(&d.name, &params).await {
            Ok(res) => {
                println!("{} \"{}\" deleted", d.r.kind_group(), d.name);
                let uid = res.left().and_then(|o| o.metadata.uid);
                waiting.push((d, uid));
            }
            Err(e) => {
                let e = anyhow::Error::from(e);
                if a.ignore_not_found && is_not_found(&e) {
                    continue;
                }
                failed = true;
                super::report(&e);
            }
        }
    }
    if a.wait {
        let deadline = (timeout > Duration::ZERO).then(|| Instant::now() + timeout);
        for (d, uid) in waiting {
            if let Err(e) = wait_gone(&kube, d, uid.as_deref(), deadline).await {
                failed = true;
                super::report(&e);
            }
        }
    }
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}

/// Polls until the object is gone (or replaced by a new one with another uid).
async fn wait_gone(
    kube: &Kube,
    d: &Doomed,
    uid: Option<&str>,
    deadline: Option<Instant>,
) -> anyhow::Result<()> {
    loop {
        match kube.get_opt(&d.r, d.ns.as_deref(), &d.name).await? {
            None => return Ok(()),
            Some(o) => {
                let now_uid = o.pointer("/metadata/uid").and_then(Value::as_str);
                if uid.is_some() && now_uid != uid {
                    return Ok(());
                }
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            bail!(
                "timed out waiting for the condition on {}/{}",
                d.r.qualified_plural(),
                d.name
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
