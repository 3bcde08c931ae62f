//! The routes end to end, in process, over a table-backed search backend.

use std::{
    io::Cursor,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use axum::{
    body::Body,
    http::{Request, StatusCode},
    Router,
};
use http_body_util::BodyExt;
use image::{DynamicImage, GenericImageView, ImageFormat, RgbImage};
use imsearch_web::{
    router, Answer, ApiError, Backend, Config, Hit, ImageLookup, Limits, Ranked, SearchResponse, DISCLAIMER, THUMB_SIDE,
};
use tower::ServiceExt;

#[cfg(feature = "check")]
mod check;

/// Five images: 0 a 1000x750 JPEG, 1 blocked, 2 a 200x100 PNG, 3 unreadable, 4 bytes that are
/// not an image. "child" queries are blocked; "fail" makes the backend fail. Similar images: the
/// ranking without the example; a blocked example is blocked.
struct Table {
    searches: AtomicUsize,
    /// The `k` of every search and "more like this" asked of the backend.
    asked: Mutex<Vec<usize>>,
    /// The policy now blocks image 0 too.
    hide_zero: AtomicBool,
    /// Image 0's bytes (tests change them).
    photo: Mutex<Vec<u8>>,
}

const RANKING: [Ranked; 3] = [
    Ranked { id: 2, score: 0.9, blocked: false },
    Ranked { id: 1, score: 0.7, blocked: true },
    Ranked { id: 0, score: 0.2, blocked: false },
];

fn encode(image: RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(image).write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A `width` x `height` JPEG whose pixels depend on `seed`.
fn photo(width: u32, height: u32, seed: u8) -> Vec<u8> {
    encode(
        RgbImage::from_fn(width, height, |x, y| image::Rgb([(x % 251) as u8, (y % 241) as u8, seed])),
        ImageFormat::Jpeg,
    )
}

impl Table {
    fn new() -> Table {
        Table {
            searches: AtomicUsize::new(0),
            asked: Mutex::new(Vec::new()),
            hide_zero: AtomicBool::new(false),
            photo: Mutex::new(photo(1000, 750, 0)),
        }
    }

    fn blocked(&self, id: u32) -> bool {
        id == 1 || (id == 0 && self.hide_zero.load(Ordering::SeqCst))
    }

    /// [`RANKING`] with the policy's decisions now.
    fn ranking(&self) -> impl Iterator<Item = Ranked> + '_ {
        RANKING.into_iter().map(|r| Ranked { blocked: self.blocked(r.id), ..r })
    }

    fn asked(&self) -> Vec<usize> {
        std::mem::take(&mut *self.asked.lock().unwrap())
    }
}

impl Backend for Table {
    fn search(&self, query: &str, k: usize) -> Result<Answer, String> {
        self.searches.fetch_add(1, Ordering::SeqCst);
        self.asked.lock().unwrap().push(k);
        if query.contains("child") {
            return Ok(Answer::Blocked { reason: "names a child".into() });
        }
        if query == "fail" {
            return Err("the model is gone".into());
        }
        Ok(Answer::Ranked(self.ranking().take(k).collect()))
    }

    fn similar(&self, id: u32, k: usize) -> Result<Answer, String> {
        self.asked.lock().unwrap().push(k);
        if self.blocked(id) {
            return Ok(Answer::Blocked { reason: "the example shows a child".into() });
        }
        let alike = self.ranking().filter(|r| r.id != id).map(|r| Ranked { score: r.score - 0.1, ..r });
        Ok(Answer::Ranked(alike.take(k).collect()))
    }

    fn image(&self, id: u32) -> ImageLookup {
        match id {
            _ if self.blocked(id) => ImageLookup::Blocked,
            0 => ImageLookup::Found { bytes: self.photo.lock().unwrap().clone(), content_type: "image/jpeg" },
            2 => ImageLookup::Found {
                bytes: encode(RgbImage::from_pixel(200, 100, image::Rgb([9, 99, 199])), ImageFormat::Png),
                content_type: "image/png",
            },
            3 => ImageLookup::Unreadable("deleted".into()),
            4 => ImageLookup::Found { bytes: b"GIF89a but not really".to_vec(), content_type: "image/gif" },
            _ => ImageLookup::Unknown,
        }
    }

    fn indexed(&self) -> usize {
        5
    }

    fn name(&self, id: u32) -> Option<String> {
        // The web layer must never ask for (or show) a blocked image's name.
        Some(if self.blocked(id) { "SECRET-child.jpg".to_owned() } else { format!("photo-{id}.jpg") })
    }
}

fn limits() -> Limits {
    Limits {
        max_query_chars: 50,
        max_k: 20,
        default_k: 10,
        max_page: 5,
        concurrent_searches: 2,
        concurrent_thumbnails: 2,
    }
}

fn app() -> (Router, Arc<Table>) {
    let table = Arc::new(Table::new());
    (router(table.clone(), limits()), table)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, String, Vec<u8>) {
    let response = app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, content_type, body)
}

