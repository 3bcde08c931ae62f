//! Headless Chromium driven over the DevTools protocol (a WebSocket), and imsearch-web's page in it.

use std::{
    ffi::OsStr,
    fs, io,
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Error, Result};
use crate::{SearchResponse, DISCLAIMER};

/// The flags Chromium is started with, besides the DevTools port, a throwaway profile and the
/// window size.
pub const CHROMIUM_FLAGS: [&str; 6] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
];

/// The browsers [`find_browser`] looks for, in order.
const BROWSER_NAMES: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];

/// The first of chromium, chromium-browser and google-chrome on `PATH`.
pub fn find_browser() -> Option<PathBuf> {
    find_in(&std::env::var_os("PATH").unwrap_or_default())
}

fn find_in(path: &OsStr) -> Option<PathBuf> {
    BROWSER_NAMES.iter().find_map(|name| std::env::split_paths(path).map(|dir| dir.join(name)).find(|c| c.is_file()))
}

/// Headless Chromium with a throwaway profile, killed (and its profile removed) on drop.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    profile: PathBuf,
    devtools: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    /// Starts `binary` with [`CHROMIUM_FLAGS`] and waits (30 s at most) for its DevTools address.
    pub fn launch(binary: &Path) -> Result<Browser> {
        static LAUNCHED: AtomicUsize = AtomicUsize::new(0);
        let n = LAUNCHED.fetch_add(1, Ordering::Relaxed);
        let profile = std::env::temp_dir().join(format!("imsearch-web-check-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&profile);
        let launch_error = |source| Error::Launch { binary: binary.to_owned(), source };
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
            .map_err(launch_error)?;
        let stderr = child.stderr.take();
        // From here on, dropping `browser` kills the child.
        let mut browser = Browser { child, profile, devtools: String::new() };
        let stderr = stderr.ok_or_else(|| launch_error(io::Error::other("its stderr was not captured")))?;
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
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Ok(url)) => {
                    tracing::debug!(binary = %binary.display(), "DevTools listening on {url}");
                    browser.devtools = url;
                    return Ok(browser);
                }
                Ok(Err(line)) => said.push(line),
                Err(_) => return Err(Error::NoDevTools { binary: binary.to_owned(), said: said.join("\n") }),
            }
        }
    }

    /// The browser's DevTools WebSocket address (`ws://127.0.0.1:PORT/devtools/browser/...`).
    pub fn devtools_url(&self) -> &str {
        &self.devtools
    }
}

/// A DevTools protocol session with one new page (tab) of a browser.
#[derive(Debug)]
pub struct Cdp {
    socket: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    session: Option<String>,
}

impl Cdp {
    /// Connects to a browser's DevTools address, opens a blank page and attaches to it.
    pub fn connect(ws_url: &str) -> Result<Cdp> {
        let rest = ws_url.strip_prefix("ws://").ok_or_else(|| Error::DevToolsAddress { url: ws_url.to_owned() })?;
        let host = rest.split('/').next().unwrap_or(rest);
        let connect_error = |source| Error::DevToolsConnect { url: ws_url.to_owned(), source };
        let stream = TcpStream::connect(host).map_err(connect_error)?;
        stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(connect_error)?;
        let (socket, _) = tungstenite::client(ws_url, stream).map_err(|e| {
            let source = match e {
                tungstenite::HandshakeError::Failure(e) => e,
                // A blocking stream never interrupts a handshake.
                tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::Io(io::ErrorKind::WouldBlock.into()),
            };
            Error::Handshake { url: ws_url.to_owned(), source: Box::new(source) }
        })?;
        let mut cdp = Cdp { socket, next_id: 0, session: None };
        let target = cdp.call("Target.createTarget", json!({ "url": "about:blank" }))?;
        let target_id = field(&target, "Target.createTarget", "targetId")?;
        let attached = cdp.call("Target.attachToTarget", json!({ "targetId": target_id, "flatten": true }))?;
        cdp.session = Some(field(&attached, "Target.attachToTarget", "sessionId")?);
        Ok(cdp)
    }

