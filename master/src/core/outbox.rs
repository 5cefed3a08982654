//! The held-reply rule, sans-IO: nothing that promises durability leaves
//! before the batch it waits for has committed.
//!
//! The core tags every message it sends with the batch it waits for
//! ([`crate::core::Output::Send`]); the event loop puts each one here as it
//! encodes it and writes only what [`Outbox::push`] and
//! [`Outbox::release`] hand back as ready. The rule is kept here, on
//! simulated time and without sockets, so a test can check it across
//! random histories (`core/tests/held.rs`).
//!
//! Architecture invariant: a message waiting for batch `b` is handed out
//! only once [`Outbox::handle_committed`] has been told of a batch `>= b`,
//! and messages on one connection leave in the order they were pushed,
//! except those that reveal no state (`overtake`), which leave at once.

use super::ConnId;
use std::collections::{BTreeSet, VecDeque};

/// How many bytes a held message stands for, so the event loop can charge
/// what waits for a commit against a connection's backlog cap.
pub trait Weigh {
    /// The message's size in bytes.
    fn weight(&self) -> usize;
}

impl Weigh for Vec<u8> {
    fn weight(&self) -> usize {
        self.len()
    }
}

/// What one connection has waiting.
#[derive(Debug)]
struct Held<T> {
    /// Messages in the order they were pushed, each with the batch it
    /// waits for (0: none, but queued behind one that does).
    queue: VecDeque<(u64, T)>,
    /// The sum of their weights.
    bytes: usize,
}

/// Per-connection queues of messages waiting for a batch's commit.
#[derive(Debug)]
pub struct Outbox<T> {
    /// The highest batch known to have committed.
    committed: u64,
    /// By connection id: the event loop's slab keys are small and reused,
    /// so a vector indexed by them needs no hashing on the hot path (every
    /// reply passes here, and its backlog is looked up as it grows).
    held: Vec<Held<T>>,
    /// Connections with something held, in a fixed order so that release
    /// is deterministic.
    holding: BTreeSet<ConnId>,
}

impl<T> Default for Outbox<T> {
    fn default() -> Outbox<T> {
        Outbox {
            committed: 0,
            held: Vec::new(),
            holding: BTreeSet::new(),
        }
    }
}

impl<T: Weigh> Outbox<T> {
    /// Queues `message` for `conn`. It comes back at once (to be written
    /// now) only when it reveals no state (`overtake`) and waits for no
    /// batch; everything else is held, behind what is already held on that
    /// connection, until [`Outbox::release`] hands it out.
    pub fn push(
        &mut self,
        conn: ConnId,
        after_batch: Option<u64>,
        overtake: bool,
        message: T,
    ) -> Option<T> {
        if overtake && after_batch.is_none() {
            return Some(message);
        }
        if self.held.len() <= conn {
            self.held.resize_with(conn + 1, || Held {
                queue: VecDeque::new(),
                bytes: 0,
            });
        }
        let held = &mut self.held[conn];
        held.bytes += message.weight();
        held.queue.push_back((after_batch.unwrap_or(0), message));
        self.holding.insert(conn);
        None
    }

    /// The store committed batch `batch` (and every batch before it).
    pub fn handle_committed(&mut self, batch: u64) {
        self.committed = self.committed.max(batch);
    }

    /// The highest batch known to have committed.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Hands every message whose batch has committed to `ready`, in order
    /// per connection; a connection's queue stops at its first message that
    /// still waits.
    pub fn release(&mut self, mut ready: impl FnMut(ConnId, T)) {
        let committed = self.committed;
        let mut still_holding = BTreeSet::new();
        for conn in std::mem::take(&mut self.holding) {
            let Some(held) = self.held.get_mut(conn) else {
                continue;
            };
            while held
                .queue
                .front()
                .is_some_and(|(batch, _)| *batch <= committed)
            {
                if let Some((_, message)) = held.queue.pop_front() {
                    held.bytes -= message.weight();
                    ready(conn, message);
                }
            }
            // An emptied queue keeps its entry (and its capacity) until
            // the connection closes, as a busy connection holds again soon.
            if !held.queue.is_empty() {
                still_holding.insert(conn);
            }
        }
        self.holding = still_holding;
    }

    /// The bytes held for `conn`.
    pub fn held_bytes(&self, conn: ConnId) -> usize {
        self.held.get(conn).map_or(0, |held| held.bytes)
    }

    /// Whether anything is held for `conn`.
    pub fn is_holding(&self, conn: ConnId) -> bool {
        self.held
            .get(conn)
            .is_some_and(|held| !held.queue.is_empty())
    }

    /// Drops what is held for `conn` (it closed); returns its bytes.
    pub fn forget(&mut self, conn: ConnId) -> usize {
        self.holding.remove(&conn);
        self.held.get_mut(conn).map_or(0, |held| {
            // The memory goes with the connection.
            held.queue = VecDeque::new();
            std::mem::take(&mut held.bytes)
        })
    }
}
