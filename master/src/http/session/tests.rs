//! Sessions on simulated time: sign-in, the cookie's attributes, the CSRF
//! token, expiry, eviction, sign-out, and secrets that only compare in
//! constant time.

use super::*;
use protocol::auth::TokenKind;
use serde_json::json;

const HOUR: Duration = Duration::from_secs(3600);

fn admin() -> Token {
    Token::from_bytes(TokenKind::Admin, [7; 32])
}

/// Distinct random bytes for the `n`th session (a test draws them the way the
/// master draws them from the operating system, only predictably).
fn fresh(n: u8) -> Fresh {
    Fresh {
        selector: [n; SELECTOR_BYTES],
        verifier: [n.wrapping_add(100); SECRET_BYTES],
        csrf: [n.wrapping_add(200); SECRET_BYTES],
    }
}

/// The `Cookie` header a browser sends back for a `Set-Cookie` value.
fn cookie_of(signed_in: &SignedIn) -> String {
    signed_in
        .set_cookie
        .split(';')
        .next()
        .expect("a name=value first")
        .to_string()
}

fn sign_in(sessions: &mut Sessions, now: Duration, n: u8) -> SignedIn {
    sessions
        .sign_in(now, &admin(), &admin().reveal(), fresh(n))
        .expect("the admin token signs in")
}

/// What a read (no CSRF header, no change) with `cookie` finds at `now`.
fn read(sessions: &mut Sessions, now: Duration, cookie: &str) -> SessionCheck {
    sessions.check(now, &admin(), Some(cookie), None, false)
}

#[test]
fn the_cookie_is_http_only_same_site_strict_for_the_whole_site() {
    let mut sessions = Sessions::new();
    let signed_in = sign_in(&mut sessions, Duration::ZERO, 1);
    let attributes: Vec<&str> = signed_in.set_cookie.split("; ").skip(1).collect();
    assert_eq!(
        attributes,
        ["Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=43200"]
    );
    assert_eq!(
        cookie_of(&signed_in),
        format!(
            "retire_session={}.{}",
            hex::encode([1u8; 16]),
            hex::encode([101u8; 32])
        )
    );
    assert_eq!(signed_in.csrf_token, hex::encode([201u8; 32]));
    assert_eq!(signed_in.idle_timeout, SESSION_IDLE_TIMEOUT);
    assert_eq!(
        clearing_cookie(),
        "retire_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
    );
}

#[test]
fn only_the_admin_token_signs_in() {
    let right = admin().reveal();
    let mut last_digit_off = right.clone();
    let last = last_digit_off.pop().expect("a digit");
    last_digit_off.push(if last == '0' { '1' } else { '0' });
    let join = Token::from_bytes(TokenKind::Join, [7; 32]).reveal();
    let cases: [(&str, Result<(), SignInError>); 7] = [
        (&right, Ok(())),
        (&format!("  {right}\n"), Ok(())),
        (&last_digit_off, Err(SignInError::WrongToken)),
        (&join, Err(SignInError::WrongToken)),
        ("", Err(SignInError::WrongToken)),
        (&right[..right.len() - 2], Err(SignInError::WrongToken)),
        (&format!("{right}00"), Err(SignInError::WrongToken)),
    ];
    for (presented, expect) in cases {
        let mut sessions = Sessions::new();
        let outcome = sessions
            .sign_in(Duration::ZERO, &admin(), presented, fresh(1))
            .map(|_| ());
        assert_eq!(outcome, expect, "signing in with {presented:?}");
        assert_eq!(sessions.len(), usize::from(expect.is_ok()), "{presented:?}");
    }
}

