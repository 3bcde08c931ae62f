//! `cargo xtask web-check`: the search server under a bounded load test, then in a real browser.
//!
//! The server runs in process on a free loopback port with the real models (trained first when
//! missing). The load test sends a fixed number of requests from many threads at once (the 500
//! test queries, image fetches by id, malformed requests), checks that every answer has the
//! status it must have, and prints p50/p99 latency. The browser test starts headless Chromium,
//! drives it over the DevTools protocol (a WebSocket): it loads the page, types a query, presses
//! Enter, and checks that the result images load and the disclaimer tiles render, exactly as many
//! of each as the API answered; then it types a query that names a child and checks that the
//! disclaimer and no image appear. Screenshots of both are kept.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use base64::Engine as _;
use imsearch_compliance::{Decision, TextPolicy, DISCLAIMER};
use imsearch_data::Dataset;
use imsearch_web::{Backend, Limits, SearchResponse};
use serde::Serialize;
use serde_json::{json, Value};

use crate::{paths, search::Setup, serve};

/// The flags the browser test starts Chromium with (the issue's list), plus the DevTools port and
/// a throwaway profile.
const CHROMIUM_FLAGS: [&str; 6] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
];

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Requests the load test sends in all.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    requests: u32,
    /// Requests in flight at once (one client thread each).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=512))]
    concurrency: u32,
    /// The query the browser types; it must rank both shown and blocked images in its top 10.
    /// Default: the first test query (in file order) that does.
    #[arg(long)]
    query: Option<String>,
    /// A query naming a child, which must get the disclaimer and no images.
    #[arg(long, default_value = "a little girl plays on a swing")]
    blocked_query: String,
    /// The Chromium binary (default: chromium, then chromium-browser, on PATH).
    #[arg(long, value_name = "PATH")]
    browser: Option<PathBuf>,
    /// Skip the browser test (the load test still runs). Not allowed when CI is set.
    #[arg(long)]
    no_browser: bool,
    /// Where the screenshots and load.json go.
    #[arg(long, value_name = "DIR", default_value = "target/web-check")]
    out: PathBuf,
    #[command(flatten)]
    setup: Setup,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let in_ci = std::env::var_os("CI").is_some();
    if args.no_browser && in_ci {
        bail!("--no-browser is not allowed in CI: the browser test must run there");
    }
    let out = paths::resolve(&args.out);
    fs::create_dir_all(&out).with_context(|| format!("failed to create {}", out.display()))?;
    let data = paths::data_dir(args.setup.pipeline.data.as_deref())?;
    let dataset = Dataset::load(&data, Default::default())
        .with_context(|| format!("failed to load the dataset at {}", data.display()))?;
    let queries: Vec<String> = dataset.test_queries.iter().map(|q| q.text.clone()).collect();
    ensure!(!queries.is_empty(), "the dataset has no test queries to send");

    let backend = serve::backend(&args.setup)?;
    let runtime = serve::runtime()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)))
        .context("failed to listen on a loopback port")?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = imsearch_web::router(backend.clone(), Limits::default());
    let server = runtime.spawn(imsearch_web::serve(listener, app, async {
        let _ = stopped.await;
    }));
    println!("web-check: server on http://{addr}/ over {} images", backend.indexed());

    let result = (|| -> Result<()> {
        let load = load_test(addr, &queries, backend.indexed(), |id| backend.searcher().is_blocked(id), args)?;
        let path = out.join("load.json");
        paths::write_atomic(&path, serde_json::to_string_pretty(&load)?.as_bytes())?;
        println!("web-check: load figures in {}", path.display());

        if args.no_browser {
            println!("web-check: browser test skipped (--no-browser)");
            return Ok(());
        }
        let query = match &args.query {
            Some(q) => q.clone(),
            None => mixed_query(addr, &queries)?,
        };
        browser_test(addr, backend.as_ref(), &query, args, &out)
    })();
    let _ = stop.send(());
    runtime.block_on(server).context("the server task failed")?.context("the server failed")?;
    result
}

