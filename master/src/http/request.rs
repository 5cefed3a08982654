//! Reading an HTTP/1.1 request out of the bytes a connection sent:
//! `httparse` for the head, then the limits, the smuggling and traversal
//! checks, and the body by `Content-Length`. No I/O: the event loop hands
//! in what it read.

use super::{HttpError, Status, MAX_HEADERS, MAX_HEAD_BYTES};

/// The methods a request line may start with. A connection whose first
/// bytes are one of these and a space is HTTP; anything else is the
/// JSON-lines or text protocol.
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE",
];

/// What the first bytes of a connection say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// A request line starts: HTTP.
    Http,
    /// Not HTTP: the JSON-lines or text protocol, as before.
    Lines,
    /// Too few bytes to tell (a prefix of a method name).
    NeedMore,
}

/// Tells an HTTP request line from a protocol line by its first bytes: a
/// method name in capitals followed by a space. No text command and no
/// JSON line starts that way.
pub fn sniff(first: &[u8]) -> Sniff {
    let mut need_more = false;
    for method in METHODS {
        let method = method.as_bytes();
        let n = first.len().min(method.len() + 1);
        let want = |i: usize| if i < method.len() { method[i] } else { b' ' };
        if (0..n).all(|i| first[i] == want(i)) {
            if n == method.len() + 1 {
                return Sniff::Http;
            }
            need_more = true;
        }
    }
    if need_more {
        Sniff::NeedMore
    } else {
        Sniff::Lines
    }
}

/// A request method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`: a `GET` without the body.
    Head,
    /// `POST`.
    Post,
    /// `DELETE`.
    Delete,
    /// Any other method `sniff` knows (`PUT`, `PATCH`, `OPTIONS`, `TRACE`):
    /// no route takes them, so they are answered 405.
    Other,
}

/// A request's head, parsed and checked.
#[derive(Debug, Clone)]
pub struct Head {
    /// The method.
    pub method: Method,
    /// The method as sent, for messages.
    pub method_name: String,
    /// The path, percent-decoded, checked for traversal.
    pub path: String,
    /// The query's pairs, percent-decoded, in order.
    pub query: Vec<(String, String)>,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body's length (`Content-Length`, 0 when absent).
    pub content_length: usize,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// Bytes of the head, request line to the blank line.
    pub head_len: usize,
}

impl Head {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The first value of query parameter `name`.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The token of `Authorization: Bearer TOKEN`, if the request has one.
    pub fn bearer(&self) -> Option<&str> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
    }
}

/// What the bytes so far hold.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet (and not over the limit).
    Incomplete,
    /// A head, checked; its body (if any) follows `head_len` bytes in.
    Head(Head),
}

/// Parses the head at the start of `bytes`. A head over
/// [`MAX_HEAD_BYTES`] or with more than [`MAX_HEADERS`] headers is 431; a
/// malformed one, one with both `Content-Length` and `Transfer-Encoding`
/// (a smuggling attempt), a chunked body, or a path that climbs out of
/// its root is 400.
pub fn parse_head(bytes: &[u8]) -> Result<Parsed, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if bytes.len() > MAX_HEAD_BYTES {
                return Err(HttpError::new(
                    Status::HeadersTooLarge,
                    format!("the request's head is larger than {MAX_HEAD_BYTES} bytes"),
                ));
            }
            return Ok(Parsed::Incomplete);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::new(
                Status::HeadersTooLarge,
                format!("the request has more than {MAX_HEADERS} headers"),
            ))
        }
        Err(err) => {
            return Err(HttpError::new(
                Status::BadRequest,
                format!("malformed request: {err}"),
            ))
        }
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(HttpError::new(
            Status::HeadersTooLarge,
            format!("the request's head is larger than {MAX_HEAD_BYTES} bytes"),
        ));
    }
    let method_name = request.method.unwrap_or_default().to_string();
    let method = match method_name.as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "DELETE" => Method::Delete,
        _ => Method::Other,
    };
    let version = request.version.unwrap_or(1);
    let target = request.path.unwrap_or_default();
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut connection = String::new();
    let mut list = Vec::with_capacity(request.headers.len());
    for header in request.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        let Ok(value) = std::str::from_utf8(header.value) else {
            return Err(HttpError::new(
                Status::BadRequest,
                format!("header {name} is not UTF-8"),
            ));
        };
        let value = value.trim().to_string();
        match name.as_str() {
            "content-length" => {
                let Ok(length) = value.parse::<usize>() else {
                    return Err(HttpError::new(
                        Status::BadRequest,
                        format!("Content-Length {value:?} is not a number"),
                    ));
                };
                if content_length.is_some_and(|other| other != length) {
                    return Err(HttpError::new(
                        Status::BadRequest,
                        "two different Content-Length headers",
                    ));
                }
                content_length = Some(length);
            }
            "transfer-encoding" => chunked = true,
            "connection" => connection = value.to_ascii_lowercase(),
            _ => {}
        }
        list.push((name, value));
    }
    if chunked && content_length.is_some() {
        // RFC 9112 §6.1: a request with both is a smuggling attempt
        // through a proxy that reads one and a server that reads the
        // other; refuse it and close.
        return Err(HttpError::new(
            Status::BadRequest,
            "both Content-Length and Transfer-Encoding: refused (request smuggling)",
        ));
    }
    if chunked {
        return Err(HttpError::new(
            Status::LengthRequired,
            "chunked request bodies are not accepted; send Content-Length",
        ));
    }
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    if !raw_path.starts_with('/') {
        return Err(HttpError::new(
            Status::BadRequest,
            format!("the request target {target:?} is not a path"),
        ));
    }
    let path = check_path(raw_path)?;
    let query = raw_query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(key, true), decode_component(value, true))
        })
        .map(|(key, value)| Some((key?, value?)))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| HttpError::new(Status::BadRequest, "the query is not valid UTF-8"))?;
    let keep_alive = if version == 0 {
        connection.split(',').any(|v| v.trim() == "keep-alive")
    } else {
        !connection.split(',').any(|v| v.trim() == "close")
    };
    Ok(Parsed::Head(Head {
        method,
        method_name,
        path,
        query,
        headers: list,
        content_length: content_length.unwrap_or(0),
        keep_alive,
        head_len,
    }))
}