#[test]
fn reads_need_the_cookie_and_changes_need_the_csrf_token_too() {
    let mut sessions = Sessions::new();
    let signed_in = sign_in(&mut sessions, Duration::ZERO, 1);
    let other = sign_in(&mut sessions, Duration::ZERO, 2);
    let cookie = cookie_of(&signed_in);
    let csrf = signed_in.csrf_token.clone();
    let forged = format!(
        "retire_session={}.{}",
        hex::encode([1u8; 16]),
        hex::encode([9u8; 32])
    );
    let cases: [(Option<&str>, Option<&str>, bool, SessionCheck); 14] = [
        (Some(&cookie), None, false, SessionCheck::Admin),
        (Some(&cookie), Some(&csrf), true, SessionCheck::Admin),
        (
            Some(&cookie),
            Some(&format!(" {csrf} ")),
            true,
            SessionCheck::Admin,
        ),
        (Some(&cookie), None, true, SessionCheck::CsrfMismatch),
        (Some(&cookie), Some(""), true, SessionCheck::CsrfMismatch),
        (
            Some(&cookie),
            Some(&other.csrf_token),
            true,
            SessionCheck::CsrfMismatch,
        ),
        (
            Some(&cookie),
            Some(&csrf[..62]),
            true,
            SessionCheck::CsrfMismatch,
        ),
        (
            Some(&cookie),
            Some(&csrf.to_uppercase()),
            true,
            SessionCheck::Admin,
        ),
        (Some(&cookie), Some("zz"), true, SessionCheck::CsrfMismatch),
        (None, Some(&csrf), true, SessionCheck::NoSession),
        (Some(&forged), None, false, SessionCheck::NoSession),
        (
            Some("retire_session=garbage"),
            None,
            false,
            SessionCheck::NoSession,
        ),
        (
            Some(&format!("theme=dark; {cookie}; lang=en")),
            Some(&csrf),
            true,
            SessionCheck::Admin,
        ),
        (
            Some(&format!("retire_session=stale.00; {cookie}")),
            None,
            false,
            SessionCheck::Admin,
        ),
    ];
    for (cookie_header, csrf_header, changes_state, expect) in cases {
        assert_eq!(
            sessions.check(
                Duration::ZERO,
                &admin(),
                cookie_header,
                csrf_header,
                changes_state
            ),
            expect,
            "cookie {cookie_header:?}, csrf {csrf_header:?}, changes state: {changes_state}"
        );
    }
    assert_eq!(sessions.len(), 2, "a refused request ends no session");
}

#[test]
fn a_session_ends_after_its_idle_timeout_and_use_keeps_it_alive() {
    let mut sessions = Sessions::new();
    let cookie = cookie_of(&sign_in(&mut sessions, Duration::ZERO, 1));
    let almost = SESSION_IDLE_TIMEOUT - Duration::from_millis(1);
    assert_eq!(read(&mut sessions, almost, &cookie), SessionCheck::Admin);
    // That use moved the end to `almost + SESSION_IDLE_TIMEOUT`.
    let later = almost + almost;
    assert_eq!(read(&mut sessions, later, &cookie), SessionCheck::Admin);
    // A refused change is no use: it does not keep the session alive.
    let refused_at = later + almost;
    assert_eq!(
        sessions.check(refused_at, &admin(), Some(&cookie), Some("00"), true),
        SessionCheck::CsrfMismatch
    );
    assert_eq!(
        read(&mut sessions, later + SESSION_IDLE_TIMEOUT, &cookie),
        SessionCheck::Expired
    );
    assert!(sessions.is_empty(), "an ended session is forgotten");
    assert_eq!(
        read(&mut sessions, later + SESSION_IDLE_TIMEOUT, &cookie),
        SessionCheck::NoSession
    );
}

#[test]
fn a_session_ends_after_its_lifetime_however_much_it_is_used() {
    let mut sessions = Sessions::new();
    let cookie = cookie_of(&sign_in(&mut sessions, HOUR, 1));
    let mut now = HOUR;
    while now + HOUR < HOUR + SESSION_MAX_LIFETIME {
        now += HOUR;
        assert_eq!(
            read(&mut sessions, now, &cookie),
            SessionCheck::Admin,
            "at {now:?}"
        );
    }
    assert_eq!(
        read(&mut sessions, HOUR + SESSION_MAX_LIFETIME, &cookie),
        SessionCheck::Expired
    );
    assert!(sessions.is_empty());
}

#[test]
fn past_the_cap_a_sign_in_ends_the_session_used_least_recently() {
    let mut sessions = Sessions::new();
    let cookies: Vec<String> = (0..MAX_SESSIONS)
        .map(|n| {
            let n = u8::try_from(n).expect("MAX_SESSIONS fits a byte");
            cookie_of(&sign_in(
                &mut sessions,
                Duration::from_secs(u64::from(n)),
                n,
            ))
        })
        .collect();
    assert_eq!(sessions.len(), MAX_SESSIONS);
    // The first session is used again, so the second is now the least recently used.
    let now = Duration::from_secs(1000);
    assert_eq!(read(&mut sessions, now, &cookies[0]), SessionCheck::Admin);
    let newest = cookie_of(&sign_in(&mut sessions, now, 250));
    assert_eq!(sessions.len(), MAX_SESSIONS);
    let expect = |index: usize| {
        if index == 1 {
            SessionCheck::NoSession
        } else {
            SessionCheck::Admin
        }
    };
    for (index, cookie) in cookies.iter().enumerate() {
        assert_eq!(
            read(&mut sessions, now, cookie),
            expect(index),
            "session {index}"
        );
    }
    assert_eq!(read(&mut sessions, now, &newest), SessionCheck::Admin);
}

