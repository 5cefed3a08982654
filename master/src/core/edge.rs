//! What the HTTP edge asks the core besides messages: a request's bearer
//! token, the batch a response made now waits for, and whether the store
//! takes writes (`/readyz`).
//!
//! An HTTP request becomes the same message a CLI would send
//! (`Core::handle_message`); these are the few things a message cannot
//! carry. They read or set state and send nothing.

use super::{ConnId, Core};

/// What a request's `Authorization: Bearer` token proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bearer {
    /// It is the admin token (or authentication is off): the connection is
    /// an admin's from now on, as after netcat's `auth TOKEN`.
    Admin,
    /// It is not the admin token: the request is refused and the
    /// connection closed, as a wrong `auth TOKEN` is.
    Wrong,
}

impl Core {
    /// Checks the admin token a request carried (`Authorization: Bearer`),
    /// in constant time. A match makes `conn` an admin connection, like a
    /// good `auth TOKEN` in netcat mode; a wrong token is logged and
    /// counted, and changes nothing.
    pub fn bearer(&mut self, conn: ConnId, token: &str) -> Bearer {
        if !self.config.auth.required {
            return Bearer::Admin;
        }
        if self.text_auth(conn, token) {
            Bearer::Admin
        } else {
            Bearer::Wrong
        }
    }

    /// Whether connections must authenticate (`--no-auth` turns it off).
    pub fn auth_required(&self) -> bool {
        self.config.auth.required
    }

    /// The admin token in force (the latest the credential files hold),
    /// for the dashboard's sign-in; `None` when connections need not
    /// authenticate.
    pub fn admin_token(&self) -> Option<&protocol::auth::Token> {
        if !self.config.auth.required {
            return None;
        }
        self.secrets.as_ref().map(|secrets| &secrets.admin)
    }

    /// Counts and logs a dashboard sign-in with a wrong admin token, as a
    /// wrong bearer token is (`/metrics`' authentication failures).
    pub fn sign_in_failed(&mut self, conn: ConnId) {
        self.auth_failures += 1;
        log::warn!(
            "dashboard sign-in with a wrong admin token from {}",
            self.registry.peer_label(conn)
        );
    }

    /// The newest batch holding a write: a response made now from the
    /// core's state waits for it, as every reply does.
    pub fn last_write_batch(&self) -> u64 {
        self.changes.last_write_batch()
    }

    /// Whether the store takes writes now (`/readyz`).
    pub fn storage_available(&self) -> bool {
        self.storage_available
    }

    /// Failed authentications since the start: wrong proofs, wrong
    /// `auth TOKEN`s and wrong bearer tokens (`/metrics`).
    pub fn auth_failures(&self) -> u64 {
        self.auth_failures
    }
}
