//! The dashboard: a handful of static files compiled into the binary, so a
//! master on a LAN with no internet serves the whole page (no CDN, no build
//! step; plain HTML, CSS and JavaScript written for this project).
//!
//! The page talks to the master only through the JSON API and the event
//! stream (`/api/v1/events`); it holds no state of its own beyond what it
//! shows.

/// One file of the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Asset {
    /// Its `Content-Type`.
    content_type: &'static str,
    /// Its bytes.
    body: &'static [u8],
}

/// The `Content-Security-Policy` every dashboard file is served with: the page
/// loads scripts, styles and data from the master only, runs no inline script,
/// and may not be framed by another site (clickjacking the drain button).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The `Cache-Control` of every dashboard file: the browser asks again each
/// time (the files are small, and a new master binary must not be shown with
/// an old script).
pub const CACHE_CONTROL: &str = "no-cache";

const INDEX: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("index.html"),
};

/// Every path the dashboard serves, with its file.
const ASSETS: [(&str, Asset); 5] = [
    ("/", INDEX),
    ("/index.html", INDEX),
    (
        "/assets/app.js",
        Asset {
            content_type: "text/javascript; charset=utf-8",
            body: include_bytes!("app.js"),
        },
    ),
    (
        "/assets/app.css",
        Asset {
            content_type: "text/css; charset=utf-8",
            body: include_bytes!("app.css"),
        },
    ),
    (
        "/assets/icon.svg",
        Asset {
            content_type: "image/svg+xml",
            body: include_bytes!("icon.svg"),
        },
    ),
];

/// The content type and bytes of the file served at `path` (the request's
/// path without its query), or `None` for a path that is not the
/// dashboard's: the router answers 404. Only these exact paths match, so no
/// request can reach another file. Serve it with [`HEADERS`].
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .iter()
        .find(|(known, _)| *known == path)
        .map(|(_, asset)| (asset.content_type, asset.body))
}

/// The headers every dashboard file is served with, besides its type.
pub const HEADERS: [(&str, &str); 4] = [
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("Cache-Control", CACHE_CONTROL),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_serves_its_file_and_nothing_else_matches() {
        let cases: [(&str, Option<&str>); 9] = [
            ("/", Some("text/html; charset=utf-8")),
            ("/index.html", Some("text/html; charset=utf-8")),
            ("/assets/app.js", Some("text/javascript; charset=utf-8")),
            ("/assets/app.css", Some("text/css; charset=utf-8")),
            ("/assets/icon.svg", Some("image/svg+xml")),
            ("/assets/../Cargo.toml", None),
            ("/assets/", None),
            ("/assets/app.js/", None),
            ("", None),
        ];
        for (path, expect) in cases {
            assert_eq!(
                asset(path).map(|(content_type, _)| content_type),
                expect,
                "{path}"
            );
        }
    }

    #[test]
    fn the_page_loads_nothing_from_outside_the_master() {
        for (path, asset) in ASSETS {
            // SVG's namespace is a name, not a request.
            let text = std::str::from_utf8(asset.body)
                .expect("text")
                .replace("\"http://www.w3.org/2000/svg\"", "");
            for outside in ["http://", "https://", "//cdn", "<script>"] {
                assert!(!text.contains(outside), "{path} holds {outside:?}");
            }
        }
        let index = std::str::from_utf8(INDEX.body).expect("text");
        for linked in ["/assets/app.js", "/assets/app.css", "/assets/icon.svg"] {
            assert!(index.contains(linked), "index.html links {linked}");
            assert!(asset(linked).is_some(), "{linked} is served");
        }
    }
}