/// Decodes the path and refuses one that climbs out of its root: a `..`
/// or `.` segment, a backslash or a NUL, spelled plainly or
/// percent-encoded.
fn check_path(raw: &str) -> Result<String, HttpError> {
    let traversal = || {
        HttpError::new(
            Status::BadRequest,
            format!("the path {raw:?} is not allowed (path traversal)"),
        )
    };
    let path = decode_component(raw, false).ok_or_else(traversal)?;
    if path.contains('\\') || path.contains('\0') {
        return Err(traversal());
    }
    if path
        .split('/')
        .any(|segment| segment == ".." || segment == ".")
    {
        return Err(traversal());
    }
    Ok(path)
}

/// Percent-decodes `text` (and `+` as a space in a query); `None` when the
/// result is not UTF-8 or an escape is broken.
fn decode_component(text: &str, plus_is_space: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_tells_http_from_the_protocol() {
        let check =
            |input: &str, expect: Sniff| assert_eq!(sniff(input.as_bytes()), expect, "{input:?}");
        check("GET / HTTP/1.1\r\n", Sniff::Http);
        check("POST ", Sniff::Http);
        check("DELETE /x", Sniff::Http);
        check("G", Sniff::NeedMore);
        check("GE", Sniff::NeedMore);
        check("GET", Sniff::NeedMore);
        check("P", Sniff::NeedMore);
        check("help\n", Sniff::Lines);
        check("status\n", Sniff::Lines);
        check("{\"message_type\":\"status\"}", Sniff::Lines);
        check("GETX / HTTP/1.1", Sniff::Lines);
        check("get / HTTP/1.1", Sniff::Lines);
        check("", Sniff::NeedMore);
    }

    fn head(text: &str) -> Result<Parsed, HttpError> {
        parse_head(text.as_bytes())
    }

    fn status_of(text: &str) -> Option<Status> {
        head(text).err().map(|e| e.status)
    }

    #[test]
    fn heads_are_checked() {
        let check = |input: &str, expect: Option<Status>| {
            assert_eq!(status_of(input), expect, "{input:?}");
        };
        check("GET / HTTP/1.1\r\nHost: x\r\n\r\n", None);
        check("GET / HTTP/1.1\r\nHost: x\r\n", None);
        check(
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            Some(Status::BadRequest),
        );
        check(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            Some(Status::LengthRequired),
        );
        check(
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            Some(Status::BadRequest),
        );
        check(
            "GET /../etc/passwd HTTP/1.1\r\n\r\n",
            Some(Status::BadRequest),
        );
        check(
            "GET /assets/%2e%2e/x HTTP/1.1\r\n\r\n",
            Some(Status::BadRequest),
        );
        check("GET /a/./b HTTP/1.1\r\n\r\n", Some(Status::BadRequest));
        check("GET /a%5cb HTTP/1.1\r\n\r\n", Some(Status::BadRequest));
        check("GET http://x/ HTTP/1.1\r\n\r\n", Some(Status::BadRequest));
        check(
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
            Some(Status::BadRequest),
        );
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect();
        check(
            &format!("GET / HTTP/1.1\r\n{many}\r\n"),
            Some(Status::HeadersTooLarge),
        );
        let big = "x".repeat(MAX_HEAD_BYTES);
        check(
            &format!("GET / HTTP/1.1\r\nX: {big}\r\n\r\n"),
            Some(Status::HeadersTooLarge),
        );
        check(
            &format!("GET / HTTP/1.1\r\nX: {big}"),
            Some(Status::HeadersTooLarge),
        );
    }

    #[test]
    fn a_head_reads_its_parts() {
        let Ok(Parsed::Head(head)) = head(
            "GET /api/v1/tasks?state=queued&q=a+b%21 HTTP/1.0\r\nAuthorization: Bearer  rc-x \r\nConnection: keep-alive\r\n\r\n",
        ) else {
            panic!("a head");
        };
        assert_eq!(head.method, Method::Get);
        assert_eq!(head.path, "/api/v1/tasks");
        assert_eq!(head.query("state"), Some("queued"));
        assert_eq!(head.query("q"), Some("a b!"));
        assert_eq!(head.bearer(), Some("rc-x"));
        assert!(head.keep_alive);
        let Ok(Parsed::Head(head)) = parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        else {
            panic!("a head");
        };
        assert!(!head.keep_alive);
    }
}
