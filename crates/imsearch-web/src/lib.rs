//! The search page and its JSON API, over any search [`Backend`].
//!
//! Where it sits: the last step of the pipeline, in front of people. `cargo xtask serve` puts the
//! trained fusion model and the compliance policies behind [`Backend`]; tests put a table behind
//! it. The routes:
//!
//! - `GET /`: one page with a search box, a "how many" menu and a threshold menu; results as a
//!   grid of lazily loaded thumbnails, each with its file name, score, a link to the original and
//!   a "similar" button; a disclaimer tile in place of every blocked image; previous/next page
//!   controls; "no photo matches well enough" when nothing passes the threshold. A query that
//!   names a child gets the disclaimer and no images. The page's address holds its state
//!   (`/?q=dogs&k=12&page=2&min_score=0.5`, `/?like=7&k=10`), so a shared link shows the same.
//! - `GET /api/search?q=...&k=...&page=...&min_score=...`: [`SearchResponse`] as JSON. `q` is
//!   required, trimmed, at most [`Limits::max_query_chars`] characters; `k` is optional, 1 to
//!   [`Limits::max_k`]; `page` is optional, 1 to [`Limits::max_page`] (results `(page - 1) * k + 1`
//!   to `page * k`); `min_score` is optional, a number from 0 to 1: only results scoring at least
//!   that are listed (possibly none), and pages count those. Anything else (a missing or empty
//!   `q`, a parameter out of its range or not a number, an unknown or repeated parameter) is a
//!   400 with an [`ApiError`] message.
//! - `GET /api/similar?id=...&k=...&page=...`: the images most like image `id` ("more like this"),
//!   the same [`SearchResponse`] with `like` set; `id` is required; `k` and `page` as above. An
//!   example the policy blocks gets the disclaimer and no results; an id past
//!   [`Backend::indexed`] is a 404.
//! - `GET /images/{id}`: the bytes of the image with that index id. Nothing from the request
//!   becomes a filesystem path: the id is a number the backend looks up in its own table. An
//!   unknown id (or one that is not a number) is a 404; a blocked image is a 451 with the
//!   disclaimer, so it is never shown even to a client that guesses its id.
//! - `GET /thumbs/{id}`: a JPEG of that image at most [`THUMB_SIDE`] pixels on its longest side,
//!   upright (EXIF orientation applied). The same lookup as `/images/{id}` on every request,
//!   cached or not (404, 451, 500 alike), and made only from the bytes the backend returned as
//!   found; cached in [`Config::thumbnail_dir`] under a hash of those bytes. Bytes that are not
//!   a readable image are a 500 with a message.
//!
//! Architecture invariant: no dependency on candle or any other imsearch crate; a backend is
//! anything that implements [`Backend`]. The response types make leaking a blocked image hard:
//! a blocked [`Hit`] has no id, image URL, thumbnail or file name by construction
//! ([`Hit::from_ranked`]).
//!
//! With the `check` feature, [`check`] load-tests a running server over HTTP and drives its page
//! in headless Chromium.

use std::{collections::HashMap, future::Future, io, path::PathBuf, sync::Arc, time::Instant};

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
mod thumbs;

pub use thumbs::THUMB_SIDE;

/// The text a blocked image or query shows (the same as imsearch-compliance's `DISCLAIMER`; this
/// crate does not depend on it, and xtask's tests check the two agree).
pub const DISCLAIMER: &str = "This image is unavailable in your country in compliance with local laws";

/// What the page says when no result passes the threshold (its notice starts with this).
pub const NO_MATCH: &str = "No photo matches well enough";

/// The page, with its script and styles inline.
const PAGE: &str = include_str!("page.html");

/// How many ranked images a search with a threshold looks at per result it may list: a match's
/// score mostly falls with its rank, not strictly (as imsearch-engine's `rank_matching`).
pub const CANDIDATES_PER_RESULT: usize = 4;

