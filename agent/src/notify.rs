//! The systemd notification protocol (`sd_notify`), by hand: one datagram per message to the
//! socket named in `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends `msg` (for example `READY=1`) if we run under a service manager that asked for it.
pub fn notify(msg: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return false };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => abstract_addr(name),
        None => SocketAddr::from_pathname(&path).ok(),
    };
    let (Some(addr), Ok(sock)) = (addr, UnixDatagram::unbound()) else { return false };
    sock.send_to_addr(msg.as_bytes(), &addr).is_ok()
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> Option<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name).ok()
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_: &[u8]) -> Option<SocketAddr> {
    None
}

/// How often the service manager wants `WATCHDOG=1`: half its `WatchdogSec`, if it is for us.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
