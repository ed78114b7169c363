//! The JSON documents of OCI image layouts, registries and `docker save` archives (only the
//! fields the store reads).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub(crate) const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const MT_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Annotations naming an image in an OCI layout's index.
pub(crate) const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub(crate) const ANN_CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformJson>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PlatformJson {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An OCI index or a Docker manifest list; `manifests` tells it from a manifest.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexJson {
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestJson {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// Enough of any manifest-ish document to tell which kind it is.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProbeJson {
    #[serde(default)]
    pub schema_version: Option<u32>,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Option<serde_json::Value>,
    #[serde(default)]
    pub layers: Option<serde_json::Value>,
}

pub(crate) enum Kind {
    Index,
    Manifest,
}

/// Whether `doc` is an index (manifest list) or an image manifest.
pub(crate) fn kind_of(doc: &[u8], media_type: Option<&str>) -> Result<Kind, String> {
    match media_type {
        Some(MT_OCI_INDEX | MT_DOCKER_LIST) => return Ok(Kind::Index),
        Some(MT_OCI_MANIFEST | MT_DOCKER_MANIFEST) => return Ok(Kind::Manifest),
        _ => {}
    }
    let probe: ProbeJson =
        serde_json::from_slice(doc).map_err(|e| format!("not a manifest or index: {e}"))?;
    if probe.schema_version == Some(1) {
        return Err("Docker schema 1 manifests are not supported".into());
    }
    match probe.media_type.as_deref() {
        Some(MT_OCI_INDEX | MT_DOCKER_LIST) => Ok(Kind::Index),
        Some(MT_OCI_MANIFEST | MT_DOCKER_MANIFEST) => Ok(Kind::Manifest),
        _ if probe.manifests.is_some() => Ok(Kind::Index),
        _ if probe.layers.is_some() => Ok(Kind::Manifest),
        other => Err(format!("unsupported manifest media type {other:?}")),
    }
}

/// The image configuration (`application/vnd.oci.image.config.v1+json`).
#[derive(Debug, Deserialize)]
pub(crate) struct ConfigJson {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<ContainerConfigJson>,
    pub rootfs: RootFsJson,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerConfigJson {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RootFsJson {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// One image of a `docker save` archive's `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DockerSaveItem {
    pub config: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    pub layers: Vec<String>,
}

/// The platform images are chosen for from multi-platform indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// This machine, in OCI's (Go's) names.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }

    pub(crate) fn matches(&self, p: &PlatformJson) -> bool {
        p.os == self.os
            && p.architecture == self.architecture
            && match (&self.variant, &p.variant) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Picks the manifest for `platform` from an index's entries: the first matching one, skipping
/// attestations (`unknown/unknown`); an entry without a platform only when nothing matches.
pub(crate) fn pick_platform<'a>(
    manifests: &'a [Descriptor],
    platform: &Platform,
) -> Option<&'a Descriptor> {
    manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
        .or_else(|| manifests.iter().find(|d| d.platform.is_none()))
}
