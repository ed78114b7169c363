//! Node-local persistent volumes: the kubelet provisions, mounts and reclaims them.
//!
//! Provisioning runs here, in the kubelet of the node the first consuming pod was bound to,
//! rather than in the scheduler or a central controller: a local volume is a directory on
//! one node (`<data-dir>/volumes/<pv-name>`), and only that node knows its data directory
//! and can create or remove it. So `WaitForFirstConsumer` falls out naturally: the scheduler
//! places the pod anywhere that fits, this node creates the PersistentVolume (named
//! `pvc-<claim uid>`, `spec.local.path`, node affinity to this node, claimRef to the claim)
//! and binds the claim; from then on the scheduler's volume filter keeps every pod using the
//! claim on this node. The PV is created only if the claim is unchanged since it was read
//! (a compare on its mod revision), and its name is derived from the claim's uid, so two
//! nodes racing for one claim cannot both provision it. Every step is idempotent and the
//! pod worker retries until the claim is bound, so a crash between steps heals.
//!
//! Reclaiming runs here too (the directory is on this node): a PV of ours whose claim is
//! gone is deleted with its directory (`persistentVolumeReclaimPolicy: Delete`) or marked
//! `Released` (`Retain`). As with Kubernetes' pvc-protection, nothing is removed while a pod
//! still names the claim.

use flotilla_api::At;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_api::internal::{self, Fence};
use flotilla_api::{ApiError, DEFAULT_CLASS_ANNOTATION, DEFAULT_STORAGE_CLASS, LOCAL_PROVISIONER};
use flotilla_consensus::{CmpOp, Compare, Read, Store};
use serde_json::{Value, json};
use tokio::sync::watch;

const MANAGER: &str = "flotilla-local-provisioner";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const PVS: (&str, &str, &str) = ("", "v1", "persistentvolumes");
const PVCS: (&str, &str, &str) = ("", "v1", "persistentvolumeclaims");
/// How often this node looks for volumes whose claims are gone.
const RECLAIM_EVERY: Duration = Duration::from_secs(3);
/// Size of a provisioned volume when the claim requests none (local directories are not
/// size-limited; the figure is what the PV and claim report).
const DEFAULT_SIZE: &str = "1Gi";

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.at(p).and_then(Value::as_str).unwrap_or("")
}

async fn get(store: &Store, key: &str) -> Result<Option<Value>, String> {
    let kv = store
        .get(key, Read::Linearizable)
        .await
        .map_err(|e| e.to_string())?
        .kv;
    Ok(kv.and_then(|kv| {
        let mut v: Value = serde_json::from_slice(&kv.value).ok()?;
        v["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
        Some(v)
    }))
}

fn pvc_key(ns: &str, name: &str) -> String {
    format!("/registry/core/persistentvolumeclaims/{ns}/{name}")
}

fn pv_key(name: &str) -> String {
    format!("/registry/core/persistentvolumes/{name}")
}

/// The node names a PV's required node affinity allows (`kubernetes.io/hostname In [...]`);
/// None when it has no such term (any node).
pub fn pv_nodes(pv: &Value) -> Option<Vec<String>> {
    let terms = pv
        .at("/spec/nodeAffinity/required/nodeSelectorTerms")
        .and_then(Value::as_array)?;
    let mut out = Vec::new();
    for term in terms {
        for e in term
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if str_at(e, "/key") == "kubernetes.io/hostname" && str_at(e, "/operator") == "In" {
                out.extend(
                    e.get("values")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(str::to_owned),
                );
            }
        }
    }
    Some(out)
}

