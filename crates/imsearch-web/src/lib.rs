//! The search page and its JSON API, over any search [`Backend`].
//!
//! Where it sits: the last step of the pipeline, in front of people. `cargo xtask serve` puts the
//! trained fusion model and the compliance policies behind [`Backend`]; tests put a table behind
//! it. The routes:
//!
//! - `GET /`: one page with a search box; results as a grid of thumbnails with their scores;
//!   a disclaimer tile in place of every blocked image; a query that names a child gets the
//!   disclaimer and no images.
//! - `GET /api/search?q=...&k=...`: [`SearchResponse`] as JSON. `q` is required, trimmed, at most
//!   [`Limits::max_query_chars`] characters; `k` is optional, 1 to [`Limits::max_k`]. Anything
//!   else (a missing or empty `q`, a `k` that is not such a number, an unknown or repeated
//!   parameter) is a 400 with an [`ApiError`] message.
//! - `GET /images/{id}`: the bytes of the image with that index id. Nothing from the request
//!   becomes a filesystem path: the id is a number the backend looks up in its own table. An
//!   unknown id (or one that is not a number) is a 404; a blocked image is a 451 with the
//!   disclaimer, so it is never shown even to a client that guesses its id.
//!
//! Architecture invariant: no dependency on candle or any other imsearch crate; a backend is
//! anything that implements [`Backend`]. The response types make leaking a blocked image hard:
//! a blocked [`Hit`] has no image URL by construction ([`Hit::from_ranked`]).
//!
//! With the `check` feature, [`check`] load-tests a running server over HTTP and drives its page
//! in headless Chromium.

use std::{collections::HashSet, future::Future, io, sync::Arc, time::Instant};

use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderValue, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::Semaphore};

#[cfg(feature = "check")]
pub mod check;

/// The text a blocked image or query shows (the same as imsearch-compliance's `DISCLAIMER`; this
/// crate does not depend on it, and xtask's tests check the two agree).
pub const DISCLAIMER: &str = "This image is unavailable in your country in compliance with local laws";

/// The page, with its script and styles inline.
const PAGE: &str = include_str!("page.html");

/// What a search backend answers.
pub trait Backend: Send + Sync + 'static {
    /// Ranks the collection for `query` (trimmed, non-empty, within the limits) and returns the
    /// best `k`, best first, or says the query itself is blocked.
    fn search(&self, query: &str, k: usize) -> Result<Answer, String>;
    /// The image with index id `id`.
    fn image(&self, id: u32) -> ImageLookup;
    /// How many images the backend searches.
    fn indexed(&self) -> usize;
    /// Why `query` itself is refused (a text policy's reason), decided on the request's task
    /// before it waits for a search slot, so a refused query never queues behind searches.
    /// `None` (the default) leaves every decision to [`Backend::search`].
    fn refuse(&self, _query: &str) -> Option<String> {
        None
    }
}

/// A backend's answer to a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The query names a person the law protects: no results.
    Blocked { reason: String },
    /// The best images, best first.
    Ranked(Vec<Ranked>),
}

/// One ranked image, as the backend sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    pub id: u32,
    pub score: f32,
    /// The image policy blocks this image: it is shown as a disclaimer tile.
    pub blocked: bool,
}

/// An image lookup by id.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageLookup {
    Found {
        bytes: Vec<u8>,
        content_type: &'static str,
    },
    /// The image exists but the policy blocks it.
    Blocked,
    /// No image has this id.
    Unknown,
    /// The image's file could not be read (deleted since indexing, say).
    Unreadable(String),
}

/// Caps on what a request may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest query, in characters, after trimming.
    pub max_query_chars: usize,
    /// Largest `k`.
    pub max_k: usize,
    /// `k` when the request does not give one.
    pub default_k: usize,
    /// Searches run at once (each is CPU work); the rest wait their turn.
    pub concurrent_searches: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Limits { max_query_chars: 200, max_k: 50, default_k: 10, concurrent_searches: cores }
    }
}

