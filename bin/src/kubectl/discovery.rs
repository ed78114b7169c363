//! Resource types from the server's discovery documents, and how command-line type names map
//! to them (plural, singular, short names, kinds, `plural.group`).

use kube::Client;
use kube::core::ApiResource;

/// One resource of one group-version, as discovery describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    /// Whether `version` is the group's preferred (first listed) version.
    pub preferred: bool,
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.clone(),
            version: self.version.clone(),
            api_version: self.api_version(),
            kind: self.kind.clone(),
            plural: self.plural.clone(),
        }
    }

    /// How errors name the resource: `deployments.apps`, `configmaps`.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// How kubectl names objects of this resource: `deployment.apps` (in `deployment.apps/web`).
    pub fn kind_group(&self) -> String {
        let kind = self.kind.to_lowercase();
        if self.group.is_empty() {
            kind
        } else {
            format!("{kind}.{}", self.group)
        }
    }

    /// `deployment.apps/web`.
    pub fn object_name(&self, name: &str) -> String {
        format!("{}/{name}", self.kind_group())
    }

    /// The collection URL: `/apis/apps/v1/namespaces/ns/deployments`; all namespaces for
    /// `None`.
    pub fn collection_path(&self, ns: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match ns.filter(|_| self.namespaced) {
            // Encoded: a namespace flag must not be able to change the path.
            Some(ns) => format!("{base}/namespaces/{}/{}", encode_segment(ns), self.plural),
            None => format!("{base}/{}", self.plural),
        }
    }

    /// One object's URL; the name is percent-encoded where it could break the path.
    pub fn object_path(&self, ns: Option<&str>, name: &str) -> String {
        format!("{}/{}", self.collection_path(ns), encode_segment(name))
    }
}

/// Percent-encodes what cannot appear in one path segment (names are validated by the server;
/// this only keeps odd input from changing the path).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Every resource the server serves: aggregated discovery (two requests), falling back to the
/// per-group documents for servers without it.
pub async fn discover(client: &Client) -> anyhow::Result<Vec<ResourceInfo>> {
    let aggregated = async {
        let core = client.list_core_api_versions_aggregated().await?;
        let groups = client.list_api_groups_aggregated().await?;
        Ok::<_, kube::Error>((core, groups))
    };
    match aggregated.await {
        Ok((core, groups)) if !core.items.is_empty() => {
            let mut out = Vec::new();
            for g in core.items.into_iter().chain(groups.items) {
                let group = g.metadata.and_then(|m| m.name).unwrap_or_default();
                for (i, v) in g.versions.into_iter().enumerate() {
                    let version = v.version.unwrap_or_default();
                    for r in v.resources {
                        let Some(plural) = r.resource.filter(|p| !p.contains('/')) else {
                            continue;
                        };
                        let kind = r.response_kind.and_then(|k| k.kind).unwrap_or_default();
                        out.push(ResourceInfo {
                            group: group.clone(),
                            version: version.clone(),
                            singular: r
                                .singular_resource
                                .filter(|s| !s.is_empty())
                                .unwrap_or_else(|| kind.to_lowercase()),
                            kind,
                            plural,
                            short_names: r.short_names,
                            categories: r.categories,
                            namespaced: r.scope.as_deref() == Some("Namespaced"),
                            preferred: i == 0,
                        });
                    }
                }
            }
            Ok(out)
        }
        Ok(_) | Err(kube::Error::Api(_)) | Err(kube::Error::SerdeError(_)) => {
            legacy_discover(client).await
        }
        Err(e) => Err(e.into()),
    }
}

async fn legacy_discover(client: &Client) -> anyhow::Result<Vec<ResourceInfo>> {
    let mut lists = Vec::new();
    let core = client.list_core_api_versions().await?;
    for (i, v) in core.versions.iter().enumerate() {
        lists.push((
            String::new(),
            i == 0,
            client.list_core_api_resources(v).await?,
        ));
    }
    for g in client.list_api_groups().await?.groups {
        let preferred = g
            .preferred_version
            .as_ref()
            .map(|p| p.version.clone())
            .or_else(|| g.versions.first().map(|v| v.version.clone()));
        for v in &g.versions {
            let list = client.list_api_group_resources(&v.group_version).await?;
            lists.push((
                g.name.clone(),
                preferred.as_deref() == Some(v.version.as_str()),
                list,
            ));
        }
    }
    let mut out = Vec::new();
    for (group, preferred, list) in lists {
        let version = list
            .group_version
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        for r in list.resources {
            if r.name.contains('/') {
                continue;
            }
            out.push(ResourceInfo {
                group: group.clone(),
                version: version.clone(),
                singular: if r.singular_name.is_empty() {
                    r.kind.to_lowercase()
                } else {
                    r.singular_name
                },
                kind: r.kind,
                plural: r.name,
                short_names: r.short_names.unwrap_or_default(),
                categories: r.categories.unwrap_or_default(),
                namespaced: r.namespaced,
                preferred,
            });
        }
    }
    Ok(out)
}

