//! The dashboard's sign-in: sessions in memory, their cookie, and the CSRF
//! token that must accompany every state-changing request made with one.
//!
//! Sans-IO like the core: `now` (monotonic time) and the random bytes of a new
//! session are parameters, so nothing here reads a clock, draws randomness or
//! touches a socket, and the tests run on simulated time.
//!
//! A person signs in by sending the admin token once (`POST /api/v1/session`);
//! the master answers with a cookie and a CSRF token. The cookie is
//! `HttpOnly` (page scripts cannot read it, so a script injected into the page
//! cannot steal it) and `SameSite=Strict` (the browser does not send it with a
//! request that another site starts). The CSRF token is the second line of
//! defence: the page sends it back in the `X-CSRF-Token` header of every
//! request that changes the cluster, which a form or link on another site
//! cannot do.
//!
//! The cookie's value is `SELECTOR.VERIFIER`: the selector finds the session,
//! the verifier proves the cookie was issued here. Every secret (the admin
//! token, the verifier, the CSRF token) is compared in constant time: the
//! secrets are a [`Secret`], which has no `==` at all and is compared with
//! `subtle`'s `ct_eq` only, and the admin token with `Token::matches_text`.

use super::{Response, Status};
use protocol::auth::Token;
use std::collections::HashMap;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The cookie's name.
pub const SESSION_COOKIE: &str = "retire_session";

/// The request header that carries the CSRF token (HTTP header names are
/// case-insensitive).
pub const CSRF_HEADER: &str = "X-CSRF-Token";

/// [`CSRF_HEADER`] as the request parser stores header names (lower case).
pub const CSRF_HEADER_NAME: &str = "x-csrf-token";

/// A session ends after this long without a request that uses it (12 hours):
/// a dashboard left open on a wall screen stays signed in while it is used, and
/// a forgotten one signs itself out overnight.
pub const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(12 * 60 * 60);

/// A session ends this long after its sign-in however much it is used (7
/// days), so a stolen cookie does not work for ever.
pub const SESSION_MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The most sessions held at once (64); a sign-in past it ends the session used
/// least recently. Bounds the memory a flood of sign-ins with the right token
/// can take, and a home cluster has a handful of people.
pub const MAX_SESSIONS: usize = 64;

/// Bytes of randomness in a session's selector (16), which only finds it.
pub const SELECTOR_BYTES: usize = 16;

/// Bytes of randomness in each secret (32): the cookie's verifier and the
/// CSRF token.
pub const SECRET_BYTES: usize = 32;

/// A secret of [`SECRET_BYTES`] bytes. It has no `PartialEq`, so it can only
/// be compared through [`Secret::matches`], in constant time, and its `Debug`
/// hides it so it never reaches a log.
#[derive(Clone)]
pub struct Secret([u8; SECRET_BYTES]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

impl Secret {
    /// Whether `text` (hex, as the cookie or the header carries it) is this
    /// secret. The hex is decoded first (its length is public), then the bytes
    /// are compared in constant time.
    fn matches(&self, text: &str) -> bool {
        let mut bytes = [0u8; SECRET_BYTES];
        if hex::decode_to_slice(text, &mut bytes).is_err() {
            return false;
        }
        bool::from(self.0.ct_eq(&bytes))
    }

    fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// The random bytes a new session is made of, drawn by the caller from the
/// operating system (`getrandom`) so that this module stays free of I/O.
#[derive(Clone)]
pub struct Fresh {
    /// Finds the session; not secret on its own.
    pub selector: [u8; SELECTOR_BYTES],
    /// The cookie's proof.
    pub verifier: [u8; SECRET_BYTES],
    /// The CSRF token.
    pub csrf: [u8; SECRET_BYTES],
}

impl Fresh {
    /// The bytes needed for one session.
    pub const BYTES: usize = SELECTOR_BYTES + 2 * SECRET_BYTES;

    /// Splits [`Fresh::BYTES`] random bytes into a session's parts.
    pub fn from_bytes(bytes: [u8; Fresh::BYTES]) -> Fresh {
        let mut fresh = Fresh {
            selector: [0; SELECTOR_BYTES],
            verifier: [0; SECRET_BYTES],
            csrf: [0; SECRET_BYTES],
        };
        let (selector, secrets) = bytes.split_at(SELECTOR_BYTES);
        let (verifier, csrf) = secrets.split_at(SECRET_BYTES);
        fresh.selector.copy_from_slice(selector);
        fresh.verifier.copy_from_slice(verifier);
        fresh.csrf.copy_from_slice(csrf);
        fresh
    }
}

/// A sign-in that succeeded: what the answer carries.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The value of the `Set-Cookie` header.
    pub set_cookie: String,
    /// The CSRF token, for the page to send back in [`CSRF_HEADER`].
    pub csrf_token: String,
    /// How long the session lasts without use.
    pub idle_timeout: Duration,
}

/// Why a sign-in was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignInError {
    /// The token given is not the admin token.
    #[error("that is not the admin token")]
    WrongToken,
}

