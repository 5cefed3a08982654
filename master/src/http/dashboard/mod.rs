//! The dashboard's files, served from the binary at `/` and `/assets/*`
//! (the `dash` part of issue 15 fills this in; until then, one page that
//! says where the API is).

/// The page `GET /` serves until the dashboard lands.
const PLACEHOLDER: &str = "<!doctype html>
<html lang=\"en\"><head><meta charset=\"utf-8\">
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<title>Retire-Cluster</title></head>
<body><h1>Retire-Cluster</h1>
<p>The master serves its HTTP API here: <a href=\"/api/v1/cluster/status\">cluster status</a>,
<a href=\"/api/v1/devices\">devices</a>, <a href=\"/api/v1/tasks\">tasks</a>,
<a href=\"/text/status\">status as text</a>, <a href=\"/metrics\">metrics</a>.
See docs/http.md.</p></body></html>
";

/// The content type and bytes of the dashboard file at `path` (`/` is the
/// main page, the others are under `/assets/`), or `None` when there is no
/// such file. `path` has been checked for traversal already.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", PLACEHOLDER.as_bytes())),
        _ => None,
    }
}