#[test]
fn a_sign_in_forgets_ended_sessions_before_evicting_live_ones() {
    let mut sessions = Sessions::new();
    for n in 0..MAX_SESSIONS - 1 {
        let n = u8::try_from(n).expect("fits");
        sign_in(&mut sessions, Duration::ZERO, n);
    }
    let recent = cookie_of(&sign_in(&mut sessions, SESSION_IDLE_TIMEOUT / 2, 100));
    let now = SESSION_IDLE_TIMEOUT;
    let newest = cookie_of(&sign_in(&mut sessions, now, 101));
    assert_eq!(
        sessions.len(),
        2,
        "the ended ones went, the live one stayed"
    );
    assert_eq!(read(&mut sessions, now, &recent), SessionCheck::Admin);
    assert_eq!(read(&mut sessions, now, &newest), SessionCheck::Admin);
}

#[test]
fn signing_out_ends_the_session_and_clears_the_cookie() {
    let mut sessions = Sessions::new();
    let mine = sign_in(&mut sessions, Duration::ZERO, 1);
    let theirs = cookie_of(&sign_in(&mut sessions, Duration::ZERO, 2));
    let cookie = cookie_of(&mine);
    assert_eq!(
        sessions.csrf_token(Duration::ZERO, &admin(), Some(&cookie)),
        Some(mine.csrf_token.clone())
    );
    // A forged verifier cannot sign someone else out.
    let forged = format!(
        "retire_session={}.{}",
        hex::encode([2u8; 16]),
        hex::encode([0u8; 32])
    );
    assert_eq!(sessions.sign_out(Some(&forged)), clearing_cookie());
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions.sign_out(Some(&cookie)), clearing_cookie());
    assert_eq!(
        read(&mut sessions, Duration::ZERO, &cookie),
        SessionCheck::NoSession
    );
    assert_eq!(
        sessions.csrf_token(Duration::ZERO, &admin(), Some(&cookie)),
        None
    );
    assert_eq!(
        read(&mut sessions, Duration::ZERO, &theirs),
        SessionCheck::Admin
    );
    assert_eq!(sessions.sign_out(None), clearing_cookie());
}

/// Tells whether a type has `==`, by autoref specialisation: the by-value
/// impl applies only when `T: PartialEq`, the one on a reference always.
struct Probe<T>(std::marker::PhantomData<T>);

trait HasEq {
    fn has_eq(&self) -> bool {
        true
    }
}
impl<T: PartialEq> HasEq for Probe<T> {}

trait NoEq {
    fn has_eq(&self) -> bool {
        false
    }
}
impl<T> NoEq for &Probe<T> {}

#[test]
// The explicit borrow is the probe: without it a type lacking `==` would not
// reach `NoEq`'s method.
#[allow(clippy::needless_borrow)]
fn secrets_compare_only_in_constant_time_and_never_print() {
    // The control: the bytes inside a secret would have `==`.
    assert!((&Probe::<[u8; SECRET_BYTES]>(std::marker::PhantomData)).has_eq());
    // A secret has none, so the only comparison left is `Secret::matches`,
    // which is `subtle`'s `ct_eq`.
    assert!(!(&Probe::<Secret>(std::marker::PhantomData)).has_eq());
    let secret = Secret([0xab; SECRET_BYTES]);
    assert!(secret.matches(&"ab".repeat(SECRET_BYTES)));
    assert!(!secret.matches(&"ab".repeat(SECRET_BYTES - 1)));
    assert_eq!(format!("{secret:?}"), "Secret(<hidden>)");
    let mut sessions = Sessions::new();
    let signed_in = sign_in(&mut sessions, Duration::ZERO, 1);
    let shown = format!("{sessions:?}");
    assert!(!shown.contains(&signed_in.csrf_token), "{shown}");
    assert!(!shown.contains(&hex::encode([101u8; 32])), "{shown}");
}

#[test]
fn rotating_the_admin_token_ends_every_session() {
    let mut sessions = Sessions::new();
    let first = cookie_of(&sign_in(&mut sessions, Duration::ZERO, 1));
    let second = cookie_of(&sign_in(&mut sessions, Duration::ZERO, 2));
    let rotated = Token::from_bytes(TokenKind::Admin, [8; 32]);
    assert_eq!(
        sessions.check(HOUR, &rotated, Some(&first), None, false),
        SessionCheck::NoSession
    );
    assert!(sessions.is_empty());
    // Signing in with the new token works; the old sessions stay gone.
    let signed_in = sessions
        .sign_in(HOUR, &rotated, &rotated.reveal(), fresh(3))
        .expect("the new token signs in");
    assert_eq!(
        sessions.check(HOUR, &rotated, Some(&cookie_of(&signed_in)), None, false),
        SessionCheck::Admin
    );
    assert_eq!(
        sessions.check(HOUR, &rotated, Some(&second), None, false),
        SessionCheck::NoSession
    );
    assert_eq!(
        sessions
            .sign_in(HOUR, &rotated, &admin().reveal(), fresh(4))
            .map(|_| ()),
        Err(SignInError::WrongToken)
    );
}

