//! Port allocation for the sandbox's servers, without races.
//!
//! The sandbox must name a port before the process that listens on it starts (PostgreSQL, Redis
//! and the sidecars take their port from a config file or an argument), so "bind port 0 and
//! report" is not available for them. The old way, bind port 0, read the port, close, let the
//! server bind later, raced with every outgoing connection on the machine: the kernel hands out
//! the same range as ephemeral source ports, and one of them took a sidecar's port in between
//! (`Address already in use` in `tests/it/soak.rs`).
//!
//! Here ports come from *below* the kernel's ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`), which the kernel never picks for an outgoing
//! connection or a bind to port 0. Within that range, a random start per process spreads
//! concurrent test processes apart, a process-wide set never hands one port out twice, and each
//! candidate is checked by binding it. What is left (another program choosing the same fixed port
//! in the same instant) ends in `EADDRINUSE` at the server's start, which the sandbox retries
//! with fresh ports where it can (sidecars, see `Sandbox::start_sidecar`).

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

use super::DevError;

/// Lowest port handed out: above the well-known and most registered service ports.
const FLOOR: u16 = 10_000;

/// Ports this process already handed out (never again, even after they were freed).
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// `n` distinct free loopback ports outside the kernel's ephemeral range.
pub fn pick_ports(n: usize) -> Result<Vec<u16>, DevError> {
    let (low, _) = ephemeral_range();
    let range = if low > FLOOR + 1000 {
        FLOOR..low
    } else {
        // An ephemeral range that starts very low leaves nothing safe below it: use the top.
        60_000..65_000
    };
    let span = u32::from(range.end - range.start);
    let start = random_offset() % span;
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    let mut picked = Vec::with_capacity(n);
    // Held open until all are picked, so the check-binds do not count a port twice.
    let mut held = Vec::with_capacity(n);
    for i in 0..span {
        if picked.len() == n {
            break;
        }
        let port = range.start + ((start + i) % span) as u16;
        if handed.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            handed.insert(port);
            picked.push(port);
            held.push(l);
        }
    }
    if picked.len() < n {
        return Err(DevError::Setup(format!(
            "cannot find {n} free ports in {}..{}",
            range.start, range.end
        )));
    }
    Ok(picked)
}

/// The kernel's ephemeral port range; Linux's default when it cannot be read.
pub fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| parse_range(&s))
        .unwrap_or((32_768, 60_999))
}

fn parse_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(|p| p.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}

fn random_offset() -> u32 {
    crate::random::bytes::<4>()
        .map(u32::from_le_bytes)
        .unwrap_or_else(|_| std::process::id().wrapping_mul(2_654_435_761))
}

/// Whether a server's log says it could not bind its port.
pub fn address_in_use(log_text: &str) -> bool {
    log_text.contains("Address already in use") || log_text.contains("EADDRINUSE")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_below_the_ephemeral_range() {
        let (low, _) = ephemeral_range();
        let a = pick_ports(20).unwrap();
        let b = pick_ports(20).unwrap();
        let all: HashSet<u16> = a.iter().chain(&b).copied().collect();
        assert_eq!(all.len(), 40, "no port handed out twice: {a:?} {b:?}");
        if low > FLOOR + 1000 {
            assert!(all.iter().all(|p| *p >= FLOOR && *p < low), "{all:?}");
        }
    }

    #[test]
    fn reads_the_kernel_range_format() {
        assert_eq!(parse_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_range("garbage"), None);
    }
}
