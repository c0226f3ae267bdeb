//! Cancel requests. Each client session gets its own (process id, secret key) in BackendKeyData;
//! a CancelRequest carrying them is forwarded to whichever server runs that session's statement
//! at that moment, with that server's own key. A wrong secret cancels nothing. Secrets come from
//! the OS random number generator (a session is refused when it fails) and are compared in
//! constant time, so neither guessing nor timing finds a live session's key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;

use crate::random::RandomError;

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

impl CancelRegistry {
    /// A new session's key; fails (and the login with it) when the OS gives no random secret.
    pub fn register(self: &Arc<Self>) -> Result<Registration, RandomError> {
        let secret = i32::from_be_bytes(crate::random::bytes::<4>()?);
        let pid = self
            .next
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            .max(1);
        let slot: Slot = Arc::new(Mutex::new(None));
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid, (secret, slot.clone()));
        Ok(Registration {
            pid,
            secret,
            slot,
            registry: self.clone(),
        })
    }

    /// The server to cancel for a client's CancelRequest, if the key matches a live session.
    pub fn target(&self, pid: i32, secret: i32) -> Option<Arc<CancelTarget>> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let (s, slot) = sessions.get(&pid)?;
        if !bool::from(s.ct_eq(&secret)) {
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
        let a = reg.register().unwrap();
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

    #[test]
    fn secrets_are_random_not_derived_from_pid_or_time() {
        // Many sessions registered in the same instant: their secrets are all different and use
        // all 32 bits (a clock-derived or counter-derived key would repeat or leave bits fixed).
        let reg = Arc::new(CancelRegistry::default());
        let regs: Vec<_> = (0..512).map(|_| reg.register().unwrap()).collect();
        let secrets: std::collections::HashSet<i32> = regs.iter().map(|r| r.secret).collect();
        assert_eq!(secrets.len(), regs.len());
        let (ones, zeros) = secrets
            .iter()
            .fold((0u32, 0u32), |(o, z), s| (o | *s as u32, z | !*s as u32));
        assert_eq!((ones, zeros), (u32::MAX, u32::MAX));
    }
}
