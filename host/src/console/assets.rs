//! The console's static files, embedded in the binary at build time (no
//! Node build, no CDN: the console works offline). Pages link them with a
//! `?v=` of their content hash, so a new binary's files are never mixed
//! with a browser's cached old ones, and they are cached for a day.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// Name, media type, contents.
const FILES: &[(&str, &str, &[u8])] = &[
    ("console.css", "text/css; charset=utf-8", include_bytes!("assets/console.css")),
    ("console.js", "text/javascript; charset=utf-8", include_bytes!("assets/console.js")),
    // uPlot 1.6.32 (MIT), unmodified: see assets/vendor/README.md.
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/vendor/uPlot.min.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/vendor/uPlot.iife.min.js"),
    ),
];

/// The first 12 hex digits of the hash of every file: changes when any does.
pub static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut h = Sha256::new();
    for (name, _, bytes) in FILES {
        h.update(name.as_bytes());
        h.update(bytes);
    }
    hex::encode(h.finalize())[..12].to_string()
});

/// The URL of an asset, with its version.
pub fn url(name: &str) -> String {
    format!("/console/assets/{name}?v={}", *VERSION)
}

pub async fn serve(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, media, bytes)) => (
            [(header::CONTENT_TYPE, *media), (header::CACHE_CONTROL, "public, max-age=86400")],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such console asset").into_response(),
    }
}