/// The host directory behind a PV: `spec.local.path` or `spec.hostPath.path`.
fn pv_path(pv: &Value) -> Option<PathBuf> {
    ["/spec/local/path", "/spec/hostPath/path"]
        .iter()
        .map(|p| str_at(pv, p))
        .find(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// The class a claim asks for: its `storageClassName`, or the default class when unset
/// (`""` means "no class": only a PV named in `volumeName` can satisfy it).
async fn class_of(store: &Store, pvc: &Value) -> Result<Option<Value>, String> {
    let name = match pvc.at("/spec/storageClassName") {
        Some(Value::String(s)) if s.is_empty() => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        _ => {
            let classes = store
                .range(
                    "/registry/storage.k8s.io/storageclasses/",
                    usize::MAX,
                    Read::Linearizable,
                )
                .await
                .map_err(|e| e.to_string())?;
            classes
                .kvs
                .iter()
                .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
                .find(|c| {
                    c.at("/metadata/annotations")
                        .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                        .and_then(Value::as_str)
                        == Some("true")
                })
                .map(|c| str_at(&c, "/metadata/name").to_owned())
                .unwrap_or_else(|| DEFAULT_STORAGE_CLASS.to_owned())
        }
    };
    get(
        store,
        &format!("/registry/storage.k8s.io/storageclasses/{name}"),
    )
    .await?
    .map(Some)
    .ok_or_else(|| format!("storageclass.storage.k8s.io {name:?} not found"))
}

/// The PV this node provisions for `pvc`.
fn local_pv(pvc: &Value, class: &Value, node: &str, path: &Path) -> Value {
    let size = pvc
        .at("/spec/resources/requests/storage")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_SIZE);
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": format!("pvc-{}", str_at(pvc, "/metadata/uid")),
            "annotations": {PROVISIONED_BY: LOCAL_PROVISIONER},
            "labels": {"flotilla.io/node": node},
        },
        "spec": {
            "capacity": {"storage": size},
            "accessModes": pvc.at("/spec/accessModes").cloned().unwrap_or(json!(["ReadWriteOnce"])),
            "persistentVolumeReclaimPolicy": class.get("reclaimPolicy").and_then(Value::as_str).unwrap_or("Delete"),
            "storageClassName": str_at(class, "/metadata/name"),
            "volumeMode": "Filesystem",
            "local": {"path": path.to_string_lossy()},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": str_at(pvc, "/metadata/namespace"),
                "name": str_at(pvc, "/metadata/name"),
                "uid": str_at(pvc, "/metadata/uid"),
                "resourceVersion": str_at(pvc, "/metadata/resourceVersion"),
            },
        },
    })
}

fn compare_rv(key: String, obj: &Value) -> Fence {
    Fence {
        compare: vec![Compare::ModRevision {
            key,
            op: CmpOp::Equal,
            revision: str_at(obj, "/metadata/resourceVersion")
                .parse()
                .unwrap_or(0),
        }],
        also: Vec::new(),
    }
}

fn api_err(e: ApiError) -> String {
    e.message().to_owned()
}

