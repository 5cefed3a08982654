//! The dashboard's sign-in: a session cookie plus a CSRF token on every
//! state-changing request (the `dash` part of issue 15 fills this in).
//!
//! Until it lands, a request that brings a session cookie instead of a
//! bearer token is refused: nothing here can vouch for a cookie yet.

use super::request::Head;

/// The name of the dashboard's session cookie.
pub const COOKIE: &str = "retire_session";

/// What a request's session says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCheck {
    /// A signed-in session with its CSRF token: an admin's request.
    Admin,
    /// No session at all.
    None,
    /// A session that does not count, and why.
    Refused(String),
}

/// Checks the request's session cookie and CSRF header. Today every cookie
/// is refused (sessions do not exist yet).
pub fn check(head: &Head) -> SessionCheck {
    let has_cookie = head
        .headers
        .iter()
        .filter(|(name, _)| name == "cookie")
        .any(|(_, value)| {
            value
                .split(';')
                .any(|pair| pair.trim().starts_with(&format!("{COOKIE}=")))
        });
    if has_cookie {
        SessionCheck::Refused(
            "session cookies are not accepted by this master yet: send Authorization: Bearer \
             <the admin token>"
                .into(),
        )
    } else {
        SessionCheck::None
    }
}