#[track_caller]
fn api_error(status: StatusCode, expected: StatusCode, body: &[u8], fragment: &str) {
    assert_eq!(status, expected, "{}", String::from_utf8_lossy(body));
    let e: ApiError = serde_json::from_slice(body).expect("an ApiError body");
    assert!(e.error.contains(fragment), "{:?} does not mention {fragment:?}", e.error);
}

/// `uri`'s 200 answer as a [`SearchResponse`].
async fn api(app: &Router, uri: &str) -> SearchResponse {
    let (status, _, body) = get(app, uri).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {}", String::from_utf8_lossy(&body));
    let json = String::from_utf8(body).unwrap();
    assert!(!json.contains("SECRET"), "a blocked image's name leaked: {json}");
    serde_json::from_str(&json).unwrap()
}

/// Each result's rank and id (`None`: blocked).
fn ids(r: &SearchResponse) -> Vec<(usize, Option<u32>)> {
    r.results.iter().map(|h| (h.rank, h.id)).collect()
}

#[tokio::test]
async fn the_page_has_a_search_box_a_threshold_and_pages() {
    let (app, _) = app();
    let (status, content_type, body) = get(&app, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = String::from_utf8(body).unwrap();
    for part in [
        r#"<input id="q""#,
        r#"<select id="min""#,
        r#"id="next""#,
        r#"id="prev""#,
        "/api/search?",
        "/api/similar?id=",
        r#"img.loading = "lazy""#,
        "hit.thumb",
        imsearch_web::NO_MATCH,
    ] {
        assert!(html.contains(part), "the page lacks {part:?}");
    }
    assert!(!html.contains("innerHTML"), "the page builds its DOM with textContent only");
}

#[tokio::test]
async fn search_answers_json_and_hides_blocked_images() {
    let (app, _) = app();
    let r = api(&app, "/api/search?q=two+dogs&k=3").await;
    assert_eq!(r.query, "two dogs");
    assert!(!r.blocked);
    assert_eq!((r.indexed, r.k, r.page, r.more, r.min_score, r.like), (5, 3, 1, false, None, None));
    let images: Vec<Option<&str>> = r.results.iter().map(|h| h.image.as_deref()).collect();
    assert_eq!(images, [Some("/images/2"), None, Some("/images/0")]);
    let thumbs: Vec<Option<&str>> = r.results.iter().map(|h| h.thumb.as_deref()).collect();
    assert_eq!(thumbs, [Some("/thumbs/2"), None, Some("/thumbs/0")]);
    let names: Vec<Option<&str>> = r.results.iter().map(|h| h.name.as_deref()).collect();
    assert_eq!(names, [Some("photo-2.jpg"), None, Some("photo-0.jpg")]);
    assert_eq!(ids(&r), [(1, Some(2)), (2, None), (3, Some(0))]);
    assert_eq!(r.results[1].disclaimer.as_deref(), Some(DISCLAIMER));

    let r = api(&app, "/api/search?q=%20dogs%20&k=1").await;
    assert_eq!((r.query.as_str(), r.results.len(), r.more), ("dogs", 1, true));
}

#[tokio::test]
async fn pages_follow_each_other_and_the_last_says_so() {
    let (app, table) = app();
    let mut seen = Vec::new();
    for (page, expected, more) in [(1, [(1, Some(2))], true), (2, [(2, None)], true), (3, [(3, Some(0))], false)] {
        let r = api(&app, &format!("/api/search?q=dogs&k=1&page={page}")).await;
        assert_eq!((ids(&r), r.page, r.k, r.more), (expected.to_vec(), page, 1, more), "page {page}");
        seen.extend(ids(&r));
    }
    assert_eq!(seen.len(), 3, "each result on one page only");
    // The backend is asked for one result past the page, to know whether another page follows.
    assert_eq!(table.asked(), [2, 3, 4]);
    let r = api(&app, "/api/search?q=dogs&k=2&page=2").await;
    assert_eq!((ids(&r), r.more), (vec![(3, Some(0))], false));
    let r = api(&app, "/api/search?q=dogs&k=2&page=5").await;
    assert_eq!((r.results.len(), r.more, r.page), (0, false, 5));
}

#[tokio::test]
async fn a_threshold_keeps_the_results_scoring_at_least_it_possibly_none() {
    let (app, table) = app();
    let r = api(&app, "/api/search?q=dogs&k=10&min_score=0.5").await;
    assert_eq!((ids(&r), r.min_score, r.more), (vec![(1, Some(2)), (2, None)], Some(0.5), false));
    // With a threshold the backend is asked for more candidates than the page shows.
    assert_eq!(table.asked(), [11 * imsearch_web::CANDIDATES_PER_RESULT]);
    let r = api(&app, "/api/search?q=dogs&k=1&page=2&min_score=0.5").await;
    assert_eq!((ids(&r), r.more), (vec![(2, None)], false));
    let r = api(&app, "/api/search?q=dogs&min_score=0.9").await;
    assert_eq!(ids(&r), [(1, Some(2))]);
    let r = api(&app, "/api/search?q=dogs&min_score=0.95").await;
    assert!(!r.blocked && r.results.is_empty() && !r.more, "{r:?}");
    assert_eq!(r.min_score, Some(0.95));
    let r = api(&app, "/api/search?q=dogs&min_score=1").await;
    assert!(r.results.is_empty(), "{r:?}");
    let r = api(&app, "/api/search?q=dogs&min_score=0").await;
    assert_eq!(r.results.len(), 3);
    // A blocked query stays blocked whatever the threshold.
    let r = api(&app, "/api/search?q=a+child&min_score=0.5").await;
    assert!(r.blocked && r.results.is_empty() && r.message.as_deref() == Some(DISCLAIMER), "{r:?}");
}

#[tokio::test]
async fn more_like_this_lists_the_images_most_like_an_example() {
    let (app, table) = app();
    let r = api(&app, "/api/similar?id=2&k=5").await;
    assert_eq!((r.like, r.query.as_str(), r.blocked, r.k, r.page, r.more), (Some(2), "", false, 5, 1, false));
    assert_eq!(r.like_name.as_deref(), Some("photo-2.jpg"), "the example is named for the page's heading");
    assert_eq!(ids(&r), [(1, None), (2, Some(0))]);
    assert_eq!(r.results[0].disclaimer.as_deref(), Some(DISCLAIMER));
    assert_eq!(r.results[1].thumb.as_deref(), Some("/thumbs/0"));
    assert_eq!(r.results[1].name.as_deref(), Some("photo-0.jpg"));
    assert!((r.results[1].score - 0.1).abs() < 1e-6);
    assert_eq!(table.asked(), [6]);
    let r = api(&app, "/api/similar?id=2&k=1&page=2").await;
    assert_eq!((ids(&r), r.more), (vec![(2, Some(0))], false));
    let r = api(&app, "/api/similar?id=0&k=1").await;
    assert_eq!((ids(&r), r.more), (vec![(1, Some(2))], true));
}

#[tokio::test]
async fn more_like_a_blocked_example_is_the_disclaimer_and_no_images() {
    let (app, table) = app();
    let r = api(&app, "/api/similar?id=1").await;
    assert!(r.blocked && r.results.is_empty() && !r.more, "{r:?}");
    assert_eq!((r.message.as_deref(), r.like, r.like_name.as_deref()), (Some(DISCLAIMER), Some(1), None));
    table.hide_zero.store(true, Ordering::SeqCst);
    let r = api(&app, "/api/similar?id=0").await;
    assert!(r.blocked && r.results.is_empty(), "{r:?}");
    // And image 0 is now a disclaimer tile in other answers.
    let r = api(&app, "/api/similar?id=2").await;
    assert_eq!(ids(&r), [(1, None), (2, None)]);
}

#[tokio::test]
async fn bad_similar_requests_are_400_or_404_and_never_reach_the_backend() {
    let (app, table) = app();
    for (uri, fragment) in [
        ("/api/similar", "missing parameter `id`"),
        ("/api/similar?id=", "must be an image's id"),
        ("/api/similar?id=two", "must be an image's id"),
        ("/api/similar?id=-1", "must be an image's id"),
        ("/api/similar?id=1&k=0", "from 1 to 20"),
        ("/api/similar?id=1&page=6", "from 1 to 5"),
        ("/api/similar?id=1&min_score=0.5", "unknown parameter `min_score`"),
        ("/api/similar?id=1&id=2", "more than once"),
    ] {
        let (status, _, body) = get(&app, uri).await;
        api_error(status, StatusCode::BAD_REQUEST, &body, fragment);
    }
    for uri in ["/api/similar?id=5", "/api/similar?id=4294967295"] {
        let (status, _, body) = get(&app, uri).await;
        api_error(status, StatusCode::NOT_FOUND, &body, "no image with id");
    }
    assert_eq!(table.asked(), Vec::<usize>::new());
}

/// A backend with only the required methods.
struct Plain;

impl Backend for Plain {
    fn search(&self, _: &str, k: usize) -> Result<Answer, String> {
        Ok(Answer::Ranked(RANKING.into_iter().take(k).collect()))
    }
    fn image(&self, _: u32) -> ImageLookup {
        ImageLookup::Unknown
    }
    fn indexed(&self) -> usize {
        3
    }
}

#[tokio::test]
async fn a_backend_without_more_like_this_or_names_says_so() {
    let app = router(Arc::new(Plain), limits());
    let (status, _, body) = get(&app, "/api/similar?id=2").await;
    api_error(status, StatusCode::INTERNAL_SERVER_ERROR, &body, "more like this is not supported by this backend");
    let r = api(&app, "/api/search?q=dogs").await;
    assert_eq!(r.results.iter().map(|h| h.name.as_deref()).collect::<Vec<_>>(), [None, None, None]);
    assert_eq!(r.results[0].thumb.as_deref(), Some("/thumbs/2"));
}

#[tokio::test]
async fn a_query_naming_a_child_gets_the_disclaimer_and_no_images() {
    let (app, _) = app();
    let r = api(&app, "/api/search?q=a+child+on+a+swing").await;
    assert!(r.blocked);
    assert_eq!(r.message.as_deref(), Some(DISCLAIMER));
    assert!(r.results.is_empty());
}

/// A backend whose text gate refuses queries before they queue; its `search` must never see them.
struct Gated(Table);

impl Backend for Gated {
    fn search(&self, query: &str, k: usize) -> Result<Answer, String> {
        assert!(!query.contains("child"), "a refused query reached search");
        self.0.search(query, k)
    }
    fn image(&self, id: u32) -> ImageLookup {
        self.0.image(id)
    }
    fn indexed(&self) -> usize {
        self.0.indexed()
    }
    fn refuse(&self, query: &str) -> Option<String> {
        query.contains("child").then(|| "names a child".to_owned())
    }
}

#[tokio::test]
async fn a_refused_query_is_answered_without_a_search() {
    let gated = Arc::new(Gated(Table::new()));
    let app = router(gated.clone(), Limits { concurrent_searches: 1, ..limits() });
    let r = api(&app, "/api/search?q=a%20child%20plays").await;
    assert!(r.blocked && r.results.is_empty() && r.message.as_deref() == Some(DISCLAIMER), "{r:?}");
    assert_eq!(gated.0.searches.load(Ordering::SeqCst), 0);
    api(&app, "/api/search?q=two%20dogs").await;
    assert_eq!(gated.0.searches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bad_parameters_are_400_with_a_message_and_never_reach_the_backend() {
    let (app, table) = app();
    let long = "a".repeat(51);
    for (uri, fragment) in [
        ("/api/search", "missing parameter `q`"),
        ("/api/search?q=", "empty"),
        ("/api/search?q=+++", "empty"),
        (&format!("/api/search?q={long}"), "the limit is 50"),
        ("/api/search?q=dogs&k=0", "from 1 to 20"),
        ("/api/search?q=dogs&k=21", "from 1 to 20"),
        ("/api/search?q=dogs&k=many", "from 1 to 20"),
        ("/api/search?q=dogs&page=0", "`page` must be a whole number from 1 to 5"),
        ("/api/search?q=dogs&page=6", "from 1 to 5"),
        ("/api/search?q=dogs&page=last", "from 1 to 5"),
        ("/api/search?q=dogs&min_score=1.5", "`min_score` must be a number from 0 to 1"),
        ("/api/search?q=dogs&min_score=-0.2", "from 0 to 1"),
        ("/api/search?q=dogs&min_score=NaN", "from 0 to 1"),
        ("/api/search?q=dogs&min_score=", "from 0 to 1"),
        ("/api/search?q=dogs&q=cats", "more than once"),
        ("/api/search?q=dogs&file=../../etc/passwd", "unknown parameter `file`"),
        ("/api/search?q=dogs&offset=10", "unknown parameter `offset`"),
    ] {
        let (status, _, body) = get(&app, uri).await;
        api_error(status, StatusCode::BAD_REQUEST, &body, fragment);
    }
    assert_eq!(table.searches.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_failing_backend_is_a_500_with_the_reason() {
    let (app, _) = app();
    let (status, _, body) = get(&app, "/api/search?q=fail").await;
    api_error(status, StatusCode::INTERNAL_SERVER_ERROR, &body, "the model is gone");
}

#[tokio::test]
async fn images_are_served_by_id_only() {
    let (app, table) = app();
    let (status, content_type, body) = get(&app, "/images/0").await;
    assert_eq!((status, content_type.as_str()), (StatusCode::OK, "image/jpeg"));
    assert_eq!(body, *table.photo.lock().unwrap());

    let (status, _, body) = get(&app, "/images/1").await;
    api_error(status, StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS, &body, DISCLAIMER);
    let (status, _, body) = get(&app, "/images/9").await;
    api_error(status, StatusCode::NOT_FOUND, &body, "no image with id 9");
    let (status, _, body) = get(&app, "/images/3").await;
    api_error(status, StatusCode::INTERNAL_SERVER_ERROR, &body, "could not be read");
    for uri in ["/images/-1", "/images/1.jpg", "/images/..%2F..%2Fetc%2Fpasswd", "/images/99999999999999999999"] {
        let (status, _, body) = get(&app, uri).await;
        api_error(status, StatusCode::NOT_FOUND, &body, "no image with id");
    }
    let (status, _, body) = get(&app, "/images/../../etc/passwd").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) = get(&app, "/test_images/1.jpg").await;
    api_error(status, StatusCode::NOT_FOUND, &body, "no such page");
}

/// `uri`'s answer, which must be a JPEG thumbnail, decoded.
async fn thumb(app: &Router, uri: &str) -> (Vec<u8>, DynamicImage) {
    let (status, content_type, body) = get(app, uri).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, "image/jpeg");
    let image = image::load_from_memory_with_format(&body, ImageFormat::Jpeg).expect("a JPEG");
    (body, image)
}

#[tokio::test]
async fn a_thumbnail_is_a_small_jpeg_of_a_shown_image() {
    let (app, _) = app();
    let (_, image) = thumb(&app, "/thumbs/0").await;
    assert_eq!(image.dimensions(), (THUMB_SIDE, 240));
    // A PNG smaller than a thumbnail: a JPEG of the same size.
    let (_, image) = thumb(&app, "/thumbs/2").await;
    assert_eq!(image.dimensions(), (200, 100));
    let [r, g, b] = image.to_rgb8().get_pixel(100, 50).0;
    assert!(r < 30 && (80..120).contains(&g) && b > 170, "{:?}", [r, g, b]);
}

#[tokio::test]
async fn a_blocked_unknown_or_broken_image_has_no_thumbnail() {
    let (app, _) = app();
    let (status, _, body) = get(&app, "/thumbs/1").await;
    api_error(status, StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS, &body, DISCLAIMER);
    for uri in ["/thumbs/9", "/thumbs/-1", "/thumbs/1.jpg", "/thumbs/..%2F..%2Fetc%2Fpasswd", "/thumbs/99999999999"] {
        let (status, _, body) = get(&app, uri).await;
        api_error(status, StatusCode::NOT_FOUND, &body, "no image with id");
    }
    let (status, _, body) = get(&app, "/thumbs/3").await;
    api_error(status, StatusCode::INTERNAL_SERVER_ERROR, &body, "image 3 could not be read");
    let (status, _, body) = get(&app, "/thumbs/4").await;
    api_error(status, StatusCode::INTERNAL_SERVER_ERROR, &body, "image 4 is not a readable image");
}

#[tokio::test]
async fn thumbnails_are_cached_by_content_and_the_policy_is_asked_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let table = Arc::new(Table::new());
    let config = Config { limits: limits(), thumbnail_dir: Some(dir.path().join("thumbs")) };
    let app = router(table.clone(), config);
    let files = || {
        let mut names: Vec<_> = match std::fs::read_dir(dir.path().join("thumbs")) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    };
    assert!(files().is_empty());
    let (first, _) = thumb(&app, "/thumbs/0").await;
    let cached = files();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert_eq!(std::fs::read(&cached[0]).unwrap(), first);

    // The next request is served from the cache: a marker put in its place comes back.
    let marker = photo(8, 6, 7);
    std::fs::write(&cached[0], &marker).unwrap();
    let (again, _) = thumb(&app, "/thumbs/0").await;
    assert_eq!(again, marker);

    // Blocked now: a 451, cached thumbnail or not.
    table.hide_zero.store(true, Ordering::SeqCst);
    let (status, _, body) = get(&app, "/thumbs/0").await;
    api_error(status, StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS, &body, DISCLAIMER);
    table.hide_zero.store(false, Ordering::SeqCst);

    // New bytes for the same id: a new thumbnail, not the cached one.
    *table.photo.lock().unwrap() = photo(600, 900, 1);
    let (_, image) = thumb(&app, "/thumbs/0").await;
    assert_eq!(image.dimensions(), (213, THUMB_SIDE));
    assert_eq!(files().len(), 2);
    // Nothing is cached for an image that does not decode.
    let (status, _, _) = get(&app, "/thumbs/4").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(files().len(), 2);
}

#[tokio::test]
async fn a_hit_from_the_public_api_round_trips() {
    let hit = Hit::from_ranked(4, &Ranked { id: 3, score: 0.5, blocked: false }, Some("a b.jpg".into()));
    let json = serde_json::to_value(&hit).unwrap();
    assert_eq!(json["thumb"], "/thumbs/3");
    assert_eq!(serde_json::from_value::<Hit>(json).unwrap(), hit);
}