/// What a search backend answers.
pub trait Backend: Send + Sync + 'static {
    /// Ranks the collection for `query` (trimmed, non-empty, within the limits) and returns the
    /// best `k`, best first, or says the query itself is blocked.
    fn search(&self, query: &str, k: usize) -> Result<Answer, String>;
    /// The image with index id `id`.
    fn image(&self, id: u32) -> ImageLookup;
    /// How many images the backend searches; ids run from 0 to `indexed() - 1`.
    fn indexed(&self) -> usize;
    /// Why `query` itself is refused (a text policy's reason), decided on the request's task
    /// before it waits for a search slot, so a refused query never queues behind searches.
    /// `None` (the default) leaves every decision to [`Backend::search`].
    fn refuse(&self, _query: &str) -> Option<String> {
        None
    }
    /// The `k` images most like image `id` (below [`Backend::indexed`]), best first, itself
    /// left out; [`Answer::Blocked`] when the image policy blocks the example. The default says
    /// the backend cannot.
    fn similar(&self, _id: u32, _k: usize) -> Result<Answer, String> {
        Err("more like this is not supported by this backend".to_owned())
    }
    /// The file name of image `id`, shown under its thumbnail. Asked only for results that are
    /// shown, never for blocked ones; `None` (the default) shows none.
    fn name(&self, _id: u32) -> Option<String> {
        None
    }
}

/// A backend's answer to a query (or to a "more like this").
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The query names a person the law protects (or the example image is blocked): no results.
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
    /// Largest `page`.
    pub max_page: usize,
    /// Searches (and "more like this") run at once (each is CPU work); the rest wait their turn.
    pub concurrent_searches: usize,
    /// Thumbnails made at once (decoding and scaling a photo); cached ones are not counted.
    pub concurrent_thumbnails: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Limits {
            max_query_chars: 200,
            max_k: 50,
            default_k: 10,
            max_page: 20,
            concurrent_searches: cores,
            concurrent_thumbnails: cores,
        }
    }
}

/// What [`router`] serves with besides its backend.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub limits: Limits,
    /// Where thumbnails are cached (created when missing); `None`: made on every request.
    pub thumbnail_dir: Option<PathBuf>,
}

impl From<Limits> for Config {
    fn from(limits: Limits) -> Config {
        Config { limits, thumbnail_dir: None }
    }
}

/// `GET /api/search`'s and `GET /api/similar`'s body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResponse {
    /// The query as searched (trimmed); empty for a "more like this".
    pub query: String,
    /// The id of the example of a "more like this".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub like: Option<u32>,
    /// The example's file name (`None` when it is blocked or the backend names no file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub like_name: Option<String>,
    /// The query (or the example image) itself is blocked: `results` is empty and `message` is
    /// the disclaimer.
    pub blocked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub results: Vec<Hit>,
    /// Results asked for per page.
    pub k: usize,
    /// This page (from 1): `results` are results `(page - 1) * k + 1` onwards.
    pub page: usize,
    /// There are results after this page.
    pub more: bool,
    /// Only results scoring at least this are listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f32>,
    /// Images searched.
    pub indexed: usize,
    /// Time spent in the backend, in milliseconds.
    pub took_ms: f64,
}

/// One result. A blocked one keeps its rank and score and has nothing that leads to the image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// Its place in the list (counting only results that pass the threshold), from 1.
    pub rank: usize,
    /// A search's score (the backend's: the engine's is the probability of a match, 0 to 1),
    /// or a "more like this"'s likeness.
    pub score: f32,
    pub blocked: bool,
    /// The image's id (for `/api/similar?id=`); `None` when blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    /// Where the image is (`/images/{id}`); `None` when blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Where its thumbnail is (`/thumbs/{id}`); `None` when blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumb: Option<String>,
    /// Its file name, when the backend gives one; `None` when blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The disclaimer, when blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disclaimer: Option<String>,
}

