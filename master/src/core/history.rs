//! The read path of finished tasks: the history lives in the store, not in
//! memory.
//!
//! Memory holds what scheduling needs: the live tasks (queued, assigned,
//! running, retrying) and a finished task only until the batch holding
//! its last write has committed ([`Core::handle_committed`]). So a task
//! that is not in memory is finished and in the store as it last was, and
//! a read of the store sees every write the core made to it. A request
//! that may need such a task (`task_status`, a listing that reaches into
//! the history, `task_retry` or `task_cancel` of it, a submit whose
//! client-chosen id may be one) is not answered at once: the core emits
//! [`Output::Read`] with a [`ReadRequest`], the event loop has the store
//! answer it, and hands the answer back to [`Core::handle_read`], which
//! builds the reply (held for `last_write_batch` like any other). The loop
//! answers a read before it hands the core the connection's next frame, so
//! replies keep their order.

use super::records::TaskRecord;
use super::text::{task_text, tasks_text};
use super::{ConnId, Core, Now, Output, ReplyError, DEFAULT_LIST, MAX_LIST};
use protocol::{
    Ack, ErrorCode, ErrorReply, ListTasks, Message, Reply, ResultRecorded, Success, TaskCancel,
    TaskPage, TaskReply, TaskResult, TaskState, TaskSubmit, TaskView,
};
use std::collections::BTreeSet;

/// What the core asks the store for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadRequest {
    /// The stored record of one task.
    Task {
        /// Its id.
        task_id: String,
    },
    /// Finished tasks of a listing page, newest first: those in `state`
    /// (any finished state when `None`) older than the cursor, at most
    /// `limit + 1` (the one past the page says whether one follows).
    Page {
        /// The state filter; a live state finds nothing in the store.
        state: Option<TaskState>,
        /// The cursor: the id of the last task of the previous page.
        before: Option<String>,
        /// The cursor's `seq` when the core knows it (the task is in
        /// memory); otherwise the store looks it up.
        before_seq: Option<u64>,
        /// The page's length; the store returns up to one more.
        limit: usize,
    },
    /// Which of these ids the store holds (an idempotent submit).
    Exists {
        /// The ids asked about.
        task_ids: Vec<String>,
    },
}

/// The store's answer to a [`ReadRequest`].
#[derive(Debug, Clone, PartialEq)]
pub enum ReadAnswer {
    /// The task asked for (`Task`: none or one) or the page's rows
    /// (`Page`: newest first), with the cursor's `seq`.
    Tasks {
        /// The records.
        records: Vec<TaskRecord>,
        /// The `seq` of the page's cursor, when there is one.
        before_seq: Option<u64>,
        /// The store stopped the page before `limit + 1` rows (its byte
        /// bound, `store::PAGE_READ_BYTES`): it holds more below the last
        /// one.
        cut: bool,
    },
    /// The page's cursor names no task.
    NoCursor,
    /// The ids of an `Exists` request that the store holds.
    Ids(Vec<String>),
}

/// A read on its way to the store and back: what to ask, and (private to
/// the core) what to do with the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    /// The connection the reply goes to.
    pub conn: ConnId,
    /// What the store is asked.
    pub request: ReadRequest,
    purpose: Purpose,
}

/// What a read was made for: the request it finishes.
#[derive(Debug, Clone, PartialEq)]
enum Purpose {
    TaskStatus {
        reply_to: Option<String>,
    },
    TaskText,
    List {
        reply_to: Option<String>,
        list: ListTasks,
    },
    ListText {
        list: ListTasks,
    },
    Retry {
        reply_to: Option<String>,
        task_id: String,
    },
    RetryText {
        task_id: String,
    },
    Cancel {
        reply_to: Option<String>,
        task_id: String,
    },
    CancelText {
        task_id: String,
    },
    Delete {
        reply_to: Option<String>,
        task_id: String,
    },
    Submit {
        reply_to: Option<String>,
        submit: TaskSubmit,
    },
    StaleResult {
        reply_to: Option<String>,
        task_id: String,
    },
    SubmitText {
        submit: TaskSubmit,
    },
}

/// What a request routed through here does: answered now, or sent to the
/// store first (the reply follows from [`Core::handle_read`]).
pub(super) enum Routed {
    /// Answered now, from memory.
    Now(Result<Reply, ReplyError>),
    /// A read was emitted.
    Deferred,
}