    /// Sends a command (to the page once attached) and waits for its answer; events in between
    /// are dropped.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        self.socket
            .send(tungstenite::Message::text(message.to_string()))
            .map_err(|e| Error::CdpSend { method: method.to_owned(), source: Box::new(e) })?;
        loop {
            let reply =
                self.socket.read().map_err(|e| Error::CdpReceive { method: method.to_owned(), source: Box::new(e) })?;
            let tungstenite::Message::Text(text) = reply else { continue };
            let value: Value = serde_json::from_str(text.as_str())
                .map_err(|source| Error::CdpJson { method: method.to_owned(), source })?;
            if value["id"].as_u64() != Some(id) {
                continue;
            }
            if let Some(error) = value.get("error") {
                return Err(Error::Cdp { method: method.to_owned(), error: error.to_string() });
            }
            return Ok(value["result"].clone());
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    pub fn eval(&mut self, expression: &str) -> Result<Value> {
        let r = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }))?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(Error::PageThrew { expression: expression.to_owned(), details: e.to_string() });
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expression` every 100 ms until it gives something other than null or false. On
    /// timeout the error carries the value of `diagnosis`, another expression.
    pub fn wait_for(&mut self, what: &str, expression: &str, diagnosis: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(expression)?;
            if !(v.is_null() || v == json!(false)) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                let status = self.eval(diagnosis)?.to_string();
                return Err(Error::Timeout { what: what.to_owned(), timeout, status });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `text` where the focus is, as keystrokes would.
    pub fn insert_text(&mut self, text: &str) -> Result<()> {
        self.call("Input.insertText", json!({ "text": text }))?;
        Ok(())
    }

    /// Presses and releases Enter.
    pub fn press_enter(&mut self) -> Result<()> {
        for kind in ["keyDown", "keyUp"] {
            let mut event = json!({ "type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13 });
            if kind == "keyDown" {
                event["text"] = json!("\r");
            }
            self.call("Input.dispatchKeyEvent", event)?;
        }
        Ok(())
    }

    /// A PNG of the whole page.
    pub fn screenshot(&mut self) -> Result<Vec<u8>> {
        let method = "Page.captureScreenshot";
        let shot = self.call(method, json!({ "format": "png", "captureBeyondViewport": true }))?;
        let data = field(&shot, method, "data")?;
        base64::engine::general_purpose::STANDARD.decode(data).map_err(|source| Error::Screenshot { source })
    }
}

/// `value[key]` as a string, or an error naming the method that did not give it.
fn field(value: &Value, method: &str, key: &'static str) -> Result<String> {
    value[key].as_str().map(str::to_owned).ok_or_else(|| Error::CdpMissing { method: method.to_owned(), field: key })
}

/// The page's status line, shown when waiting for it times out.
const STATUS_JS: &str = "document.getElementById('status') && document.getElementById('status').textContent";

/// What the page shows after a search, once every result image has finished loading.
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

/// imsearch-web's page (`GET /`) open in headless Chromium at 1280x1000.
#[derive(Debug)]
pub struct Page {
    // Dropped in this order: the session, then the browser.
    cdp: Cdp,
    _browser: Browser,
    addr: SocketAddr,
}

impl Page {
    /// Starts `binary`, opens `http://{addr}/` and waits (20 s at most) until it has loaded.
    pub fn open(binary: &Path, addr: SocketAddr) -> Result<Page> {
        let browser = Browser::launch(binary)?;
        let mut cdp = Cdp::connect(browser.devtools_url())?;
        cdp.call("Page.enable", json!({}))?;
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false }),
        )?;
        cdp.call("Page.navigate", json!({ "url": format!("http://{addr}/") }))?;
        cdp.wait_for(
            "the page to load",
            "document.readyState === 'complete' && !!document.getElementById('q')",
            STATUS_JS,
            Duration::from_secs(20),
        )?;
        Ok(Page { cdp, _browser: browser, addr })
    }

    /// The DevTools session, for checks of your own.
    pub fn cdp(&mut self) -> &mut Cdp {
        &mut self.cdp
    }

    /// Types `query` into the search box the way a person does (focus, keystrokes, Enter).
    fn type_query(&mut self, query: &str) -> Result<()> {
        self.cdp.eval("(() => { const q = document.getElementById('q'); q.value = ''; q.focus(); return true; })()")?;
        self.cdp.insert_text(query)?;
        self.cdp.press_enter()
    }

    /// Searches for `query` and waits (30 s at most) until results are shown and every result
    /// image has loaded or failed; then takes a screenshot.
    pub fn search(&mut self, query: &str) -> Result<ResultsView> {
        self.type_query(query)?;
        let state = self.cdp.wait_for("the results to render", RESULTS_JS, STATUS_JS, Duration::from_secs(30))?;
        let mut view: ResultsView = serde_json::from_value(state.clone())
            .map_err(|source| Error::PageState { state: state.to_string(), source })?;
        view.screenshot = self.cdp.screenshot()?;
        view.url = self.cdp.eval("location.search")?.as_str().unwrap_or_default().to_owned();
        Ok(view)
    }

    /// Opens a shared link to `query`'s results with `k` of them (`/?q=...&k=...`) and waits
    /// (30 s at most) until the page has run the search and every result image has loaded or
    /// failed; then takes a screenshot.
    pub fn open_link(&mut self, query: &str, k: usize) -> Result<ResultsView> {
        let url = format!("http://{}/?q={}&k={k}", self.addr, super::http::percent_encode(query));
        self.cdp.call("Page.navigate", json!({ "url": url }))?;
        // The new document, not the one before it: its address carries the link's `k`.
        let fresh = format!(
            "document.readyState === 'complete' && new URLSearchParams(location.search).get('k') === '{k}' && \
             document.getElementById('k').value === '{k}' && {RESULTS_JS}"
        );
        let state = self.cdp.wait_for("the linked results to render", &fresh, STATUS_JS, Duration::from_secs(30))?;
        let mut view: ResultsView = serde_json::from_value(state.clone())
            .map_err(|source| Error::PageState { state: state.to_string(), source })?;
        view.screenshot = self.cdp.screenshot()?;
        view.url = self.cdp.eval("location.search")?.as_str().unwrap_or_default().to_owned();
        Ok(view)
    }

    /// Searches for `query`, which the backend blocks, and waits (30 s at most) for the query's
    /// disclaimer; then takes a screenshot.
    pub fn search_blocked(&mut self, query: &str) -> Result<BlockedView> {
        self.type_query(query)?;
        let notice = self.cdp.wait_for(
            "the query's disclaimer",
            "document.getElementById('query-blocked') && document.getElementById('query-blocked').textContent",
            STATUS_JS,
            Duration::from_secs(30),
        )?;
        let images = self.cdp.eval("document.querySelectorAll('#results img').length")?;
        Ok(BlockedView {
            notice: notice.as_str().unwrap_or_default().to_owned(),
            images: images.as_u64().map_or(usize::MAX, |n| n as usize),
            screenshot: self.cdp.screenshot()?,
        })
    }

    /// Closes the browser.
    pub fn close(mut self) {
        let _ = self.cdp.call("Browser.close", json!({}));
    }
}