impl Hit {
    /// The public form of a ranked image named `name`: a blocked one keeps its rank and score
    /// and loses its id, its URLs and its name (whatever `name` says).
    pub fn from_ranked(rank: usize, r: &Ranked, name: Option<String>) -> Hit {
        let shown = !r.blocked;
        Hit {
            rank,
            score: r.score,
            blocked: r.blocked,
            id: shown.then_some(r.id),
            image: shown.then(|| format!("/images/{}", r.id)),
            thumb: shown.then(|| format!("/thumbs/{}", r.id)),
            name: name.filter(|_| shown),
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
    thumbnails: Semaphore,
    thumbnail_dir: Option<PathBuf>,
}

/// The page and the API over `backend` (`config`: a [`Config`], or just [`Limits`]).
pub fn router(backend: Arc<dyn Backend>, config: impl Into<Config>) -> Router {
    let Config { limits, thumbnail_dir } = config.into();
    let state = Arc::new(AppState {
        backend,
        limits,
        searches: Semaphore::new(limits.concurrent_searches.max(1)),
        thumbnails: Semaphore::new(limits.concurrent_thumbnails.max(1)),
        thumbnail_dir,
    });
    Router::new()
        .route("/", get(page))
        .route("/api/search", get(search))
        .route("/api/similar", get(similar))
        .route("/images/{id}", get(image))
        .route("/thumbs/{id}", get(thumbnail))
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

/// Which results of a ranking a request wants: `k` per page, page `page` (from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    k: usize,
    page: usize,
}

impl Window {
    /// Results before this page.
    fn offset(self) -> usize {
        (self.page - 1) * self.k
    }

    /// Results to rank to fill this page and know whether another follows.
    fn depth(self) -> usize {
        self.page * self.k + 1
    }
}

/// A validated `/api/search` request.
#[derive(Debug, PartialEq)]
struct SearchRequest {
    query: String,
    window: Window,
    min_score: Option<f32>,
}

/// A validated `/api/similar` request.
#[derive(Debug, PartialEq)]
struct SimilarRequest {
    id: u32,
    window: Window,
}

/// `params` by name, each one of `known` and given once; `usage` ends the unknown-parameter
/// message.
fn by_name<'a>(
    params: &'a [(String, String)],
    known: &[&str],
    usage: &str,
) -> Result<HashMap<&'a str, &'a str>, String> {
    let mut out = HashMap::new();
    for (name, value) in params {
        if !known.contains(&name.as_str()) {
            return Err(format!("unknown parameter `{name}`; {usage}"));
        }
        if out.insert(name.as_str(), value.as_str()).is_some() {
            return Err(format!("parameter `{name}` is given more than once"));
        }
    }
    Ok(out)
}

/// `k` and `page`, each optional.
fn parse_window(params: &HashMap<&str, &str>, limits: &Limits) -> Result<Window, String> {
    let number = |name: &str, default: usize, max: usize| match params.get(name) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(format!("`{name}` must be a whole number from 1 to {max}, not {v:?}")),
        },
    };
    Ok(Window { k: number("k", limits.default_k, limits.max_k)?, page: number("page", 1, limits.max_page)? })
}

/// Checks the parameters of `/api/search`.
fn parse_search(params: &[(String, String)], limits: &Limits) -> Result<SearchRequest, String> {
    let params = by_name(
        params,
        &["q", "k", "page", "min_score"],
        "the parameters are q (the query), k (results per page), page and min_score",
    )?;
    let query = params.get("q").ok_or("missing parameter `q`: /api/search?q=two+dogs+in+the+snow")?.trim();
    if query.is_empty() {
        return Err("the query `q` is empty: type what to look for".to_owned());
    }
    let chars = query.chars().count();
    if chars > limits.max_query_chars {
        return Err(format!("the query is {chars} characters long; the limit is {}", limits.max_query_chars));
    }
    let window = parse_window(&params, limits)?;
    let min_score = match params.get("min_score") {
        None => None,
        Some(v) => match v.trim().parse::<f32>() {
            Ok(s) if (0.0..=1.0).contains(&s) => Some(s),
            _ => return Err(format!("`min_score` must be a number from 0 to 1, not {v:?}")),
        },
    };
    Ok(SearchRequest { query: query.to_owned(), window, min_score })
}

/// Checks the parameters of `/api/similar`.
fn parse_similar(params: &[(String, String)], limits: &Limits) -> Result<SimilarRequest, String> {
    let params =
        by_name(params, &["id", "k", "page"], "the parameters are id (an image's id), k (results per page) and page")?;
    let id = params.get("id").ok_or("missing parameter `id`: /api/similar?id=12 (the id of a result)")?;
    let Ok(id) = id.trim().parse::<u32>() else {
        return Err(format!("`id` must be an image's id (a whole number), not {id:?}"));
    };
    Ok(SimilarRequest { id, window: parse_window(&params, limits)? })
}

/// What a search or a "more like this" lists.
#[derive(Debug, PartialEq)]
enum Listing {
    Blocked { reason: String },
    Hits { hits: Vec<Hit>, more: bool },
}