impl Core {
    fn defer(&mut self, conn: ConnId, request: ReadRequest, purpose: Purpose) -> Routed {
        self.out.push(Output::Read(Box::new(Read {
            conn,
            request,
            purpose,
        })));
        Routed::Deferred
    }

    /// Whether task `task_id` must be looked for in the store.
    fn stored_only(&self, task_id: &str) -> bool {
        !self.tasks.by_id.contains_key(task_id) && self.tasks.in_store(None)
    }

    /// `task_status`.
    pub(super) fn route_task_status(
        &mut self,
        conn: ConnId,
        reply_to: Option<String>,
        task_id: &str,
    ) -> Routed {
        if self.stored_only(task_id) {
            let request = ReadRequest::Task {
                task_id: task_id.to_string(),
            };
            return self.defer(conn, request, Purpose::TaskStatus { reply_to });
        }
        Routed::Now(self.task_view(task_id).map(|task| {
            Reply::from(TaskReply {
                success: Success,
                task,
            })
        }))
    }

    /// `list_tasks`.
    pub(super) fn route_list(
        &mut self,
        conn: ConnId,
        reply_to: Option<String>,
        list: ListTasks,
    ) -> Routed {
        match self.page_request(&list) {
            Some(request) => self.defer(conn, request, Purpose::List { reply_to, list }),
            None => Routed::Now(self.list_tasks(&list).map(Reply::from)),
        }
    }

    /// A change to task `task_id` that is not in memory (while the store
    /// takes writes) reads it from the store first, for `purpose`.
    fn read_first(
        &mut self,
        conn: ConnId,
        task_id: &str,
        purpose: impl FnOnce(String) -> Purpose,
    ) -> Option<Routed> {
        if !(self.storage_available && self.stored_only(task_id)) {
            return None;
        }
        let request = ReadRequest::Task {
            task_id: task_id.to_string(),
        };
        Some(self.defer(conn, request, purpose(task_id.to_string())))
    }

    /// `task_retry`.
    pub(super) fn route_retry(
        &mut self,
        now: Now,
        conn: ConnId,
        reply_to: Option<String>,
        task_id: &str,
    ) -> Routed {
        let purpose = |task_id| Purpose::Retry { reply_to, task_id };
        self.read_first(conn, task_id, purpose)
            .unwrap_or_else(|| Routed::Now(self.on_retry(now, task_id)))
    }

    /// `task_delete`.
    pub(super) fn route_delete(
        &mut self,
        conn: ConnId,
        reply_to: Option<String>,
        task_id: &str,
    ) -> Routed {
        let purpose = |task_id| Purpose::Delete { reply_to, task_id };
        self.read_first(conn, task_id, purpose)
            .unwrap_or_else(|| Routed::Now(self.on_delete(task_id)))
    }

    /// `task_cancel`.
    pub(super) fn route_cancel(
        &mut self,
        now: Now,
        conn: ConnId,
        reply_to: Option<String>,
        cancel: TaskCancel,
    ) -> Routed {
        if self.storage_available && self.stored_only(&cancel.task_id) {
            let request = ReadRequest::Task {
                task_id: cancel.task_id.clone(),
            };
            let task_id = cancel.task_id;
            return self.defer(conn, request, Purpose::Cancel { reply_to, task_id });
        }
        Routed::Now(self.on_cancel(now, cancel))
    }

    /// `task_result`: a result for a task that is not in memory is stale
    /// if the task is in the store (finished, so no attempt of it is
    /// current): acknowledged as discarded, as a finished task's late
    /// result always was, so the worker forgets it; unknown otherwise.
    pub(super) fn route_result(
        &mut self,
        now: Now,
        conn: ConnId,
        sender: Option<String>,
        reply_to: Option<String>,
        result: TaskResult,
    ) -> Routed {
        let task_id = result.task_id.clone();
        let outcome = self.on_result(now, conn, sender, result);
        let unknown = matches!(&outcome, Err(error) if error.code == ErrorCode::NotFound);
        if unknown && self.stored_only(&task_id) {
            let request = ReadRequest::Task {
                task_id: task_id.clone(),
            };
            return self.defer(conn, request, Purpose::StaleResult { reply_to, task_id });
        }
        Routed::Now(outcome)
    }

