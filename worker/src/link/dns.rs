//! Name lookup where the system's resolver has no configuration: Termux on Android.
//!
//! A static musl worker resolves names with musl's resolver, which reads only
//! `/etc/resolv.conf` and `/etc/hosts`. Android has no `/etc/resolv.conf` (its resolver
//! is a system service musl cannot talk to), so under Termux musl would ask a DNS server
//! on 127.0.0.1 that is not there, and `--join nas.example.org:8080` would fail. Termux
//! keeps its own `$PREFIX/etc/resolv.conf` (and `$PREFIX/etc/hosts`) for its programs.
//!
//! [`lookup`] therefore leaves everything to the system while `/etc/resolv.conf`
//! exists (every ordinary Linux, IP literals anywhere), and otherwise looks the name up
//! itself: first in the hosts files (`$PREFIX/etc/hosts`, then `/etc/hosts`), then by
//! asking the name servers of `$PREFIX/etc/resolv.conf` over UDP for A and AAAA records,
//! one server after another, each [`QUERY_ATTEMPTS`] times with [`QUERY_TIMEOUT`].
//! Without a Termux resolv.conf either, the system's resolver is used as before.
//!
//! The messages are built and read here (RFC 1035, section 4): a question and the A or
//! AAAA records of an answer are all it needs, and a DNS library that reads every
//! record type cost 168 KiB of the static worker's 4 MB budget (docs/benchmarks.md).
//!
//! What it does not do (documented in docs/termux.md): `search`/`domain` suffixes and
//! `options` of resolv.conf are ignored (give the full name), and a truncated answer is
//! not retried over TCP (its records, if any, are used; an A or AAAA answer is small).

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The system resolver's configuration; while it exists, the system resolves.
const SYSTEM_RESOLV_CONF: &str = "/etc/resolv.conf";

/// The system's hosts file, read after Termux's own.
const SYSTEM_HOSTS: &str = "/etc/hosts";

/// How long to wait for one answer from one name server.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// How many times each name server is asked before the next one is tried.
pub const QUERY_ATTEMPTS: usize = 2;

/// At most this many `nameserver` lines are used, as in every resolver (`MAXNS`).
pub const MAX_NAME_SERVERS: usize = 3;

/// The largest DNS answer read over UDP (without EDNS, 512 bytes is the most a server
/// sends; the rest of the buffer is slack).
const MAX_ANSWER_BYTES: usize = 1500;

/// The port name servers listen on; resolv.conf has no field for another.
const DNS_PORT: u16 = 53;

/// The size of a DNS message's header.
const HEADER_BYTES: usize = 12;

/// The longest label of a name (RFC 1035, 2.3.4).
const MAX_LABEL_BYTES: usize = 63;

/// The longest name, in text form without the final dot.
const MAX_NAME_BYTES: usize = 253;

/// Header flag: the message is a response.
const FLAG_RESPONSE: u16 = 0x8000;

/// Header flag: the server should resolve recursively.
const FLAG_RECURSION_DESIRED: u16 = 0x0100;

/// The response code: the low four bits of the flags.
const RCODE_MASK: u16 = 0x000f;

/// Response code: the name does not exist (NXDOMAIN).
const RCODE_NAME_ERROR: u16 = 3;

/// The Internet class.
const CLASS_IN: u16 = 1;

/// The record types asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordType {
    /// An IPv4 address.
    A,
    /// An IPv6 address.
    Aaaa,
}

impl RecordType {
    /// The type's number on the wire.
    fn code(self) -> u16 {
        match self {
            RecordType::A => 1,
            RecordType::Aaaa => 28,
        }
    }

    /// The address a record of this type carries, when `rdata` has its length.
    fn address(self, rdata: &[u8]) -> Option<IpAddr> {
        match self {
            RecordType::A => <[u8; 4]>::try_from(rdata).ok().map(IpAddr::from),
            RecordType::Aaaa => <[u8; 16]>::try_from(rdata).ok().map(IpAddr::from),
        }
    }
}