/// The results of `answer` in `window`, counting only those scoring at least `min_score`, named
/// by the backend (shown ones only).
fn listing(backend: &dyn Backend, answer: Answer, window: Window, min_score: Option<f32>) -> Listing {
    match answer {
        Answer::Blocked { reason } => Listing::Blocked { reason },
        Answer::Ranked(ranked) => {
            let passing: Vec<&Ranked> = ranked.iter().filter(|r| min_score.is_none_or(|m| r.score >= m)).collect();
            let hits = passing
                .iter()
                .skip(window.offset())
                .take(window.k)
                .enumerate()
                .map(|(i, r)| {
                    Hit::from_ranked(window.offset() + i + 1, r, (!r.blocked).then(|| backend.name(r.id)).flatten())
                })
                .collect();
            Listing::Hits { hits, more: passing.len() > window.offset() + window.k }
        }
    }
}

/// A request that failed: its status and message (an [`ApiError`]).
type Failure = (StatusCode, String);

/// Runs `work` on the blocking pool once a search slot is free; a failure or a panic is a 500
/// (logged with `what`).
async fn in_search_slot(
    state: &AppState,
    what: &str,
    work: impl FnOnce(&dyn Backend) -> Result<Listing, String> + Send + 'static,
) -> Result<Listing, Failure> {
    let Ok(_permit) = state.searches.acquire().await else {
        return Err((StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down".to_owned()));
    };
    let backend = Arc::clone(&state.backend);
    match tokio::task::spawn_blocking(move || work(backend.as_ref())).await {
        Ok(Ok(listing)) => Ok(listing),
        Ok(Err(message)) => {
            tracing::error!("{what} failed: {message}");
            Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{what} failed: {message}")))
        }
        Err(e) => {
            tracing::error!("{what} panicked: {e}");
            Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{what} failed unexpectedly")))
        }
    }
}

/// The query string's pairs, or why it is malformed (a 400).
fn query_pairs(
    params: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Vec<(String, String)>, String> {
    params.map(|Query(p)| p).map_err(|e| format!("malformed query string: {}", e.body_text()))
}

/// The body of a search or "more like this" that listed `listing`.
fn respond(
    state: &AppState,
    query: String,
    like: Option<u32>,
    window: Window,
    min_score: Option<f32>,
    listing: Listing,
    started: Instant,
) -> Response {
    let (blocked, message, results, more) = match listing {
        Listing::Blocked { reason } => {
            match like {
                Some(id) => tracing::info!(id, "example blocked: {reason}"),
                None => tracing::info!(query = %query, "query blocked: {reason}"),
            }
            (true, Some(DISCLAIMER.to_owned()), Vec::new(), false)
        }
        Listing::Hits { hits, more } => (false, None, hits, more),
    };
    // The backend names shown images only; a blocked example's name is never asked for.
    let like_name = like.filter(|_| !blocked).and_then(|id| state.backend.name(id));
    Json(SearchResponse {
        query,
        like,
        like_name,
        blocked,
        message,
        results,
        k: window.k,
        page: window.page,
        more,
        min_score,
        indexed: state.backend.indexed(),
        took_ms: started.elapsed().as_secs_f64() * 1e3,
    })
    .into_response()
}

async fn search(
    State(state): State<Arc<AppState>>,
    params: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = match query_pairs(params) {
        Ok(p) => p,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let SearchRequest { query, window, min_score } = match parse_search(&params, &state.limits) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let started = Instant::now();
    let listing = match state.backend.refuse(&query) {
        Some(reason) => Listing::Blocked { reason },
        None => {
            // With a threshold, more candidates than the page shows, as the engine's own
            // `rank_matching` looks at.
            let depth = match min_score {
                Some(m) if m > 0.0 => window.depth() * CANDIDATES_PER_RESULT,
                _ => window.depth(),
            };
            let q = query.clone();
            let work = move |backend: &dyn Backend| Ok(listing(backend, backend.search(&q, depth)?, window, min_score));
            match in_search_slot(&state, &format!("search for {query:?}"), work).await {
                Ok(listing) => listing,
                Err((status, message)) => return error(status, message),
            }
        }
    };
    respond(&state, query, None, window, min_score, listing, started)
}

async fn similar(
    State(state): State<Arc<AppState>>,
    params: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = match query_pairs(params) {
        Ok(p) => p,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let SimilarRequest { id, window } = match parse_similar(&params, &state.limits) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    if id as usize >= state.backend.indexed() {
        return error(StatusCode::NOT_FOUND, format!("no image with id {id}"));
    }
    let started = Instant::now();
    let work = move |backend: &dyn Backend| Ok(listing(backend, backend.similar(id, window.depth())?, window, None));
    match in_search_slot(&state, &format!("more like image {id}"), work).await {
        Ok(listing) => respond(&state, String::new(), Some(id), window, None, listing, started),
        Err((status, message)) => error(status, message),
    }
}

/// The answer to a lookup of image `id` that found no bytes to show.
fn not_shown(id: u32, lookup: ImageLookup) -> Response {
    match lookup {
        ImageLookup::Blocked => error(StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS, DISCLAIMER),
        ImageLookup::Unknown => error(StatusCode::NOT_FOUND, format!("no image with id {id}")),
        ImageLookup::Unreadable(why) => {
            tracing::error!(id, "image unreadable: {why}");
            error(StatusCode::INTERNAL_SERVER_ERROR, format!("image {id} could not be read"))
        }
        ImageLookup::Found { .. } => {
            tracing::error!(id, "an image found was not served");
            error(StatusCode::INTERNAL_SERVER_ERROR, format!("image {id} could not be served"))
        }
    }
}

/// Image bytes with their type, cached by the browser for an hour.
fn image_bytes(bytes: Vec<u8>, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600")),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        bytes,
    )
        .into_response()
}

async fn image(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    // Not a number: not an id (and never a path).
    let Ok(id) = id.parse::<u32>() else {
        return error(StatusCode::NOT_FOUND, format!("no image with id {id:?}"));
    };
    let backend = Arc::clone(&state.backend);
    match tokio::task::spawn_blocking(move || backend.image(id)).await {
        Ok(ImageLookup::Found { bytes, content_type }) => image_bytes(bytes, content_type),
        Ok(lookup) => not_shown(id, lookup),
        Err(e) => {
            tracing::error!(id, "image lookup panicked: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, "image lookup failed unexpectedly")
        }
    }
}

/// The lookup behind a thumbnail: the image's bytes as the backend found them (to show), the
/// name of their thumbnail in the cache and the cached thumbnail if there is one.
type ThumbLookup = Result<(Vec<u8>, String, Option<Vec<u8>>), ImageLookup>;

async fn thumbnail(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u32>() else {
        return error(StatusCode::NOT_FOUND, format!("no image with id {id:?}"));
    };
    // The backend is asked on every request, cached thumbnail or not, and the cache is keyed by
    // the bytes it returned: a blocked image never gets one served.
    let backend = Arc::clone(&state.backend);
    let dir = state.thumbnail_dir.clone();
    let lookup = tokio::task::spawn_blocking(move || -> ThumbLookup {
        match backend.image(id) {
            ImageLookup::Found { bytes, .. } => {
                let name = thumbs::cache_name(&bytes);
                let cached = dir.as_deref().and_then(|d| thumbs::cached(d, &name));
                Ok((bytes, name, cached))
            }
            other => Err(other),
        }
    })
    .await;
    let (bytes, name) = match lookup {
        Ok(Ok((_, _, Some(jpeg)))) => return image_bytes(jpeg, "image/jpeg"),
        Ok(Ok((bytes, name, None))) => (bytes, name),
        Ok(Err(lookup)) => return not_shown(id, lookup),
        Err(e) => {
            tracing::error!(id, "image lookup panicked: {e}");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "image lookup failed unexpectedly");
        }
    };
    let Ok(_permit) = state.thumbnails.acquire().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down");
    };
    let dir = state.thumbnail_dir.clone();
    let made = tokio::task::spawn_blocking(move || {
        let jpeg = thumbs::make(&bytes)?;
        if let Some(dir) = dir {
            if let Err(e) = thumbs::store(&dir, &name, &jpeg) {
                tracing::warn!(id, "failed to cache the thumbnail in {}: {e}", dir.display());
            }
        }
        Ok::<_, image::ImageError>(jpeg)
    })
    .await;
    match made {
        Ok(Ok(jpeg)) => image_bytes(jpeg, "image/jpeg"),
        Ok(Err(e)) => {
            tracing::error!(id, "no thumbnail: the image does not decode: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, format!("image {id} is not a readable image: {e}"))
        }
        Err(e) => {
            tracing::error!(id, "making a thumbnail panicked: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, format!("the thumbnail of image {id} failed unexpectedly"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(params: &[(&str, &str)]) -> Vec<(String, String)> {
        params.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    const LIMITS: Limits = Limits {
        max_query_chars: 10,
        max_k: 20,
        default_k: 5,
        max_page: 4,
        concurrent_searches: 1,
        concurrent_thumbnails: 1,
    };

    /// A search request's query, k, page and threshold, or a fragment of its 400 message.
    #[track_caller]
    fn check(params: &[(&str, &str)], expected: Result<(&str, usize, usize, Option<f32>), &str>) {
        let got = parse_search(&pairs(params), &LIMITS);
        match expected {
            Ok((query, k, page, min_score)) => {
                assert_eq!(got, Ok(SearchRequest { query: query.to_owned(), window: Window { k, page }, min_score }))
            }
            Err(fragment) => {
                let message = got.expect_err("expected a 400");
                assert!(message.contains(fragment), "{message:?} does not mention {fragment:?}");
            }
        }
    }

    #[test]
    fn parses_and_caps_search_parameters() {
        check(&[("q", " dogs ")], Ok(("dogs", 5, 1, None)));
        check(&[("q", "dogs"), ("k", "20")], Ok(("dogs", 20, 1, None)));
        check(&[("k", "3"), ("q", "dogs")], Ok(("dogs", 3, 1, None)));
        check(&[("q", "ééééééééé")], Ok(("ééééééééé", 5, 1, None)));
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
    fn parses_and_caps_the_page_and_the_threshold() {
        check(&[("q", "dogs"), ("k", "12"), ("page", "2")], Ok(("dogs", 12, 2, None)));
        check(&[("q", "dogs"), ("page", "4")], Ok(("dogs", 5, 4, None)));
        check(&[("q", "dogs"), ("page", "0")], Err("`page` must be a whole number from 1 to 4, not \"0\""));
        check(&[("q", "dogs"), ("page", "5")], Err("from 1 to 4"));
        check(&[("q", "dogs"), ("page", "1.5")], Err("from 1 to 4"));
        check(&[("q", "dogs"), ("page", "1"), ("page", "2")], Err("more than once"));
        check(&[("q", "dogs"), ("min_score", "0.5")], Ok(("dogs", 5, 1, Some(0.5))));
        check(&[("q", "dogs"), ("min_score", "0")], Ok(("dogs", 5, 1, Some(0.0))));
        check(&[("q", "dogs"), ("min_score", " 1 ")], Ok(("dogs", 5, 1, Some(1.0))));
        for bad in ["1.01", "-0.1", "NaN", "inf", "", "high", "0,5"] {
            check(&[("q", "dogs"), ("min_score", bad)], Err("`min_score` must be a number from 0 to 1"));
        }
        check(&[("q", "dogs"), ("offset", "10")], Err("the parameters are q (the query), k (results per page), page"));
    }

    #[test]
    fn parses_and_caps_similar_parameters() {
        let similar = |params: &[(&str, &str)]| parse_similar(&pairs(params), &LIMITS);
        assert_eq!(similar(&[("id", "7")]), Ok(SimilarRequest { id: 7, window: Window { k: 5, page: 1 } }));
        assert_eq!(
            similar(&[("k", "3"), ("id", " 0 "), ("page", "2")]),
            Ok(SimilarRequest { id: 0, window: Window { k: 3, page: 2 } })
        );
        for (params, fragment) in [
            (&[][..], "missing parameter `id`"),
            (&[("id", "-1")][..], "`id` must be an image's id (a whole number), not \"-1\""),
            (&[("id", "../1")][..], "must be an image's id"),
            (&[("id", "99999999999")][..], "must be an image's id"),
            (&[("id", "1"), ("k", "0")][..], "from 1 to 20"),
            (&[("id", "1"), ("page", "9")][..], "from 1 to 4"),
            (&[("id", "1"), ("q", "dogs")][..], "unknown parameter `q`; the parameters are id"),
            (&[("id", "1"), ("id", "2")][..], "more than once"),
        ] {
            let message = similar(params).expect_err("expected a 400");
            assert!(message.contains(fragment), "{message:?} does not mention {fragment:?}");
        }
    }

    #[test]
    fn a_blocked_hit_has_no_id_image_thumbnail_or_name() {
        let shown = Hit::from_ranked(1, &Ranked { id: 7, score: 0.9, blocked: false }, Some("dog.jpg".into()));
        assert_eq!(shown.id, Some(7));
        assert_eq!(shown.image.as_deref(), Some("/images/7"));
        assert_eq!(shown.thumb.as_deref(), Some("/thumbs/7"));
        assert_eq!(shown.name.as_deref(), Some("dog.jpg"));
        assert_eq!(shown.disclaimer, None);
        let hidden = Hit::from_ranked(2, &Ranked { id: 8, score: 0.8, blocked: true }, Some("girl.jpg".into()));
        assert_eq!((hidden.id, hidden.image, hidden.thumb, hidden.name), (None, None, None, None));
        assert_eq!(hidden.disclaimer.as_deref(), Some(DISCLAIMER));
        let json =
            serde_json::to_string(&Hit::from_ranked(2, &Ranked { id: 8, score: 0.8, blocked: true }, None)).unwrap();
        for leak in ["\"id\"", "/images/", "/thumbs/", "\"name\""] {
            assert!(!json.contains(leak), "{json} has {leak}");
        }
    }

    /// Names every image `img<id>.jpg`; image 3 is blocked, and asking its name fails the test.
    struct Names;

    impl Backend for Names {
        fn search(&self, _: &str, _: usize) -> Result<Answer, String> {
            Err("not searched".into())
        }
        fn image(&self, _: u32) -> ImageLookup {
            ImageLookup::Unknown
        }
        fn indexed(&self) -> usize {
            0
        }
        fn name(&self, id: u32) -> Option<String> {
            assert_ne!(id, 3, "the name of a blocked image was asked for");
            Some(format!("img{id}.jpg"))
        }
    }

    /// The ranks, ids (`None`: blocked) and names of `listing`'s hits, and its `more`.
    fn shown(listing: Listing) -> (Vec<(usize, Option<u32>)>, bool) {
        match listing {
            Listing::Hits { hits, more } => {
                for h in &hits {
                    assert_eq!(h.name, h.id.map(|id| format!("img{id}.jpg")), "{h:?}");
                }
                (hits.iter().map(|h| (h.rank, h.id)).collect(), more)
            }
            Listing::Blocked { reason } => panic!("blocked: {reason}"),
        }
    }

    #[test]
    fn a_listing_pages_filters_and_names_the_shown_results_only() {
        let backend = Names;
        // Scores fall with the rank, not strictly; id 3 is blocked.
        let ranked = Answer::Ranked(
            [(10, 0.9, false), (3, 0.8, true), (11, 0.4, false), (12, 0.6, false), (13, 0.2, false)]
                .map(|(id, score, blocked)| Ranked { id, score, blocked })
                .to_vec(),
        );
        let list = |k, page, min| shown(listing(&backend, ranked.clone(), Window { k, page }, min));
        assert_eq!(list(2, 1, None), (vec![(1, Some(10)), (2, None)], true));
        assert_eq!(list(2, 2, None), (vec![(3, Some(11)), (4, Some(12))], true));
        assert_eq!(list(2, 3, None), (vec![(5, Some(13))], false));
        assert_eq!(list(2, 4, None), (vec![], false));
        assert!(!list(5, 1, None).1, "five results fill a page of five");
        // Only the results at or above the threshold count, in rank order, numbered anew.
        assert_eq!(list(2, 1, Some(0.5)), (vec![(1, Some(10)), (2, None)], true));
        assert_eq!(list(2, 2, Some(0.5)), (vec![(3, Some(12))], false));
        assert_eq!(list(10, 1, Some(0.9)), (vec![(1, Some(10))], false));
        assert_eq!(list(10, 1, Some(0.95)), (vec![], false));
        assert_eq!(list(10, 1, Some(0.0)).0.len(), 5);
        let blocked = listing(&backend, Answer::Blocked { reason: "r".into() }, Window { k: 2, page: 1 }, None);
        assert_eq!(blocked, Listing::Blocked { reason: "r".into() });
    }

    #[test]
    fn a_window_ranks_one_result_past_its_page() {
        assert_eq!((Window { k: 10, page: 1 }.offset(), Window { k: 10, page: 1 }.depth()), (0, 11));
        assert_eq!((Window { k: 12, page: 3 }.offset(), Window { k: 12, page: 3 }.depth()), (24, 37));
    }

    #[test]
    fn the_page_says_when_nothing_matches_well_enough() {
        assert!(PAGE.contains(NO_MATCH), "the page's no-match notice is not {NO_MATCH:?}");
    }
}