#[test]
fn the_session_route_signs_in_answers_and_signs_out() {
    let mut sessions = Sessions::new();
    let admin = admin();
    let request = |method, cookie, csrf, body| SessionRequest {
        method,
        cookie,
        csrf,
        body,
    };
    let signed_out = json!({ "signed_in": false, "auth_required": true });
    let asked = sessions.answer(HOUR, Some(&admin), request("GET", None, None, b""), || {
        Some(fresh(1))
    });
    assert_eq!(asked, SessionAnswer::ok(signed_out.clone(), None));

    let body = json!({ "token": admin.reveal() }).to_string();
    let signed_in = sessions.answer(
        HOUR,
        Some(&admin),
        request("POST", None, None, body.as_bytes()),
        || Some(fresh(1)),
    );
    let csrf = hex::encode([201u8; 32]);
    let mine = json!({
        "signed_in": true, "auth_required": true, "csrf_token": csrf, "idle_timeout_secs": 43200
    });
    assert_eq!(signed_in.status, Status::Ok);
    assert_eq!(signed_in.body, mine);
    let set_cookie = signed_in.set_cookie.expect("a cookie");
    let cookie = set_cookie
        .split(';')
        .next()
        .expect("name=value")
        .to_string();

    // After a reload the page asks again, and gets its CSRF token back.
    let again = sessions.answer(
        HOUR,
        Some(&admin),
        request("GET", Some(&cookie), None, b""),
        || Some(fresh(2)),
    );
    assert_eq!(again, SessionAnswer::ok(mine, None));

    let cases: [(&str, &[u8], Status, &str); 4] = [
        (
            "POST",
            br#"{"token":"rc-admin-00"}"#,
            Status::Unauthorized,
            "AUTH_FAILED",
        ),
        ("POST", b"not json", Status::BadRequest, "MISSING_TOKEN"),
        (
            "POST",
            br#"{"token":7}"#,
            Status::BadRequest,
            "MISSING_TOKEN",
        ),
        ("PUT", b"", Status::MethodNotAllowed, "METHOD_NOT_ALLOWED"),
    ];
    for (method, body, status, code) in cases {
        let answer = sessions.answer(
            HOUR,
            Some(&admin),
            request(method, None, None, body),
            || Some(fresh(3)),
        );
        assert_eq!(
            (answer.status, answer.body["error_code"].as_str()),
            (status, Some(code))
        );
        assert_eq!(answer.set_cookie, None);
    }
    assert_eq!(sessions.len(), 1, "no refused request made a session");

    // Signing out needs the CSRF token; then the cookie is cleared and the session gone.
    let refused = sessions.answer(
        HOUR,
        Some(&admin),
        request("DELETE", Some(&cookie), None, b""),
        || Some(fresh(4)),
    );
    assert_eq!(
        (refused.status, refused.set_cookie),
        (Status::Forbidden, None)
    );
    let out = sessions.answer(
        HOUR,
        Some(&admin),
        request("DELETE", Some(&cookie), Some(&csrf), b""),
        || Some(fresh(4)),
    );
    assert_eq!(
        out,
        SessionAnswer::ok(signed_out.clone(), Some(clearing_cookie()))
    );
    assert!(sessions.is_empty());
    let asked = sessions.answer(
        HOUR,
        Some(&admin),
        request("GET", Some(&cookie), None, b""),
        || Some(fresh(5)),
    );
    assert_eq!(asked, SessionAnswer::ok(signed_out, None));

    // Without authentication there is nothing to sign in to.
    let open = sessions.answer(HOUR, None, request("GET", None, None, b""), || {
        Some(fresh(6))
    });
    assert_eq!(
        open.body,
        json!({ "signed_in": true, "auth_required": false })
    );
}

#[test]
fn fresh_bytes_split_into_selector_verifier_and_csrf() {
    let mut bytes = [0u8; Fresh::BYTES];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::try_from(i).expect("80 fits a byte");
    }
    let fresh = Fresh::from_bytes(bytes);
    assert_eq!(fresh.selector.to_vec(), (0..16).collect::<Vec<u8>>());
    assert_eq!(fresh.verifier.to_vec(), (16..48).collect::<Vec<u8>>());
    assert_eq!(fresh.csrf.to_vec(), (48..80).collect::<Vec<u8>>());
}
