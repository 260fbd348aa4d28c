//! systemd's notify protocol (`Type=notify`), written by hand: one datagram per state
//! change to the socket named by `NOTIFY_SOCKET` (a path, or `@name` for the abstract
//! namespace). Without `NOTIFY_SOCKET` (not run by systemd) every call does nothing.
//!
//! - `READY=1` — the service is up (coordinator: migrations ran, listeners bound; worker:
//!   its first session was opened or failed and is being retried).
//! - `WATCHDOG=1` — sent from the main loop at half of `WATCHDOG_USEC` (systemd's
//!   `WatchdogSec`); a process whose runtime stops scheduling tasks stops sending, and
//!   systemd restarts it.
//! - `STOPPING=1` — draining has begun.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one notification (e.g. `"READY=1"`). Returns whether it was sent: false without
/// `NOTIFY_SOCKET`, or if the socket could not be reached (never an error: notifying is
/// best effort and must not stop the service).
pub fn notify(state: &str) -> bool {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => send(&path.to_string_lossy(), state).is_ok(),
        None => false,
    }
}

fn send(socket: &str, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), socket)?;
    }
    Ok(())
}

pub fn ready() -> bool {
    notify("READY=1")
}

pub fn stopping() -> bool {
    notify("STOPPING=1")
}

pub fn watchdog() -> bool {
    notify("WATCHDOG=1")
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, if it is set for this process
/// (`WATCHDOG_PID`, when present, must be our pid).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(10)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn datagrams_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("drover-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        send(&format!("@{name}"), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        assert!(send("/nonexistent/drover-notify", "READY=1").is_err());
    }
}
