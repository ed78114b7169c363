//! Pod networking with iproute2: a network namespace per sandbox (`ip netns`, loopback up), and,
//! when the node has a pod CIDR, a veth pair from the namespace's `eth0` to a node bridge with
//! an address from a small allocator persisted in the runtime's root directory.

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::spec::{read_json, write_json};

/// The node's pod network: a bridge holding the CIDR's first address, the gateway of its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    pub bridge: String,
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl PodNetwork {
    /// `10.244.3.0/24` on `bridge`, by default `fl` and the network in hex (`fl0af40300`).
    pub fn parse(bridge: Option<&str>, cidr: &str) -> Result<PodNetwork, String> {
        let (addr, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| format!("pod CIDR {cidr:?}: expected ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|e| format!("pod CIDR {cidr:?}: {e}"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("pod CIDR {cidr:?}: prefix must be 8..=30"))?;
        let mask = u32::MAX << (32 - prefix);
        let network = u32::from(addr) & mask;
        let bridge = bridge.map_or_else(|| format!("fl{network:08x}"), str::to_owned);
        if bridge.is_empty() || bridge.len() > 15 {
            return Err(format!("bridge name {bridge:?}: 1 to 15 characters"));
        }
        Ok(PodNetwork {
            bridge,
            network: Ipv4Addr::from(network),
            prefix,
        })
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.network);
        let size = 1u32 << (32 - self.prefix);
        // Skip the network address, the gateway and the broadcast address.
        (2..size - 1).map(move |i| Ipv4Addr::from(base + i))
    }
}

/// Runs `ip ARGS…`; the error carries its stderr.
pub(crate) async fn ip(args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub(crate) fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

pub(crate) async fn create_netns(name: &str) -> Result<(), String> {
    if !netns_path(name).exists() {
        ip(&["netns", "add", name]).await?;
    }
    ip(&["-n", name, "link", "set", "lo", "up"]).await
}

pub(crate) async fn delete_netns(name: &str) -> Result<(), String> {
    if netns_path(name).exists() {
        ip(&["netns", "delete", name]).await?;
    }
    Ok(())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

pub(crate) async fn ensure_bridge(net: &PodNetwork) -> Result<(), String> {
    if !link_exists(&net.bridge) {
        ip(&["link", "add", &net.bridge, "type", "bridge"]).await?;
    }
    let cidr = format!("{}/{}", net.gateway(), net.prefix);
    if let Err(e) = ip(&["addr", "add", &cidr, "dev", &net.bridge]).await
        && !e.contains("File exists")
        && !e.contains("already assigned")
    {
        return Err(e);
    }
    ip(&["link", "set", &net.bridge, "up"]).await
}

/// Removes a bridge (tests; a node keeps its bridge).
pub async fn remove_bridge(name: &str) -> Result<(), String> {
    if link_exists(name) {
        ip(&["link", "delete", name]).await?;
    }
    Ok(())
}

/// The host end of a sandbox's veth pair (interface names have at most 15 characters).
pub(crate) fn host_veth(sandbox_id: &str) -> String {
    format!("fv{}", &sandbox_id[..sandbox_id.len().min(12)])
}

/// Joins the namespace to the bridge: `eth0` inside with `ip`, default route via the gateway.
pub(crate) async fn attach(
    net: &PodNetwork,
    netns: &str,
    sandbox_id: &str,
    addr: Ipv4Addr,
) -> Result<(), String> {
    let veth = host_veth(sandbox_id);
    if link_exists(&veth) {
        ip(&["link", "delete", &veth]).await?;
    }
    ip(&[
        "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", netns,
    ])
    .await?;
    ip(&["link", "set", &veth, "master", &net.bridge, "up"]).await?;
    let cidr = format!("{addr}/{}", net.prefix);
    ip(&["-n", netns, "addr", "add", &cidr, "dev", "eth0"]).await?;
    ip(&["-n", netns, "link", "set", "eth0", "up"]).await?;
    let gw = net.gateway().to_string();
    ip(&["-n", netns, "route", "add", "default", "via", &gw]).await
}

/// Pod addresses in use, persisted as `ipam.json` (address → sandbox id).
pub(crate) struct Ipam {
    path: PathBuf,
}

impl Ipam {
    pub(crate) fn new(root: &Path) -> Ipam {
        Ipam {
            path: root.join("ipam.json"),
        }
    }

    fn load(&self) -> BTreeMap<Ipv4Addr, String> {
        read_json(&self.path).unwrap_or_default()
    }

    /// The sandbox's address: the one it has, or the first free one.
    pub(crate) fn allocate(&self, net: &PodNetwork, sandbox_id: &str) -> io::Result<Ipv4Addr> {
        let mut used = self.load();
        if let Some((addr, _)) = used.iter().find(|(_, s)| *s == sandbox_id) {
            return Ok(*addr);
        }
        let addr = net
            .hosts()
            .find(|a| !used.contains_key(a))
            .ok_or_else(|| io::Error::other("pod CIDR exhausted"))?;
        used.insert(addr, sandbox_id.to_owned());
        write_json(&self.path, &used)?;
        Ok(addr)
    }

    pub(crate) fn release(&self, sandbox_id: &str) -> io::Result<()> {
        let mut used = self.load();
        let before = used.len();
        used.retain(|_, s| s != sandbox_id);
        if used.len() != before {
            write_json(&self.path, &used)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_and_allocation() {
        let net = PodNetwork::parse(Some("flt-test"), "10.244.250.7/24").unwrap();
        assert_eq!(
            PodNetwork::parse(None, "10.244.3.0/24").unwrap().bridge,
            "fl0af40300"
        );
        assert_eq!(net.network, Ipv4Addr::new(10, 244, 250, 0));
        assert_eq!(net.gateway(), Ipv4Addr::new(10, 244, 250, 1));
        assert!(PodNetwork::parse(Some("flt-test"), "10.244.250.0").is_err());
        assert!(PodNetwork::parse(Some("a-very-long-bridge-name"), "10.0.0.0/24").is_err());

        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(dir.path());
        let a = ipam.allocate(&net, "a").unwrap();
        let b = ipam.allocate(&net, "b").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 244, 250, 2));
        assert_eq!(b, Ipv4Addr::new(10, 244, 250, 3));
        assert_eq!(ipam.allocate(&net, "a").unwrap(), a);
        ipam.release("a").unwrap();
        assert_eq!(ipam.allocate(&net, "c").unwrap(), a);

        let tiny = PodNetwork::parse(Some("flt-test"), "10.0.0.0/30").unwrap();
        let ipam = Ipam::new(&dir.path().join("x"));
        std::fs::create_dir_all(dir.path().join("x")).unwrap();
        assert!(ipam.allocate(&tiny, "a").is_ok());
        assert!(ipam.allocate(&tiny, "b").is_err());
    }
}
