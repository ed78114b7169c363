//! What a container is made from: its env (values, ConfigMap/Secret keys, the downward
//! API) and the pod's volumes on the host, kept up to date while the pod runs.

use flotilla_api::At;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use flotilla_consensus::Read;
use serde_json::Value;

use super::{
    PodWorker, PreparedVolume, VOLUME_REFRESH, base64_decode, limits_of, list, name_of, str_at,
};
use crate::kubelet::downward::{self, PodFacts};
use crate::kubelet::volumes;
use crate::runtime::{ContainerConfig, Mount};

impl PodWorker {
    /// The runtime's view of a container: command, env (resolved), mounts, limits.
    pub(super) async fn container_config(
        &mut self,
        pod: &Value,
        spec: &Value,
        attempt: u32,
    ) -> Result<ContainerConfig, String> {
        let strings = |p: &str| -> Vec<String> {
            spec.at(p)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut env = Vec::new();
        for e in list(spec, "/env") {
            let name = str_at(&e, "/name");
            if let Some(v) = e.get("value").and_then(Value::as_str) {
                env.push((name, v.to_owned()));
            } else if let Some(from) = e.get("valueFrom") {
                if let Some(v) = self.env_from_source(pod, spec, from).await? {
                    env.push((name, v));
                }
            } else {
                env.push((name, String::new()));
            }
        }
        let ns = str_at(pod, "/metadata/namespace");
        for src in list(spec, "/envFrom") {
            let prefix = str_at(&src, "/prefix");
            let (kind, obj_name) = if let Some(r) = src.get("configMapRef") {
                ("configmaps", str_at(r, "/name"))
            } else if let Some(r) = src.get("secretRef") {
                ("secrets", str_at(r, "/name"))
            } else {
                continue;
            };
            if let Some(data) = self.read_data(kind, &ns, &obj_name).await {
                for (k, v) in data {
                    env.push((format!("{prefix}{k}"), v));
                }
            }
        }
        let volumes = self.prepare_volumes(pod).await?;
        self.volumes_written = Some(Instant::now());
        let mut mounts = Vec::new();
        for m in list(spec, "/volumeMounts") {
            let vol = str_at(&m, "/name");
            let Some(prepared) = volumes.get(&vol) else {
                return Err(format!("volume {vol:?} not found"));
            };
            let sub = str_at(&m, "/subPath");
            if !sub.is_empty()
                && !Path::new(&sub)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)))
            {
                return Err(format!(
                    "invalid subPath {sub:?}: must be relative and contain no '..'"
                ));
            }
            mounts.push(Mount {
                // A subPath of an atomically written volume resolves its `..data` symlink now,
                // so the mount keeps this version's file, as in Kubernetes.
                host_path: if sub.is_empty() {
                    prepared.path.clone()
                } else {
                    prepared.path.join(sub)
                },
                container_path: PathBuf::from(str_at(&m, "/mountPath")),
                read_only: prepared.read_only
                    || m.get("readOnly").and_then(Value::as_bool).unwrap_or(false),
            });
        }
        Ok(ContainerConfig {
            name: str_at(spec, "/name"),
            image: str_at(spec, "/image"),
            command: strings("/command"),
            args: strings("/args"),
            env,
            working_dir: spec
                .get("workingDir")
                .and_then(Value::as_str)
                .map(str::to_owned),
            mounts,
            limits: limits_of(spec),
            attempt,
            stdin: spec.get("stdin").and_then(Value::as_bool).unwrap_or(false),
            tty: spec.get("tty").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    async fn env_from_source(
        &self,
        pod: &Value,
        spec: &Value,
        from: &Value,
    ) -> Result<Option<String>, String> {
        let ns = str_at(pod, "/metadata/namespace");
        let keyed = |r: &Value, kind: &'static str| {
            (
                kind,
                str_at(r, "/name"),
                str_at(r, "/key"),
                r.get("optional").and_then(Value::as_bool).unwrap_or(false),
            )
        };
        let source = if let Some(r) = from.get("configMapKeyRef") {
            Some(keyed(r, "configmaps"))
        } else {
            from.get("secretKeyRef").map(|r| keyed(r, "secrets"))
        };
        if let Some((kind, name, key, optional)) = source {
            let value = self
                .read_data(kind, &ns, &name)
                .await
                .and_then(|d| d.into_iter().find(|(k, _)| *k == key).map(|(_, v)| v));
            return match (value, optional) {
                (Some(v), _) => Ok(Some(v)),
                (None, true) => Ok(None),
                (None, false) => Err(format!(
                    "couldn't find key {key} in {} {ns}/{name}",
                    if kind == "secrets" {
                        "Secret"
                    } else {
                        "ConfigMap"
                    }
                )),
            };
        }
        if let Some(f) = from.get("fieldRef") {
            let pod_ip = self.pod_ip();
            let facts = PodFacts {
                node_name: &self.config.node_name,
                host_ip: &self.config.host_ip,
                pod_ip: pod_ip.as_deref(),
            };
            return downward::field_value(pod, &facts, &str_at(f, "/fieldPath")).map(Some);
        }
        if let Some(r) = from.get("resourceFieldRef") {
            let allocatable = self.node_allocatable().await;
            return self
                .resource_field(pod, Some(spec), r, allocatable.as_ref())
                .map(Some);
        }
        Ok(None)
    }

    /// A `resourceFieldRef`: of the container it names, or of `own` (env refs may omit it).
    fn resource_field(
        &self,
        pod: &Value,
        own: Option<&Value>,
        r: &Value,
        allocatable: Option<&Value>,
    ) -> Result<String, String> {
        let wanted = str_at(r, "/containerName");
        let container = if wanted.is_empty() {
            own.cloned()
        } else {
            list(pod, "/spec/containers")
                .into_iter()
                .chain(list(pod, "/spec/initContainers"))
                .find(|c| str_at(c, "/name") == wanted)
        }
        .ok_or_else(|| format!("resourceFieldRef: container {wanted:?} not found"))?;
        let divisor = match r.get("divisor") {
            Some(Value::String(d)) => Some(d.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        downward::resource_value(
            &container,
            &str_at(r, "/resource"),
            divisor.as_deref(),
            allocatable,
        )
    }

    /// The node's `status.allocatable` (what unset limits stand for), if its object is there.
    async fn node_allocatable(&self) -> Option<Value> {
        let key = format!("/registry/core/nodes/{}", self.config.node_name);
        let kv = self.config.store.get(&key, Read::Local).await.ok()?.kv?;
        let node: Value = serde_json::from_slice(&kv.value).ok()?;
        node.at("/status/allocatable").cloned()
    }

    /// `data` of a ConfigMap or Secret (Secret values decoded), or None if absent.
    async fn read_data(&self, kind: &str, ns: &str, name: &str) -> Option<Vec<(String, String)>> {
        let key = format!("/registry/core/{kind}/{ns}/{name}");
        let kv = self.config.store.get(&key, Read::Local).await.ok()?.kv?;
        let obj: Value = serde_json::from_slice(&kv.value).ok()?;
        let data = obj.get("data")?.as_object()?;
        Some(
            data.iter()
                .filter_map(|(k, v)| {
                    let s = v.as_str()?;
                    let value = if kind == "secrets" {
                        String::from_utf8(base64_decode(s)?).ok()?
                    } else {
                        s.to_owned()
                    };
                    Some((k.clone(), value))
                })
                .collect(),
        )
    }

    /// The bytes of a ConfigMap's `data` and `binaryData`, or a Secret's `data` (decoded);
    /// None if the object does not exist.
    async fn read_object_data(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> Option<BTreeMap<String, Vec<u8>>> {
        let key = format!("/registry/core/{kind}/{ns}/{name}");
        let kv = self.config.store.get(&key, Read::Local).await.ok()?.kv?;
        let obj: Value = serde_json::from_slice(&kv.value).ok()?;
        let mut out = BTreeMap::new();
        let sections: &[(&str, bool)] = if kind == "secrets" {
            &[("data", true)]
        } else {
            &[("data", false), ("binaryData", true)]
        };
        for (section, encoded) in sections {
            let Some(map) = obj.get(*section).and_then(Value::as_object) else {
                continue;
            };
            for (k, v) in map {
                let Some(text) = v.as_str() else { continue };
                let bytes = if *encoded {
                    match base64_decode(text) {
                        Some(b) => b,
                        None => continue,
                    }
                } else {
                    text.as_bytes().to_vec()
                };
                out.insert(k.clone(), bytes);
            }
        }
        Some(out)
    }

    /// The files a configMap, secret, downwardAPI or projected volume holds now; None for
    /// other kinds of volume.
    async fn volume_payload(
        &self,
        pod: &Value,
        volume: &Value,
    ) -> Result<Option<volumes::Payload>, String> {
        let ns = str_at(pod, "/metadata/namespace");
        let (default_mode, sources) = if let Some(src) = volume.get("configMap") {
            (src.get("defaultMode"), vec![("configMap", src)])
        } else if let Some(src) = volume.get("secret") {
            (src.get("defaultMode"), vec![("secret", src)])
        } else if let Some(src) = volume.get("downwardAPI") {
            (src.get("defaultMode"), vec![("downwardAPI", src)])
        } else if let Some(p) = volume.get("projected") {
            let sources = p
                .get("sources")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|s| {
                    let o = s.as_object()?;
                    let (kind, src) = o.iter().find(|(_, v)| v.is_object())?;
                    Some((kind.as_str(), src))
                })
                .collect();
            (p.get("defaultMode"), sources)
        } else {
            return Ok(None);
        };
        let default_mode = volumes::mode_of(default_mode, volumes::DEFAULT_MODE)?;
        let mut payload = volumes::Payload::new();
        let mut allocatable = None;
        for (kind, src) in sources {
            let files = match kind {
                "configMap" | "secret" => {
                    let (plural, field, label) = if kind == "secret" {
                        ("secrets", "/secretName", "secret")
                    } else {
                        ("configmaps", "/name", "configmap")
                    };
                    // Projected secrets say `name`, secret volumes `secretName`.
                    let mut obj_name = str_at(src, field);
                    if obj_name.is_empty() {
                        obj_name = str_at(src, "/name");
                    }
                    let data = self.read_object_data(plural, &ns, &obj_name).await;
                    volumes::keyed_files(
                        &format!("{label} {obj_name:?}"),
                        data.as_ref(),
                        src,
                        default_mode,
                    )?
                }
                "downwardAPI" => {
                    let items = list(src, "/items");
                    if allocatable.is_none()
                        && items.iter().any(|i| i.get("resourceFieldRef").is_some())
                    {
                        allocatable = Some(self.node_allocatable().await);
                    }
                    let pod_ip = self.pod_ip();
                    let facts = PodFacts {
                        node_name: &self.config.node_name,
                        host_ip: &self.config.host_ip,
                        pod_ip: pod_ip.as_deref(),
                    };
                    let alloc = allocatable.clone().flatten();
                    volumes::downward_files(&items, default_mode, |item| {
                        if let Some(f) = item.get("fieldRef") {
                            downward::field_value(pod, &facts, &str_at(f, "/fieldPath"))
                        } else if let Some(r) = item.get("resourceFieldRef") {
                            self.resource_field(pod, None, r, alloc.as_ref())
                        } else {
                            Err(format!(
                                "downwardAPI item {:?} needs fieldRef or resourceFieldRef",
                                str_at(item, "/path")
                            ))
                        }
                    })?
                }
                other => {
                    // serviceAccountToken (and clusterTrustBundle) need a token issuer and
                    // trust bundles Flotilla does not have yet; the files are left out rather
                    // than faked.
                    tracing::debug!(pod = %name_of(pod), source = other, "projected source not supported; skipped");
                    continue;
                }
            };
            payload.extend(files);
        }
        Ok(Some(payload))
    }

    /// Host directories for the pod's volumes: emptyDir (a tmpfs for `medium: Memory`) and
    /// configMap, secret, downwardAPI and projected files under the pod directory, hostPath
    /// as given. Rewriting an unchanged volume changes nothing.
    async fn prepare_volumes(
        &self,
        pod: &Value,
    ) -> Result<HashMap<String, PreparedVolume>, String> {
        let mut out = HashMap::new();
        for v in list(pod, "/spec/volumes") {
            let name = str_at(&v, "/name");
            let dir = self.pod_dir().join("volumes").join(&name);
            let prepared = if let Some(claim) = v.get("persistentVolumeClaim") {
                let path = crate::kubelet::local_volumes::claim_path(
                    &self.config.store,
                    &self.config.node_name,
                    &self.config.volumes_dir,
                    &str_at(pod, "/metadata/namespace"),
                    &str_at(claim, "/claimName"),
                )
                .await?;
                PreparedVolume {
                    path,
                    read_only: claim.get("readOnly").and_then(Value::as_bool) == Some(true),
                }
            } else if let Some(hp) = v.get("hostPath") {
                let path = PathBuf::from(str_at(hp, "/path"));
                if str_at(hp, "/type") == "DirectoryOrCreate" {
                    std::fs::create_dir_all(&path)
                        .map_err(|e| format!("hostPath {}: {e}", path.display()))?;
                }
                PreparedVolume {
                    path,
                    read_only: false,
                }
            } else if let Some(payload) = self.volume_payload(pod, &v).await? {
                // Secret and projected files live in memory, as in Kubernetes: secrets are
                // never written to the node's disk.
                if v.get("secret").is_some() || v.get("projected").is_some() {
                    volumes::ensure_memory_dir(&dir, None)
                        .map_err(|e| format!("volume {name:?}: tmpfs: {e}"))?;
                }
                let target = dir.clone();
                tokio::task::spawn_blocking(move || volumes::write_atomic(&target, &payload))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("volume {name:?}: {e}"))?;
                PreparedVolume {
                    path: dir,
                    read_only: true,
                }
            } else {
                let memory = v.at("/emptyDir/medium").and_then(Value::as_str) == Some("Memory");
                if memory {
                    let size = v
                        .at("/emptyDir/sizeLimit")
                        .and_then(Value::as_str)
                        .and_then(downward::parse_nanos)
                        .and_then(|n| u64::try_from(n / 1_000_000_000).ok())
                        .filter(|n| *n > 0);
                    volumes::ensure_memory_dir(&dir, size)
                        .map_err(|e| format!("volume {name:?}: tmpfs: {e}"))?;
                } else {
                    // emptyDir, and sources not materialised, get an empty directory.
                    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                }
                PreparedVolume {
                    path: dir,
                    read_only: false,
                }
            };
            out.insert(name, prepared);
        }
        Ok(out)
    }

    /// Brings mounted configMap, secret, downwardAPI and projected volumes up to date (at most
    /// every `VOLUME_REFRESH`). A volume whose source broke (a deleted ConfigMap) keeps its
    /// last files, as in Kubernetes.
    pub(super) async fn refresh_volumes(&mut self, pod: &Value) {
        // Only once a container uses them: one re-adopted after a daemon restart counts.
        let in_use = self.records.values().any(|r| r.id.is_some());
        if !in_use
            || self
                .volumes_written
                .is_some_and(|t| t.elapsed() < VOLUME_REFRESH)
        {
            return;
        }
        self.volumes_written = Some(Instant::now());
        for v in list(pod, "/spec/volumes") {
            let dir = self.pod_dir().join("volumes").join(str_at(&v, "/name"));
            match self.volume_payload(pod, &v).await {
                Ok(Some(payload)) => {
                    let written =
                        tokio::task::spawn_blocking(move || volumes::write_atomic(&dir, &payload))
                            .await;
                    if let Ok(Err(e)) = written {
                        tracing::warn!(pod = %name_of(pod), error = %e, "updating a volume failed");
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(pod = %name_of(pod), error = %e, "volume not updated"),
            }
        }
    }
}