/// What the page shows after a search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultsView {
    /// Result images (`<img>`) on the page.
    pub images: usize,
    /// Of those, the ones that loaded (a decoded image with a width).
    pub loaded: usize,
    /// Disclaimer tiles in place of blocked images.
    pub tiles: usize,
    pub tile_texts: Vec<String>,
    /// Every tile is taller than 50 px.
    pub tile_visible: bool,
    /// The score labels, in page order (`score 0.912`).
    pub scores: Vec<String>,
    /// The page's query string after the search (`?q=...`).
    #[serde(default)]
    pub url: String,
    /// A PNG of the whole page.
    #[serde(skip)]
    pub screenshot: Vec<u8>,
}

impl ResultsView {
    /// Checks that the page shows what the API answered for the same query: one loaded image per
    /// shown result, one visible disclaimer tile per blocked one, the first score.
    pub fn verify(&self, expected: &SearchResponse) -> Result<()> {
        let shown = expected.results.iter().filter(|h| !h.blocked).count();
        let hidden = expected.results.len() - shown;
        let page = serde_json::to_string(self).unwrap_or_default();
        let fail = |message: String| Err(Error::Mismatch(format!("{message}: {page}")));
        if self.images != shown {
            return fail(format!("the page shows {} images, the API {shown}", self.images));
        }
        if self.loaded != shown {
            return fail(format!("only {} of {shown} result images loaded", self.loaded));
        }
        if self.tiles != hidden {
            return fail(format!("the page shows {} disclaimer tiles, the API {hidden}", self.tiles));
        }
        if !self.tile_visible {
            return fail("a disclaimer tile is not visible".to_owned());
        }
        if self.tile_texts.iter().any(|t| t != DISCLAIMER) {
            return fail("a tile does not say the disclaimer".to_owned());
        }
        if let Some(first) = expected.results.first() {
            let first_score = format!("score {:.3}", first.score);
            if self.scores.first() != Some(&first_score) {
                return fail(format!("the first score is not {first_score}"));
            }
        }
        Ok(())
    }
}