/// Preferred versions first, so a bare type name picks the version kubectl would.
fn by_preference(all: &[ResourceInfo]) -> impl Iterator<Item = &ResourceInfo> {
    all.iter()
        .filter(|r| r.preferred)
        .chain(all.iter().filter(|r| !r.preferred))
}

fn names_match(r: &ResourceInfo, name: &str) -> bool {
    r.plural == name
        || r.singular == name
        || r.kind.to_lowercase() == name
        || r.short_names.iter().any(|s| s == name)
}

/// Resolves one type as typed on the command line.
pub fn resolve(all: &[ResourceInfo], ty: &str) -> anyhow::Result<ResourceInfo> {
    let lower = ty.trim().to_lowercase();
    if lower.is_empty() {
        anyhow::bail!("resource type may not be empty");
    }
    if let Some(r) = by_preference(all).find(|r| names_match(r, &lower)) {
        return Ok(r.clone());
    }
    // `deployments.apps`, `deployment.v1.apps`.
    if let Some((name, rest)) = lower.split_once('.')
        && let Some(r) = by_preference(all).find(|r| {
            names_match(r, name)
                && (r.group == rest || format!("{}.{}", r.version, r.group) == rest)
        })
    {
        return Ok(r.clone());
    }
    anyhow::bail!("the server doesn't have a resource type \"{ty}\"")
}

/// Resolves `TYPE[,TYPE...]`; `all` stands for the resources in the `all` category.
pub fn resolve_list(all: &[ResourceInfo], types: &str) -> anyhow::Result<Vec<ResourceInfo>> {
    let mut out: Vec<ResourceInfo> = Vec::new();
    for ty in types.split(',').filter(|t| !t.trim().is_empty()) {
        let found = if ty.trim().eq_ignore_ascii_case("all") {
            by_preference(all)
                .filter(|r| r.preferred && r.categories.iter().any(|c| c == "all"))
                .cloned()
                .collect()
        } else {
            vec![resolve(all, ty)?]
        };
        for r in found {
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    if out.is_empty() {
        anyhow::bail!("the server doesn't have a resource type \"{types}\"");
    }
    Ok(out)
}

/// The resource serving objects of `apiVersion` + `kind`.
pub fn for_kind(
    all: &[ResourceInfo],
    api_version: &str,
    kind: &str,
) -> anyhow::Result<ResourceInfo> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    all.iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
        .cloned()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no matches for kind \"{kind}\" in version \"{api_version}\"\nensure CRDs are installed first"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(group: &str, version: &str, kind: &str, plural: &str, short: &[&str]) -> ResourceInfo {
        ResourceInfo {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: if plural == "pods" || plural == "deployments" {
                vec!["all".into()]
            } else {
                vec![]
            },
            namespaced: plural != "namespaces",
            preferred: true,
        }
    }

    fn table() -> Vec<ResourceInfo> {
        vec![
            r("", "v1", "Namespace", "namespaces", &["ns"]),
            r("", "v1", "Pod", "pods", &["po"]),
            r("", "v1", "ConfigMap", "configmaps", &["cm"]),
            r("apps", "v1", "Deployment", "deployments", &["deploy"]),
        ]
    }

    #[test]
    fn type_names_resolve_like_kubectl() {
        let t = table();
        for ty in [
            "deployments",
            "deployment",
            "deploy",
            "Deployment",
            "deployments.apps",
            "deployment.apps",
            "deployments.v1.apps",
        ] {
            assert_eq!(resolve(&t, ty).unwrap().plural, "deployments", "{ty}");
        }
        assert_eq!(resolve(&t, "cm").unwrap().plural, "configmaps");
        let e = resolve(&t, "foo").unwrap_err().to_string();
        assert_eq!(e, "the server doesn't have a resource type \"foo\"");
        assert!(resolve(&t, "deployments.batch").is_err());
        let all = resolve_list(&t, "all").unwrap();
        assert_eq!(all.len(), 2);
        let two = resolve_list(&t, "cm,deploy,cm").unwrap();
        assert_eq!(two.len(), 2);
    }

    #[test]
    fn names_and_paths() {
        let t = table();
        let d = resolve(&t, "deploy").unwrap();
        assert_eq!(d.object_name("web"), "deployment.apps/web");
        assert_eq!(d.qualified_plural(), "deployments.apps");
        assert_eq!(
            d.object_path(Some("ns1"), "web"),
            "/apis/apps/v1/namespaces/ns1/deployments/web"
        );
        assert_eq!(
            d.collection_path(Some("a/../b")),
            "/apis/apps/v1/namespaces/a%2F..%2Fb/deployments"
        );
        assert_eq!(d.collection_path(None), "/apis/apps/v1/deployments");
        let ns = resolve(&t, "ns").unwrap();
        assert_eq!(ns.object_path(Some("x"), "a b"), "/api/v1/namespaces/a%20b");
        assert!(for_kind(&t, "apps/v1", "Deployment").is_ok());
        assert!(for_kind(&t, "apps/v2", "Deployment").is_err());
    }
}