    /// `task_submit`: a client-chosen id that is not in memory may be a
    /// finished task's, so the store is asked before the submit is taken
    /// (idempotent submit says "already exists" for it).
    pub(super) fn route_submit(
        &mut self,
        now: Now,
        conn: ConnId,
        reply_to: Option<String>,
        submit: TaskSubmit,
    ) -> Routed {
        match self.submit_request(&submit) {
            Some(request) => self.defer(conn, request, Purpose::Submit { reply_to, submit }),
            None => Routed::Now(self.on_submit(now, submit, &BTreeSet::new())),
        }
    }

    /// The ids of `submit` the store must be asked about, if any.
    fn submit_request(&self, submit: &TaskSubmit) -> Option<ReadRequest> {
        if !self.storage_available || self.shutting_down {
            // Refused whatever the store holds (see `on_submit`).
            return None;
        }
        let task_ids: Vec<String> = submit
            .tasks
            .iter()
            .filter_map(|spec| spec.task_id.as_ref())
            .filter(|id| self.stored_only(id))
            .cloned()
            .collect();
        (!task_ids.is_empty()).then_some(ReadRequest::Exists { task_ids })
    }

    /// The store read a listing page needs, if any: when finished tasks
    /// that match are in the store only, or the cursor is not in memory.
    fn page_request(&self, list: &ListTasks) -> Option<ReadRequest> {
        let limit = list.limit.unwrap_or(DEFAULT_LIST).min(MAX_LIST);
        let cursor = list
            .before
            .as_ref()
            .map(|id| (id, self.tasks.list_key(id).map(|(seq, _)| seq)));
        let cursor_stored = cursor
            .as_ref()
            .is_some_and(|(id, seq)| seq.is_none() && self.tasks.in_store(None) && !id.is_empty());
        let history = self.tasks.in_store(list.state);
        if limit == 0 || !(history || cursor_stored) {
            return None;
        }
        Some(ReadRequest::Page {
            state: list.state,
            before: list.before.clone(),
            before_seq: cursor.and_then(|(_, seq)| seq),
            limit,
        })
    }

    /// The text `task ID`, `tasks`, `retry`, `cancel` and `submit`
    /// commands that need the store; `None` when answered from memory.
    pub(super) fn route_text_task(&mut self, conn: ConnId, task_id: &str) -> Option<()> {
        self.stored_only(task_id).then(|| {
            let request = ReadRequest::Task {
                task_id: task_id.to_string(),
            };
            self.defer(conn, request, Purpose::TaskText);
        })
    }

    /// See [`Core::route_text_task`].
    pub(super) fn route_text_list(&mut self, conn: ConnId, list: &ListTasks) -> Option<()> {
        let request = self.page_request(list)?;
        let list = list.clone();
        self.defer(conn, request, Purpose::ListText { list });
        Some(())
    }

    /// See [`Core::route_text_task`].
    pub(super) fn route_text_retry(&mut self, conn: ConnId, task_id: &str) -> Option<()> {
        (self.storage_available && self.stored_only(task_id)).then(|| {
            let request = ReadRequest::Task {
                task_id: task_id.to_string(),
            };
            let task_id = task_id.to_string();
            self.defer(conn, request, Purpose::RetryText { task_id });
        })
    }

    /// See [`Core::route_text_task`].
    pub(super) fn route_text_cancel(&mut self, conn: ConnId, task_id: &str) -> Option<()> {
        (self.storage_available && self.stored_only(task_id)).then(|| {
            let request = ReadRequest::Task {
                task_id: task_id.to_string(),
            };
            let task_id = task_id.to_string();
            self.defer(conn, request, Purpose::CancelText { task_id });
        })
    }

    /// See [`Core::route_text_task`].
    pub(super) fn route_text_submit(&mut self, conn: ConnId, submit: &TaskSubmit) -> Option<()> {
        let request = self.submit_request(submit)?;
        let submit = submit.clone();
        self.defer(conn, request, Purpose::SubmitText { submit });
        Some(())
    }

