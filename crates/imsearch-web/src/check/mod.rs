//! Checks a running server from the outside (the `check` feature): a bounded load test with
//! latency percentiles, and the page driven in headless Chromium over the DevTools protocol.
//!
//! The server is anything that serves [`crate::router`] over a [`crate::Backend`]; these checks
//! only see it through HTTP on a socket address. Nothing here prints or writes files: the load
//! test returns a [`LoadReport`] (serialisable), the page check returns what the page showed with
//! its screenshots as PNG bytes, and the caller decides what to keep.
//!
//! ```no_run
//! # fn main() -> Result<(), imsearch_web::check::Error> {
//! use imsearch_web::check::{self, LoadRequest, Page};
//! let addr = "127.0.0.1:8080".parse().unwrap();
//! let requests = [LoadRequest::new("search", check::search_path("two dogs", 10), 200)];
//! let report = check::load_test(addr, &requests, 8, || {});
//! assert_eq!(report.errors, 0, "{:?}", report.first_errors);
//!
//! let expected = check::api_search(addr, "two dogs", 10)?;
//! let browser = check::find_browser().expect("chromium on PATH");
//! let mut page = Page::open(&browser, addr)?;
//! let shown = page.search("two dogs")?;
//! shown.verify(&expected)?;
//! let page_two = page.next_page()?;
//! page_two.verify(&check::api_get(addr, &page_two.api_path())?)?;
//! # Ok(()) }
//! ```

mod browser;
mod http;
mod load;

use std::{io, net::SocketAddr, path::PathBuf, time::Duration};

pub use browser::{find_browser, BlockedView, Browser, Cdp, Page, ResultsView, CHROMIUM_FLAGS};
pub use http::{
    api_get, api_search, http_get, image_path, percent_encode, search_path, similar_path, thumb_path, HttpResponse,
};
pub use load::{load_test, KindReport, LoadReport, LoadRequest};

/// What can go wrong while checking a server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to connect to {addr}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("failed to send GET {path}")]
    Send { path: String, source: io::Error },
    #[error("failed to read the answer to GET {path}")]
    Receive { path: String, source: io::Error },
    #[error("the answer to GET {path} has no HTTP header")]
    NoHeader { path: String },
    #[error("the answer to GET {path} has a bad status line {line:?}")]
    StatusLine { path: String, line: String },
    #[error("/api/search for {query:?} answered {status}: {body}")]
    SearchStatus { query: String, status: u16, body: String },
    #[error("/api/search for {query:?} gave unexpected JSON")]
    SearchJson { query: String, source: serde_json::Error },
    #[error("GET {path} answered {status}: {body}")]
    ApiStatus { path: String, status: u16, body: String },
    #[error("GET {path} gave unexpected JSON")]
    ApiJson { path: String, source: serde_json::Error },

    #[error("failed to start {}", binary.display())]
    Launch { binary: PathBuf, source: io::Error },
    #[error("{} did not open its DevTools port within 30 s; it said:\n{said}", binary.display())]
    NoDevTools { binary: PathBuf, said: String },
    #[error("unexpected DevTools address {url}")]
    DevToolsAddress { url: String },
    #[error("failed to connect to {url}")]
    DevToolsConnect { url: String, source: io::Error },
    #[error("DevTools handshake with {url} failed")]
    Handshake { url: String, source: Box<tungstenite::Error> },
    #[error("failed to send {method}")]
    CdpSend { method: String, source: Box<tungstenite::Error> },
    #[error("no answer to {method}")]
    CdpReceive { method: String, source: Box<tungstenite::Error> },
    #[error("the answer to {method} is not JSON")]
    CdpJson { method: String, source: serde_json::Error },
    #[error("{method} failed: {error}")]
    Cdp { method: String, error: String },
    #[error("{method} gave no {field}")]
    CdpMissing { method: String, field: &'static str },
    #[error("the screenshot is not base64")]
    Screenshot { source: base64::DecodeError },
    #[error("the page threw on {expression:?}: {details}")]
    PageThrew { expression: String, details: String },
    #[error("timed out after {timeout:?} waiting for {what} (status line: {status})")]
    Timeout { what: String, timeout: Duration, status: String },
    #[error("the page's state is not what the check expects: {state}")]
    PageState { state: String, source: serde_json::Error },
    /// The page does not show what the API answered.
    #[error("{0}")]
    Mismatch(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `e` and its causes, `: `-separated (what `anyhow`'s `{:#}` prints).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