// ---------------------------------------------------------------------------------------------
// The load test.

/// What the load test measured (written to load.json).
#[derive(Debug, Serialize)]
struct LoadReport {
    requests: usize,
    concurrency: usize,
    wall_s: f64,
    requests_per_s: f64,
    /// Requests per kind, with their latency percentiles in milliseconds.
    kinds: BTreeMap<&'static str, KindReport>,
    /// All requests.
    all: KindReport,
    /// Answers with a status other than the expected one, or no answer.
    errors: usize,
    first_errors: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
struct KindReport {
    count: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl KindReport {
    fn of(mut ms: Vec<f64>) -> KindReport {
        if ms.is_empty() {
            return KindReport::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        KindReport { count: ms.len(), p50_ms: at(0.50), p90_ms: at(0.90), p99_ms: at(0.99), max_ms: ms[ms.len() - 1] }
    }
}

/// Request `i` of the load test: its kind, path and the status it must get.
fn nth_request(
    i: usize,
    queries: &[String],
    images: usize,
    blocked: &dyn Fn(usize) -> Option<bool>,
    policy: &TextPolicy,
) -> (&'static str, String, u16) {
    match i % 10 {
        // Images by id, shown or blocked; one in five asks for an id that does not exist.
        7 | 8 => {
            let id = (i / 10) % (images + images / 4 + 1);
            let status = match blocked(id) {
                Some(false) => 200,
                Some(true) => 451,
                None => 404,
            };
            ("image", format!("/images/{id}"), status)
        }
        // A malformed request.
        9 => ("bad_request", format!("/api/search?q={}&k=0", percent_encode(&queries[i % queries.len()])), 400),
        _ => {
            let q = &queries[(i * 7) % queries.len()];
            let kind = if matches!(policy.decide(q), Decision::Block(_)) { "search_blocked_query" } else { "search" };
            (kind, format!("/api/search?q={}&k=10", percent_encode(q)), 200)
        }
    }
}

fn load_test(
    addr: SocketAddr,
    queries: &[String],
    images: usize,
    blocked: impl Fn(usize) -> Option<bool> + Sync,
    args: &Args,
) -> Result<LoadReport> {
    let total = args.requests as usize;
    let threads = (args.concurrency as usize).min(total);
    // Every request is decided before the clock starts.
    let policy = TextPolicy::default();
    let requests: Vec<_> = (0..total).map(|i| nth_request(i, queries, images, &blocked, &policy)).collect();
    let next = AtomicUsize::new(0);
    let samples: Mutex<Vec<(&'static str, f64)>> = Mutex::new(Vec::with_capacity(total));
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let bar = crate::progress::bar(total as u64, "load test", "requests");
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let (kind, path, expected) = &requests[i];
                let (kind, expected) = (*kind, *expected);
                let t = Instant::now();
                let outcome = http_get(addr, path);
                let ms = t.elapsed().as_secs_f64() * 1e3;
                match outcome {
                    Ok((status, _)) if status == expected => {}
                    Ok((status, body)) => errors.lock().unwrap_or_else(|e| e.into_inner()).push(format!(
                        "GET {path}: status {status}, expected {expected}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    )),
                    Err(e) => errors.lock().unwrap_or_else(|e| e.into_inner()).push(format!("GET {path}: {e:#}")),
                }
                samples.lock().unwrap_or_else(|e| e.into_inner()).push((kind, ms));
                bar.inc(1);
            });
        }
    });
    bar.finish_and_clear();
    let wall_s = started.elapsed().as_secs_f64();
    let samples = samples.into_inner().unwrap_or_else(|e| e.into_inner());
    let errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut by_kind: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for &(kind, ms) in &samples {
        by_kind.entry(kind).or_default().push(ms);
    }
    let report = LoadReport {
        requests: samples.len(),
        concurrency: threads,
        wall_s,
        requests_per_s: samples.len() as f64 / wall_s,
        kinds: by_kind.into_iter().map(|(k, v)| (k, KindReport::of(v))).collect(),
        all: KindReport::of(samples.iter().map(|s| s.1).collect()),
        errors: errors.len(),
        first_errors: errors.iter().take(10).cloned().collect(),
    };
    println!(
        "web-check: load test: {} requests, {} at once, in {:.1} s ({:.0}/s); {} errors",
        report.requests, report.concurrency, report.wall_s, report.requests_per_s, report.errors
    );
    println!("{:<22} {:>6} {:>9} {:>9} {:>9} {:>9}", "kind", "count", "p50 ms", "p90 ms", "p99 ms", "max ms");
    for (kind, k) in report.kinds.iter().map(|(k, v)| (*k, v)).chain([("all", &report.all)]) {
        println!("{kind:<22} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1}", k.count, k.p50_ms, k.p90_ms, k.p99_ms, k.max_ms);
    }
    ensure!(report.requests == total, "the load test sent {} of {total} requests", report.requests);
    if report.errors > 0 {
        bail!("the load test had {} errors; the first: {}", report.errors, report.first_errors.join("; "));
    }
    Ok(report)
}

/// Percent-encodes a query parameter value (everything but RFC 3986's unreserved characters).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One HTTP/1.1 GET on a fresh connection: the status and the body.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).context("failed to connect")?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").context("failed to send")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).context("failed to read the answer")?;
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow!("no HTTP header"))?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("bad status line {:?}", head.lines().next()))?;
    // Bodies here are small JSON or images sent with a Content-Length; chunked bodies keep their
    // framing, which only the error messages above see.
    Ok((status, response[head_end + 4..].to_vec()))
}