/// `GET /api/search`'s body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResponse {
    /// The query as searched (trimmed).
    pub query: String,
    /// The query itself is blocked: `results` is empty and `message` is the disclaimer.
    pub blocked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub results: Vec<Hit>,
    /// Images searched.
    pub indexed: usize,
    /// Time spent in the backend, in milliseconds.
    pub took_ms: f64,
}

/// One result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub rank: usize,
    pub score: f32,
    pub blocked: bool,
    /// Where the image is (`/images/{id}`); `None` when blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The disclaimer, when blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disclaimer: Option<String>,
}

impl Hit {
    /// The public form of a ranked image: a blocked one keeps its rank and score and loses its id.
    pub fn from_ranked(rank: usize, r: &Ranked) -> Hit {
        Hit {
            rank,
            score: r.score,
            blocked: r.blocked,
            image: (!r.blocked).then(|| format!("/images/{}", r.id)),
            disclaimer: r.blocked.then(|| DISCLAIMER.to_owned()),
        }
    }
}

/// The body of every 4xx and 5xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

struct AppState {
    backend: Arc<dyn Backend>,
    limits: Limits,
    searches: Semaphore,
}

/// The page and the API over `backend`.
pub fn router(backend: Arc<dyn Backend>, limits: Limits) -> Router {
    let state = Arc::new(AppState { backend, limits, searches: Semaphore::new(limits.concurrent_searches.max(1)) });
    Router::new()
        .route("/", get(page))
        .route("/api/search", get(search))
        .route("/images/{id}", get(image))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page; try / or /api/search?q=...") })
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ApiError { error: message.into() })).into_response()
}

async fn page() -> Response {
    let mut response = Html(PAGE).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A validated search request.
#[derive(Debug, PartialEq)]
struct Request {
    query: String,
    k: usize,
}

/// Checks the parameters of `/api/search`.
fn parse_request(params: &[(String, String)], limits: &Limits) -> Result<Request, String> {
    let mut seen = HashSet::new();
    let (mut query, mut k) = (None, None);
    for (name, value) in params {
        if !seen.insert(name.as_str()) {
            return Err(format!("parameter `{name}` is given more than once"));
        }
        match name.as_str() {
            "q" => query = Some(value),
            "k" => k = Some(value),
            other => return Err(format!("unknown parameter `{other}`; the parameters are q (the query) and k")),
        }
    }
    let query = query.ok_or("missing parameter `q`: /api/search?q=two+dogs+in+the+snow")?.trim();
    if query.is_empty() {
        return Err("the query `q` is empty: type what to look for".to_owned());
    }
    let chars = query.chars().count();
    if chars > limits.max_query_chars {
        return Err(format!("the query is {chars} characters long; the limit is {}", limits.max_query_chars));
    }
    let k = match k {
        None => limits.default_k,
        Some(v) => match v.trim().parse::<usize>() {
            Ok(k) if (1..=limits.max_k).contains(&k) => k,
            _ => return Err(format!("`k` must be a whole number from 1 to {}, not {v:?}", limits.max_k)),
        },
    };
    Ok(Request { query: query.to_owned(), k })
}

async fn search(
    State(state): State<Arc<AppState>>,
    params: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = match params {
        Ok(Query(p)) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed query string: {}", e.body_text())),
    };
    let request = match parse_request(&params, &state.limits) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let started = Instant::now();
    let answer = match state.backend.refuse(&request.query) {
        Some(reason) => Ok(Ok(Answer::Blocked { reason })),
        None => {
            let Ok(_permit) = state.searches.acquire().await else {
                return error(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down");
            };
            let backend = Arc::clone(&state.backend);
            let query = request.query.clone();
            tokio::task::spawn_blocking(move || backend.search(&query, request.k)).await
        }
    };
    let took_ms = started.elapsed().as_secs_f64() * 1e3;
    let answer = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(message)) => {
            tracing::error!(query = %request.query, "search failed: {message}");
            return error(StatusCode::INTERNAL_SERVER_ERROR, format!("search failed: {message}"));
        }
        Err(e) => {
            tracing::error!(query = %request.query, "search panicked: {e}");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "search failed unexpectedly");
        }
    };
    let indexed = state.backend.indexed();
    let response = match answer {
        Answer::Blocked { reason } => {
            tracing::info!(query = %request.query, "query blocked: {reason}");
            SearchResponse {
                query: request.query,
                blocked: true,
                message: Some(DISCLAIMER.to_owned()),
                results: Vec::new(),
                indexed,
                took_ms,
            }
        }
        Answer::Ranked(ranked) => SearchResponse {
            query: request.query,
            blocked: false,
            message: None,
            results: ranked.iter().take(request.k).enumerate().map(|(i, r)| Hit::from_ranked(i + 1, r)).collect(),
            indexed,
            took_ms,
        },
    };
    Json(response).into_response()
}

