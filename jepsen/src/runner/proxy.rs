//! The fault-injecting TCP proxy of the loopback mode (no namespaces).
//!
//! Each node's address in the Raft membership is its proxy's; the proxy
//! forwards to the node's real address. A connection's source is learned
//! from the `source` field (bytes 28..36, see `net/src/WIRE.md`) of the
//! first frame the dialing side sends; clients are source 0 and are never
//! faulted, as in namespace mode, where only traffic between nodes is cut.
//!
//! ### Fault model
//! - A blocked direction (partition, one-way cut) stalls: bytes from the
//!   cut sender are not read or forwarded until the heal, like packets a
//!   firewall drops while TCP keeps retransmitting. Nothing is lost or
//!   reordered within a connection, so the stream stays well framed.
//! - Loss cannot drop bytes from a TCP stream without breaking it; a lossy
//!   receiver instead delays a fraction of the chunks it gets by
//!   [`LOSS_DELAY`], which is what a lost packet costs TCP (a
//!   retransmission timeout).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What a lost chunk costs.
pub(crate) const LOSS_DELAY: Duration = Duration::from_millis(200);

/// How often a stalled direction checks whether it was healed.
const STALL_POLL: Duration = Duration::from_millis(20);

/// Offset and size of the source node id in a frame header.
const SOURCE_OFFSET: usize = 28;
const HEADER_SIZE: usize = 36;

/// The faults in force: directed cuts and lossy receivers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Faults {
    /// (from, to): bytes from `from` to `to` stall.
    pub(crate) blocked: BTreeSet<(u64, u64)>,
    /// Receiver → percent of chunks delayed.
    pub(crate) loss: BTreeMap<u64, u32>,
}

impl Faults {
    /// Whether bytes from `from` to `to` stall now. Clients (0) are never
    /// cut.
    pub(crate) fn is_blocked(&self, from: u64, to: u64) -> bool {
        from != 0 && to != 0 && self.blocked.contains(&(from, to))
    }

    /// The loss rate on the way from `from` to `to`, in percent.
    pub(crate) fn loss_percent(&self, from: u64, to: u64) -> u32 {
        if from == 0 || to == 0 {
            return 0;
        }
        self.loss.get(&to).copied().unwrap_or(0)
    }
}

/// The proxies of all nodes; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Proxy {
    faults: Arc<Mutex<Faults>>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl Proxy {
    /// Listens on each `(node, listen, upstream)` and forwards.
    pub(crate) async fn start(routes: Vec<(u64, SocketAddr, SocketAddr)>) -> Result<Proxy, String> {
        let proxy = Proxy {
            faults: Arc::new(Mutex::new(Faults::default())),
            tasks: Arc::new(Mutex::new(JoinSet::new())),
        };
        for (node, listen, upstream) in routes {
            let listener = TcpListener::bind(listen).await.map_err(|error| {
                format!("the proxy of node {node} cannot listen on {listen}: {error}")
            })?;
            let faults = Arc::clone(&proxy.faults);
            proxy
                .tasks
                .lock()
                .expect("proxy tasks lock")
                .spawn(accept(listener, node, upstream, faults));
        }
        Ok(proxy)
    }

    /// Replaces the faults in force.
    pub(crate) fn set(&self, faults: Faults) {
        *self.faults.lock().expect("faults lock") = faults;
    }

    /// Changes the faults in force.
    pub(crate) fn update(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.faults.lock().expect("faults lock"));
    }

    /// Stops every proxy and connection.
    pub(crate) fn shutdown(&self) {
        self.tasks.lock().expect("proxy tasks lock").abort_all();
    }
}

async fn accept(
    listener: TcpListener,
    node: u64,
    upstream: SocketAddr,
    faults: Arc<Mutex<Faults>>,
) {
    let mut connections = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((downstream, _)) => {
                connections.spawn(forward(downstream, node, upstream, Arc::clone(&faults)));
            }
            Err(_) => tokio::time::sleep(STALL_POLL).await,
        }
        // Reap finished connections so the set stays small.
        while connections.try_join_next().is_some() {}
    }
}