/// The host directory for the pod's claim `claim` on `node`, provisioning and binding a local
/// volume first if the claim is unbound and its class is ours. An error says what the pod
/// waits for; the worker retries.
pub async fn claim_path(
    store: &Store,
    node: &str,
    volumes_dir: &Path,
    ns: &str,
    claim: &str,
) -> Result<PathBuf, String> {
    let Some(pvc) = get(store, &pvc_key(ns, claim)).await? else {
        return Err(format!("persistentvolumeclaim {claim:?} not found"));
    };
    if pvc
        .at("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        return Err(format!("persistentvolumeclaim {claim:?} is being deleted"));
    }
    let mut volume_name = str_at(&pvc, "/spec/volumeName").to_owned();
    if volume_name.is_empty() {
        volume_name = provision(store, node, volumes_dir, &pvc).await?;
    }
    let Some(pv) = get(store, &pv_key(&volume_name)).await? else {
        return Err(format!("persistentvolume {volume_name:?} not found"));
    };
    if pv_nodes(&pv).is_some_and(|nodes| !nodes.iter().any(|n| n == node)) {
        return Err(format!(
            "persistentvolume {volume_name:?} is on another node (volume node affinity conflict)"
        ));
    }
    let path = pv_path(&pv)
        .ok_or_else(|| format!("persistentvolume {volume_name:?} has no local or hostPath"))?;
    finish_binding(store, &pvc, &pv).await?;
    let dir = path.clone();
    tokio::task::spawn_blocking(move || std::fs::create_dir_all(&dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("volume {}: {e}", path.display()))?;
    Ok(path)
}

/// Creates this node's PV for an unbound claim of a local class; its name.
async fn provision(
    store: &Store,
    node: &str,
    volumes_dir: &Path,
    pvc: &Value,
) -> Result<String, String> {
    let claim = str_at(pvc, "/metadata/name");
    let Some(class) = class_of(store, pvc).await? else {
        return Err(format!(
            "persistentvolumeclaim {claim:?} is not bound and has no storage class"
        ));
    };
    let provisioner = str_at(&class, "/provisioner");
    if provisioner != LOCAL_PROVISIONER {
        return Err(format!(
            "waiting for a volume to be created by {provisioner:?} for claim {claim:?}"
        ));
    }
    let name = format!("pvc-{}", str_at(pvc, "/metadata/uid"));
    let path = volumes_dir.join(&name);
    let pv = local_pv(pvc, &class, node, &path);
    let ns = str_at(pvc, "/metadata/namespace");
    match internal::create(
        store,
        PVS,
        None,
        pv,
        MANAGER,
        compare_rv(pvc_key(ns, claim), pvc),
    )
    .await
    {
        Ok(_) => {
            tracing::info!(claim = %format!("{ns}/{claim}"), pv = %name, %node, "provisioned a local volume");
        }
        // Made by an earlier attempt (or another node: its affinity then says so).
        Err(e) if e.code() == 409 => {}
        Err(e) => return Err(api_err(e)),
    }
    Ok(name)
}

/// The remaining binding steps, each done once: PV `Bound`, claim's `volumeName`, claim
/// `Bound`.
async fn finish_binding(store: &Store, pvc: &Value, pv: &Value) -> Result<(), String> {
    let pv_name = str_at(pv, "/metadata/name").to_owned();
    let ns = str_at(pvc, "/metadata/namespace").to_owned();
    let claim = str_at(pvc, "/metadata/name").to_owned();
    let claimed = str_at(pv, "/spec/claimRef/uid");
    if !claimed.is_empty() && claimed != str_at(pvc, "/metadata/uid") {
        return Err(format!(
            "persistentvolume {pv_name:?} is bound to another claim"
        ));
    }
    if str_at(pv, "/status/phase") != "Bound" {
        let mut updated = pv.clone();
        updated["status"] = json!({"phase": "Bound"});
        internal::replace(
            store,
            PVS,
            None,
            &pv_name,
            updated,
            true,
            MANAGER,
            Fence::default(),
        )
        .await
        .map_err(api_err)?;
    }
    let mut pvc = pvc.clone();
    if str_at(&pvc, "/spec/volumeName").is_empty() {
        pvc["spec"]["volumeName"] = json!(pv_name);
        let annotations = pvc["metadata"]
            .as_object_mut()
            .map(|m| m.entry("annotations").or_insert(json!({})));
        if let Some(a) = annotations.and_then(Value::as_object_mut) {
            a.insert("pv.kubernetes.io/bind-completed".into(), json!("yes"));
            a.insert("pv.kubernetes.io/bound-by-controller".into(), json!("yes"));
            a.insert(
                "volume.kubernetes.io/storage-provisioner".into(),
                json!(LOCAL_PROVISIONER),
            );
            if let Some(node) = pv_nodes(pv).and_then(|n| n.into_iter().next()) {
                a.insert("volume.kubernetes.io/selected-node".into(), json!(node));
            }
        }
        pvc = internal::replace(
            store,
            PVCS,
            Some(&ns),
            &claim,
            pvc,
            false,
            MANAGER,
            Fence::default(),
        )
        .await
        .map_err(api_err)?
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} changed while being bound"))?;
    }
    if str_at(&pvc, "/status/phase") != "Bound" {
        pvc["status"] = json!({
            "phase": "Bound",
            "accessModes": pv.at("/spec/accessModes").cloned().unwrap_or(json!([])),
            "capacity": pv.at("/spec/capacity").cloned().unwrap_or(json!({})),
        });
        internal::replace(
            store,
            PVCS,
            Some(&ns),
            &claim,
            pvc,
            true,
            MANAGER,
            Fence::default(),
        )
        .await
        .map_err(api_err)?;
    }
    Ok(())
}

