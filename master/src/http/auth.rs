//! The one authorization of state-changing requests.
//!
//! Reads follow the TCP port's rule, decided by the core like any read
//! message: no token from a `--read-only-from` network, the admin token
//! otherwise. A request that changes the cluster needs, in that request
//! itself, `Authorization: Bearer <admin token>` or a signed-in session
//! with its CSRF token ([`super::session`]). A connection that once showed
//! the token does not make a later request on it an admin's: a browser
//! shares connections between pages, so each change carries its own proof.

use super::session::SessionCheck;
use super::{HttpError, Status};

/// Whether the request may change the cluster. `admin`: the request itself
/// proved the admin token (a bearer token, or a session with its CSRF
/// token); `auth_required`: the master checks credentials at all
/// (`--no-auth` turns that off on loopback); `session`: what its session
/// cookie and CSRF header said.
pub fn may_change(
    admin: bool,
    auth_required: bool,
    session: &SessionCheck,
) -> Result<(), HttpError> {
    if admin || !auth_required {
        return Ok(());
    }
    match session {
        SessionCheck::Admin => Ok(()),
        SessionCheck::CsrfMismatch => Err(HttpError::new(
            Status::Forbidden,
            "this request changes the cluster: its X-CSRF-Token header is missing or is not \
             the session's",
        )
        .with_code("CSRF_MISMATCH")),
        SessionCheck::Expired => Err(HttpError::new(
            Status::Unauthorized,
            "the session has ended: sign in again",
        )
        .with_code("SESSION_EXPIRED")),
        SessionCheck::NoSession => Err(HttpError::new(
            Status::Unauthorized,
            "this request changes the cluster: sign in, or send Authorization: Bearer <the admin \
             token>",
        )),
    }
}
