//! What the master and the worker daemons both ask of the operating system.
//!
//! [`set_keepalive`] makes the kernel notice a peer that vanished without closing,
//! [`watch_signals`] runs the thread that turns SIGINT and SIGTERM into a stop,
//! [`logging`] writes lines journald understands when systemd runs the daemon, and
//! [`notify`] speaks systemd's notify protocol (readiness, status, watchdog). Both
//! daemons need exactly these, with the same numbers, so they live here once. The crate
//! is deliberately small and pure Rust (`socket2`, `signal-hook` and `sd-notify` over the
//! C library's system calls; `clap`, `toml` and `serde`, which both daemons use anyway,
//! for [`settings`]), so the worker still cross-builds to static musl.
//!
//! [`settings`] lays the flags, the environment and a config file over the defaults and
//! remembers where each value came from, for both daemons' `--config` and `config`.

pub mod logging;
pub mod notify;
pub mod settings;

use std::io;
use std::os::fd::AsFd;
use std::thread;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

// TCP keepalive and TCP_USER_TIMEOUT on every connection between the master and a
// worker, on both ends. The kernel defaults (first keepalive probe after 2 hours;
// unacknowledged data retransmitted for about 15 minutes) suit nothing on a home
// network, where a dead peer is a master that lost power, a router that rebooted or a
// phone that left the Wi-Fi. The values match the heartbeat defaults (every 5 s, 15 s
// of silence):
// - keepalive: first probe after 15 s idle, then every 5 s, 3 probes: a silent dead path
//   is noticed in about 30 s. Idle connections barely exist (heartbeats go out every
//   5 s), so this mostly guards a connection whose heartbeat interval is long.
// - TCP_USER_TIMEOUT 30 s: data the peer has not acknowledged for 30 s (a heartbeat, a
//   result) ends the connection with an error instead of minutes of retransmissions. It
//   is long enough to ride out a Wi-Fi roam or a brief radio dropout on a phone, where a
//   few seconds of loss are normal.
// The protocol's own silence checks still run; these catch a dead path at the transport
// level, also while a write blocks, and free the socket.

/// TCP keepalive: idle time before the first probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);

/// TCP keepalive: time between probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// TCP keepalive: unanswered probes before the connection is dropped.
pub const KEEPALIVE_PROBES: u32 = 3;

/// TCP_USER_TIMEOUT (Linux and Android): how long sent data may stay unacknowledged
/// before the connection is dropped.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Which of the two socket options could not be set.
#[derive(Debug, thiserror::Error)]
pub enum KeepaliveError {
    /// SO_KEEPALIVE with its idle time, interval and probe count.
    #[error("cannot set TCP keepalive: {0}")]
    Keepalive(#[source] io::Error),
    /// TCP_USER_TIMEOUT.
    #[error("cannot set TCP_USER_TIMEOUT: {0}")]
    UserTimeout(#[source] io::Error),
}

/// How many connections the kernel may hold for the master before it
/// accepts them (the kernel caps it at `net.core.somaxconn`, 4096 on current
/// Linux). The standard library's 128 overflows when a restarted master's
/// workers all reconnect at once, or a flood arrives: the kernel then drops
/// the handshakes it has no room for, and the peers whose connections it
/// completes only later (a second or more) arrive after newer ones.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Binds a TCP listener on `addr` with [`LISTEN_BACKLOG`], with
/// `SO_REUSEADDR` as the standard library sets it, so a restarted master
/// can listen again while old connections linger in `TIME_WAIT`.
pub fn listen(addr: std::net::SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Sets TCP keepalive ([`KEEPALIVE_IDLE`], [`KEEPALIVE_INTERVAL`], [`KEEPALIVE_PROBES`])
/// and, on Linux and Android, [`TCP_USER_TIMEOUT`] on `stream` (a standard or a mio
/// TCP stream). Every option is tried
/// even when one fails; the errors are returned for the caller to log, since the
/// options are an optimisation and the protocol's silence checks still catch a dead
/// peer.
pub fn set_keepalive(stream: &impl AsFd) -> Vec<KeepaliveError> {
    let socket = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    let mut errors = Vec::new();
    if let Err(error) = socket.set_tcp_keepalive(&keepalive) {
        errors.push(KeepaliveError::Keepalive(error));
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(error) = socket.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT)) {
        errors.push(KeepaliveError::UserTimeout(error));
    }
    errors
}

/// Starts the thread (named `signals`) that calls `on_signal(signal, count)` for every
/// SIGINT or SIGTERM the process receives, `count` being 1 for the first, 2 for the
/// second and so on. The daemons stop gracefully on the first and at once on the
/// second, for an operator who will not wait; what "stop" means is theirs to say.
///
/// The handlers are installed before this returns, so a signal that arrives after it is
/// never lost to the default action (which would kill the process).
pub fn watch_signals(
    mut on_signal: impl FnMut(i32, u32) + Send + 'static,
) -> io::Result<thread::JoinHandle<()>> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut count = 0u32;
            for signal in signals.forever() {
                count = count.saturating_add(1);
                on_signal(signal, count);
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;

    #[test]
    fn the_socket_gets_keepalive_and_a_user_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let stream = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let errors = set_keepalive(&stream);
        assert!(errors.is_empty(), "{errors:?}");
        let socket = socket2::SockRef::from(&stream);
        assert!(socket.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(socket.tcp_keepalive_time().expect("idle"), KEEPALIVE_IDLE);
        assert_eq!(
            socket.tcp_keepalive_interval().expect("interval"),
            KEEPALIVE_INTERVAL
        );
        assert_eq!(
            socket.tcp_keepalive_retries().expect("retries"),
            KEEPALIVE_PROBES
        );
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert_eq!(
            socket.tcp_user_timeout().expect("user timeout"),
            Some(TCP_USER_TIMEOUT)
        );
    }

    #[test]
    fn signals_are_counted_in_the_order_they_arrive() {
        let (sender, received) = mpsc::channel();
        watch_signals(move |signal, count| {
            let _ = sender.send((signal, count));
        })
        .expect("the signal thread starts");
        signal_hook::low_level::raise(SIGTERM).expect("raise SIGTERM");
        assert_eq!(
            received.recv_timeout(Duration::from_secs(10)),
            Ok((SIGTERM, 1))
        );
        signal_hook::low_level::raise(SIGINT).expect("raise SIGINT");
        assert_eq!(
            received.recv_timeout(Duration::from_secs(10)),
            Ok((SIGINT, 2))
        );
    }
}

#[cfg(test)]
mod listen_tests {
    use super::*;
    use std::time::Duration;

    /// More connections than the standard library's backlog of 128 wait
    /// to be accepted, and every one of them is completed and queued by
    /// the kernel. With a backlog of 128 the kernel drops the handshakes
    /// past it, so the later connects time out here.
    #[test]
    fn more_than_128_waiting_connections_are_all_queued() {
        const WAITING: usize = 400;
        let listener = listen("127.0.0.1:0".parse().expect("an address")).expect("listen");
        let addr = listener.local_addr().expect("its address");
        let clients: Vec<_> = (0..WAITING)
            .map(|i| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                    .unwrap_or_else(|err| panic!("connection {i} was not queued: {err}"))
            })
            .collect();
        listener.set_nonblocking(true).expect("non-blocking");
        let mut accepted = 0;
        while listener.accept().is_ok() {
            accepted += 1;
        }
        assert_eq!(accepted, clients.len());
    }
}