/// Resolves `host_port` (`HOST:PORT`, `[V6]:PORT`) to the addresses to try, in order:
/// through the system while `/etc/resolv.conf` exists, else through Termux's files
/// (see the module's documentation).
pub(super) fn lookup(host_port: &str) -> io::Result<Vec<SocketAddr>> {
    if Path::new(SYSTEM_RESOLV_CONF).exists() {
        return Ok(host_port.to_socket_addrs()?.collect());
    }
    let Some((host, port)) = split_host_port(host_port) else {
        // Not a form this module reads: the system says what is wrong with it.
        return Ok(host_port.to_socket_addrs()?.collect());
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let prefix = crate::device::profile::termux_prefix();
    let hosts_files = [prefix.join("etc/hosts"), PathBuf::from(SYSTEM_HOSTS)];
    for path in &hosts_files {
        if let Ok(text) = fs::read_to_string(path) {
            let found = hosts_lookup(&text, host);
            if !found.is_empty() {
                log::debug!("{host} found in {}", path.display());
                return Ok(with_port(found, port));
            }
        }
    }
    let resolv_conf = prefix.join("etc/resolv.conf");
    let Ok(text) = fs::read_to_string(&resolv_conf) else {
        log::debug!(
            "neither {SYSTEM_RESOLV_CONF} nor {} exists: the system resolves {host}",
            resolv_conf.display()
        );
        return Ok(host_port.to_socket_addrs()?.collect());
    };
    let servers = name_servers(&text);
    if servers.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} names no name server", resolv_conf.display()),
        ));
    }
    let mut last_error = None;
    for server in servers {
        match query_server(server, host, QUERY_TIMEOUT) {
            Ok(found) if !found.is_empty() => return Ok(with_port(found, port)),
            Ok(_) => {
                last_error = Some(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{server} knows no address for {host}"),
                ))
            }
            Err(error) => {
                last_error = Some(io::Error::new(
                    error.kind(),
                    format!("asking {server} for {host}: {error}"),
                ))
            }
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other(format!("could not resolve {host}"))))
}

/// Pairs every address with `port`, IPv4 first: a Termux phone on a Wi-Fi often has
/// IPv6 addresses that do not route to the LAN's master.
fn with_port(mut ips: Vec<IpAddr>, port: u16) -> Vec<SocketAddr> {
    ips.sort_by_key(IpAddr::is_ipv6);
    ips.dedup();
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// Splits `HOST:PORT` or `[V6]:PORT`; `None` for anything else.
fn split_host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    (!host.is_empty()).then_some((host, port))
}

/// The addresses a hosts file gives `name` (compared without case, as DNS names are).
fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or_default();
            let mut fields = line.split_whitespace();
            let ip: IpAddr = fields.next()?.parse().ok()?;
            fields
                .any(|alias| alias.eq_ignore_ascii_case(name))
                .then_some(ip)
        })
        .collect()
}

/// The name servers of a resolv.conf, at most [`MAX_NAME_SERVERS`], on port 53.
fn name_servers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            if fields.next()? != "nameserver" {
                return None;
            }
            // A link-local IPv6 server carries its interface (`fe80::1%wlan0`), which a
            // plain address cannot; such a server is skipped.
            let ip: IpAddr = fields.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, DNS_PORT))
        })
        .take(MAX_NAME_SERVERS)
        .collect()
}