    /// The store answered `read` (or failed to, with the reason): builds
    /// and sends the reply of the request it was made for. The reply waits
    /// for `last_write_batch` as it is now, like a reply made without the
    /// store (and a read while the store cannot commit is answered at once,
    /// as in `handle_message`).
    pub fn handle_read(&mut self, now: Now, read: Read, answer: Result<ReadAnswer, String>) {
        let Read { conn, purpose, .. } = read;
        if self.registry.is_closing(conn) {
            return;
        }
        let failed = |why: String| {
            ReplyError::new(
                ErrorCode::InternalError,
                format!("the store could not be read: {why}"),
            )
        };
        let (reply_to, is_read, result) = match purpose {
            Purpose::TaskStatus { reply_to } => {
                let result = answer.map_err(failed).and_then(|answer| {
                    let task = self.stored_task_view(&answer, &read.request)?;
                    Ok(Reply::from(TaskReply {
                        success: Success,
                        task,
                    }))
                });
                (reply_to, true, result)
            }
            Purpose::List { reply_to, list } => {
                let result = answer
                    .map_err(failed)
                    .and_then(|answer| self.merged_page(&list, answer))
                    .map(|(records, next_cursor)| {
                        let tasks: Vec<TaskView> = records
                            .iter()
                            .map(|record| self.view_of_task(record, false))
                            .collect();
                        Reply::from(TaskPage {
                            count: tasks.len(),
                            tasks,
                            next_cursor,
                            success: Success,
                        })
                    });
                (reply_to, true, result)
            }
            Purpose::Retry { reply_to, task_id } => {
                let result = answer
                    .map_err(failed)
                    .and_then(|answer| self.reload_for_retry(now, &task_id, answer));
                (reply_to, false, result)
            }
            Purpose::Delete { reply_to, task_id } => {
                let result = answer
                    .map_err(failed)
                    .and_then(|answer| self.delete_stored(&task_id, answer));
                (reply_to, false, result)
            }
            Purpose::Cancel { reply_to, task_id } => {
                let result = answer
                    .map_err(failed)
                    .and_then(|answer| self.cancel_stored(now, &task_id, answer));
                (reply_to, false, result)
            }
            Purpose::Submit { reply_to, submit } => {
                let result = answer
                    .map_err(failed)
                    .and_then(|answer| self.on_submit(now, submit, &stored_ids(answer)));
                (reply_to, false, result)
            }
            Purpose::StaleResult { reply_to, task_id } => {
                let stored = matches!(
                    &answer,
                    Ok(ReadAnswer::Tasks { records, .. }) if !records.is_empty()
                );
                let result = if stored {
                    log::info!("discarding stale result for finished task {task_id}");
                    Ok(Reply::from(ResultRecorded {
                        message: "result discarded: the attempt is no longer current".into(),
                        recorded: false,
                        success: Success,
                        task_id,
                    }))
                } else {
                    answer.map_err(failed).and_then(|_| {
                        Err(ReplyError::new(
                            ErrorCode::NotFound,
                            format!("no task {task_id}"),
                        ))
                    })
                };
                (reply_to, false, result)
            }
            Purpose::TaskText => {
                let body = match answer
                    .map_err(failed)
                    .and_then(|answer| self.stored_task_view(&answer, &read.request))
                {
                    Ok(task) => task_text(&task),
                    Err(error) => format!("error: {}", error.message),
                };
                self.reply_text(conn, body);
                return;
            }
            Purpose::ListText { list } => {
                let body = match answer
                    .map_err(failed)
                    .and_then(|answer| self.merged_page(&list, answer))
                {
                    Ok((records, next)) => {
                        let records: Vec<&TaskRecord> = records.iter().collect();
                        tasks_text(&records, next, list.state.map(TaskState::as_str))
                    }
                    Err(error) => format!("error: {}", error.message),
                };
                self.reply_text(conn, body);
                return;
            }
            Purpose::RetryText { task_id } => {
                let body = match answer
                    .map_err(failed)
                    .and_then(|answer| self.reload_for_retry(now, &task_id, answer))
                {
                    Ok(_) => format!("queued {task_id} again"),
                    Err(error) => format!("error: {}", error.message),
                };
                self.reply_text(conn, body);
                return;
            }
            Purpose::CancelText { task_id } => {
                let body = match answer
                    .map_err(failed)
                    .and_then(|answer| self.cancel_stored(now, &task_id, answer))
                {
                    Ok(_) => format!("cancelled {task_id}"),
                    Err(error) => format!("error: {}", error.message),
                };
                self.reply_text(conn, body);
                return;
            }
            Purpose::SubmitText { submit } => {
                let result = answer
                    .map_err(failed)
                    .and_then(|answer| self.on_submit(now, submit, &stored_ids(answer)));
                let body = super::text::submitted_text(result);
                self.reply_text(conn, body);
                return;
            }
        };
        let after = if self.storage_available || !is_read {
            Some(self.changes.last_write_batch())
        } else {
            None
        };
        let message = match result {
            Ok(reply) => Message::Ack(Ack::reply(reply_to, reply)),
            Err(error) => Message::Error(ErrorReply::new(reply_to, error.code, error.message)),
        };
        self.out.send(conn, message, after);
    }

