//! The web UI at `/ui/`: static files embedded in the binary (no build step, no Node.js), an
//! ES module that reads the same HTTP API as every client, and the few reads of its own in
//! `crate::http::ui`. Every agent serves it from its own replica, so the UI of any agent
//! shows the whole datacenter.
//!
//! Safety: the page builds its DOM with `textContent`, never with markup from data, and the
//! answers carry a Content-Security-Policy that allows scripts, styles and requests from the
//! agent only (`'self'`, no inline script), so a service tag such as `<script>` is shown as
//! text and could not run even if it were inserted as markup.

pub mod topology;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// Scripts, styles and requests from this agent only; no frames, no plugins, no inline code.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The embedded files: path under `/ui/`, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
];

/// The UI's routes: `/` redirects to `/ui/`, and `/ui/…` serves the embedded files (any other
/// path under `/ui/` gets the page itself, which routes by its `#` part).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { asset("") }))
        .route(
            "/ui/{*path}",
            get(|axum::extract::Path(path): axum::extract::Path<String>| async move {
                asset(&path)
            }),
        )
}

fn asset(path: &str) -> Response {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == path)
        .unwrap_or(&ASSETS[0]);
    let mut response = (StatusCode::OK, *body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
