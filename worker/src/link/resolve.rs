//! Where `--join` points, turned into addresses to try: a `.local` name through
//! multicast DNS, `auto` through the masters that announce `_retire._tcp` on the LAN,
//! anything else through the system's resolver, exactly as before.
//!
//! A static musl binary has no mDNS in its C library, so `--join nas.local:8080` would
//! only resolve where the router's DNS happens to know the name. Here the worker asks
//! the LAN itself, with the pure-Rust `mdns-sd` crate, and falls back to the system's
//! resolver when nobody answers.
//!
//! Nothing here decides whom to trust: `auto` only finds addresses. The handshake
//! (see [`crate::session`]) still refuses, before registering or pinning a key, any
//! peer that cannot prove the join token (or the pinned master key). What this module
//! adds is the order: an address whose last connection ended before registering goes
//! after the others ([`order_candidates`]), so an impostor that announces itself
//! cannot keep the worker from the real master. See docs/security.md, "`--join auto`".

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mdns_sd::{HostnameResolutionEvent, ServiceDaemon, ServiceEvent};

/// The `--join` value that finds the master on the LAN instead of naming it.
pub const AUTO: &str = "auto";

pub use protocol::SERVICE_TYPE;

/// How long a `.local` name is asked for over mDNS (3 s) before the worker tries the
/// system's resolver instead. A responder on the LAN answers within a second (RFC 6762
/// asks for 20–120 ms plus the retransmissions of the query).
pub const MDNS_RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long `--join auto` listens for a master's announcement (5 s) before the
/// connection attempt fails and is retried with the usual backoff.
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Once a first master answered, how much longer `--join auto` listens for others
/// (500 ms), so that one search knows every master on the LAN and can skip one that
/// failed before.
pub const DISCOVERY_GRACE: Duration = Duration::from_millis(500);

/// The most announced masters one search keeps (16): a flood of announcements costs
/// the worker no more than this many candidates.
pub const MAX_CANDIDATES: usize = 16;

/// The most addresses remembered as having failed before registering (64); the oldest
/// is forgotten first.
pub const MAX_DISTRUSTED: usize = 64;

/// How long the worker waits for its mDNS daemon's thread to end after a search (1 s).
const DAEMON_SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// Where `--join` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `--join auto`: a master that announces [`SERVICE_TYPE`] on the LAN.
    Auto,
    /// `--join NAME.local:PORT`: a name resolved through mDNS first (the name is kept
    /// with its trailing dot, as mDNS asks for it).
    Local {
        /// The fully qualified name, e.g. `nas.local.`.
        host: String,
        /// The master's port.
        port: u16,
    },
    /// Anything else: the system's resolver, as `ToSocketAddrs` does it.
    System(String),
}

impl Target {
    /// Reads a `--join` value; never fails (a malformed one fails when resolved, with
    /// the system resolver's message, as before).
    pub fn parse(join: &str) -> Target {
        if join.eq_ignore_ascii_case(AUTO) {
            return Target::Auto;
        }
        if let Some((host, port)) = join.rsplit_once(':') {
            let bare = host.strip_suffix('.').unwrap_or(host);
            let is_local = bare.len() > ".local".len()
                && bare
                    .get(bare.len() - ".local".len()..)
                    .is_some_and(|tail| tail.eq_ignore_ascii_case(".local"));
            if let (true, Ok(port)) = (is_local, port.parse::<u16>()) {
                return Target::Local {
                    host: format!("{bare}."),
                    port,
                };
            }
        }
        Target::System(join.to_string())
    }
}

