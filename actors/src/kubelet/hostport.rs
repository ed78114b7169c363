//! `hostPort`: a container port published on the node's address.
//!
//! A pod with its own network namespace gets a small userspace forwarder in the node daemon
//! per host port: it listens on the node's address (or the port's `hostIP`) and, for each TCP
//! connection or UDP flow, opens a socket *inside the pod's namespace* to the container port.
//! Chosen over nftables DNAT because it also works when the pod has no routable address (a
//! node without a pod CIDR gives pods loopback only, which DNAT cannot reach) and because it
//! cleans up by construction: the listeners belong to the pod worker and close when it drops
//! them or the daemon exits, so no kernel rule outlives its pod. The cost: the container sees
//! connections come from inside its own namespace, not from the client's address.
//!
//! Pods on the host network need nothing: the container's port is the node's port.

use flotilla_api::At;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

use super::probes::in_netns_path;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A UDP flow with no reply for this long is forgotten.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// One published port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
    pub udp: bool,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = if self.udp { "UDP" } else { "TCP" };
        write!(
            f,
            "{}:{}/{proto} -> {}",
            self.host_ip, self.host_port, self.container_port
        )
    }
}

/// The host ports the pod's containers ask for. `node_ip` is used when a port names no
/// `hostIP`; ports that cannot be forwarded (SCTP, bad numbers) are returned as errors.
pub fn host_ports(pod: &Value, node_ip: &str) -> (Vec<HostPort>, Vec<String>) {
    let mut ports = Vec::new();
    let mut errors = Vec::new();
    let containers = ["/spec/initContainers", "/spec/containers"]
        .iter()
        .filter_map(|p| pod.at(p).and_then(Value::as_array))
        .flatten();
    for c in containers {
        for p in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(host_port) = p.get("hostPort").and_then(Value::as_u64) else {
                continue;
            };
            if host_port == 0 {
                continue;
            }
            let container_port = p.get("containerPort").and_then(Value::as_u64);
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            let ip = p
                .get("hostIP")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or(node_ip);
            let parsed = (
                u16::try_from(host_port).ok(),
                container_port.and_then(|c| u16::try_from(c).ok()),
                ip.parse::<IpAddr>().ok(),
            );
            match (parsed, proto) {
                ((Some(host_port), Some(container_port), Some(host_ip)), "TCP" | "UDP") => ports
                    .push(HostPort {
                        host_ip,
                        host_port,
                        container_port,
                        udp: proto == "UDP",
                    }),
                _ => errors.push(format!(
                    "hostPort {host_port}/{proto} on {ip:?} cannot be published"
                )),
            }
        }
    }
    (ports, errors)
}

/// The forwarders of one pod; dropping this closes every listener and connection.
#[derive(Default)]
pub struct Forwarders {
    running: HashMap<HostPort, JoinHandle<()>>,
}

impl Forwarders {
    pub fn is_published(&self, port: &HostPort) -> bool {
        self.running.contains_key(port)
    }

    /// Starts forwarding `port` into the namespace at `netns`, to `target` (the pod's address
    /// as seen from inside: its IP, or loopback).
    pub async fn publish(
        &mut self,
        port: HostPort,
        netns: PathBuf,
        target: IpAddr,
    ) -> std::io::Result<()> {
        let to = SocketAddr::new(target, port.container_port);
        let bind = SocketAddr::new(port.host_ip, port.host_port);
        let task = if port.udp {
            let socket = UdpSocket::bind(bind).await?;
            tokio::spawn(forward_udp(Arc::new(socket), netns, to))
        } else {
            let listener = TcpListener::bind(bind).await?;
            tokio::spawn(forward_tcp(listener, netns, to))
        };
        self.running.insert(port, task);
        Ok(())
    }
}

impl Drop for Forwarders {
    fn drop(&mut self) {
        for task in self.running.values() {
            task.abort();
        }
    }
}