/// Asks `server` for the A and AAAA records of `host`, [`QUERY_ATTEMPTS`] times at most,
/// waiting `timeout` for each answer.
fn query_server(server: SocketAddr, host: &str, timeout: Duration) -> io::Result<Vec<IpAddr>> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    // A connected socket takes datagrams from the server only.
    socket.connect(server)?;
    socket.set_read_timeout(Some(timeout))?;
    let mut last_error = None;
    for _ in 0..QUERY_ATTEMPTS {
        match ask(&socket, host, RecordType::A) {
            Ok(mut found) => {
                // The server answers: an AAAA question it drops still leaves the A
                // records.
                match ask(&socket, host, RecordType::Aaaa) {
                    Ok(v6) => found.extend(v6),
                    Err(error) => log::debug!("no AAAA answer from {server}: {error}"),
                }
                return Ok(found);
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no answer")))
}

/// Sends one query for `qtype` on the connected `socket` and waits for its answer.
fn ask(socket: &UdpSocket, host: &str, qtype: RecordType) -> io::Result<Vec<IpAddr>> {
    let mut id = [0u8; 2];
    getrandom::fill(&mut id).map_err(|error| io::Error::other(error.to_string()))?;
    let id = u16::from_be_bytes(id);
    let query = build_query(id, host, qtype)?;
    socket.send(&query)?;
    let mut buffer = vec![0u8; MAX_ANSWER_BYTES];
    loop {
        // A timeout ends the wait (`WouldBlock` or `TimedOut`, by platform).
        let length = socket.recv(&mut buffer)?;
        if let Some(answer) = parse_answer(&buffer[..length], id, qtype)? {
            return Ok(answer);
        }
        // An answer to an earlier, timed-out query: wait on for this one's.
    }
}

/// A recursive query for `host`'s `qtype` records, with `id`.
fn build_query(id: u16, host: &str, qtype: RecordType) -> io::Result<Vec<u8>> {
    let name = host.strip_suffix('.').unwrap_or(host);
    let invalid = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host} is not a valid name: {why}"),
        )
    };
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(invalid("empty or longer than 253 characters"));
    }
    let mut query = Vec::with_capacity(HEADER_BYTES + name.len() + 6);
    for field in [id, FLAG_RECURSION_DESIRED, 1, 0, 0, 0] {
        query.extend_from_slice(&field.to_be_bytes());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL_BYTES || !label.is_ascii() {
            return Err(invalid("each part must be 1 to 63 ASCII characters"));
        }
        // The length fits: it is at most 63.
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.push(0);
    query.extend_from_slice(&qtype.code().to_be_bytes());
    query.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(query)
}

/// The big-endian number at `at`, if the message is that long.
fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// The offset just past the name that starts at `at`: labels up to an empty one, or
/// up to a compression pointer (which ends the name where it stands; the names
/// themselves are not needed).
fn skip_name(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let length = *bytes.get(at)?;
        match length & 0xc0 {
            0x00 if length == 0 => return Some(at + 1),
            0x00 => at += 1 + usize::from(length),
            0xc0 => return bytes.get(at + 1).map(|_| at + 2),
            _ => return None,
        }
    }
}