/// The addresses to try for `join`, in order. For `auto`, addresses in `distrusted`
/// (their last connection ended before registering) come after the others.
pub(super) fn resolve(join: &str, distrusted: &[SocketAddr]) -> io::Result<Vec<SocketAddr>> {
    match Target::parse(join) {
        // Through the system, or Termux's files where the system has no
        // resolver configuration (`super::dns`).
        Target::System(name) => super::dns::lookup(&name),
        Target::Local { host, port } => {
            let found = resolve_local(&host)?;
            if !found.is_empty() {
                return Ok(found
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect());
            }
            log::info!(
                "no answer over mDNS for {host} within {} s; asking the system's resolver",
                MDNS_RESOLVE_TIMEOUT.as_secs_f64()
            );
            let bare = host.trim_end_matches('.');
            super::dns::lookup(&format!("{bare}:{port}"))
        }
        Target::Auto => {
            let masters = discover()?;
            if masters.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no master announces {SERVICE_TYPE} on this network (listened {} s); \
                         is the master started without --no-announce, on this LAN?",
                        DISCOVERY_TIMEOUT.as_secs_f64()
                    ),
                ));
            }
            let listed: Vec<String> = masters
                .iter()
                .map(|(name, addresses)| format!("{name} at {addresses:?}"))
                .collect();
            log::info!(
                "found {} master(s) announcing {SERVICE_TYPE}: {}",
                masters.len(),
                listed.join("; ")
            );
            Ok(order_candidates(
                masters.into_values().flatten().collect(),
                distrusted,
            ))
        }
    }
}

/// Puts the addresses in `distrusted` last, keeping the order otherwise, and drops
/// repeats.
pub fn order_candidates(found: Vec<SocketAddr>, distrusted: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut unique = Vec::with_capacity(found.len());
    for address in found {
        if !unique.contains(&address) {
            unique.push(address);
        }
    }
    let (mut first, last): (Vec<_>, Vec<_>) = unique
        .into_iter()
        .partition(|address| !distrusted.contains(address));
    first.extend(last);
    first
}

/// Remembers that the connection to `address` ended before the worker registered
/// (`registered` false) or that it registered there (`true`), for [`order_candidates`].
pub(super) fn note_outcome(
    distrusted: &mut Vec<SocketAddr>,
    address: SocketAddr,
    registered: bool,
) {
    distrusted.retain(|known| *known != address);
    if !registered {
        if distrusted.len() >= MAX_DISTRUSTED {
            distrusted.remove(0);
        }
        distrusted.push(address);
    }
}

/// A short-lived mDNS daemon, shut down when dropped.
struct Daemon(ServiceDaemon);

impl Daemon {
    fn start() -> io::Result<Daemon> {
        ServiceDaemon::new()
            .map(Daemon)
            .map_err(|error| io::Error::other(format!("could not start mDNS: {error}")))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The daemon's thread owns the multicast sockets; waiting for it keeps one
        // search from overlapping the next. A daemon that is already gone is fine.
        if let Ok(status) = self.0.shutdown() {
            let _ = status.recv_timeout(DAEMON_SHUTDOWN_WAIT);
        }
    }
}

