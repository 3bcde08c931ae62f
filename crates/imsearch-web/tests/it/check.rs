//! `imsearch_web::check` against the router over the table backend, on a real loopback socket.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicUsize, Ordering},
};

use imsearch_web::{
    check::{self, image_path, search_path, LoadRequest},
    DISCLAIMER,
};

/// Serves [`super::app`] on a free loopback port until the returned runtime is dropped.
fn server() -> (SocketAddr, std::sync::Arc<super::Table>, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    let (app, table) = super::app();
    runtime.spawn(imsearch_web::serve(listener, app, std::future::pending()));
    (addr, table, runtime)
}

#[test]
fn the_load_test_checks_every_status_and_groups_latencies_by_kind() {
    let (addr, table, _runtime) = server();
    let mut requests = Vec::new();
    for i in 0..12 {
        requests.push(LoadRequest::new("search", search_path(&format!("dog number {i}"), 3), 200));
        requests.push(LoadRequest::new("search_blocked_query", search_path("a child on a swing", 3), 200));
        requests.push(LoadRequest::new("image", image_path([0, 1, 2, 7][i % 4]), [200, 451, 200, 404][i % 4]));
        requests.push(LoadRequest::new("bad_request", search_path("dogs", 0), 400));
    }
    // Two requests expecting what the server must not answer.
    requests.push(LoadRequest::new("wrong", image_path(1), 200));
    requests.push(LoadRequest::new("wrong", "/api/search?q=fail", 200));
    let done = AtomicUsize::new(0);

    let report = check::load_test(addr, &requests, 8, || {
        done.fetch_add(1, Ordering::Relaxed);
    });

    assert_eq!(done.load(Ordering::Relaxed), 50);
    assert_eq!((report.requests, report.concurrency, report.all.count), (50, 8, 50));
    let counts: Vec<(&str, usize)> = report.kinds.iter().map(|(k, r)| (k.as_str(), r.count)).collect();
    assert_eq!(
        counts,
        [("bad_request", 12), ("image", 12), ("search", 12), ("search_blocked_query", 12), ("wrong", 2)]
    );
    assert_eq!(report.errors, 2, "{:?}", report.first_errors);
    assert!(
        report.first_errors[0].starts_with("GET /images/1: status 451, expected 200: "),
        "{:?}",
        report.first_errors
    );
    assert!(report.first_errors[0].contains(DISCLAIMER), "{:?}", report.first_errors);
    assert!(report.first_errors[1].contains("status 500") && report.first_errors[1].contains("the model is gone"));
    // Only valid searches reach the backend.
    assert_eq!(table.searches.load(Ordering::SeqCst), 25);
    for k in report.kinds.values().chain([&report.all]) {
        assert!(0.0 < k.p50_ms && k.p50_ms <= k.p90_ms && k.p90_ms <= k.p99_ms && k.p99_ms <= k.max_ms, "{k:?}");
    }
    assert!(report.wall_s > 0.0 && report.requests_per_s > 0.0);
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["kinds"]["image"]["count"], 12);
}

#[test]
fn a_server_that_is_gone_is_an_error_per_request() {
    let (addr, _, runtime) = server();
    drop(runtime);
    let requests = vec![LoadRequest::new("search", search_path("dogs", 1), 200); 3];
    let report = check::load_test(addr, &requests, 16, || {});
    assert_eq!((report.requests, report.concurrency, report.errors), (3, 3, 3));
    assert!(
        report.first_errors.iter().all(|e| e.starts_with(&format!("failed to connect to {addr}: "))),
        "{:?}",
        report.first_errors
    );
}

#[test]
fn api_search_reads_the_answer() {
    let (addr, _, _runtime) = server();
    let r = check::api_search(addr, "two dogs", 2).unwrap();
    assert_eq!((r.query.as_str(), r.blocked, r.results.len()), ("two dogs", false, 2));
    assert!(r.results[1].blocked);
    assert!(check::api_search(addr, "a child", 2).unwrap().blocked);
    let e = check::api_search(addr, "dogs", 99).unwrap_err();
    assert!(e.to_string().starts_with(r#"/api/search for "dogs" answered 400: "#), "{e}");
}