/// What the page shows after a blocked query.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockedView {
    /// The query's notice.
    pub notice: String,
    /// Images on the page.
    pub images: usize,
    /// A PNG of the whole page.
    pub screenshot: Vec<u8>,
}

impl BlockedView {
    /// Checks that the page shows the disclaimer and no image.
    pub fn verify(&self) -> Result<()> {
        if self.notice != DISCLAIMER {
            return Err(Error::Mismatch(format!("the blocked query shows {:?}, not the disclaimer", self.notice)));
        }
        if self.images != 0 {
            return Err(Error::Mismatch(format!("the blocked query shows {} images", self.images)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::Hit;

    #[test]
    fn finds_the_first_browser_on_the_path() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        fs::write(a.path().join("google-chrome"), "").unwrap();
        fs::write(b.path().join("chromium-browser"), "").unwrap();
        fs::create_dir(b.path().join("chromium")).unwrap(); // a folder is not a browser
        let path = std::env::join_paths([a.path(), b.path()]).unwrap();
        assert_eq!(find_in(&path), Some(b.path().join("chromium-browser")));
        assert_eq!(find_in(&std::env::join_paths([a.path()]).unwrap()), Some(a.path().join("google-chrome")));
        assert_eq!(find_in(OsStr::new("")), None);
    }

    /// A DevTools endpoint that answers the session set-up, then `Runtime.evaluate` with an event
    /// and a stray answer first, and fails any other method. Returns the messages it received.
    fn fake_devtools() -> (String, std::thread::JoinHandle<Vec<Value>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/devtools/browser/x", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut ws = tungstenite::accept(stream).unwrap();
            let mut seen = Vec::new();
            while let Ok(tungstenite::Message::Text(text)) = ws.read() {
                let m: Value = serde_json::from_str(text.as_str()).unwrap();
                let id = m["id"].clone();
                let mut send = |v: Value| ws.send(tungstenite::Message::text(v.to_string())).unwrap();
                match m["method"].as_str().unwrap() {
                    "Target.createTarget" => send(json!({ "id": id, "result": { "targetId": "T1" } })),
                    "Target.attachToTarget" => send(json!({ "id": id, "result": { "sessionId": "S1" } })),
                    "Runtime.evaluate" => {
                        send(json!({ "method": "Page.loadEventFired", "params": {} }));
                        send(json!({ "id": 999, "result": {} }));
                        send(json!({ "id": id, "result": { "result": { "value": m["params"]["expression"] } } }));
                    }
                    _ => send(json!({ "id": id, "error": { "code": -32601, "message": "no such method" } })),
                }
                seen.push(m);
            }
            seen
        });
        (url, server)
    }

    #[test]
    fn cdp_matches_answers_to_calls_over_a_session() {
        let (url, server) = fake_devtools();
        let mut cdp = Cdp::connect(&url).unwrap();
        assert_eq!(cdp.eval("1 + 1").unwrap(), json!("1 + 1"));
        let e = cdp.call("Page.fly", json!({})).unwrap_err();
        assert!(e.to_string().starts_with("Page.fly failed: ") && e.to_string().contains("no such method"), "{e}");
        drop(cdp);
        let seen = server.join().unwrap();
        let methods: Vec<&str> = seen.iter().map(|m| m["method"].as_str().unwrap()).collect();
        assert_eq!(methods, ["Target.createTarget", "Target.attachToTarget", "Runtime.evaluate", "Page.fly"]);
        assert_eq!(seen[1]["params"]["targetId"], "T1");
        assert_eq!(seen[0].get("sessionId"), None);
        assert_eq!(seen[2]["sessionId"], "S1");
    }

    #[test]
    fn only_a_devtools_websocket_address_is_accepted() {
        let e = Cdp::connect("http://127.0.0.1:1/").unwrap_err();
        assert!(matches!(e, Error::DevToolsAddress { .. }), "{e:?}");
    }

    fn hit(rank: usize, score: f32, blocked: bool) -> Hit {
        Hit::from_ranked(rank, &crate::Ranked { id: rank as u32, score, blocked })
    }

    fn view() -> ResultsView {
        ResultsView {
            images: 2,
            loaded: 2,
            tiles: 1,
            tile_texts: vec![DISCLAIMER.to_owned()],
            tile_visible: true,
            scores: vec!["score 0.900".into(), "score 0.700".into(), "score 0.200".into()],
            url: "?q=dogs".into(),
            screenshot: Vec::new(),
        }
    }

    #[track_caller]
    fn check_mismatch(change: impl FnOnce(&mut ResultsView), fragment: &str) {
        let expected = SearchResponse {
            query: "dogs".into(),
            blocked: false,
            message: None,
            results: vec![hit(1, 0.9, false), hit(2, 0.7, true), hit(3, 0.2, false)],
            indexed: 3,
            took_ms: 1.0,
        };
        let mut v = view();
        v.verify(&expected).unwrap();
        change(&mut v);
        let e = v.verify(&expected).unwrap_err().to_string();
        assert!(e.contains(fragment), "{e:?} does not mention {fragment:?}");
    }

    #[test]
    fn the_page_must_show_what_the_api_answered() {
        check_mismatch(|v| v.images = 3, "the page shows 3 images, the API 2");
        check_mismatch(|v| v.loaded = 1, "only 1 of 2 result images loaded");
        check_mismatch(|v| v.tiles = 0, "the page shows 0 disclaimer tiles, the API 1");
        check_mismatch(|v| v.tile_visible = false, "not visible");
        check_mismatch(|v| v.tile_texts[0] = "blocked".into(), "does not say the disclaimer");
        check_mismatch(|v| v.scores[0] = "score 0.899".into(), "the first score is not score 0.900");
    }

    #[test]
    fn a_blocked_query_must_show_the_disclaimer_and_no_image() {
        let ok = BlockedView { notice: DISCLAIMER.to_owned(), images: 0, screenshot: Vec::new() };
        ok.verify().unwrap();
        let e = BlockedView { images: 1, ..ok.clone() }.verify().unwrap_err();
        assert_eq!(e.to_string(), "the blocked query shows 1 images");
        let e = BlockedView { notice: String::new(), ..ok }.verify().unwrap_err();
        assert!(e.to_string().contains("not the disclaimer"), "{e}");
    }
}