/// Reclaims this node's local volumes whose claims are gone, until `shutdown`.
pub async fn run_reclaimer(store: Store, node: String, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let Err(e) = reclaim(&store, &node).await {
            tracing::debug!(error = %e, "reclaiming local volumes failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(RECLAIM_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn reclaim(store: &Store, node: &str) -> Result<(), String> {
    let pvs = store
        .range("/registry/core/persistentvolumes/", usize::MAX, Read::Local)
        .await
        .map_err(|e| e.to_string())?;
    for kv in pvs.kvs {
        let Ok(mut pv) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        pv["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
        let ours = pv
            .at("/metadata/annotations")
            .and_then(|a| a.get(PROVISIONED_BY))
            .and_then(Value::as_str)
            == Some(LOCAL_PROVISIONER)
            && pv_nodes(&pv).is_some_and(|n| n.iter().any(|n| n == node));
        if !ours || pv.at("/spec/claimRef").is_none() {
            continue;
        }
        let ns = str_at(&pv, "/spec/claimRef/namespace").to_owned();
        let claim = str_at(&pv, "/spec/claimRef/name").to_owned();
        let claim_uid = str_at(&pv, "/spec/claimRef/uid");
        let current = get(store, &pvc_key(&ns, &claim)).await?;
        if current.is_some_and(|c| str_at(&c, "/metadata/uid") == claim_uid) {
            continue;
        }
        if claim_in_use(store, &ns, &claim).await? {
            continue;
        }
        let name = str_at(&pv, "/metadata/name").to_owned();
        if str_at(&pv, "/spec/persistentVolumeReclaimPolicy") == "Delete" {
            if let Some(path) = pv_path(&pv) {
                let dir = path.clone();
                let removed =
                    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                        _ => Ok(()),
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                if let Err(e) = removed {
                    tracing::warn!(pv = %name, path = %path.display(), error = %e, "removing a local volume failed");
                    continue;
                }
            }
            internal::delete(
                store,
                PVS,
                None,
                &name,
                Some(str_at(&pv, "/metadata/uid")),
                None,
                Fence::default(),
            )
            .await
            .map_err(api_err)?;
            tracing::info!(pv = %name, claim = %format!("{ns}/{claim}"), "deleted a local volume whose claim is gone");
        } else if str_at(&pv, "/status/phase") != "Released" {
            let mut updated = pv.clone();
            updated["status"] = json!({"phase": "Released"});
            internal::replace(
                store,
                PVS,
                None,
                &name,
                updated,
                true,
                MANAGER,
                Fence::default(),
            )
            .await
            .map_err(api_err)?;
        }
    }
    Ok(())
}

/// Whether a pod that has not finished still names the claim (Kubernetes' pvc-protection:
/// the data stays while a pod may use it).
async fn claim_in_use(store: &Store, ns: &str, claim: &str) -> Result<bool, String> {
    let pods = store
        .range(
            &format!("/registry/core/pods/{ns}/"),
            usize::MAX,
            Read::Linearizable,
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(pods.kvs.iter().any(|kv| {
        let Ok(pod) = serde_json::from_slice::<Value>(&kv.value) else {
            return false;
        };
        !matches!(str_at(&pod, "/status/phase"), "Succeeded" | "Failed")
            && pod
                .at("/spec/volumes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|v| str_at(v, "/persistentVolumeClaim/claimName") == claim)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioned_volumes_are_pinned_to_their_node() {
        let pvc = json!({"metadata": {"name": "data-web-0", "namespace": "default", "uid": "u1", "resourceVersion": "7"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}});
        let class = json!({"metadata": {"name": "local"}, "reclaimPolicy": "Delete"});
        let pv = local_pv(&pvc, &class, "n2", Path::new("/data/volumes/pvc-u1"));
        assert_eq!(str_at(&pv, "/metadata/name"), "pvc-u1");
        assert_eq!(pv_nodes(&pv), Some(vec!["n2".to_owned()]));
        assert_eq!(pv_path(&pv), Some(PathBuf::from("/data/volumes/pvc-u1")));
        assert_eq!(str_at(&pv, "/spec/capacity/storage"), "2Gi");
        assert_eq!(str_at(&pv, "/spec/claimRef/uid"), "u1");
        assert_eq!(str_at(&pv, "/spec/persistentVolumeReclaimPolicy"), "Delete");
        assert_eq!(
            pv_nodes(&json!({"spec": {"hostPath": {"path": "/x"}}})),
            None
        );
    }
}