/// What a request's cookie and CSRF header say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCheck {
    /// No session cookie, or one this master never issued (or forgot when it
    /// restarted): the request is judged by its other credentials.
    NoSession,
    /// The cookie's session ended ([`SESSION_IDLE_TIMEOUT`] or
    /// [`SESSION_MAX_LIFETIME`]); it is forgotten.
    Expired,
    /// A live session, but the request changes state and its CSRF header is
    /// missing or wrong: refuse it (403) and change nothing.
    CsrfMismatch,
    /// A live session, with the CSRF token when the request needs it: the
    /// request may do what the admin token may.
    Admin,
}

/// A session the master issued.
#[derive(Debug)]
struct Session {
    verifier: Secret,
    csrf: Secret,
    signed_in: Duration,
    last_used: Duration,
}

impl Session {
    fn ended(&self, now: Duration) -> bool {
        now.saturating_sub(self.last_used) >= SESSION_IDLE_TIMEOUT
            || now.saturating_sub(self.signed_in) >= SESSION_MAX_LIFETIME
    }
}

/// Every session of this master, in memory only: a restart signs everybody
/// out, which costs a sign-in and keeps no secret on disk; so does rotating
/// the admin token.
#[derive(Debug, Default)]
pub struct Sessions {
    by_selector: HashMap<[u8; SELECTOR_BYTES], Session>,
    /// The admin token the held sessions were signed in with: when the
    /// operator rotates it, every session ends.
    signed_with: Option<Token>,
}

/// The `Set-Cookie` value that makes the browser forget the session cookie.
pub fn clearing_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The values of every `retire_session` cookie in a `Cookie` header
/// (`a=1; retire_session=…`). A browser may send two of the same name (a
/// stale one for another path); each is tried.
fn session_cookies(header: &str) -> impl Iterator<Item = &str> {
    header.split(';').filter_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name.trim() == SESSION_COOKIE).then(|| value.trim())
    })
}

impl Sessions {
    /// No sessions.
    pub fn new() -> Sessions {
        Sessions::default()
    }

    /// How many sessions are held (ended ones included until they are next
    /// looked at or evicted).
    pub fn len(&self) -> usize {
        self.by_selector.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.by_selector.is_empty()
    }

    /// Signs in with `presented`, which must be `admin` (compared in constant
    /// time). On success a session made of `fresh` is held, the least recently
    /// used one ending first when [`MAX_SESSIONS`] are held already.
    pub fn sign_in(
        &mut self,
        now: Duration,
        admin: &Token,
        presented: &str,
        fresh: Fresh,
    ) -> Result<SignedIn, SignInError> {
        if !admin.matches_text(presented) {
            return Err(SignInError::WrongToken);
        }
        self.forget_if_rotated(admin);
        self.signed_with = Some(admin.clone());
        self.by_selector.retain(|_, session| !session.ended(now));
        while self.by_selector.len() >= MAX_SESSIONS {
            let oldest = self
                .by_selector
                .iter()
                .min_by_key(|(_, session)| session.last_used)
                .map(|(selector, _)| *selector);
            match oldest {
                Some(selector) => self.by_selector.remove(&selector),
                None => break,
            };
        }
        let session = Session {
            verifier: Secret(fresh.verifier),
            csrf: Secret(fresh.csrf),
            signed_in: now,
            last_used: now,
        };
        let set_cookie = format!(
            "{SESSION_COOKIE}={}.{}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            hex::encode(fresh.selector),
            session.verifier.to_hex(),
            SESSION_IDLE_TIMEOUT.as_secs()
        );
        let csrf_token = session.csrf.to_hex();
        // A selector drawn twice (2^-128) replaces the older session.
        self.by_selector.insert(fresh.selector, session);
        Ok(SignedIn {
            set_cookie,
            csrf_token,
            idle_timeout: SESSION_IDLE_TIMEOUT,
        })
    }

