//! Cluster CA, node identities and the rustls configs built from them.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::MeshError;

/// Every node certificate carries this DNS SAN and every client dials it, so a node is
/// authenticated as "a member of this cluster" regardless of its address.
pub const CLUSTER_SERVER_NAME: &str = "flotilla.cluster";

/// ALPN id; keeps unrelated QUIC/TLS clients from speaking to the RPC port.
pub(crate) const ALPN: &[u8] = b"flotilla-rpc/1";

fn tls_err(context: &str, e: impl std::fmt::Display) -> MeshError {
    MeshError::Tls(format!("{context}: {e}"))
}

/// The cluster certificate authority (certificate + private key, PEM).
#[derive(Clone)]
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Generates a fresh self-signed CA (ECDSA P-256) named after the cluster.
    pub fn generate(cluster_name: &str) -> Result<ClusterCa, MeshError> {
        let key = KeyPair::generate().map_err(|e| tls_err("generate CA key", e))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("flotilla CA {cluster_name}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "flotilla");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(|e| tls_err("self-sign CA", e))?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Loads a CA from PEM, checking that the key belongs to the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, MeshError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| tls_err("parse CA key", e))?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| tls_err("parse CA certificate PEM", e))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| tls_err("parse CA certificate", e))?;
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(MeshError::Tls(
                "CA key does not match CA certificate".to_string(),
            ));
        }
        // Fails early if rcgen cannot use it as an issuer.
        Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| tls_err("load CA issuer", e))?;
        Ok(ClusterCa {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a node (or client) certificate. `node_name` becomes the CN (which RPC servers
    /// report as the caller's name) and, when it is a valid DNS name, a DNS SAN. The cert also
    /// carries the SANs [`CLUSTER_SERVER_NAME`], "localhost" and 127.0.0.1, and is valid for
    /// both server and client authentication (one identity per node, both directions).
    pub fn issue(&self, node_name: &str) -> Result<Identity, MeshError> {
        if node_name.is_empty() {
            return Err(MeshError::Tls("node name must not be empty".to_string()));
        }
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(|e| tls_err("parse CA key", e))?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)
            .map_err(|e| tls_err("load CA issuer", e))?;

        let mut sans = Vec::new();
        for dns in [node_name, CLUSTER_SERVER_NAME, "localhost"] {
            if is_dns_name(dns) && !sans.contains(&dns.to_string()) {
                sans.push(dns.to_string());
            }
        }
        let mut params =
            CertificateParams::new(sans).map_err(|e| tls_err("certificate params", e))?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, node_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(|e| tls_err("generate node key", e))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| tls_err("sign node certificate", e))?;
        Ok(Identity {
            ca_pem: self.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `ca.pem` and `ca.key` (mode 0600) into `dir`, creating it if needed.
    pub fn write_files(&self, dir: &Path) -> Result<(), MeshError> {
        fs::create_dir_all(dir)
            .map_err(|e| MeshError::io(format!("create {}", dir.display()), e))?;
        write_file(&dir.join("ca.pem"), &self.cert_pem, 0o644)?;
        write_file(&dir.join("ca.key"), &self.key_pem, 0o600)
    }

    /// Reads `ca.pem` and `ca.key` from `dir`.
    pub fn load_files(dir: &Path) -> Result<ClusterCa, MeshError> {
        let cert = read_file(&dir.join("ca.pem"))?;
        let key = read_file(&dir.join("ca.key"))?;
        ClusterCa::from_pem(&cert, &key)
    }
}

/// A node's TLS identity: the cluster CA certificate plus its own certificate and key (PEM).
#[derive(Clone)]
pub struct Identity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.common_name().ok())
            .finish_non_exhaustive()
    }
}

impl Identity {
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Identity, MeshError> {
        let id = Identity {
            ca_pem: read_file(ca)?,
            cert_pem: read_file(cert)?,
            key_pem: read_file(key)?,
        };
        // Surface broken files at load time rather than at bind time.
        id.rustls_configs()?;
        Ok(id)
    }

