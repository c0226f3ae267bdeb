//! A TCP relay standing in for a cross-region network link, since the kernel's `netem` is not
//! available: it adds a one-way delay in each direction, can be cut (a partition: nothing passes,
//! new connections are accepted but get no answer, held data flows again when the link heals),
//! and counts turns (a client-to-server burst that follows server data, or opens a connection),
//! so tests can count round trips instead of timing them.
//!
//! Links run on their own small runtime, so the blocking sandbox and async tests can both use
//! them; dropping the [`Links`] stops every link and closes its connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// The runtime the links of one sandbox (or test) run on.
pub struct Links {
    runtime: Option<tokio::runtime::Runtime>,
}

/// One link: listens on `port` and relays every connection to its target.
#[derive(Clone)]
pub struct Link {
    pub port: u16,
    pub target: u16,
    state: Arc<LinkState>,
}

struct LinkState {
    delay_us: AtomicU64,
    /// `true` while cut; writers wait on it.
    cut: watch::Sender<bool>,
    turns: AtomicU64,
    connections: AtomicU64,
}

impl Links {
    pub fn new() -> std::io::Result<Links> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("homeport-link")
            .enable_all()
            .build()?;
        Ok(Links {
            runtime: Some(runtime),
        })
    }

    /// A link on a free loopback port to `127.0.0.1:target` with `delay` each way.
    pub fn start(&self, target: u16, delay: Duration) -> std::io::Result<Link> {
        let runtime = self.runtime.as_ref().expect("links are running");
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(LinkState {
            delay_us: AtomicU64::new(delay.as_micros() as u64),
            cut: watch::channel(false).0,
            turns: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let accepting = state.clone();
        runtime.spawn(async move {
            if let Ok(listener) = TcpListener::from_std(listener) {
                accept_loop(listener, target, accepting).await;
            }
        });
        Ok(Link {
            port,
            target,
            state,
        })
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Allowed inside an async context too, unlike dropping the runtime.
            rt.shutdown_background();
        }
    }
}

impl Link {
    /// Stops all traffic: a network partition.
    pub fn cut(&self) {
        self.state.cut.send_replace(true);
    }

    /// Lets traffic (including what was held during the cut) flow again.
    pub fn heal(&self) {
        self.state.cut.send_replace(false);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// Client-to-server bursts so far, over all connections: each is at least one round trip.
    pub fn turns(&self) -> u64 {
        self.state.turns.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }
}

async fn accept_loop(listener: TcpListener, target: u16, state: Arc<LinkState>) {
    while let Ok((inbound, _)) = listener.accept().await {
        let state = state.clone();
        tokio::spawn(async move {
            state.connections.fetch_add(1, Ordering::Relaxed);
            // A cut link answers nothing, not even the connection to the other side.
            wait_open(&mut state.cut.subscribe()).await;
            let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ci, co) = inbound.into_split();
            let (si, so) = outbound.into_split();
            let direction = Arc::new(AtomicU8::new(SERVER_TO_CLIENT));
            tokio::join!(
                pump(ci, so, state.clone(), direction.clone(), CLIENT_TO_SERVER),
                pump(si, co, state.clone(), direction, SERVER_TO_CLIENT),
            );
        });
    }
}

const CLIENT_TO_SERVER: u8 = 1;
const SERVER_TO_CLIENT: u8 = 2;

/// Reads from `from`, and writes each chunk to `to` once its delay has passed and the link is
/// not cut. Ends when either side closes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<LinkState>,
    direction: Arc<AtomicU8>,
    this: u8,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let writer_state = state.clone();
    let writer = async move {
        let mut cut = writer_state.cut.subscribe();
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            wait_open(&mut cut).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if direction.swap(this, Ordering::Relaxed) != this && this == CLIENT_TO_SERVER {
                state.turns.fetch_add(1, Ordering::Relaxed);
            }
            let delay = Duration::from_micros(state.delay_us.load(Ordering::Relaxed));
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}

async fn wait_open(cut: &mut watch::Receiver<bool>) {
    let _ = cut.wait_for(|c| !*c).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; returns its port.
    fn echo(links: &Links) -> u16 {
        let rt = links.runtime.as_ref().unwrap();
        let listener = rt.block_on(TcpListener::bind(("127.0.0.1", 0))).unwrap();
        let port = listener.local_addr().unwrap().port();
        rt.spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        port
    }

    #[test]
    fn relays_both_ways_counts_turns_and_holds_data_while_cut() {
        let links = Links::new().unwrap();
        let target = echo(&links);
        let link = links.start(target, Duration::from_millis(5)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut s = TcpStream::connect(("127.0.0.1", link.port)).await.unwrap();
            let mut buf = [0u8; 5];
            for _ in 0..3 {
                s.write_all(b"hello").await.unwrap();
                s.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"hello");
            }
            assert_eq!(link.turns(), 3);

            link.cut();
            s.write_all(b"again").await.unwrap();
            let early =
                tokio::time::timeout(Duration::from_millis(100), s.read_exact(&mut buf)).await;
            assert!(early.is_err(), "nothing crosses a cut link");
            link.heal();
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"again");
        });
        assert_eq!(link.connections(), 1);
    }
}