// ---------------------------------------------------------------------------------------------
// The browser test.

/// Headless Chromium, killed on drop.
struct Browser {
    child: Child,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.profile);
    }
}

fn find_browser(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "no Chromium found on PATH for the browser test; install it (Debian: `apt-get install chromium`), \
         pass --browser PATH, or --no-browser outside CI"
    )
}

/// Starts Chromium and returns it with its DevTools WebSocket address.
fn launch(binary: &Path) -> Result<(Browser, String)> {
    let profile = std::env::temp_dir().join(format!("imsearch-web-check-{}", std::process::id()));
    let _ = fs::remove_dir_all(&profile);
    let mut child = Command::new(binary)
        .args(CHROMIUM_FLAGS)
        .arg("--remote-debugging-port=0")
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--window-size=1280,1000")
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start {}", binary.display()))?;
    let stderr = child.stderr.take().context("no stderr from chromium")?;
    let browser = Browser { child, profile };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                let _ = tx.send(Ok(url.trim().to_owned()));
            } else if !line.trim().is_empty() {
                let _ = tx.send(Err(line));
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut said = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(url)) => return Ok((browser, url)),
            Ok(Err(line)) => said.push(line),
            Err(_) => {
                bail!("{} did not open its DevTools port within 30 s; it said:\n{}", binary.display(), said.join("\n"))
            }
        }
    }
}

/// A DevTools protocol session with one page.
struct Cdp {
    socket: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    session: Option<String>,
}