/// Forwards one connection from a dialer (source learned from its first
/// frame) to node `node`.
async fn forward(
    downstream: TcpStream,
    node: u64,
    upstream: SocketAddr,
    faults: Arc<Mutex<Faults>>,
) {
    let Ok(upstream) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = downstream.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut down_read, mut down_write) = downstream.into_split();
    let (mut up_read, mut up_write) = upstream.into_split();
    let (source_tx, source_rx) = watch::channel(None::<u64>);
    let dialer = {
        let faults = Arc::clone(&faults);
        async move {
            let mut header = [0u8; HEADER_SIZE];
            down_read.read_exact(&mut header).await.ok()?;
            let source = u64::from_le_bytes(
                header[SOURCE_OFFSET..SOURCE_OFFSET + 8]
                    .try_into()
                    .expect("eight bytes"),
            );
            source_tx.send(Some(source)).ok();
            pass(&faults, source, node, &header).await;
            up_write.write_all(&header).await.ok()?;
            pump(&mut down_read, &mut up_write, &faults, source, node).await;
            Some(())
        }
    };
    let answerer = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = up_read.read(&mut buffer).await.ok()?;
            if read == 0 {
                return Some(());
            }
            // Before the dialer's first frame only the node's challenge
            // flows; from then on the direction node → source is faulted.
            let source = *source_rx.borrow();
            if let Some(source) = source {
                pass(&faults, node, source, &buffer[..read]).await;
            }
            down_write.write_all(&buffer[..read]).await.ok()?;
        }
    };
    tokio::select! {
        _ = dialer => {}
        _ = answerer => {}
    }
}

async fn pump(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    faults: &Mutex<Faults>,
    from: u64,
    to: u64,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let Ok(read) = reader.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            return;
        }
        pass(faults, from, to, &buffer[..read]).await;
        if writer.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// Waits until bytes from `from` to `to` may pass: while the direction is
/// cut, and once more by [`LOSS_DELAY`] if the receiver is lossy and the
/// chunk is "lost".
async fn pass(faults: &Mutex<Faults>, from: u64, to: u64, _chunk: &[u8]) {
    loop {
        let (blocked, loss) = {
            let faults = faults.lock().expect("faults lock");
            (faults.is_blocked(from, to), faults.loss_percent(from, to))
        };
        if blocked {
            tokio::time::sleep(STALL_POLL).await;
            continue;
        }
        if loss > 0 && fastrand::u32(0..100) < loss {
            tokio::time::sleep(LOSS_DELAY).await;
        }
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_never_faulted_and_cuts_are_directed() {
        let mut faults = Faults::default();
        faults.blocked.insert((1, 2));
        faults.loss.insert(3, 30);
        assert!(faults.is_blocked(1, 2));
        assert!(!faults.is_blocked(2, 1));
        assert!(!faults.is_blocked(0, 2));
        assert_eq!(faults.loss_percent(1, 3), 30);
        assert_eq!(faults.loss_percent(0, 3), 0);
        assert_eq!(faults.loss_percent(3, 1), 0);
    }

    #[tokio::test]
    async fn a_cut_direction_stalls_until_healed_and_bytes_arrive_intact() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_address = upstream.local_addr().unwrap();
        // Find a free port for the proxy.
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = probe.local_addr().unwrap();
        drop(probe);
        let proxy = Proxy::start(vec![(2, listen, upstream_address)])
            .await
            .unwrap();
        proxy.update(|faults| {
            faults.blocked.insert((1, 2));
        });
        let mut dialer = TcpStream::connect(listen).await.unwrap();
        let (mut served, _) = upstream.accept().await.unwrap();
        let mut frame = vec![0u8; HEADER_SIZE + 4];
        frame[SOURCE_OFFSET..SOURCE_OFFSET + 8].copy_from_slice(&1u64.to_le_bytes());
        frame[HEADER_SIZE..].copy_from_slice(b"body");
        dialer.write_all(&frame).await.unwrap();
        let mut received = vec![0u8; frame.len()];
        let stalled =
            tokio::time::timeout(Duration::from_millis(300), served.read_exact(&mut received))
                .await;
        assert!(stalled.is_err(), "a cut direction must not deliver");
        proxy.set(Faults::default());
        tokio::time::timeout(Duration::from_secs(5), served.read_exact(&mut received))
            .await
            .expect("delivered after the heal")
            .unwrap();
        assert_eq!(received, frame);
        proxy.shutdown();
    }
}
