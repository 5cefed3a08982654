//! The one authorization of state-changing requests.
//!
//! Reads follow the TCP port's rule, decided by the core like any read
//! message: no token from a `--read-only-from` network, the admin token
//! otherwise. A request that changes the cluster needs, in that request
//! itself, `Authorization: Bearer <admin token>` or a signed-in session
//! with its CSRF token ([`super::session`]). A connection that once showed
//! the token does not make a later request on it an admin's: a browser
//! shares connections between pages, so each change carries its own proof.

use super::request::Head;
use super::session::{self, SessionCheck};
use super::{HttpError, Status};

/// Whether the request may change the cluster. `bearer_admin`: it carried
/// the admin token (checked by the core); `auth_required`: the master
/// checks credentials at all (`--no-auth` turns that off on loopback).
pub fn may_change(head: &Head, bearer_admin: bool, auth_required: bool) -> Result<(), HttpError> {
    if bearer_admin || !auth_required {
        return Ok(());
    }
    match session::check(head) {
        SessionCheck::Admin => Ok(()),
        SessionCheck::Refused(why) => Err(HttpError::new(Status::Unauthorized, why)),
        SessionCheck::None => Err(HttpError::new(
            Status::Unauthorized,
            "this request changes the cluster: send Authorization: Bearer <the admin token>",
        )),
    }
}