    /// Judges a request by its `Cookie` header and its [`CSRF_HEADER`], given
    /// the admin token now in force (a rotated one ends every session):
    /// `changes_state` requests (every method but `GET` and `HEAD`) need the
    /// session's CSRF token as well as its cookie. A request that passes keeps
    /// its session alive ([`SESSION_IDLE_TIMEOUT`] from now).
    pub fn check(
        &mut self,
        now: Duration,
        admin: &Token,
        cookie_header: Option<&str>,
        csrf_header: Option<&str>,
        changes_state: bool,
    ) -> SessionCheck {
        self.forget_if_rotated(admin);
        let Some((selector, verifier)) = self.find(cookie_header) else {
            return SessionCheck::NoSession;
        };
        let Some(session) = self.by_selector.get_mut(&selector) else {
            return SessionCheck::NoSession;
        };
        if !session.verifier.matches(verifier) {
            return SessionCheck::NoSession;
        }
        if session.ended(now) {
            self.by_selector.remove(&selector);
            return SessionCheck::Expired;
        }
        if changes_state && !csrf_header.is_some_and(|token| session.csrf.matches(token.trim())) {
            return SessionCheck::CsrfMismatch;
        }
        session.last_used = now;
        SessionCheck::Admin
    }

    /// The CSRF token of the live session the cookie names, for a page that
    /// was reloaded and asks for it again (`GET /api/v1/session`). It counts
    /// as a use of the session.
    pub fn csrf_token(
        &mut self,
        now: Duration,
        admin: &Token,
        cookie_header: Option<&str>,
    ) -> Option<String> {
        match self.check(now, admin, cookie_header, None, false) {
            SessionCheck::Admin => {
                let (selector, _) = self.find(cookie_header)?;
                self.by_selector
                    .get(&selector)
                    .map(|session| session.csrf.to_hex())
            }
            _ => None,
        }
    }

    /// Ends the session the cookie names, if any, and returns the
    /// `Set-Cookie` value that clears the cookie. Signing out needs the
    /// CSRF token like any state-changing request; the caller checks it
    /// first with [`Sessions::check`].
    pub fn sign_out(&mut self, cookie_header: Option<&str>) -> String {
        if let Some((selector, verifier)) = self.find(cookie_header) {
            let proven = self
                .by_selector
                .get(&selector)
                .is_some_and(|session| session.verifier.matches(verifier));
            if proven {
                self.by_selector.remove(&selector);
            }
        }
        clearing_cookie()
    }

    /// Ends every session when `admin` is no longer the token they were
    /// signed in with (`retire-master token rotate-admin`), compared in
    /// constant time.
    fn forget_if_rotated(&mut self, admin: &Token) {
        let rotated = self
            .signed_with
            .as_ref()
            .is_some_and(|signed_with| !admin.matches_text(&signed_with.reveal()));
        if rotated {
            self.by_selector.clear();
            self.signed_with = None;
        }
    }

    /// The selector of the first session cookie that names a session held
    /// here, with the cookie's verifier text (not yet checked).
    fn find<'h>(&self, cookie_header: Option<&'h str>) -> Option<([u8; SELECTOR_BYTES], &'h str)> {
        session_cookies(cookie_header?).find_map(|value| {
            let (selector, verifier) = value.split_once('.')?;
            let mut bytes = [0u8; SELECTOR_BYTES];
            hex::decode_to_slice(selector, &mut bytes).ok()?;
            self.by_selector
                .contains_key(&bytes)
                .then_some((bytes, verifier))
        })
    }
}

/// The path of the sign-in route: `GET` says whether the request's cookie
/// is signed in (and gives its CSRF token again), `POST` signs in, `DELETE`
/// signs out.
pub const SESSION_PATH: &str = "/api/v1/session";

/// The methods [`SESSION_PATH`] answers, for a 405's `Allow` header.
pub const SESSION_METHODS: &str = "GET, HEAD, POST, DELETE";

/// A request to [`SESSION_PATH`], as the HTTP edge read it.
#[derive(Debug, Clone, Copy)]
pub struct SessionRequest<'a> {
    /// Its method, upper case (`GET`, `POST`, …).
    pub method: &'a str,
    /// Its `Cookie` header.
    pub cookie: Option<&'a str>,
    /// Its [`CSRF_HEADER`].
    pub csrf: Option<&'a str>,
    /// Its body (`POST`: `{"token": "rc-admin-…"}`).
    pub body: &'a [u8],
}

/// The answer to a [`SessionRequest`], for the HTTP edge to write: a status,
/// a `Set-Cookie` header when the cookie changes, and a JSON body (errors in
/// the API's shape, `{"status":"error","message":…,"error_code":…}`).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionAnswer {
    /// The HTTP status.
    pub status: Status,
    /// The `Set-Cookie` header's value, if any.
    pub set_cookie: Option<String>,
    /// The body.
    pub body: serde_json::Value,
}

