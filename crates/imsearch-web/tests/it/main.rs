//! The routes end to end, in process, over a table-backed search backend.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use axum::{
    body::Body,
    http::{Request, StatusCode},
    Router,
};
use http_body_util::BodyExt;
use imsearch_web::{router, Answer, ApiError, Backend, ImageLookup, Limits, Ranked, SearchResponse, DISCLAIMER};
use tower::ServiceExt;

#[cfg(feature = "check")]
mod check;

/// Three images; id 1 is blocked; "child" queries are blocked; "fail" makes the backend fail.
struct Table {
    searches: AtomicUsize,
}

impl Backend for Table {
    fn search(&self, query: &str, k: usize) -> Result<Answer, String> {
        self.searches.fetch_add(1, Ordering::SeqCst);
        if query.contains("child") {
            return Ok(Answer::Blocked { reason: "names a child".into() });
        }
        if query == "fail" {
            return Err("the model is gone".into());
        }
        let all = [
            Ranked { id: 2, score: 0.9, blocked: false },
            Ranked { id: 1, score: 0.7, blocked: true },
            Ranked { id: 0, score: 0.2, blocked: false },
        ];
        Ok(Answer::Ranked(all.into_iter().take(k).collect()))
    }

    fn image(&self, id: u32) -> ImageLookup {
        match id {
            0 | 2 => ImageLookup::Found { bytes: vec![0xff, 0xd8, id as u8], content_type: "image/jpeg" },
            1 => ImageLookup::Blocked,
            3 => ImageLookup::Unreadable("deleted".into()),
            _ => ImageLookup::Unknown,
        }
    }

    fn indexed(&self) -> usize {
        3
    }
}

fn app() -> (Router, Arc<Table>) {
    let table = Arc::new(Table { searches: AtomicUsize::new(0) });
    let limits = Limits { max_query_chars: 50, max_k: 20, default_k: 10, concurrent_searches: 2 };
    (router(table.clone(), limits), table)
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

#[tokio::test]
async fn the_page_has_a_search_box() {
    let (app, _) = app();
    let (status, content_type, body) = get(&app, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains(r#"<input id="q""#));
    assert!(html.contains("/api/search?"));
}

#[tokio::test]
async fn search_answers_json_and_hides_blocked_images() {
    let (app, _) = app();
    let (status, _, body) = get(&app, "/api/search?q=two+dogs&k=3").await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let r: SearchResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!(r.query, "two dogs");
    assert!(!r.blocked);
    assert_eq!(r.indexed, 3);
    let images: Vec<Option<&str>> = r.results.iter().map(|h| h.image.as_deref()).collect();
    assert_eq!(images, [Some("/images/2"), None, Some("/images/0")]);
    assert_eq!(r.results[1].disclaimer.as_deref(), Some(DISCLAIMER));
    assert_eq!(r.results.iter().map(|h| h.rank).collect::<Vec<_>>(), [1, 2, 3]);

    let (_, _, body) = get(&app, "/api/search?q=%20dogs%20&k=1").await;
    let r: SearchResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!((r.query.as_str(), r.results.len()), ("dogs", 1));
}

#[tokio::test]
async fn a_query_naming_a_child_gets_the_disclaimer_and_no_images() {
    let (app, _) = app();
    let (status, _, body) = get(&app, "/api/search?q=a+child+on+a+swing").await;
    assert_eq!(status, StatusCode::OK);
    let r: SearchResponse = serde_json::from_slice(&body).unwrap();
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
    let gated = Arc::new(Gated(Table { searches: AtomicUsize::new(0) }));
    let limits = Limits { max_query_chars: 50, max_k: 20, default_k: 10, concurrent_searches: 1 };
    let app = router(gated.clone(), limits);
    let (status, _, body) = get(&app, "/api/search?q=a%20child%20plays").await;
    assert_eq!(status, StatusCode::OK);
    let r: SearchResponse = serde_json::from_slice(&body).unwrap();
    assert!(r.blocked && r.results.is_empty() && r.message.as_deref() == Some(DISCLAIMER), "{r:?}");
    assert_eq!(gated.0.searches.load(Ordering::SeqCst), 0);
    let (status, _, _) = get(&app, "/api/search?q=two%20dogs").await;
    assert_eq!(status, StatusCode::OK);
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
        ("/api/search?q=dogs&q=cats", "more than once"),
        ("/api/search?q=dogs&file=../../etc/passwd", "unknown parameter `file`"),
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
    let (app, _) = app();
    let (status, content_type, body) = get(&app, "/images/2").await;
    assert_eq!((status, content_type.as_str(), body.as_slice()), (StatusCode::OK, "image/jpeg", &[0xff, 0xd8, 2][..]));

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
