//! chitchat transport with the fault plane applied to every datagram.
//!
//! chitchat keeps envelope (de)serialization private and envelopes are not `Clone`, so this
//! wraps chitchat's own UDP socket: drop and delay are applied per envelope, and incoming
//! datagrams from blocked peers are discarded. `duplicate` is not applied to gossip: the
//! scuttlebutt exchange is idempotent, so a duplicated datagram changes nothing observable.
//!
//! The chitchat traits come from `async_trait`; they are implemented here by hand in their
//! desugared form to avoid a macro dependency.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpTransport};
use tokio::time::Instant;

use crate::faults::FaultPlane;

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Bound on envelopes held back by delay rules; beyond it they are dropped like an
/// overflowing router queue.
const MAX_DELAYED: usize = 1024;

pub(crate) struct FaultyTransport {
    pub(crate) faults: FaultPlane,
}

impl Transport for FaultyTransport {
    fn open<'life0, 'async_trait>(
        &'life0 self,
        listen_addr: SocketAddr,
    ) -> BoxFut<'async_trait, anyhow::Result<Box<dyn Socket>>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let inner = UdpTransport.open(listen_addr).await?;
            let socket: Box<dyn Socket> = Box::new(FaultySocket {
                inner,
                faults: self.faults.clone(),
                delayed: Vec::new(),
            });
            Ok(socket)
        })
    }
}

struct FaultySocket {
    inner: Box<dyn Socket>,
    faults: FaultPlane,
    /// Held-back envelopes, sorted by due time.
    delayed: Vec<(Instant, SocketAddr, ChitchatEnvelope)>,
}

impl FaultySocket {
    async fn flush_due(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        while self.delayed.first().is_some_and(|(due, _, _)| *due <= now) {
            let (_, to, envelope) = self.delayed.remove(0);
            // Rules may have changed while it waited.
            if !self.faults.outbound(to).drop {
                self.inner.send(to, envelope).await?;
            }
        }
        Ok(())
    }
}

impl Socket for FaultySocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn send<'life0, 'async_trait>(
        &'life0 mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> BoxFut<'async_trait, anyhow::Result<SendOutcome>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.flush_due().await?;
            let out = self.faults.outbound(to);
            if out.drop {
                // Lost in the network: the sender cannot tell.
                return Ok(SendOutcome { num_bytes_sent: 0 });
            }
            if let Some(delay) = out.delay {
                if self.delayed.len() < MAX_DELAYED {
                    let due = Instant::now() + delay;
                    let pos = self.delayed.partition_point(|(d, _, _)| *d <= due);
                    self.delayed.insert(pos, (due, to, envelope));
                }
                return Ok(SendOutcome { num_bytes_sent: 0 });
            }
            self.inner.send(to, envelope).await
        })
    }

    fn recv<'life0, 'async_trait>(
        &'life0 mut self,
    ) -> BoxFut<'async_trait, anyhow::Result<RecvOutcome>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            loop {
                self.flush_due().await?;
                // chitchat polls recv continuously, so this is where delayed envelopes leave.
                let next_due = self.delayed.first().map(|(due, _, _)| *due);
                let received = match next_due {
                    Some(due) => tokio::select! {
                        r = self.inner.recv() => Some(r),
                        _ = tokio::time::sleep_until(due) => None,
                    },
                    None => Some(self.inner.recv().await),
                };
                match received {
                    None => continue,
                    Some(Ok(outcome)) if self.faults.blocks_addr(outcome.from_addr) => continue,
                    Some(other) => return other,
                }
            }
        })
    }
}