    /// The view of the task a `Task` read asked for: from memory if it is
    /// there now (memory is never older than the store), else the store's.
    fn stored_task_view(
        &self,
        answer: &ReadAnswer,
        request: &ReadRequest,
    ) -> Result<TaskView, ReplyError> {
        let ReadRequest::Task { task_id } = request else {
            return Err(ReplyError::new(ErrorCode::InternalError, "not a task read"));
        };
        if self.tasks.by_id.contains_key(task_id) {
            return self.task_view(task_id);
        }
        match answer {
            ReadAnswer::Tasks { records, .. } => records
                .iter()
                .find(|record| &record.task_id == task_id)
                .map(|record| self.view_of_task(record, true))
                .ok_or_else(|| ReplyError::new(ErrorCode::NotFound, format!("no task {task_id}"))),
            _ => Err(ReplyError::new(
                ErrorCode::NotFound,
                format!("no task {task_id}"),
            )),
        }
    }

    /// `task_retry` of a task the store returned: back in memory, then
    /// retried as any other.
    fn reload_for_retry(
        &mut self,
        now: Now,
        task_id: &str,
        answer: ReadAnswer,
    ) -> Result<Reply, ReplyError> {
        if let ReadAnswer::Tasks { records, .. } = answer {
            if let Some(record) = records.into_iter().find(|r| r.task_id == task_id) {
                self.tasks.reload(record);
            }
        }
        self.on_retry(now, task_id)
    }

    /// `task_delete` of a task the store returned: a dead letter comes back
    /// into memory (no longer counted as stored) to be deleted from there;
    /// any other state is judged by `on_delete` as it is stored.
    fn delete_stored(&mut self, task_id: &str, answer: ReadAnswer) -> Result<Reply, ReplyError> {
        if let ReadAnswer::Tasks { records, .. } = answer {
            if let Some(record) = records.into_iter().find(|r| r.task_id == task_id) {
                if record.state != TaskState::DeadLetter && !self.tasks.by_id.contains_key(task_id)
                {
                    return Err(super::life::not_a_dead_letter(task_id, record.state));
                }
                self.tasks.reload(record);
            }
        }
        self.on_delete(task_id)
    }

    /// `task_cancel` of a task the store returned: it is finished (or, if
    /// it is in memory again, cancelled as any other).
    fn cancel_stored(
        &mut self,
        now: Now,
        task_id: &str,
        answer: ReadAnswer,
    ) -> Result<Reply, ReplyError> {
        if self.tasks.by_id.contains_key(task_id) {
            let cancel = TaskCancel {
                task_id: task_id.to_string(),
                attempt: None,
            };
            return self.on_cancel(now, cancel);
        }
        self.check_storage()?;
        let stored = match answer {
            ReadAnswer::Tasks { records, .. } => records.into_iter().find(|r| r.task_id == task_id),
            _ => None,
        };
        match stored {
            Some(record) => Err(ReplyError::new(
                ErrorCode::InvalidState,
                format!("task {task_id} already {}", record.state),
            )),
            None => Err(ReplyError::new(
                ErrorCode::NotFound,
                format!("no task {task_id}"),
            )),
        }
    }

