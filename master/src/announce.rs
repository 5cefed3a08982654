//! The master's announcement on the LAN: a DNS-SD service of type `_retire._tcp`
//! ([`protocol::SERVICE_TYPE`]) over multicast DNS, so that
//! `retire-worker --join auto` finds it, and an address record for
//! `HOSTNAME.local`, so that `--join HOSTNAME.local:PORT` resolves on a device whose
//! C library has no mDNS.
//!
//! The announcement runs on its own thread (the `mdns-sd` daemon's); the event loop
//! and the core know nothing of it. It proves nothing: anyone on the LAN can announce
//! the same type, and a worker trusts a master only once it has proven the join token
//! or the pinned key in the handshake (docs/security.md, "`--join auto`").
//!
//! Which interfaces: a master that listens on every address (`0.0.0.0`, `::`)
//! announces on every interface with their addresses; one that listens on one address
//! announces that address on its interface only; one that listens on loopback only
//! announces nothing, since no other machine could reach it. `no_announce = true`
//! (`--no-announce`) turns it off.

use std::net::{IpAddr, SocketAddr};

use mdns_sd::{IfKind, ServiceDaemon, ServiceInfo};

use protocol::SERVICE_TYPE;

/// The longest DNS label (63 bytes, RFC 1035): the instance name and the host name are
/// cut to it.
pub const MAX_LABEL: usize = 63;

/// How long dropping an [`Announcer`] waits for the goodbye packets and the daemon's
/// thread to end (1 s), so that a stopping master does not hang on it.
pub const GOODBYE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the master could not announce itself (it runs anyway; the binary logs this).
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// The mDNS daemon could not start or refused the service.
    #[error("mDNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
}

/// A running announcement; dropping it says goodbye on the LAN (records with a TTL of
/// zero) and stops the daemon.
pub struct Announcer {
    daemon: ServiceDaemon,
    fullname: String,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer")
            .field("fullname", &self.fullname)
            .finish()
    }
}

impl Announcer {
    /// The full DNS-SD name announced, e.g. `retire-master nas 8080._retire._tcp.local.`.
    pub fn fullname(&self) -> &str {
        &self.fullname
    }
}

/// Announces the master listening on `bound`; `Ok(None)` when it listens on loopback
/// only (nobody else could connect, so there is nothing to announce).
pub fn start(bound: SocketAddr) -> Result<Option<Announcer>, AnnounceError> {
    if bound.ip().is_loopback() {
        return Ok(None);
    }
    let host = label(&read_hostname()).replace(' ', "");
    let instance = label(&format!("retire-master {host} {}", bound.port()));
    let properties = [("proto", "1")];
    let ip = bound.ip();
    let service = if ip.is_unspecified() {
        let addresses: &[IpAddr] = &[];
        ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &format!("{host}.local."),
            addresses,
            bound.port(),
            &properties[..],
        )?
        .enable_addr_auto()
    } else {
        let mut service = ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &format!("{host}.local."),
            ip,
            bound.port(),
            &properties[..],
        )?;
        service.set_interfaces(vec![IfKind::Addr(ip)]);
        service
    };
    let fullname = service.get_fullname().to_string();
    let daemon = ServiceDaemon::new()?;
    daemon.register(service)?;
    Ok(Some(Announcer { daemon, fullname }))
}

impl Drop for Announcer {
    fn drop(&mut self) {
        // Goodbye packets let workers forget this master at once instead of at the
        // records' expiry; a daemon already gone has nothing left to say.
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ = done.recv_timeout(GOODBYE_WAIT);
        }
        if let Ok(done) = self.daemon.shutdown() {
            let _ = done.recv_timeout(GOODBYE_WAIT);
        }
    }
}

/// This machine's host name (Linux keeps it in `/proc`), or `retire-master`.
fn read_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "retire-master".to_string())
}

/// `text` as one DNS label: its first label (a host name may be fully qualified),
/// letters, digits, `-` and spaces kept, other bytes dropped, cut to [`MAX_LABEL`].
fn label(text: &str) -> String {
    let first = text.split('.').next().unwrap_or_default();
    let kept: String = first
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == ' ')
        .take(MAX_LABEL)
        .collect();
    if kept.trim().is_empty() {
        "retire-master".to_string()
    } else {
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_single_dns_labels() {
        let check = |text: &str, expect: &str| assert_eq!(label(text), expect, "{text}");
        check("nas", "nas");
        check("nas.example.com", "nas");
        check("pi_kitchen", "pikitchen");
        check("", "retire-master");
        check("...", "retire-master");
        check("retire-master nas 8080", "retire-master nas 8080");
        check(&"x".repeat(100), &"x".repeat(MAX_LABEL));
    }

    #[test]
    fn a_master_on_loopback_announces_nothing() {
        let bound: SocketAddr = "127.0.0.1:8080".parse().expect("address");
        assert!(start(bound).expect("no error").is_none());
    }
}