async fn image(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    // Not a number: not an id (and never a path).
    let Ok(id) = id.parse::<u32>() else {
        return error(StatusCode::NOT_FOUND, format!("no image with id {id:?}"));
    };
    let backend = Arc::clone(&state.backend);
    let lookup = match tokio::task::spawn_blocking(move || backend.image(id)).await {
        Ok(lookup) => lookup,
        Err(e) => {
            tracing::error!(id, "image lookup panicked: {e}");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "image lookup failed unexpectedly");
        }
    };
    match lookup {
        ImageLookup::Found { bytes, content_type } => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600")),
                (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            ],
            bytes,
        )
            .into_response(),
        ImageLookup::Blocked => error(StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS, DISCLAIMER),
        ImageLookup::Unknown => error(StatusCode::NOT_FOUND, format!("no image with id {id}")),
        ImageLookup::Unreadable(why) => {
            tracing::error!(id, "image unreadable: {why}");
            error(StatusCode::INTERNAL_SERVER_ERROR, format!("image {id} could not be read"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(params: &[(&str, &str)], expected: Result<(&str, usize), &str>) {
        let params: Vec<(String, String)> = params.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let limits = Limits { max_query_chars: 10, max_k: 20, default_k: 5, concurrent_searches: 1 };
        let got = parse_request(&params, &limits);
        match expected {
            Ok((query, k)) => assert_eq!(got, Ok(Request { query: query.to_owned(), k })),
            Err(fragment) => {
                let message = got.expect_err("expected a 400");
                assert!(message.contains(fragment), "{message:?} does not mention {fragment:?}");
            }
        }
    }

    #[test]
    fn parses_and_caps_search_parameters() {
        check(&[("q", " dogs ")], Ok(("dogs", 5)));
        check(&[("q", "dogs"), ("k", "20")], Ok(("dogs", 20)));
        check(&[("k", "3"), ("q", "dogs")], Ok(("dogs", 3)));
        check(&[("q", "ééééééééé")], Ok(("ééééééééé", 5)));
        check(&[], Err("missing parameter `q`"));
        check(&[("q", "   ")], Err("empty"));
        check(&[("q", "a very long query")], Err("the limit is 10"));
        check(&[("q", "dogs"), ("k", "0")], Err("from 1 to 20"));
        check(&[("q", "dogs"), ("k", "21")], Err("from 1 to 20"));
        check(&[("q", "dogs"), ("k", "-1")], Err("from 1 to 20"));
        check(&[("q", "dogs"), ("k", "two")], Err("from 1 to 20"));
        check(&[("q", "dogs"), ("q", "cats")], Err("more than once"));
        check(&[("q", "dogs"), ("path", "/etc/passwd")], Err("unknown parameter `path`"));
    }

    #[test]
    fn a_blocked_hit_has_no_image() {
        let shown = Hit::from_ranked(1, &Ranked { id: 7, score: 0.9, blocked: false });
        assert_eq!(shown.image.as_deref(), Some("/images/7"));
        assert_eq!(shown.disclaimer, None);
        let hidden = Hit::from_ranked(2, &Ranked { id: 8, score: 0.8, blocked: true });
        assert_eq!(hidden.image, None);
        assert_eq!(hidden.disclaimer.as_deref(), Some(DISCLAIMER));
        let json = serde_json::to_string(&hidden).unwrap();
        assert!(!json.contains("/images/"), "{json}");
    }
}
