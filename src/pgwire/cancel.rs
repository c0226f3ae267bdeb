//! Cancel requests. Each client session gets its own (process id, secret key) in BackendKeyData;
//! a CancelRequest carrying them is forwarded to whichever server runs that session's statement
//! at that moment, with that server's own key. A wrong secret cancels nothing.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;

/// The server a session is running on, and the key to cancel its query there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CancelTarget {
    pub host: String,
    pub port: u16,
    pub pid: i32,
    pub secret: i32,
}

pub type Slot = Arc<Mutex<Option<Arc<CancelTarget>>>>;

#[derive(Default)]
pub struct CancelRegistry {
    next: AtomicI32,
    sessions: Mutex<HashMap<i32, (i32, Slot)>>,
}

/// A session's registration; unregisters when dropped.
pub struct Registration {
    pub pid: i32,
    pub secret: i32,
    pub slot: Slot,
    registry: Arc<CancelRegistry>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.pid);
    }
}

fn random_i32(seed: i32) -> i32 {
    static STATE: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut h = STATE.get_or_init(Default::default).build_hasher();
    h.write_i32(seed);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as i32
}

impl CancelRegistry {
    pub fn register(self: &Arc<Self>) -> Registration {
        let pid = self
            .next
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            .max(1);
        let secret = random_i32(pid);
        let slot: Slot = Arc::new(Mutex::new(None));
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid, (secret, slot.clone()));
        Registration {
            pid,
            secret,
            slot,
            registry: self.clone(),
        }
    }

    /// The server to cancel for a client's CancelRequest, if the key matches a live session.
    pub fn target(&self, pid: i32, secret: i32) -> Option<Arc<CancelTarget>> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let (s, slot) = sessions.get(&pid)?;
        if *s != secret {
            return None;
        }
        slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Sends PostgreSQL's CancelRequest packet to a server.
pub async fn send_cancel(target: &CancelTarget) -> std::io::Result<()> {
    let mut s = tokio::net::TcpStream::connect((target.host.as_str(), target.port)).await?;
    let mut packet = Vec::with_capacity(16);
    packet.extend_from_slice(&16i32.to_be_bytes());
    packet.extend_from_slice(&super::codec::CANCEL_REQUEST.to_be_bytes());
    packet.extend_from_slice(&target.pid.to_be_bytes());
    packet.extend_from_slice(&target.secret.to_be_bytes());
    s.write_all(&packet).await?;
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_key_finds_the_target() {
        let reg = Arc::new(CancelRegistry::default());
        let a = reg.register();
        let target = CancelTarget {
            host: "h".into(),
            port: 1,
            pid: 7,
            secret: 9,
        };
        *a.slot.lock().unwrap() = Some(Arc::new(target.clone()));
        assert_eq!(reg.target(a.pid, a.secret).as_deref(), Some(&target));
        assert_eq!(reg.target(a.pid, a.secret.wrapping_add(1)), None);
        let pid = a.pid;
        drop(a);
        assert_eq!(reg.target(pid, 0), None);
    }
}