/// Asks the LAN for `host` (e.g. `nas.local.`); the addresses of the first answer, or
/// none after [`MDNS_RESOLVE_TIMEOUT`].
fn resolve_local(host: &str) -> io::Result<Vec<IpAddr>> {
    let daemon = Daemon::start()?;
    let timeout_ms = u64::try_from(MDNS_RESOLVE_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
    let events = daemon
        .0
        .resolve_hostname(host, Some(timeout_ms))
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {error}")))?;
    let deadline = Instant::now() + MDNS_RESOLVE_TIMEOUT;
    while let Ok(event) = events.recv_deadline(deadline) {
        match event {
            HostnameResolutionEvent::AddressesFound(_, addresses) => {
                let mut found: Vec<IpAddr> = addresses
                    .iter()
                    .map(|scoped| scoped.to_ip_addr())
                    .filter(usable)
                    .collect();
                found.sort_by_key(|ip| (ip.is_ipv6(), *ip));
                if !found.is_empty() {
                    log::info!("{host} is {found:?} (mDNS)");
                    return Ok(found);
                }
            }
            HostnameResolutionEvent::SearchTimeout(_)
            | HostnameResolutionEvent::SearchStopped(_) => break,
            _ => {}
        }
    }
    Ok(Vec::new())
}

/// Listens for masters announcing [`SERVICE_TYPE`]: every one found within
/// [`DISCOVERY_TIMEOUT`], plus those that answer within [`DISCOVERY_GRACE`] of the
/// first, at most [`MAX_CANDIDATES`], by instance name, each with its addresses.
fn discover() -> io::Result<BTreeMap<String, Vec<SocketAddr>>> {
    let daemon = Daemon::start()?;
    let events = daemon
        .0
        .browse(SERVICE_TYPE)
        .map_err(|error| io::Error::other(format!("could not browse {SERVICE_TYPE}: {error}")))?;
    let mut deadline = Instant::now() + DISCOVERY_TIMEOUT;
    let mut masters = BTreeMap::new();
    while let Ok(event) = events.recv_deadline(deadline) {
        let ServiceEvent::ServiceResolved(service) = event else {
            continue;
        };
        let port = service.get_port();
        let mut addresses: Vec<SocketAddr> = service
            .get_addresses()
            .iter()
            .map(|scoped| scoped.to_ip_addr())
            .filter(usable)
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        addresses.sort_by_key(|address| (address.is_ipv6(), *address));
        if addresses.is_empty() || port == 0 {
            continue;
        }
        if masters.len() >= MAX_CANDIDATES && !masters.contains_key(service.get_fullname()) {
            continue;
        }
        masters.insert(service.get_fullname().to_string(), addresses);
        deadline = deadline.min(Instant::now() + DISCOVERY_GRACE);
    }
    Ok(masters)
}

/// Whether an announced address can be connected to without a scope: IPv6 link-local
/// addresses need the interface, which a `host:port` cannot carry, so they are left
/// out (the same master announces its other addresses too).
fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_multicast(),
        IpAddr::V6(v6) => {
            !v6.is_unspecified() && !v6.is_multicast() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_values_are_read_as_auto_local_or_system() {
        let check = |join: &str, expect: Target| assert_eq!(Target::parse(join), expect, "{join}");
        check("auto", Target::Auto);
        check("AUTO", Target::Auto);
        let local = |host: &str, port| Target::Local {
            host: host.into(),
            port,
        };
        check("nas.local:8080", local("nas.local.", 8080));
        check("NAS.LOCAL.:8080", local("NAS.LOCAL.", 8080));
        check("pi.kitchen.local:1", local("pi.kitchen.local.", 1));
        let system = |text: &str| Target::System(text.into());
        check("nas:8080", system("nas:8080"));
        check("192.168.1.10:8080", system("192.168.1.10:8080"));
        check("[::1]:8080", system("[::1]:8080"));
        check(".local:8080", system(".local:8080"));
        check("nas.local", system("nas.local"));
        check("nas.local:http", system("nas.local:http"));
        check("notlocal:8080", system("notlocal:8080"));
        check("auto:8080", system("auto:8080"));
    }

    #[test]
    fn addresses_that_failed_go_last_and_one_that_registered_is_trusted_again() {
        let a: SocketAddr = "10.0.0.1:8080".parse().expect("address");
        let b: SocketAddr = "10.0.0.2:8080".parse().expect("address");
        let c: SocketAddr = "10.0.0.3:8080".parse().expect("address");
        assert_eq!(order_candidates(vec![a, b, a, c], &[]), vec![a, b, c]);
        let mut distrusted = Vec::new();
        note_outcome(&mut distrusted, a, false);
        assert_eq!(order_candidates(vec![a, b, c], &distrusted), vec![b, c, a]);
        note_outcome(&mut distrusted, b, false);
        assert_eq!(order_candidates(vec![a, b, c], &distrusted), vec![c, a, b]);
        note_outcome(&mut distrusted, a, true);
        assert_eq!(distrusted, vec![b]);
        assert_eq!(order_candidates(vec![a, b, c], &distrusted), vec![a, c, b]);
    }

    #[test]
    fn the_distrusted_list_is_bounded_and_forgets_the_oldest() {
        let mut distrusted = Vec::new();
        for port in 0..(MAX_DISTRUSTED as u16 + 5) {
            note_outcome(
                &mut distrusted,
                SocketAddr::from(([10, 0, 0, 1], port)),
                false,
            );
        }
        assert_eq!(distrusted.len(), MAX_DISTRUSTED);
        assert_eq!(distrusted[0], SocketAddr::from(([10, 0, 0, 1], 5)));
    }

    #[test]
    fn link_local_and_unspecified_addresses_are_not_candidates() {
        let check = |text: &str, expect: bool| {
            let ip: IpAddr = text.parse().expect("ip");
            assert_eq!(usable(&ip), expect, "{text}");
        };
        check("192.168.1.10", true);
        check("127.0.0.1", true);
        check("0.0.0.0", false);
        check("fe80::1", false);
        check("fd00::1", true);
        check("::", false);
    }
}
