//! `prune` (admin): delete the finished tasks that finished before a time,
//! now, rather than at their retention.
//!
//! The core never touches SQLite: it puts the request in its next batch
//! ([`StoreOp::Prune`]), and the store thread, once that batch has
//! committed, deletes in small batches between commits as retention does
//! (`store/retention.rs`), reports each batch (`Core::handle_pruned` takes
//! them off the counts) and at the end hands the request back with the
//! totals, and [`Core::handle_prune_done`] answers it.

use protocol::{Ack, ErrorCode, ErrorReply, Message, Prune, Pruned, Reply, Success, TaskState};

use super::records::{PruneJob, StoreOp};
use super::{ConnId, Core};

impl Core {
    /// `prune`: handed to the store with the next batch; answered by
    /// [`Core::handle_prune_done`].
    pub(super) fn on_prune(&mut self, conn: ConnId, reply_to: Option<String>, prune: Prune) {
        self.changes.store_op(StoreOp::Prune(PruneJob {
            conn,
            reply_to,
            before_unix_ms: prune.before_unix_ms,
        }));
    }

    /// The store finished `job`: `outcome` is the tasks it deleted per
    /// state, or why it stopped.
    pub fn handle_prune_done(
        &mut self,
        job: PruneJob,
        outcome: Result<Vec<(TaskState, u64)>, String>,
    ) {
        let PruneJob { conn, reply_to, .. } = job;
        if self.registry.is_closing(conn) {
            return;
        }
        match outcome {
            Ok(counts) => {
                let total = counts.iter().map(|(_, count)| count).sum();
                let reply = Pruned {
                    pruned: counts
                        .into_iter()
                        .map(|(state, count)| (state.as_str().to_string(), count))
                        .collect(),
                    total,
                    message: format!("pruned {total} finished tasks"),
                    success: Success,
                };
                self.out.send(
                    conn,
                    Message::Ack(Ack::reply(reply_to, Reply::from(reply))),
                    None,
                );
            }
            Err(why) => {
                let reply = ErrorReply::new(
                    reply_to,
                    ErrorCode::InternalError,
                    format!("pruning stopped: {why}"),
                );
                self.out.send(conn, Message::Error(reply), None);
            }
        }
    }
}