async fn forward_tcp(listener: TcpListener, netns: PathBuf, to: SocketAddr) {
    // Connections live in this set, so aborting the listener's task ends them too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut client, _)) = accepted else {
                    // Out of descriptors and the like: let it pass rather than spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let netns = netns.clone();
                connections.spawn(async move {
                    let upstream = in_netns_path(Some(netns), CONNECT_TIMEOUT, move || {
                        let s = std::net::TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)?;
                        s.set_nonblocking(true)?;
                        Ok(s)
                    })
                    .await;
                    let Ok(Ok(mut upstream)) = upstream.map(tokio::net::TcpStream::from_std) else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn forward_udp(outer: Arc<UdpSocket>, netns: PathBuf, to: SocketAddr) {
    let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut replies = JoinSet::new();
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            received = outer.recv_from(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                let inner = match flows.get(&from) {
                    Some(s) => s.clone(),
                    None => {
                        let netns = netns.clone();
                        let made = in_netns_path(Some(netns), CONNECT_TIMEOUT, move || {
                            let unspecified: SocketAddr = if to.is_ipv4() {
                                "0.0.0.0:0".parse().map_err(std::io::Error::other)?
                            } else {
                                "[::]:0".parse().map_err(std::io::Error::other)?
                            };
                            let s = std::net::UdpSocket::bind(unspecified)?;
                            s.connect(to)?;
                            s.set_nonblocking(true)?;
                            Ok(s)
                        })
                        .await;
                        let Ok(Ok(inner)) = made.map(UdpSocket::from_std) else { continue };
                        let inner = Arc::new(inner);
                        flows.insert(from, inner.clone());
                        let (reply_to, outer, socket) = (from, outer.clone(), inner.clone());
                        replies.spawn(async move {
                            let mut b = vec![0u8; 65536];
                            while let Ok(Ok(n)) =
                                tokio::time::timeout(UDP_IDLE, socket.recv(&mut b)).await
                            {
                                let _ = outer.send_to(&b[..n], reply_to).await;
                            }
                            reply_to
                        });
                        inner
                    }
                };
                let _ = inner.send(&buf[..n]).await;
            }
            Some(done) = replies.join_next(), if !replies.is_empty() => {
                if let Ok(from) = done {
                    flows.remove(&from);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// TCP and UDP through the forwarders, with this process's own network namespace as
    /// the pod's (entering a namespace needs root; skipped otherwise).
    #[tokio::test]
    async fn forwards_tcp_and_udp_and_stops_when_dropped() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: entering a network namespace needs root");
            return;
        }
        let netns = PathBuf::from("/proc/self/ns/net");
        let localhost: IpAddr = std::net::Ipv4Addr::LOCALHOST.into();
        let server = TcpListener::bind((localhost, 0)).await.unwrap();
        let tcp_port = server.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = server.accept().await {
                let _ = c.write_all(b"hello over tcp").await;
            }
        });
        let echo = UdpSocket::bind((localhost, 0)).await.unwrap();
        let udp_port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut b = [0u8; 64];
            while let Ok((n, from)) = echo.recv_from(&mut b).await {
                let _ = echo.send_to(&b[..n], from).await;
            }
        });
        let free = |udp: bool| {
            if udp {
                std::net::UdpSocket::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            } else {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            }
        };
        let (tcp_host, udp_host) = (free(false), free(true));
        let mut fw = Forwarders::default();
        for (host_port, container_port, udp) in
            [(tcp_host, tcp_port, false), (udp_host, udp_port, true)]
        {
            let port = HostPort {
                host_ip: localhost,
                host_port,
                container_port,
                udp,
            };
            fw.publish(port.clone(), netns.clone(), localhost)
                .await
                .unwrap();
            assert!(fw.is_published(&port));
        }
        let mut c = tokio::net::TcpStream::connect((localhost, tcp_host))
            .await
            .unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello over tcp");
        let client = UdpSocket::bind((localhost, 0)).await.unwrap();
        client.connect((localhost, udp_host)).await.unwrap();
        client.send(b"ping").await.unwrap();
        let mut b = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&b[..n], b"ping");
        drop(fw);
        // The listener's task is aborted; its socket closes once the task is gone.
        let mut closed = false;
        for _ in 0..50 {
            if tokio::net::TcpStream::connect((localhost, tcp_host))
                .await
                .is_err()
            {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            closed,
            "the host port is still open after the pod's forwarders dropped"
        );
    }

    #[test]
    fn host_ports_come_from_container_ports() {
        let pod = json!({"spec": {"containers": [{"ports": [
            {"containerPort": 80, "hostPort": 8080},
            {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "127.0.0.2"},
            {"containerPort": 90},
            {"containerPort": 91, "hostPort": 9191, "protocol": "SCTP"},
        ]}]}});
        let (ports, errors) = host_ports(&pod, "10.0.0.5");
        assert_eq!(
            ports,
            vec![
                HostPort {
                    host_ip: "10.0.0.5".parse().unwrap(),
                    host_port: 8080,
                    container_port: 80,
                    udp: false
                },
                HostPort {
                    host_ip: "127.0.0.2".parse().unwrap(),
                    host_port: 5353,
                    container_port: 53,
                    udp: true
                },
            ]
        );
        assert_eq!(errors.len(), 1);
    }
}