impl SessionAnswer {
    fn ok(body: serde_json::Value, set_cookie: Option<String>) -> SessionAnswer {
        SessionAnswer {
            status: Status::Ok,
            set_cookie,
            body,
        }
    }

    /// The response to write: never cached, since it may carry the CSRF
    /// token or set the cookie.
    pub fn response(self) -> Response {
        let mut response =
            Response::json(self.status, &self.body).with_header("Cache-Control", "no-store");
        if let Some(cookie) = self.set_cookie {
            response = response.with_header("Set-Cookie", cookie);
        }
        if self.status == Status::MethodNotAllowed {
            response = response.with_header("Allow", SESSION_METHODS);
        }
        response
    }

    fn error(status: Status, code: &str, message: &str) -> SessionAnswer {
        SessionAnswer {
            status,
            set_cookie: None,
            body: serde_json::json!({ "status": "error", "message": message, "error_code": code }),
        }
    }
}

impl Sessions {
    /// Answers a request to [`SESSION_PATH`]. `admin` is the admin token now
    /// in force, `None` when the master runs without authentication (then
    /// every request is an admin's and there is nothing to sign in to);
    /// `fresh` draws a new session's bytes, and is called only by a sign-in.
    /// A wrong token is answered 401 (`AUTH_FAILED`); the caller counts and
    /// logs it like any failed authentication.
    pub fn answer(
        &mut self,
        now: Duration,
        admin: Option<&Token>,
        request: SessionRequest<'_>,
        fresh: impl FnOnce() -> Option<Fresh>,
    ) -> SessionAnswer {
        let idle = SESSION_IDLE_TIMEOUT.as_secs();
        let Some(admin) = admin else {
            return match request.method {
                "GET" | "HEAD" | "POST" | "DELETE" => SessionAnswer::ok(
                    serde_json::json!({ "signed_in": true, "auth_required": false }),
                    None,
                ),
                _ => SessionAnswer::error(
                    Status::MethodNotAllowed,
                    "METHOD_NOT_ALLOWED",
                    "use GET, POST or DELETE",
                ),
            };
        };
        match request.method {
            "GET" | "HEAD" => match self.csrf_token(now, admin, request.cookie) {
                Some(csrf) => SessionAnswer::ok(
                    serde_json::json!({
                        "signed_in": true, "auth_required": true, "csrf_token": csrf,
                        "idle_timeout_secs": idle,
                    }),
                    None,
                ),
                None => SessionAnswer::ok(
                    serde_json::json!({ "signed_in": false, "auth_required": true }),
                    None,
                ),
            },
            "POST" => {
                let token = serde_json::from_slice::<serde_json::Value>(request.body)
                    .ok()
                    .and_then(|body| body.get("token")?.as_str().map(str::to_string));
                let Some(token) = token else {
                    return SessionAnswer::error(
                        Status::BadRequest,
                        "MISSING_TOKEN",
                        "send {\"token\": \"<the admin token>\"}",
                    );
                };
                let Some(fresh) = fresh() else {
                    return SessionAnswer::error(
                        Status::Unavailable,
                        "NO_RANDOMNESS",
                        "the operating system gave no random bytes for a session; try again",
                    );
                };
                match self.sign_in(now, admin, &token, fresh) {
                    Ok(signed_in) => SessionAnswer::ok(
                        serde_json::json!({
                            "signed_in": true, "auth_required": true,
                            "csrf_token": signed_in.csrf_token, "idle_timeout_secs": idle,
                        }),
                        Some(signed_in.set_cookie),
                    ),
                    Err(error) => SessionAnswer::error(
                        Status::Unauthorized,
                        "AUTH_FAILED",
                        &error.to_string(),
                    ),
                }
            }
            "DELETE" => match self.check(now, admin, request.cookie, request.csrf, true) {
                SessionCheck::CsrfMismatch => SessionAnswer::error(
                    Status::Forbidden,
                    "CSRF_MISMATCH",
                    "signing out needs the session's X-CSRF-Token header",
                ),
                _ => {
                    let cleared = self.sign_out(request.cookie);
                    SessionAnswer::ok(
                        serde_json::json!({ "signed_in": false, "auth_required": true }),
                        Some(cleared),
                    )
                }
            },
            _ => SessionAnswer::error(
                Status::MethodNotAllowed,
                "METHOD_NOT_ALLOWED",
                "use GET to ask, POST to sign in, DELETE to sign out",
            ),
        }
    }
}

#[cfg(test)]
mod tests;