/// Reads a server's answer: `None` when it is not the answer to query `id` (ignored),
/// the addresses of type `qtype` it gives (none for a name with no such record), or an
/// error when it is malformed or the server failed.
fn parse_answer(bytes: &[u8], id: u16, qtype: RecordType) -> io::Result<Option<Vec<IpAddr>>> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "a malformed DNS answer");
    let header = |index: usize| u16_at(bytes, 2 * index).ok_or_else(malformed);
    let flags = header(1)?;
    if header(0)? != id || flags & FLAG_RESPONSE == 0 {
        return Ok(None);
    }
    match flags & RCODE_MASK {
        0 => {}
        // The name does not exist: no addresses, not a failure of the server.
        RCODE_NAME_ERROR => return Ok(Some(Vec::new())),
        code => {
            return Err(io::Error::other(format!(
                "the name server answered with error code {code}"
            )))
        }
    }
    let (questions, answers) = (header(2)?, header(3)?);
    let mut at = HEADER_BYTES;
    for _ in 0..questions {
        at = skip_name(bytes, at).ok_or_else(malformed)?;
        if u16_at(bytes, at) != Some(qtype.code()) {
            // An answer to another question than the one asked.
            return Ok(None);
        }
        at += 4;
    }
    let mut found = Vec::new();
    for _ in 0..answers {
        at = skip_name(bytes, at).ok_or_else(malformed)?;
        let rtype = u16_at(bytes, at).ok_or_else(malformed)?;
        let class = u16_at(bytes, at + 2).ok_or_else(malformed)?;
        let length = usize::from(u16_at(bytes, at + 8).ok_or_else(malformed)?);
        let start = at + 10;
        let rdata = bytes.get(start..start + length).ok_or_else(malformed)?;
        // Records of other types (the CNAME that led to the address) are passed over.
        if rtype == qtype.code() && class == CLASS_IN {
            found.push(qtype.address(rdata).ok_or_else(malformed)?);
        }
        at = start + length;
    }
    Ok(Some(found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_are_split_as_join_values_are_written() {
        let check = |input: &str, expect: Option<(&str, u16)>| {
            assert_eq!(split_host_port(input), expect, "{input}");
        };
        check("nas.example.org:8080", Some(("nas.example.org", 8080)));
        check("10.0.0.2:80", Some(("10.0.0.2", 80)));
        check("[fd00::2]:8080", Some(("fd00::2", 8080)));
        check("fd00::2:8080", None);
        check("nas.example.org", None);
        check(":8080", None);
        check("nas:http", None);
    }

    #[test]
    fn hosts_files_give_every_address_of_a_name_or_alias() {
        let text = "# Termux\n127.0.0.1 localhost\n::1 localhost ip6-localhost\n\
                    10.0.0.5\tnas nas.lan # the box\n10.0.0.6 other\n";
        let check = |name: &str, expect: &[&str]| {
            let expect: Vec<IpAddr> = expect
                .iter()
                .map(|ip| ip.parse().expect("valid in the test"))
                .collect();
            assert_eq!(hosts_lookup(text, name), expect, "{name}");
        };
        check("localhost", &["127.0.0.1", "::1"]);
        check("NAS.lan", &["10.0.0.5"]);
        check("nas", &["10.0.0.5"]);
        check("box", &[]);
        check("the", &[]);
    }

    #[test]
    fn name_servers_are_the_first_three_usable_lines() {
        let text = "# written by Termux\nsearch lan\nnameserver 8.8.8.8\n\
                    nameserver fe80::1%wlan0\nnameserver 2001:4860:4860::8888\n\
                    options ndots:2\nnameserver 1.1.1.1\nnameserver 9.9.9.9\n";
        let servers: Vec<String> = name_servers(text).iter().map(|s| s.to_string()).collect();
        assert_eq!(
            servers,
            ["8.8.8.8:53", "[2001:4860:4860::8888]:53", "1.1.1.1:53"]
        );
    }

    /// The answer a name server gives to `query`: its header and question, with the
    /// response flag, `rcode`, and one record per entry of `records` (type, data),
    /// each named by a pointer to the question's name.
    fn answer(query: &[u8], rcode: u16, records: &[(u16, &[u8])]) -> Vec<u8> {
        let mut reply = query.to_vec();
        let flags = u16_at(query, 2).expect("valid in the test") | FLAG_RESPONSE | 0x0080 | rcode;
        reply[2..4].copy_from_slice(&flags.to_be_bytes());
        reply[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        for (rtype, rdata) in records {
            reply.extend_from_slice(&[0xc0, 0x0c]);
            reply.extend_from_slice(&rtype.to_be_bytes());
            reply.extend_from_slice(&CLASS_IN.to_be_bytes());
            reply.extend_from_slice(&60u32.to_be_bytes());
            reply.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            reply.extend_from_slice(rdata);
        }
        reply
    }

    /// The question's name in `query`, as text.
    fn question_name(query: &[u8]) -> String {
        let mut at = HEADER_BYTES;
        let mut labels = Vec::new();
        while query[at] != 0 {
            let length = usize::from(query[at]);
            labels.push(String::from_utf8_lossy(&query[at + 1..at + 1 + length]).to_string());
            at += 1 + length;
        }
        labels.join(".")
    }

    /// A name server on a real UDP socket: answers each query for `nas.example.org`
    /// with a CNAME and one A or AAAA record, and any other name with NXDOMAIN; the
    /// first query it gets is answered twice, once with a wrong id first.
    fn serve(socket: UdpSocket, queries: usize) {
        let mut buffer = [0u8; 512];
        for round in 0..queries {
            let (length, from) = socket.recv_from(&mut buffer).expect("a query");
            let query = &buffer[..length];
            let qtype = u16_at(query, length - 4).expect("valid in the test");
            let reply = if question_name(query) == "nas.example.org" {
                let address: Vec<u8> = if qtype == RecordType::A.code() {
                    vec![10, 0, 0, 5]
                } else {
                    "fd00::5"
                        .parse::<Ipv6Addr>()
                        .expect("valid in the test")
                        .octets()
                        .to_vec()
                };
                answer(query, 0, &[(5, &[0xc0, 0x0c]), (qtype, &address)])
            } else {
                answer(query, RCODE_NAME_ERROR, &[])
            };
            if round == 0 {
                let mut stale = reply.clone();
                stale[1] ^= 1;
                socket.send_to(&stale, from).expect("valid in the test");
            }
            socket.send_to(&reply, from).expect("send the answer");
        }
    }

    #[test]
    fn queries_are_built_as_rfc_1035_says_and_bad_names_refused() {
        let query = build_query(0x1234, "nas.lan.", RecordType::Aaaa).expect("a query");
        assert_eq!(
            query,
            [
                &[0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0][..],
                b"\x03nas\x03lan\x00",
                &[0, 28, 0, 1]
            ]
            .concat()
        );
        let long = "a".repeat(64);
        for bad in ["", ".", "a..b", long.as_str(), "caf\u{e9}.lan"] {
            let error = build_query(1, bad, RecordType::A).expect_err(bad);
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn answers_are_read_strictly_and_only_the_asked_type_counts() {
        let query = build_query(7, "nas.lan", RecordType::A).expect("valid in the test");
        let check = |bytes: &[u8], expect: Result<Option<Vec<&str>>, io::ErrorKind>| {
            let got = parse_answer(bytes, 7, RecordType::A).map_err(|error| error.kind());
            let expect = expect.map(|found| {
                found.map(|ips| {
                    ips.iter()
                        .map(|ip| ip.parse::<IpAddr>().expect("valid in the test"))
                        .collect()
                })
            });
            assert_eq!(got, expect, "{bytes:?}");
        };
        let good = answer(
            &query,
            0,
            &[(5, &[0xc0, 0x0c]), (1, &[10, 0, 0, 5]), (28, &[0; 16])],
        );
        check(&good, Ok(Some(vec!["10.0.0.5"])));
        check(&answer(&query, RCODE_NAME_ERROR, &[]), Ok(Some(vec![])));
        check(&answer(&query, 2, &[]), Err(io::ErrorKind::Other));
        // Not this query's answer: another id, or the query itself.
        let mut other = good.clone();
        other[1] = 8;
        check(&other, Ok(None));
        check(&query, Ok(None));
        // Cut anywhere, or with an address of the wrong length: malformed.
        for cut in [3, 11, 20, good.len() - 1] {
            check(&good[..cut], Err(io::ErrorKind::InvalidData));
        }
        check(
            &answer(&query, 0, &[(1, &[10, 0, 0])]),
            Err(io::ErrorKind::InvalidData),
        );
        // A label type that does not exist (0x40).
        let mut bad_label = answer(&query, 0, &[(1, &[10, 0, 0, 5])]);
        let record = query.len();
        bad_label[record] = 0x40;
        check(&bad_label, Err(io::ErrorKind::InvalidData));
    }

    #[test]
    fn a_name_server_is_asked_for_both_families_and_unknown_names_give_none() {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let server = socket.local_addr().expect("valid in the test");
        let thread = std::thread::spawn(move || serve(socket, 4));
        let found = query_server(server, "nas.example.org", QUERY_TIMEOUT).expect("an answer");
        assert_eq!(
            with_port(found, 8080),
            [
                "10.0.0.5:8080"
                    .parse::<SocketAddr>()
                    .expect("valid in the test"),
                "[fd00::5]:8080".parse().expect("valid in the test")
            ]
        );
        assert_eq!(
            query_server(server, "gone.example.org", QUERY_TIMEOUT).expect("an answer"),
            Vec::<IpAddr>::new()
        );
        thread.join().expect("valid in the test");
    }

    #[test]
    fn a_silent_name_server_fails_after_its_attempts() {
        // Bound but never read: every query times out.
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let server = socket.local_addr().expect("valid in the test");
        let timeout = Duration::from_millis(50);
        let error = query_server(server, "nas.example.org", timeout).expect_err("no answer");
        assert!(
            matches!(
                error.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{error:?}"
        );
    }
}
