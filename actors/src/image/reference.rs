//! Image references normalised the way Docker does: `busybox` is
//! `docker.io/library/busybox:latest`, `registry:5000/x/y:tag` keeps its registry, and
//! `name@sha256:…` pins a manifest digest.

use std::fmt;

use super::digest::is_hex64;

/// Docker Hub's canonical domain and the host its registry API is served from.
pub const DOCKER_HUB: &str = "docker.io";
pub(crate) const DOCKER_HUB_REGISTRY: &str = "registry-1.docker.io";

/// A parsed, normalised reference. `Display` gives the canonical string the store keys on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host (and port): `docker.io`, `registry:5000`, `localhost`.
    pub domain: String,
    /// Repository path in the registry: `library/busybox`, `x/y`.
    pub path: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`; when present it wins over the tag.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses and normalises `s`; a reference with neither tag nor digest gets `latest`.
    pub fn parse(s: &str) -> Result<Reference, String> {
        if s.is_empty() || s.len() > 512 {
            return Err("invalid reference: empty or too long".into());
        }
        let (name, digest) = match s.split_once('@') {
            Some((name, digest)) => {
                let hex = digest
                    .strip_prefix("sha256:")
                    .ok_or_else(|| format!("invalid reference {s:?}: only sha256 digests"))?;
                if !is_hex64(hex) {
                    return Err(format!("invalid reference {s:?}: bad digest"));
                }
                (name, Some(digest.to_owned()))
            }
            None => (s, None),
        };
        // A tag is the part after the last ':' when no '/' follows it (`registry:5000/x` has a
        // port, not a tag).
        let (name, tag) = match name.rfind(':') {
            Some(i) if !name[i + 1..].contains('/') => (&name[..i], Some(&name[i + 1..])),
            _ => (name, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(format!("invalid reference {s:?}: bad tag {tag:?}"));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let domain = if domain == "index.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            domain
        };
        if !valid_domain(&domain) {
            return Err(format!("invalid reference {s:?}: bad registry {domain:?}"));
        }
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "invalid reference {s:?}: repository name must be lowercase"
            ));
        }
        if path.is_empty() || !path.split('/').all(valid_component) {
            return Err(format!("invalid reference {s:?}: bad repository name"));
        }
        if is_hex64(&path) && domain == DOCKER_HUB && tag.is_none() && digest.is_none() {
            return Err(format!("{s:?} is an image id, not a reference"));
        }
        let path = if domain == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_owned()),
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// `docker.io/library/busybox`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The short form `docker images` shows: `busybox`, `user/app`, `registry:5000/x/y`.
    pub fn familiar_repository(&self) -> String {
        if self.domain == DOCKER_HUB {
            self.path
                .strip_prefix("library/")
                .filter(|p| !p.contains('/'))
                .unwrap_or(&self.path)
                .to_owned()
        } else {
            self.repository()
        }
    }

    /// The key the store files the image under: `repo@digest` when pinned, else `repo:tag`.
    pub fn store_key(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{}@{d}", self.repository()),
            (None, Some(t)) => format!("{}:{t}", self.repository()),
            (None, None) => self.repository(),
        }
    }

    /// The host the registry API answers on (`registry-1.docker.io` for Docker Hub).
    pub(crate) fn registry_host(&self) -> &str {
        if self.domain == DOCKER_HUB {
            DOCKER_HUB_REGISTRY
        } else {
            &self.domain
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Normalises `s` to the store's key (see [`Reference::store_key`]).
pub fn normalize_reference(s: &str) -> Result<String, String> {
    Reference::parse(s).map(|r| r.store_key())
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 255
        && d.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'[' | b']'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(&b[0]) || !alnum(&b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(&b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(&b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> String {
        normalize_reference(s).unwrap()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(key("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(key("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(
            key("library/busybox:1.36"),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(key("docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(
            key("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(key("user/app:v1"), "docker.io/user/app:v1");
        assert_eq!(key("registry:5000/x/y:tag"), "registry:5000/x/y:tag");
        assert_eq!(key("registry:5000/x/y"), "registry:5000/x/y:latest");
        assert_eq!(key("localhost/app"), "localhost/app:latest");
        assert_eq!(
            key("quay.io/a/b-c__d.e:1.0_rc-1"),
            "quay.io/a/b-c__d.e:1.0_rc-1"
        );
        let d = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(
            key(&format!("busybox@{d}")),
            format!("docker.io/library/busybox@{d}")
        );
        assert_eq!(
            key(&format!("busybox:1.36@{d}")),
            format!("docker.io/library/busybox@{d}")
        );
        let r = Reference::parse("busybox:1.36").unwrap();
        assert_eq!(r.familiar_repository(), "busybox");
        assert_eq!(r.to_string(), "docker.io/library/busybox:1.36");
        assert_eq!(r.registry_host(), "registry-1.docker.io");
        let r = Reference::parse("registry:5000/x/y").unwrap();
        assert_eq!(r.familiar_repository(), "registry:5000/x/y");
        assert_eq!(
            Reference::parse("user/app").unwrap().familiar_repository(),
            "user/app"
        );
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busy..box",
            "busybox@sha256:abc",
            "busybox@md5:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "/busybox",
            "a//b",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