impl Cdp {
    fn connect(ws_url: &str) -> Result<Cdp> {
        let rest = ws_url.strip_prefix("ws://").ok_or_else(|| anyhow!("unexpected DevTools address {ws_url}"))?;
        let host = rest.split('/').next().unwrap_or(rest);
        let stream = TcpStream::connect(host).with_context(|| format!("failed to connect to {ws_url}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let (socket, _) =
            tungstenite::client(ws_url, stream).map_err(|e| anyhow!("DevTools handshake with {ws_url} failed: {e}"))?;
        let mut cdp = Cdp { socket, next_id: 0, session: None };
        let target = cdp.call("Target.createTarget", json!({ "url": "about:blank" }))?;
        let target_id = target["targetId"].as_str().context("Target.createTarget gave no targetId")?.to_owned();
        let attached = cdp.call("Target.attachToTarget", json!({ "targetId": target_id, "flatten": true }))?;
        cdp.session =
            Some(attached["sessionId"].as_str().context("Target.attachToTarget gave no sessionId")?.to_owned());
        Ok(cdp)
    }

    /// Sends a command and waits for its answer (events in between are dropped).
    fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        self.socket
            .send(tungstenite::Message::text(message.to_string()))
            .with_context(|| format!("failed to send {method}"))?;
        loop {
            let reply = self.socket.read().with_context(|| format!("no answer to {method}"))?;
            let tungstenite::Message::Text(text) = reply else { continue };
            let value: Value = serde_json::from_str(text.as_str())?;
            if value["id"].as_u64() != Some(id) {
                continue;
            }
            if let Some(error) = value.get("error") {
                bail!("{method} failed: {error}");
            }
            return Ok(value["result"].clone());
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    fn eval(&mut self, expression: &str) -> Result<Value> {
        let r = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }))?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("the page threw on {expression:?}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expression` until it gives something other than null/false.
    fn wait_for(&mut self, what: &str, expression: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(expression)?;
            if !(v.is_null() || v == json!(false)) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                let status =
                    self.eval("document.getElementById('status') && document.getElementById('status').textContent")?;
                bail!("timed out after {timeout:?} waiting for {what} (status line: {status})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `text` into the search box the way a person does (focus, keystrokes, Enter).
    fn type_query(&mut self, text: &str) -> Result<()> {
        self.eval("(() => { const q = document.getElementById('q'); q.value = ''; q.focus(); return true; })()")?;
        self.call("Input.insertText", json!({ "text": text }))?;
        for kind in ["keyDown", "keyUp"] {
            let mut event = json!({ "type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13 });
            if kind == "keyDown" {
                event["text"] = json!("\r");
            }
            self.call("Input.dispatchKeyEvent", event)?;
        }
        Ok(())
    }

    fn screenshot(&mut self, path: &Path) -> Result<()> {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png", "captureBeyondViewport": true }))?;
        let data = shot["data"].as_str().context("Page.captureScreenshot gave no data")?;
        let png = base64::engine::general_purpose::STANDARD.decode(data).context("the screenshot is not base64")?;
        paths::write_atomic(path, &png)?;
        println!("web-check: screenshot {}", path.display());
        Ok(())
    }
}

/// What the page shows after a search.
const RESULTS_JS: &str = r#"(() => {
  const imgs = [...document.querySelectorAll('#results figure.hit img')];
  const tiles = [...document.querySelectorAll('#results figure.hit .disclaimer')];
  if (imgs.length + tiles.length === 0 || !imgs.every(i => i.complete)) return null;
  return {
    loaded: imgs.filter(i => i.naturalWidth > 0).length,
    images: imgs.length,
    tiles: tiles.length,
    tile_texts: tiles.map(t => t.textContent),
    tile_visible: tiles.every(t => t.getBoundingClientRect().height > 50),
    scores: [...document.querySelectorAll('#results .score')].map(s => s.textContent),
  };
})()"#;

/// The first of `queries` whose top 10 holds both shown and blocked images.
fn mixed_query(addr: SocketAddr, queries: &[String]) -> Result<String> {
    for q in queries {
        let r = api_search(addr, q, 10)?;
        if !r.blocked && r.results.iter().any(|h| h.blocked) && r.results.iter().any(|h| !h.blocked) {
            return Ok(q.clone());
        }
    }
    bail!("no test query ranks both shown and blocked images in its top 10; pass --query")
}

fn browser_test(addr: SocketAddr, backend: &dyn Backend, query: &str, args: &Args, out: &Path) -> Result<()> {
    // What the page must show: the API's answer for the same queries.
    let expected = api_search(addr, query, 10)?;
    let shown = expected.results.iter().filter(|h| !h.blocked).count();
    let hidden = expected.results.len() - shown;
    ensure!(
        !expected.blocked && shown > 0 && hidden > 0,
        "the browser test's query {:?} must rank both shown and blocked images in its top 10 (got {shown} shown, \
         {hidden} blocked{}); pass another --query",
        query,
        if expected.blocked { ", and the query itself is blocked" } else { "" }
    );
    let refused = api_search(addr, &args.blocked_query, 10)?;
    ensure!(refused.blocked, "--blocked-query {:?} is not blocked by the text policy", args.blocked_query);
    println!(
        "web-check: browser test over {} images: {:?} (API: {shown} shown, {hidden} blocked), then {:?} (blocked)",
        backend.indexed(),
        query,
        args.blocked_query
    );

    let binary = find_browser(args.browser.as_deref())?;
    let (_browser, ws) = launch(&binary)?;
    let mut cdp = Cdp::connect(&ws)?;
    cdp.call("Page.enable", json!({}))?;
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false }),
    )?;
    cdp.call("Page.navigate", json!({ "url": format!("http://{addr}/") }))?;
    cdp.wait_for(
        "the page to load",
        "document.readyState === 'complete' && !!document.getElementById('q')",
        Duration::from_secs(20),
    )?;

    cdp.type_query(query)?;
    let page = cdp.wait_for("the results to render", RESULTS_JS, Duration::from_secs(30))?;
    cdp.screenshot(&out.join("results.png"))?;
    let count = |key: &str| page[key].as_u64().unwrap_or(u64::MAX) as usize;
    ensure!(count("images") == shown, "the page shows {} images, the API {shown}: {page}", count("images"));
    ensure!(count("loaded") == shown, "only {} of {shown} result images loaded: {page}", count("loaded"));
    ensure!(count("tiles") == hidden, "the page shows {} disclaimer tiles, the API {hidden}: {page}", count("tiles"));
    ensure!(page["tile_visible"] == json!(true), "a disclaimer tile is not visible: {page}");
    let texts = page["tile_texts"].as_array().cloned().unwrap_or_default();
    ensure!(texts.iter().all(|t| t == DISCLAIMER), "a tile does not say the disclaimer: {page}");
    let first_score = format!("score {:.3}", expected.results[0].score);
    ensure!(page["scores"][0] == json!(first_score), "the first score is not {first_score}: {page}");
    let url = cdp.eval("location.search")?;
    println!("web-check: the page shows {shown} images (all loaded) and {hidden} disclaimer tile(s); url {url}");

    cdp.type_query(&args.blocked_query)?;
    let notice = cdp.wait_for(
        "the query's disclaimer",
        "document.getElementById('query-blocked') && document.getElementById('query-blocked').textContent",
        Duration::from_secs(30),
    )?;
    ensure!(notice == json!(DISCLAIMER), "the blocked query shows {notice}, not the disclaimer");
    let images = cdp.eval("document.querySelectorAll('#results img').length")?;
    ensure!(images == json!(0), "the blocked query shows {images} images");
    cdp.screenshot(&out.join("blocked-query.png"))?;
    println!("web-check: a query naming a child shows the disclaimer and no image");
    let _ = cdp.call("Browser.close", json!({}));
    println!("web-check: browser test passed");
    Ok(())
}

fn api_search(addr: SocketAddr, query: &str, k: usize) -> Result<SearchResponse> {
    let (status, body) = http_get(addr, &format!("/api/search?q={}&k={k}", percent_encode(query)))?;
    ensure!(status == 200, "/api/search for {query:?} answered {status}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).with_context(|| format!("/api/search for {query:?} gave unexpected JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encodes_everything_but_unreserved() {
        assert_eq!(percent_encode("a dog's ball & 100%"), "a%20dog%27s%20ball%20%26%20100%25");
        assert_eq!(percent_encode("é"), "%C3%A9");
        assert_eq!(percent_encode("A-z_0.9~"), "A-z_0.9~");
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let r = KindReport::of((1..=100).map(f64::from).collect());
        assert_eq!((r.count, r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms), (100, 50.0, 90.0, 99.0, 100.0));
        let one = KindReport::of(vec![3.0]);
        assert_eq!((one.p50_ms, one.p99_ms), (3.0, 3.0));
    }

    #[test]
    fn the_web_crate_shows_the_compliance_disclaimer() {
        assert_eq!(imsearch_web::DISCLAIMER, DISCLAIMER);
    }
}