    /// Writes `{stem}.pem`, `{stem}.key` (mode 0600) and `ca.pem` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(), MeshError> {
        fs::create_dir_all(dir)
            .map_err(|e| MeshError::io(format!("create {}", dir.display()), e))?;
        write_file(&dir.join(format!("{stem}.pem")), &self.cert_pem, 0o644)?;
        write_file(&dir.join(format!("{stem}.key")), &self.key_pem, 0o600)?;
        write_file(&dir.join("ca.pem"), &self.ca_pem, 0o644)
    }

    /// The CN of this identity's certificate (the node name it was issued for).
    pub fn common_name(&self) -> Result<String, MeshError> {
        let der = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| tls_err("parse certificate PEM", e))?;
        peer_common_name(&der)
            .ok_or_else(|| MeshError::Tls("certificate has no common name".to_string()))
    }

    /// Server and client configs: TLS 1.3 only, ring provider, and both sides require a peer
    /// chain that verifies against the cluster CA.
    pub(crate) fn rustls_configs(
        &self,
    ) -> Result<(rustls::ServerConfig, rustls::ClientConfig), MeshError> {
        let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err("parse certificate PEM", e))?;
        if chain.is_empty() {
            return Err(MeshError::Tls("no certificate in PEM".to_string()));
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| tls_err("parse private key PEM", e))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            let ca = ca.map_err(|e| tls_err("parse CA PEM", e))?;
            roots.add(ca).map_err(|e| tls_err("add CA root", e))?;
        }
        if roots.is_empty() {
            return Err(MeshError::Tls("no CA certificate in PEM".to_string()));
        }
        let roots = Arc::new(roots);

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| tls_err("client verifier", e))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_err("server protocol versions", e))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| tls_err("server certificate", e))?;
        server.alpn_protocols = vec![ALPN.to_vec()];

        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_err("client protocol versions", e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| tls_err("client certificate", e))?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        Ok((server, client))
    }
}

impl Identity {
    /// The HTTPS config of the API port: the node certificate, TLS 1.2 and 1.3 (kubectl and
    /// other clients), HTTP/2 and HTTP/1.1, and no client certificate required.
    pub fn https_server_config(&self) -> Result<rustls::ServerConfig, MeshError> {
        let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err("parse certificate PEM", e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| tls_err("parse private key PEM", e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err("https protocol versions", e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| tls_err("https certificate", e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// CN of a DER certificate; `None` when it cannot be parsed (never panics on peer data).
pub(crate) fn peer_common_name(der: &[u8]) -> Option<String> {
    let (_, x509) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = x509.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// Conservative DNS-name check so rcgen/webpki never see a SAN they would reject.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn read_file(path: &Path) -> Result<String, MeshError> {
    fs::read_to_string(path).map_err(|e| MeshError::io(format!("read {}", path.display()), e))
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), MeshError> {
    let ctx = || format!("write {}", path.display());
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| MeshError::io(ctx(), e))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| MeshError::io(ctx(), e))?;
    // `mode` only applies on creation; tighten pre-existing files too.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| MeshError::io(ctx(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_roundtrip_and_issue() {
        let ca = ClusterCa::generate("test").unwrap();
        let dir = tempfile::tempdir().unwrap();
        ca.write_files(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
        let ca2 = ClusterCa::load_files(dir.path()).unwrap();
        assert_eq!(ca2.cert_pem(), ca.cert_pem());

        // Certificates issued by the reloaded CA chain to the original one.
        let id = ca2.issue("node-1").unwrap();
        assert_eq!(id.common_name().unwrap(), "node-1");
        id.rustls_configs().unwrap();
        id.write(dir.path(), "node").unwrap();
        let id2 = Identity::load(
            &dir.path().join("ca.pem"),
            &dir.path().join("node.pem"),
            &dir.path().join("node.key"),
        )
        .unwrap();
        assert_eq!(id2.cert_pem, id.cert_pem);

        // Names that are not DNS names still get a CN.
        let odd = ca.issue("Node_With Spaces").unwrap();
        assert_eq!(odd.common_name().unwrap(), "Node_With Spaces");
    }

    #[test]
    fn mismatched_key_rejected() {
        let a = ClusterCa::generate("a").unwrap();
        let b = ClusterCa::generate("b").unwrap();
        assert!(ClusterCa::from_pem(a.cert_pem(), b.key_pem()).is_err());
        assert!(ClusterCa::from_pem("garbage", "garbage").is_err());
        assert!(peer_common_name(b"\x30\x03garbage").is_none());
    }
}