    /// One page of `list` merged from memory and the store's rows (see
    /// `Core::list_tasks` for the paging rules, which hold across both):
    /// the records, newest first, and the next page's cursor.
    ///
    /// A task in memory is shown as memory has it (the store may hold an
    /// older record of it), so a store row whose task is in memory is
    /// dropped. The page is exact down to the oldest row either source
    /// returned when that source had more (`low`): below it a source may
    /// hold rows it did not return. If the page ends above `low`, the
    /// cursor is `low`'s task, so the next page starts right below it and
    /// nothing is skipped (the page may then be shorter than `limit`; it
    /// only happens while a finished task waits for its commit in memory).
    fn merged_page(
        &self,
        list: &ListTasks,
        answer: ReadAnswer,
    ) -> Result<(Vec<TaskRecord>, Option<String>), ReplyError> {
        let limit = list.limit.unwrap_or(DEFAULT_LIST).min(MAX_LIST);
        let (rows, before_seq, cut) = match answer {
            ReadAnswer::Tasks {
                records,
                before_seq,
                cut,
            } => (records, before_seq, cut),
            ReadAnswer::NoCursor | ReadAnswer::Ids(_) => {
                return Err(ReplyError::new(
                    ErrorCode::NotFound,
                    format!(
                        "no task {} (the cursor `before` names a task)",
                        list.before.as_deref().unwrap_or_default()
                    ),
                ))
            }
        };
        let before = match (&list.before, before_seq) {
            (Some(id), Some(seq)) => Some((seq, id.clone())),
            (Some(id), None) => {
                return Err(ReplyError::new(
                    ErrorCode::NotFound,
                    format!("no task {id} (the cursor `before` names a task)"),
                ))
            }
            (None, _) => None,
        };
        let stored_full = rows.len() > limit || cut;
        let mut low: Option<(u64, String)> = stored_full
            .then(|| rows.last().map(|r| (r.seq, r.task_id.clone())))
            .flatten();
        let memory = self.tasks.page(list.state, before.as_ref(), limit);
        let mut merged: Vec<TaskRecord> = memory
            .ids
            .iter()
            .filter_map(|id| self.tasks.record(id))
            .cloned()
            .collect();
        if memory.more {
            if let Some(last) = merged.last() {
                let key = (last.seq, last.task_id.clone());
                low = Some(low.map_or(key.clone(), |low| low.max(key)));
            }
        }
        merged.extend(rows.into_iter().filter(|row| {
            !self.tasks.by_id.contains_key(&row.task_id)
                && before
                    .as_ref()
                    .is_none_or(|before| (row.seq, &row.task_id) < (before.0, &before.1))
        }));
        merged.sort_by(|a, b| (b.seq, &b.task_id).cmp(&(a.seq, &a.task_id)));
        if let Some(low) = &low {
            merged.retain(|r| (r.seq, &r.task_id) >= (low.0, &low.1));
        }
        let next_cursor = if merged.len() > limit {
            merged.truncate(limit);
            merged.last().map(|r| r.task_id.clone())
        } else {
            low.map(|(_, id)| id)
        };
        Ok((merged, next_cursor))
    }

    /// The store committed every batch up to `committed`: the finished
    /// tasks whose last write that covers leave memory (reads find them in
    /// the store from now on), except one a device still counts as running
    /// (a cancelled attempt whose process has not ended), which stays
    /// until the device reports it.
    pub fn handle_committed(&mut self, committed: u64) {
        self.committed = self.committed.max(committed);
        let mut due = self.tasks.committed(committed);
        due.extend(std::mem::take(&mut self.lingering));
        for task_id in due {
            let held = self
                .tasks
                .record(&task_id)
                .and_then(|record| record.device_id.as_deref())
                .and_then(|device_id| self.registry.devices.get(device_id))
                .is_some_and(|device| device.active.contains(&task_id));
            if held {
                self.lingering.insert(task_id);
            } else {
                self.tasks.evict(&task_id, self.committed);
            }
        }
    }
}

/// The ids of an `Exists` answer.
fn stored_ids(answer: ReadAnswer) -> BTreeSet<String> {
    match answer {
        ReadAnswer::Ids(ids) => ids.into_iter().collect(),
        _ => BTreeSet::new(),
    }
}

impl Core {
    /// Tells the core what a start left in the store and did not load:
    /// the finished tasks per state (`status` counts them) and the highest
    /// `seq` ever given (new tasks are listed after every stored one).
    pub fn restore_history(&mut self, finished: &[(TaskState, u64)], max_seq: u64) {
        self.tasks.set_history(finished, max_seq);
    }

    /// Retention deleted `pruned` (task ids with the state the store had)
    /// after every batch up to `committed` had committed. A task the core
    /// holds in memory is judged by its last write: written by then, its
    /// row was the one deleted, and it leaves memory uncounted; written
    /// later, that write puts it back, so it stays. Any other was counted
    /// as stored, and the count goes down.
    pub fn handle_pruned(&mut self, committed: u64, pruned: &[(String, TaskState)]) {
        for (task_id, state) in pruned {
            self.tasks.pruned(task_id, *state, committed);
        }
    }
}
