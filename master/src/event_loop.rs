//! The only code that touches sockets: a mio poll loop over a slab of
//! connections, feeding the core and writing what it returns.

mod http;

use crate::core::outbox::Outbox;
use crate::core::records::Batch;
use crate::core::{ConnId, Core, Now, Output, Payload};
use crate::store::StoreEvent;
use crate::Shutdown;
use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use protocol::{Envelope, Frame, LineCodec};
use slab::Slab;
use std::collections::{BTreeSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Bytes read at a time from a peer that has not authenticated: what a
/// budget leaves unread is kept (`Connection::unread`), and strangers'
/// requests are small, so a stranger that never reads makes the master
/// keep at most this much of its input besides one partial line.
const UNTRUSTED_READ_CHUNK: usize = 8 * 1024;

/// Bytes read from one connection before the loop turns to the others; the
/// rest is read on the next turn, so one fast peer cannot starve the rest.
const READ_BUDGET: usize = 256 * 1024;

/// How long to wait before accepting again after `accept` failed (for
/// example when the process is out of file descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Write buffers up to this capacity are freed once written.
const SMALL_OUT: usize = 4096;

/// Write buffers larger than this are freed once written too: only a
/// buffer of a common size is worth keeping for the next replies, and a
/// large one kept by every connection a flood once filled would add up.
const KEEP_OUT: usize = 256 * 1024;

/// Once this many bytes of connection buffers have been freed, the loop
/// asks the allocator to give its free pages back to the system (see
/// [`give_back_memory`]).
const TRIM_AFTER: usize = 16 * 1024 * 1024;

/// At most one such request per this interval, so a peer cannot make the
/// loop spend its time trimming.
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Room for a heartbeat ack (about 200 bytes with a timestamp and a short
/// message id), so writing one does not grow its buffer.
const HEARTBEAT_ACK_CAPACITY: usize = 256;

/// How long shutdown waits for the last replies to drain.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// Limits the loop enforces per connection and in all.
#[derive(Debug, Clone)]
pub struct LoopLimits {
    /// Longest line a peer may send.
    pub max_line: usize,
    /// Longest line a peer may send before it has authenticated.
    pub pre_auth_max_line: usize,
    /// Most connections open at once; more are refused with an error.
    pub max_connections: usize,
    /// Most bytes queued for an authenticated peer that does not read;
    /// past it the connection is closed, past half of it the peer is not
    /// read.
    pub max_pending_output: usize,
    /// Most bytes queued for all peers together; past it the connection
    /// with the largest backlog is closed.
    pub max_total_output: usize,
    /// [`LoopLimits::max_pending_output`] for a peer that has not
    /// authenticated.
    pub untrusted_max_pending_output: usize,
    /// [`LoopLimits::max_total_output`] for the peers that have not
    /// authenticated, together.
    pub untrusted_max_total_output: usize,
    /// How long a half-closed connection has to take its last replies
    /// ([`crate::DEFAULT_DRAIN_TIMEOUT`]).
    pub drain_timeout: Duration,
    /// How long an anonymous reader may go without a request and without
    /// taking any of its replies ([`crate::DEFAULT_READER_IDLE_TIMEOUT`]).
    pub reader_idle_timeout: Duration,
    /// How long an HTTP event stream may stay silent before it gets a
    /// `: keep-alive` comment ([`crate::http::SSE_KEEP_ALIVE_INTERVAL`]).
    pub sse_keep_alive: Duration,
}

impl LoopLimits {
    /// The most a connection may have queued.
    fn cap(&self, trusted: bool) -> usize {
        if trusted {
            self.max_pending_output
        } else {
            self.untrusted_max_pending_output
        }
    }
}

/// What one connection may still do in this turn.
struct Work {
    frames: usize,
    until: Instant,
}

impl Work {
    /// A connection's own budget for this turn, cut short at `by` when the
    /// turn's shared budget ends sooner.
    fn until(by: Option<Instant>) -> Work {
        let own = Instant::now() + crate::WORK_TIME_PER_TURN;
        Work {
            frames: crate::WORK_FRAMES_PER_TURN,
            until: by.map_or(own, |by| by.min(own)),
        }
    }

    fn spent(&self) -> bool {
        self.frames == 0 || Instant::now() >= self.until
    }
}

/// What a connection speaks, told by its first bytes.
enum Proto {
    /// Nothing decided yet: the bytes so far, a prefix of a request line's
    /// method (at most 8 bytes).
    Undecided(Vec<u8>),
    /// The JSON-lines or text protocol.
    Lines,
    /// HTTP/1.1.
    Http(Box<http::HttpConn>),
}

struct Connection {
    stream: TcpStream,
    /// Its protocol.
    proto: Proto,
    codec: LineCodec,
    /// Bytes read but not yet handed to the codec: the rest of a read that
    /// the connection's work or output budget cut short. At most one read
    /// (`READ_CHUNK`); the socket is not read again until it is used up.
    unread: Vec<u8>,
    /// The peer has authenticated: its limits are the configured ones, not
    /// the smaller ones for strangers.
    trusted: bool,
    /// The backlog and held input last added to the loop's totals.
    counted: usize,
    /// The master asked to close it (or its peer half-closed): by then it
    /// is closed, flushed or not.
    close_at: Option<Duration>,
    /// When it last sent a request or took some of its replies.
    active_at: Duration,
    /// When the loop next checks whether it is an idle reader (its key in
    /// `EventLoop::idle_checks`); none once it has authenticated.
    idle_check: Option<Duration>,
    out: Vec<u8>,
    written: usize,
    close_when_flushed: bool,
    closed: bool,
    /// The poller said the peer closed its side or the socket failed.
    /// From then on a read goes on until it returns 0 or an error, even
    /// after a short read: no new edge would come for a hang-up it
    /// already reported.
    hung_up: bool,
    wants_write: bool,
    peer: Option<SocketAddr>,
}

impl Connection {
    /// Its backlog: what waits to be written, and `held`, the bytes the
    /// outbox holds for it until a commit.
    fn pending_bytes(&self, held: usize) -> usize {
        held + self.out.len() - self.written
    }

    /// Input the master holds for it: a partial line and a read that its
    /// budget cut short. Counted in the totals, not against its own cap
    /// (only replies are: backpressure on input would never let it drain).
    fn input_bytes(&self) -> usize {
        let http = match &self.proto {
            Proto::Http(http) => http.buffered(),
            Proto::Undecided(prefix) => prefix.len(),
            Proto::Lines => 0,
        };
        self.codec.buffered() + self.unread.len() + http
    }
}

pub(crate) struct EventLoop {
    poll: Poll,
    listener: TcpListener,
    listening: bool,
    conns: Slab<Connection>,
    core: Core,
    limits: LoopLimits,
    batches: Sender<Batch>,
    store_events: Receiver<StoreEvent>,
    started: Instant,
    /// Messages waiting for a batch to commit (the held-reply rule, kept
    /// sans-IO in the core).
    outbox: Outbox<Vec<u8>>,
    /// Connections with bytes to write.
    dirty: BTreeSet<ConnId>,
    /// Connections that may have more to read: their read budget ran out
    /// before the socket said `WouldBlock` (mio is edge-triggered, so no new
    /// event would come for those bytes).
    readable: BTreeSet<ConnId>,
    /// Connections not read because their peer has not read its replies;
    /// they are read again once their backlog drains.
    throttled: BTreeSet<ConnId>,
    /// Accepting failed; retry at this time.
    accept_retry_at: Option<Instant>,
    outputs: Vec<Output>,
    /// The event being fanned out and its line, encoded once for its first
    /// subscriber and kept until its last (see [`EventLoop::event_line`]).
    event_line: Option<(Arc<Envelope>, Vec<u8>)>,
    /// The time of this turn, read once after `poll` returns rather than
    /// for every message.
    now: Now,
    /// The `timestamp` written on messages sent in this turn, formatted
    /// once per turn (and only if a JSON message is sent).
    stamp: Option<String>,
    /// Connections marked closed since the last reap (so reaping does not
    /// look at every connection on every turn).
    newly_closed: Vec<ConnId>,
    /// Watches the token files, so a rotated token takes effect without a
    /// restart.
    credentials: crate::credentials::Watch,
    /// Bytes queued for all connections (their `counted` backlogs).
    total_out: usize,
    /// The part of `total_out` queued for connections not trusted.
    untrusted_out: usize,
    /// Open connections with a backlog, by its size, so that the largest
    /// is found in O(log n) when a total is exceeded: events fan out to
    /// many connections, and a scan per queued event would be quadratic.
    by_backlog: BTreeSet<(usize, ConnId)>,
    /// The untrusted part of `by_backlog`.
    untrusted_by_backlog: BTreeSet<(usize, ConnId)>,
    /// Connections the master asked to close, by the time they close at
    /// the latest.
    closing: BTreeSet<(Duration, ConnId)>,
    /// Connections not authenticated, by when the loop next checks
    /// whether they are idle readers.
    idle_checks: BTreeSet<(Duration, ConnId)>,
    /// The connection in its handshake served last, so the next turn's
    /// share of [`crate::PENDING_WORK_PER_TURN`] starts after it.
    pending_cursor: ConnId,
    /// The reader served last, likewise.
    reader_cursor: ConnId,
    /// Bytes of connection buffers freed since the allocator was last
    /// asked to give memory back.
    freed: usize,
    /// When it was last asked.
    trimmed_at: Option<Instant>,
    /// Tells systemd the master is ready, how it is doing, that this loop
    /// still turns (the watchdog), and that it stops.
    notifier: daemon::notify::Notifier,
    /// The store's read-only connection, which answers the core's reads
    /// of finished tasks (`Output::Read`).
    reader: Option<crate::store::Reader>,
    /// HTTP connections by when they are next checked (a request's
    /// timeout, keep-alive idleness, a stream's next update).
    http_checks: BTreeSet<(Duration, ConnId)>,
    /// The numbering of events for Server-Sent Events.
    event_ids: http::EventIds,
    /// When the master started (Unix ms): the first part of event ids.
    boot_ms: i64,
    /// What `/metrics` shows of the loop.
    http_stats: http::HttpStats,
    /// The dashboard's signed-in sessions (`http/session.rs`), in memory.
    sessions: crate::http::session::Sessions,
    /// Batches handed to the store and when, for the commit latency.
    batch_sent: VecDeque<(u64, Instant)>,
}

impl EventLoop {
    pub(crate) fn new(
        poll: Poll,
        mut listener: TcpListener,
        core: Core,
        limits: LoopLimits,
        (batches, store_events): (Sender<Batch>, Receiver<StoreEvent>),
        started: Instant,
        credentials: crate::credentials::Watch,
    ) -> io::Result<EventLoop> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(EventLoop {
            poll,
            listener,
            listening: true,
            conns: Slab::new(),
            core,
            limits,
            batches,
            store_events,
            started,
            outbox: Outbox::default(),
            dirty: BTreeSet::new(),
            readable: BTreeSet::new(),
            throttled: BTreeSet::new(),
            accept_retry_at: None,
            outputs: Vec::new(),
            event_line: None,
            now: Now {
                monotonic: started.elapsed(),
                unix_ms: unix_ms(),
            },
            stamp: None,
            newly_closed: Vec::new(),
            credentials,
            total_out: 0,
            untrusted_out: 0,
            by_backlog: BTreeSet::new(),
            untrusted_by_backlog: BTreeSet::new(),
            closing: BTreeSet::new(),
            idle_checks: BTreeSet::new(),
            pending_cursor: 0,
            reader_cursor: 0,
            freed: 0,
            trimmed_at: None,
            notifier: daemon::notify::Notifier::disabled(),
            reader: None,
            http_checks: BTreeSet::new(),
            event_ids: http::EventIds::default(),
            boot_ms: unix_ms(),
            http_stats: http::HttpStats::default(),
            sessions: crate::http::session::Sessions::new(),
            batch_sent: VecDeque::new(),
        })
    }

    /// Gives the loop the store's reader, which answers the core's reads.
    pub(crate) fn set_reader(&mut self, reader: crate::store::Reader) {
        self.reader = Some(reader);
    }

    /// Has the loop tell the service manager behind `notifier` that it is
    /// ready, how it is doing, that it still turns, and that it stops.
    pub(crate) fn set_notifier(&mut self, notifier: daemon::notify::Notifier) {
        self.notifier = notifier;
    }

    pub(crate) fn make_waker(poll: &Poll) -> io::Result<Arc<Waker>> {
        Ok(Arc::new(Waker::new(poll.registry(), WAKER)?))
    }

    /// Reads the clock for the turn that starts: the core, the timers and
    /// the messages' timestamps all use this time until the next turn.
    fn tick_clock(&mut self) {
        self.now = Now {
            monotonic: self.started.elapsed(),
            unix_ms: unix_ms(),
        };
        self.stamp = None;
    }

    /// The `timestamp` of messages sent in this turn.
    fn stamp(&mut self) -> String {
        let unix_ms = self.now.unix_ms;
        self.stamp
            .get_or_insert_with(|| crate::core::rfc3339(unix_ms))
            .clone()
    }

    /// Runs until `shutdown` is triggered, then drains and returns.
    pub(crate) fn run(mut self, shutdown: &Shutdown) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut read_buf = vec![0u8; READ_CHUNK];
        // Work restored from the database (queued tasks) may be waiting.
        self.tick_clock();
        self.settle();
        // The store is open and the listener listens: the master serves.
        let status = self.status_line();
        self.notifier.ready(Instant::now(), &status);
        while !shutdown.is_triggered() {
            let mut timeout = self.core.next_deadline().map(|deadline| {
                deadline.saturating_sub(self.started.elapsed()) + Duration::from_millis(1)
            });
            if let Some(at) = self.accept_retry_at {
                let wait = at.saturating_duration_since(Instant::now());
                timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
            }
            for at in [
                self.closing.first(),
                self.idle_checks.first(),
                self.http_checks.first(),
            ]
            .into_iter()
            .flatten()
            .map(|&(at, _)| at)
            {
                let wait = at.saturating_sub(self.started.elapsed()) + Duration::from_millis(1);
                timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
            }
            if let Some(wait) = self.trim_wait() {
                timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
            }
            if let Some(wait) = self.notifier.next_wake(Instant::now()) {
                timeout = Some(timeout.map_or(wait, |t| t.min(wait)));
            }
            if !self.readable.is_empty() {
                // Bytes are waiting in some socket: only look for new events.
                timeout = Some(Duration::ZERO);
            }
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
            self.tick_clock();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(conn) => {
                        let hung_up = event.is_read_closed() || event.is_error();
                        if hung_up {
                            if let Some(connection) = self.conns.get_mut(conn) {
                                connection.hung_up = true;
                            }
                        }
                        if event.is_readable() || hung_up {
                            self.readable.insert(conn);
                        }
                        if event.is_writable() {
                            self.dirty.insert(conn);
                        }
                    }
                }
            }
            if self.accept_retry_at.is_some_and(|at| at <= Instant::now()) {
                self.accept_retry_at = None;
                self.accept();
            }
            self.close_overdue();
            self.close_idle();
            self.http_due();
            self.read_turn(&mut read_buf);
            self.collect_commits();
            let now = self.now;
            if self
                .core
                .next_deadline()
                .is_some_and(|d| d <= now.monotonic)
            {
                self.core.handle_tick(now);
            }
            self.settle();
            // The watchdog ping comes from here, after a whole turn, so a
            // loop stuck anywhere in it stops the pings and systemd
            // restarts the master.
            let (core, listener) = (&self.core, &self.listener);
            self.notifier
                .tick(Instant::now(), || status_line(core, listener));
        }
        self.shut_down()
    }

    /// What `systemctl status` shows while the master serves.
    fn status_line(&self) -> String {
        status_line(&self.core, &self.listener)
    }

    /// Applies the core's outputs, hands its changes to the store, writes,
    /// and closes what must close, until nothing more happens.
    fn settle(&mut self) {
        loop {
            let now = self.now;
            self.core.drain_outputs(now, &mut self.outputs);
            let outputs = std::mem::take(&mut self.outputs);
            for output in outputs {
                self.apply(output);
            }
            if let Some(batch) = self.core.take_batch() {
                self.batch_sent.push_back((batch.id, Instant::now()));
                if self.batches.send(batch).is_err() {
                    log::error!("the store thread is gone; changes cannot be saved");
                }
            }
            self.release_held();
            self.flush_dirty();
            if !self.reap_closed(now) {
                break;
            }
        }
        if self.trim_wait() == Some(Duration::ZERO) {
            give_back_memory();
            self.freed = 0;
            self.trimmed_at = Some(Instant::now());
        }
    }

    /// How long until the allocator may be asked to give memory back, when
    /// enough has been freed that it is worth asking.
    fn trim_wait(&self) -> Option<Duration> {
        if self.freed < TRIM_AFTER {
            return None;
        }
        Some(self.trimmed_at.map_or(Duration::ZERO, |at| {
            (at + TRIM_INTERVAL).saturating_duration_since(Instant::now())
        }))
    }

    /// Closes the connections whose grace to receive their last replies
    /// ran out: a deadline closes a connection whether or not its peer
    /// reads.
    fn close_overdue(&mut self) {
        let now = self.now.monotonic;
        while let Some(&(at, conn)) = self.closing.first() {
            if at > now {
                break;
            }
            self.closing.pop_first();
            self.close_now(conn, "did not take its last replies in time");
        }
    }

    /// Closes the anonymous readers that sent no request and took none of
    /// their replies for `reader_idle_timeout`. A subscriber with nothing
    /// queued is waiting for events, not idle.
    fn close_idle(&mut self) {
        let now = self.now.monotonic;
        let timeout = self.limits.reader_idle_timeout;
        while let Some(&(at, conn)) = self.idle_checks.first() {
            if at > now {
                break;
            }
            self.idle_checks.pop_first();
            let Some(connection) = self.conns.get_mut(conn) else {
                continue;
            };
            connection.idle_check = None;
            if connection.closed || connection.trusted {
                continue;
            }
            let reader = self.core.is_reader(conn);
            let waiting = self.core.is_subscribed(conn)
                && connection.pending_bytes(self.outbox.held_bytes(conn)) == 0;
            let next = if !reader || waiting {
                // In its handshake (its authentication deadline closes
                // it), or a quiet subscriber: look again later.
                now + timeout
            } else if connection.active_at + timeout <= now {
                self.close_now(conn, "was idle for longer than the reader idle timeout");
                continue;
            } else {
                connection.active_at + timeout
            };
            connection.idle_check = Some(next);
            self.idle_checks.insert((next, conn));
        }
    }

    /// Makes `conn` close by `at` at the latest (an earlier deadline it
    /// already has stays).
    fn close_by(&mut self, conn: ConnId, at: Duration) {
        let Some(connection) = self.conns.get_mut(conn) else {
            return;
        };
        if connection.closed || connection.close_at.is_some_and(|old| old <= at) {
            return;
        }
        if let Some(old) = connection.close_at.replace(at) {
            self.closing.remove(&(old, conn));
        }
        self.closing.insert((at, conn));
    }

    /// Closes `conn` at once, dropping whatever it had queued, and takes
    /// its backlog off the totals.
    fn close_now(&mut self, conn: ConnId, why: &str) {
        let Some(connection) = self.conns.get_mut(conn) else {
            return;
        };
        if connection.closed {
            return;
        }
        log::warn!(
            "connection {conn} from {:?} {why}; closing it",
            connection.peer
        );
        connection.closed = true;
        self.freed +=
            connection.out.capacity() + self.outbox.forget(conn) + connection.unread.capacity();
        connection.out = Vec::new();
        connection.written = 0;
        connection.unread = Vec::new();
        self.newly_closed.push(conn);
        self.recount(conn);
    }

    /// Brings the loop's totals up to date with `conn`'s backlog.
    fn recount(&mut self, conn: ConnId) {
        let Some(connection) = self.conns.get_mut(conn) else {
            return;
        };
        let now = if connection.closed {
            0
        } else {
            connection.pending_bytes(self.outbox.held_bytes(conn)) + connection.input_bytes()
        };
        let before = std::mem::replace(&mut connection.counted, now);
        self.total_out = self.total_out - before + now;
        self.by_backlog.remove(&(before, conn));
        if now > 0 {
            self.by_backlog.insert((now, conn));
        }
        if !connection.trusted {
            self.untrusted_out = self.untrusted_out - before + now;
            self.untrusted_by_backlog.remove(&(before, conn));
            if now > 0 {
                self.untrusted_by_backlog.insert((now, conn));
            }
        }
    }

    /// Closes the connections with the largest backlogs while the
    /// untrusted ones together, or all together, hold more than allowed.
    fn enforce_totals(&mut self) {
        while self.untrusted_out > self.limits.untrusted_max_total_output {
            let Some(conn) = self.largest_backlog(false) else {
                break;
            };
            self.close_now(
                conn,
                "has the largest backlog while strangers hold too much",
            );
        }
        while self.total_out > self.limits.max_total_output {
            let Some(conn) = self.largest_backlog(true) else {
                break;
            };
            self.close_now(
                conn,
                "has the largest backlog while the master holds too much",
            );
        }
    }

    /// The open connection with the largest backlog, among all of them or
    /// only the untrusted ones. A connection closed since the last reap
    /// may still be indexed with its backlog (only `close_now` recounts at
    /// once); it is skipped, and there are few of them.
    fn largest_backlog(&self, trusted_too: bool) -> Option<ConnId> {
        let index = if trusted_too {
            &self.by_backlog
        } else {
            &self.untrusted_by_backlog
        };
        index
            .iter()
            .rev()
            .map(|&(_, conn)| conn)
            .find(|&conn| self.conns.get(conn).is_some_and(|c| !c.closed))
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    if self.conns.len() >= self.limits.max_connections {
                        // Best effort: say why before dropping the socket.
                        let reply =
                            Envelope::new(protocol::Message::Error(protocol::ErrorReply::new(
                                None,
                                protocol::ErrorCode::TooManyConnections,
                                "too many connections; try again later",
                            )));
                        let _ = stream.write(&reply.to_line());
                        log::warn!("refused connection from {peer}: connection limit reached");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    set_keepalive(&stream);
                    let entry = self.conns.vacant_entry();
                    let conn = entry.key();
                    if let Err(err) =
                        self.poll
                            .registry()
                            .register(&mut stream, Token(conn), Interest::READABLE)
                    {
                        // One socket the poller cannot watch is dropped; the
                        // master goes on serving the others.
                        log::warn!("cannot watch the connection from {peer}: {err}");
                        continue;
                    }
                    let Some(nonce) = fresh_nonce() else {
                        log::error!(
                            "no randomness for a handshake; dropping the connection from {peer}"
                        );
                        let _ = self.poll.registry().deregister(&mut stream);
                        continue;
                    };
                    self.credentials.refresh(&mut self.core);
                    self.http_stats.accepted += 1;
                    entry.insert(Connection {
                        stream,
                        proto: Proto::Undecided(Vec::new()),
                        codec: LineCodec::new(self.limits.pre_auth_max_line),
                        unread: Vec::new(),
                        trusted: false,
                        counted: 0,
                        close_at: None,
                        active_at: self.now.monotonic,
                        idle_check: None,
                        out: Vec::new(),
                        written: 0,
                        close_when_flushed: false,
                        closed: false,
                        hung_up: false,
                        wants_write: false,
                        peer: Some(peer),
                    });
                    let now = self.now;
                    self.core.handle_connect(now, conn, Some(peer.ip()), nonce);
                    if let Some(connection) = self.conns.get_mut(conn) {
                        if self.core.is_trusted(conn) {
                            connection.codec.set_max_line(self.limits.max_line);
                            connection.trusted = true;
                        } else {
                            let at = self.now.monotonic + self.limits.reader_idle_timeout;
                            connection.idle_check = Some(at);
                            self.idle_checks.insert((at, conn));
                        }
                    }
                    log::debug!("connection {conn} from {peer}");
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // Running out of file descriptors must not stop the
                    // master. The listener is edge-triggered, so connections
                    // still waiting would raise no new event: try again
                    // shortly.
                    log::warn!("accept failed: {err}; retrying in {ACCEPT_RETRY:?}");
                    self.accept_retry_at = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    /// Reads the connections that have something to read, as far as this
    /// turn's budgets allow. Authenticated ones (workers, admins) first,
    /// each with its own [`Work`]; then those that have not authenticated,
    /// which share [`crate::UNTRUSTED_WORK_PER_TURN`] in all: those in
    /// their handshake (at most `--max-unauthenticated`) get the first
    /// [`crate::PENDING_WORK_PER_TURN`] of it, readers the rest. Each group
    /// is served round-robin from after the one served last, so every
    /// connection progresses whatever their number; those the budget did
    /// not reach stay in `readable` for the next turn.
    fn read_turn(&mut self, buf: &mut [u8]) {
        let mut pending = Vec::new();
        let mut readers = Vec::new();
        let mut served_trusted = false;
        for conn in std::mem::take(&mut self.readable) {
            match self.conns.get(conn) {
                None => {}
                Some(connection) if connection.trusted => {
                    self.read(conn, buf, Work::until(None));
                    served_trusted = true;
                }
                Some(_) if self.core.is_reader(conn) => readers.push(conn),
                Some(_) => pending.push(conn),
            }
        }
        if pending.is_empty() && readers.is_empty() {
            return;
        }
        if served_trusted {
            // The authenticated peers' replies (and the changes they made)
            // go out now, not after the strangers' share of the turn.
            self.collect_commits();
            self.settle();
        }
        let started = Instant::now();
        self.pending_cursor = self.read_shared(
            &pending,
            self.pending_cursor,
            started + crate::PENDING_WORK_PER_TURN,
            buf,
        );
        self.reader_cursor = self.read_shared(
            &readers,
            self.reader_cursor,
            started + crate::UNTRUSTED_WORK_PER_TURN,
            buf,
        );
    }

    /// Reads `conns` (in ascending order) round-robin from the first one
    /// after `cursor`, until `until`; returns the last one served, where
    /// the next turn goes on from.
    fn read_shared(
        &mut self,
        conns: &[ConnId],
        cursor: ConnId,
        until: Instant,
        buf: &mut [u8],
    ) -> ConnId {
        let first = conns.partition_point(|&conn| conn <= cursor);
        let mut last = cursor;
        for &conn in conns[first..].iter().chain(&conns[..first]) {
            if Instant::now() >= until {
                self.readable.insert(conn);
                continue;
            }
            self.read(conn, buf, Work::until(Some(until)));
            last = conn;
        }
        last
    }

    /// Reads `conn` and hands its requests to the core, one at a time,
    /// while its budgets allow: at most `READ_BUDGET` bytes and
    /// `work` (requests and time) per turn, and only while its backlog
    /// is at most half its cap, counting the replies each request has just
    /// produced. What is left waits in `unread` (the socket is not read
    /// again until it is used up) and the connection goes to `readable`
    /// (the next turn comes back to it) or `throttled` (a write that
    /// drains its backlog does).
    fn read(&mut self, conn: ConnId, buf: &mut [u8], mut work: Work) {
        self.read_budgeted(conn, buf, &mut work);
        // What it left unread counts in the totals too.
        self.recount(conn);
        self.enforce_totals();
    }

    /// [`EventLoop::read`] without the accounting.
    fn read_budgeted(&mut self, conn: ConnId, buf: &mut [u8], work: &mut Work) {
        let http_waiting = self.conns.get(conn).is_some_and(|c| match &c.proto {
            Proto::Http(http) => http.buffered() > 0,
            _ => false,
        });
        if http_waiting {
            // Requests read earlier wait for their turn (a budget, or the
            // responses before them).
            self.serve_http(conn, &[], work);
        }
        if self.conns.get(conn).is_some_and(|c| !c.unread.is_empty()) {
            let unread = std::mem::take(&mut self.conns[conn].unread);
            let used = self.serve(conn, &unread, work);
            if used < unread.len() {
                self.keep_unread(conn, &unread[used..]);
                return;
            }
            self.freed += unread.capacity();
        }
        let mut budget = READ_BUDGET;
        loop {
            let Some(connection) = self.conns.get_mut(conn) else {
                return;
            };
            if connection.closed || connection.close_when_flushed {
                return;
            }
            if connection.pending_bytes(self.outbox.held_bytes(conn))
                > self.limits.cap(connection.trusted) / 2
            {
                // Backpressure: a peer that does not read its replies is not
                // read either, until it catches up.
                self.throttled.insert(conn);
                return;
            }
            if budget == 0 || work.spent() {
                self.readable.insert(conn);
                return;
            }
            let chunk = if connection.trusted {
                buf.len()
            } else {
                buf.len().min(UNTRUSTED_READ_CHUNK)
            };
            match connection.stream.read(&mut buf[..chunk]) {
                Ok(0) => {
                    // The peer half-closed: it may still read. Answer what
                    // it sent, including an unterminated last line and the
                    // replies held for a commit, then close, by the drain
                    // deadline at the latest (it may never read them).
                    let mut frames = Vec::new();
                    if let Proto::Undecided(prefix) = &mut connection.proto {
                        // A few bytes that never became a request line are a
                        // protocol line without its end.
                        let prefix = std::mem::take(prefix);
                        connection.proto = Proto::Lines;
                        let _ = connection.codec.decode(&prefix, &mut frames);
                    }
                    connection.codec.finish(&mut frames);
                    connection.close_when_flushed = true;
                    self.dirty.insert(conn);
                    self.close_by(conn, self.now.monotonic + self.limits.drain_timeout);
                    for frame in frames {
                        self.feed(conn, frame);
                    }
                    return;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    // A short read emptied the socket's receive queue: the
                    // next read would only say `WouldBlock` (a system call
                    // per message for nothing). Bytes that arrive later
                    // raise a new edge, so nothing is missed; only a
                    // hang-up the poller already reported raises none, so
                    // then the loop reads on to the end of the stream.
                    let drained = n < chunk && !connection.hung_up;
                    let used = self.serve(conn, &buf[..n], work);
                    if used < n {
                        self.keep_unread(conn, &buf[used..n]);
                        return;
                    }
                    if drained {
                        return;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    log::debug!("read from connection {conn}: {err}");
                    connection.closed = true;
                    self.newly_closed.push(conn);
                    return;
                }
            }
        }
    }

    /// Keeps the bytes `serve` did not use for a later turn, unless the
    /// connection is closing (then nothing more of it is answered).
    fn keep_unread(&mut self, conn: ConnId, rest: &[u8]) {
        if let Some(connection) = self.conns.get_mut(conn) {
            if !connection.closed && !connection.close_when_flushed {
                connection.unread = rest.to_vec();
            }
        }
    }

    /// Hands the lines in `bytes` to the codec and their frames to the
    /// core one line at a time, charging each request and the replies it
    /// produced before the next; returns how many bytes were used. When it
    /// stops early it has put the connection in `readable` or `throttled`,
    /// or the connection is closing.
    fn serve(&mut self, conn: ConnId, bytes: &[u8], work: &mut Work) -> usize {
        let Some(connection) = self.conns.get_mut(conn) else {
            return bytes.len();
        };
        match &mut connection.proto {
            Proto::Lines => self.serve_lines(conn, bytes, work),
            Proto::Http(_) => self.serve_http(conn, bytes, work),
            Proto::Undecided(prefix) => {
                let mut first = std::mem::take(prefix);
                let take = bytes.len().min(8usize.saturating_sub(first.len()));
                first.extend_from_slice(&bytes[..take]);
                match crate::http::request::sniff(&first) {
                    crate::http::request::Sniff::NeedMore if take == bytes.len() => {
                        connection.proto = Proto::Undecided(first);
                        bytes.len()
                    }
                    crate::http::request::Sniff::Http => {
                        connection.proto = Proto::Http(Box::default());
                        // The sniffed bytes are the start of the request.
                        let mut all = first;
                        all.extend_from_slice(&bytes[take..]);
                        self.serve_http(conn, &all, work);
                        bytes.len()
                    }
                    _ => {
                        connection.proto = Proto::Lines;
                        first.truncate(first.len() - take);
                        if !first.is_empty() {
                            // Bytes held while undecided (no newline among
                            // them: they matched a method's name).
                            self.serve_lines(conn, &first, work);
                        }
                        self.serve_lines(conn, bytes, work)
                    }
                }
            }
        }
    }

    /// [`EventLoop::serve`] for the JSON-lines or text protocol.
    fn serve_lines(&mut self, conn: ConnId, bytes: &[u8], work: &mut Work) -> usize {
        let mut used = 0;
        let mut frames = Vec::new();
        while used < bytes.len() {
            let Some(connection) = self.conns.get_mut(conn) else {
                return used;
            };
            if connection.closed || connection.close_when_flushed {
                return used;
            }
            if connection.pending_bytes(self.outbox.held_bytes(conn))
                > self.limits.cap(connection.trusted) / 2
            {
                self.throttled.insert(conn);
                return used;
            }
            if work.spent() {
                self.readable.insert(conn);
                return used;
            }
            let rest = &bytes[used..];
            let cut = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |newline| newline + 1);
            used += cut;
            if let Err(too_long) = connection.codec.decode(&rest[..cut], &mut frames) {
                self.core.handle_line_too_long(conn, too_long.max);
                self.take_outputs();
                return bytes.len();
            }
            for frame in frames.drain(..) {
                work.frames = work.frames.saturating_sub(1);
                self.feed(conn, frame);
            }
        }
        used
    }

    /// Hands one frame to the core and applies what it produced at once,
    /// so the replies count against the connection's budget before its
    /// next request.
    fn feed(&mut self, conn: ConnId, frame: Frame) {
        let now = self.now;
        if let Some(connection) = self.conns.get_mut(conn) {
            connection.active_at = now.monotonic;
        }
        match frame {
            Frame::Json(bytes) => match Envelope::decode(&bytes) {
                Ok(envelope) => self.core.handle_message(now, conn, envelope),
                Err(error) => self.core.handle_decode_error(conn, error),
            },
            Frame::Text(line) => self.core.handle_text(now, conn, &line),
        }
        self.take_outputs();
    }

    /// Applies the core's outputs so far, without running assignment.
    fn take_outputs(&mut self) {
        let mut outputs = std::mem::take(&mut self.outputs);
        self.core.take_outputs(&mut outputs);
        for output in outputs.drain(..) {
            self.apply(output);
        }
        self.outputs = outputs;
    }

    fn apply(&mut self, output: Output) {
        // An HTTP connection's replies become responses (`http.rs`).
        let Some(output) = self.apply_http(output) else {
            return;
        };
        match output {
            Output::Read(read) => {
                // Answered at once, before the connection's next frame, so
                // its replies keep their order; the store's reader sees
                // every committed write, and a finished task stays in the
                // core until its last write has committed.
                if self.conns.get(read.conn).is_none_or(|c| c.closed) {
                    return;
                }
                let answer = match &self.reader {
                    Some(reader) => reader.read(&read.request).map_err(|err| err.to_string()),
                    None => Err("no store reader".to_string()),
                };
                self.core.handle_read(self.now, *read, answer);
                let mut outputs = Vec::new();
                self.core.take_outputs(&mut outputs);
                for output in outputs {
                    self.apply(output);
                }
            }
            Output::Send {
                conn,
                payload,
                after_batch,
                overtake,
            } => {
                if self.conns.get(conn).is_none_or(|c| c.closed) {
                    drop(payload);
                    self.forget_sent_event();
                    return;
                }
                // An event is unsolicited: to a peer that has not
                // authenticated it is never the one message allowed past
                // the cap (below), so an idle anonymous watcher holds at
                // most its cap.
                let event = matches!(payload, Payload::Event(_));
                let bytes = match payload {
                    Payload::Event(shared) => self.event_line(shared),
                    Payload::Json(mut envelope) => {
                        envelope.timestamp = Some(self.stamp());
                        envelope.to_line()
                    }
                    Payload::Text(text) => text.into_bytes(),
                    Payload::HeartbeatAck(ack) => {
                        let stamp = self.stamp();
                        let mut line = Vec::with_capacity(HEARTBEAT_ACK_CAPACITY);
                        ack.write_line(self.core.master_id(), &stamp, &mut line);
                        line
                    }
                };
                self.queue_bytes(conn, bytes, after_batch, overtake, event);
            }
            Output::Trusted { conn } => {
                if let Some(connection) = self.conns.get_mut(conn) {
                    connection.codec.set_max_line(self.limits.max_line);
                    if !connection.trusted {
                        connection.trusted = true;
                        self.untrusted_out -= connection.counted;
                        self.untrusted_by_backlog
                            .remove(&(connection.counted, conn));
                    }
                }
            }
            Output::Close { conn } => {
                if let Some(connection) = self.conns.get_mut(conn) {
                    connection.close_when_flushed = true;
                    // Nothing more of what it sent is answered.
                    connection.unread = Vec::new();
                    self.dirty.insert(conn);
                    self.close_by(conn, self.now.monotonic + crate::CLOSE_GRACE);
                }
            }
        }
    }

    /// Queues `bytes` for `conn` behind what it has queued, held until
    /// `after_batch` commits (unless `overtake`), and judges its backlog
    /// against the caps as it grows. `event`: the bytes are an event,
    /// which is never the one oversized message let past the cap of a peer
    /// that has not authenticated.
    fn queue_bytes(
        &mut self,
        conn: ConnId,
        bytes: Vec<u8>,
        after_batch: Option<u64>,
        overtake: bool,
        event: bool,
    ) {
        let Some(connection) = self.conns.get_mut(conn) else {
            return;
        };
        if connection.closed {
            return;
        }
        let queued_before = connection.pending_bytes(self.outbox.held_bytes(conn));
        // Held until its batch commits, unless it reveals nothing.
        if let Some(bytes) = self.outbox.push(conn, after_batch, overtake, bytes) {
            if connection.out.capacity() == 0 {
                // Nothing waits (the usual case): the message becomes
                // the buffer, rather than being copied into a new one.
                connection.out = bytes;
            } else {
                connection.out.extend_from_slice(&bytes);
            }
            self.dirty.insert(conn);
        }
        // Judged as the backlog grows, not when the peer becomes
        // writable: a peer that never reads never does. A single
        // message larger than the cap goes to a peer that had
        // nothing queued (a large task to a reader that reads),
        // unless it is an event to a peer that has not
        // authenticated.
        let exempt = queued_before == 0 && (connection.trusted || !event);
        if !exempt
            && connection.pending_bytes(self.outbox.held_bytes(conn))
                > self.limits.cap(connection.trusted)
        {
            self.close_now(conn, "does not read its replies");
        } else {
            self.recount(conn);
        }
        self.enforce_totals();
    }

    /// The line of a shared event for one of its subscribers. It is
    /// encoded once, for the first, and copied for each of the others as
    /// it is queued (so each copy is charged to its connection, against
    /// its caps, before the next is made); the last one takes the line
    /// itself. The outputs of one event are applied one after another, so
    /// one entry is enough: a different event replaces it.
    fn event_line(&mut self, shared: Arc<Envelope>) -> Vec<u8> {
        if let Some((cached, line)) = &self.event_line {
            if Arc::ptr_eq(cached, &shared) {
                // Held by this output and the entry only: the last one.
                if Arc::strong_count(&shared) == 2 {
                    return self
                        .event_line
                        .take()
                        .map(|(_, line)| line)
                        .unwrap_or_default();
                }
                return line.clone();
            }
        }
        self.event_line = None;
        let stamp = self.stamp();
        match Arc::try_unwrap(shared) {
            Ok(mut envelope) => {
                envelope.timestamp = Some(stamp);
                envelope.to_line()
            }
            Err(shared) => {
                // Stamped on a copy: the core's event is shared. One copy
                // per event, however many subscribers.
                let mut envelope = Envelope::clone(&shared);
                envelope.timestamp = Some(stamp);
                let line = envelope.to_line();
                drop(envelope);
                self.event_line = Some((shared, line.clone()));
                line
            }
        }
    }

    /// Drops the kept event line once no output of that event is left
    /// (its last subscribers had closed, so none took it).
    fn forget_sent_event(&mut self) {
        if self
            .event_line
            .as_ref()
            .is_some_and(|(cached, _)| Arc::strong_count(cached) == 1)
        {
            self.event_line = None;
        }
    }

    fn collect_commits(&mut self) {
        for event in self.store_events.try_iter() {
            match event {
                StoreEvent::Committed(id) => {
                    while let Some(&(sent, at)) = self.batch_sent.front() {
                        if sent > id {
                            break;
                        }
                        self.batch_sent.pop_front();
                        self.http_stats
                            .commit_latency
                            .observe(at.elapsed().as_secs_f64());
                    }
                    self.outbox.handle_committed(id);
                    // Finished tasks written by then leave the core's
                    // memory; reads find them in the store.
                    self.core.handle_committed(id);
                }
                StoreEvent::Pruned { committed, pruned } => {
                    // Retention deleted them: off the counts of `status`.
                    self.core.handle_pruned(committed, &pruned.tasks);
                }
                StoreEvent::PruneDone { job, outcome } => {
                    self.core.handle_prune_done(job, outcome);
                }
                StoreEvent::Failing => self.core.set_storage_available(false),
                StoreEvent::Recovered => self.core.set_storage_available(true),
            }
        }
    }

    /// Moves held messages whose batch has committed to the write buffer.
    fn release_held(&mut self) {
        let conns = &mut self.conns;
        let dirty = &mut self.dirty;
        self.outbox.release(|conn, bytes| {
            if let Some(connection) = conns.get_mut(conn) {
                connection.out.extend_from_slice(&bytes);
                dirty.insert(conn);
            }
        });
    }

    fn flush_dirty(&mut self) {
        for conn in std::mem::take(&mut self.dirty) {
            let Some(connection) = self.conns.get_mut(conn) else {
                continue;
            };
            if connection.closed {
                continue;
            }
            while connection.written < connection.out.len() {
                match connection
                    .stream
                    .write(&connection.out[connection.written..])
                {
                    Ok(0) => {
                        connection.closed = true;
                        break;
                    }
                    Ok(n) => {
                        connection.written += n;
                        connection.active_at = self.now.monotonic;
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => {
                        log::debug!("write to connection {conn}: {err}");
                        connection.closed = true;
                        break;
                    }
                }
            }
            if connection.written == connection.out.len() {
                // A small buffer is given back: with thousands of mostly
                // idle connections, each keeping its largest reply's
                // capacity adds up (2.5 MiB for 10,000 workers). A middling
                // one belongs to a busy peer and is kept, so it is not grown
                // again from nothing on every turn; a large one is given
                // back too, so a flood leaves nothing behind.
                let capacity = connection.out.capacity();
                if capacity <= SMALL_OUT {
                    connection.out = Vec::new();
                } else if capacity > KEEP_OUT {
                    self.freed += capacity;
                    connection.out = Vec::new();
                } else {
                    connection.out.clear();
                }
                connection.written = 0;
                if connection.close_when_flushed && !self.outbox.is_holding(conn) {
                    connection.closed = true;
                    discard_unread(&mut connection.stream);
                }
            } else if connection.written >= KEEP_OUT
                && connection.written * 2 >= connection.out.len()
            {
                // A peer that reads slowly but never catches up: drop what
                // it has taken, or the buffer would keep every byte ever
                // sent to it.
                connection.out.drain(..connection.written);
                connection.written = 0;
            }
            // The backlog's cap is judged as it grows (`apply`); here it
            // only shrinks.
            if connection.pending_bytes(self.outbox.held_bytes(conn))
                <= self.limits.cap(connection.trusted) / 2
                && self.throttled.remove(&conn)
            {
                self.readable.insert(conn);
            }
            // Interest follows state: writable only while bytes wait.
            let wants_write = !connection.closed && connection.written < connection.out.len();
            if wants_write != connection.wants_write {
                let interest = if wants_write {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                if let Err(err) =
                    self.poll
                        .registry()
                        .reregister(&mut connection.stream, Token(conn), interest)
                {
                    log::debug!("reregister connection {conn}: {err}");
                    connection.closed = true;
                }
                connection.wants_write = wants_write;
            }
            if connection.closed {
                self.newly_closed.push(conn);
            }
            self.recount(conn);
        }
    }

    /// Removes closed connections; returns whether any was removed (the
    /// core may then have more to say).
    /// `conn` is no longer authenticated (a dashboard session's grant
    /// ended, see `event_loop/http.rs`): what it has queued counts against
    /// the strangers' caps again (checked where they always are), and so
    /// does all it is sent later.
    fn untrust(&mut self, conn: ConnId) {
        let Some(connection) = self.conns.get_mut(conn) else {
            return;
        };
        if connection.trusted {
            connection.trusted = false;
            self.untrusted_out += connection.counted;
            if connection.counted > 0 {
                self.untrusted_by_backlog.insert((connection.counted, conn));
            }
        }
    }

    fn reap_closed(&mut self, now: Now) -> bool {
        // Connections are marked closed only in `read` and `flush_dirty`,
        // which note them; a noted id may since have been reaped.
        let mut closed = std::mem::take(&mut self.newly_closed);
        closed.sort_unstable();
        closed.dedup();
        closed.retain(|&conn| self.conns.get(conn).is_some_and(|c| c.closed));
        for &conn in &closed {
            let mut connection = self.conns.remove(conn);
            let _ = self.poll.registry().deregister(&mut connection.stream);
            self.total_out -= connection.counted;
            self.by_backlog.remove(&(connection.counted, conn));
            if !connection.trusted {
                self.untrusted_out -= connection.counted;
                self.untrusted_by_backlog
                    .remove(&(connection.counted, conn));
            }
            self.freed += connection.out.capacity()
                + self.outbox.forget(conn)
                + connection.unread.capacity()
                + connection.codec.buffered();
            if let Some(at) = connection.close_at {
                self.closing.remove(&(at, conn));
            }
            if let Some(at) = connection.idle_check {
                self.idle_checks.remove(&(at, conn));
            }
            log::debug!("connection {conn} from {:?} closed", connection.peer);
            self.dirty.remove(&conn);
            self.readable.remove(&conn);
            self.throttled.remove(&conn);
            self.core.handle_disconnect(now, conn);
        }
        !closed.is_empty()
    }

    /// Stops taking connections and work, waits for the store to commit
    /// everything, and gives held replies a short time to reach their peers.
    fn shut_down(mut self) -> io::Result<()> {
        log::info!("shutting down");
        self.notifier
            .stopping("stopping: committing and sending the last replies");
        if self.listening {
            let _ = self.poll.registry().deregister(&mut self.listener);
            self.listening = false;
        }
        self.tick_clock();
        self.core.begin_shutdown();
        self.settle();
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        let mut events = Events::with_capacity(64);
        while Instant::now() < deadline {
            self.collect_commits();
            self.release_held();
            self.flush_dirty();
            let pending = self
                .conns
                .iter()
                .any(|(conn, c)| !c.closed && (c.pending_bytes(self.outbox.held_bytes(conn)) > 0));
            if !pending {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.poll.poll(&mut events, Some(left)) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
            for event in events.iter() {
                let Token(conn) = event.token();
                if conn < WAKER.0 {
                    self.dirty.insert(conn);
                }
            }
        }
        for (_, connection) in self.conns.iter_mut() {
            let _ = connection.stream.shutdown(std::net::Shutdown::Both);
        }
        Ok(())
    }
}

/// The status line for the service manager, e.g. `serving on
/// 0.0.0.0:8080: 3 workers online, 12 queued`.
fn status_line(core: &Core, listener: &TcpListener) -> String {
    let address = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |address| address.to_string());
    format!(
        "serving on {address}: {} workers online, {} queued",
        core.online_devices(),
        core.queued()
    )
}

/// Makes the kernel notice a peer that vanished without closing (a phone
/// that left the Wi-Fi, a Pi that lost power) within about 30 seconds,
/// even on a connection with nothing to send, instead of the default two
/// hours of keepalive silence or fifteen minutes of retransmissions (the
/// numbers are [`daemon::KEEPALIVE_IDLE`] and its neighbours). The
/// heartbeat timeout catches it at the protocol level too; this also
/// frees the socket. Failures are only logged: the option is an optimisation.
fn set_keepalive(stream: &TcpStream) {
    for error in daemon::set_keepalive(stream) {
        log::debug!("{error}");
    }
}

/// Milliseconds since the Unix epoch, by the wall clock.
fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Reads and drops what the peer sent that was never read, then closes our
/// side for writing. Closing a socket with unread input makes the kernel
/// reset the connection, and a reset can destroy the last reply (the error
/// that says why the connection closes) before the peer reads it.
fn discard_unread(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Asks the allocator to give the pages it keeps free back to the
/// system. glibc's `malloc` keeps freed memory in its heap for reuse and
/// returns only the top of it on its own, so after a flood of replies
/// (buffers of every size freed in any order) the master's RSS would stay
/// near its peak for good: the issue measured 6 GB kept after the
/// attackers left. `malloc_trim` releases every free page, not only the
/// top. It is glibc's (the master already links C: SQLite), called at most
/// once per `TRIM_INTERVAL` and only after `TRIM_AFTER` bytes were freed.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it
    // takes the allocator's locks like any malloc call.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A fresh nonce from the operating system's random source.
fn fresh_nonce() -> Option<protocol::auth::Nonce> {
    let mut bytes = [0u8; protocol::auth::SECRET_LEN];
    getrandom::fill(&mut bytes).ok()?;
    Some(protocol::auth::Nonce(bytes))
}
