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
use crate::{Hit, SearchResponse, DISCLAIMER, NO_MATCH, THUMB_SIDE};

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

/// What the page shows after a search, once every result image has finished loading, or once it
/// says that no photo matches well enough; `null` until then.
const RESULTS_JS: &str = r#"(() => {
  const notice = document.getElementById('no-match');
  const imgs = [...document.querySelectorAll('#results figure.hit img')];
  const tiles = [...document.querySelectorAll('#results figure.hit .disclaimer')];
  if (!notice && (imgs.length + tiles.length === 0 || !imgs.every(i => i.complete))) return null;
  const shown = [...document.querySelectorAll('#results figure.hit:not(.blocked)')];
  const text = (root, selector) => { const e = root.querySelector(selector); return e ? e.textContent : ''; };
  const heading = document.getElementById('like-heading');
  return {
    loaded: imgs.filter(i => i.naturalWidth > 0).length,
    images: imgs.length,
    tiles: tiles.length,
    tile_texts: tiles.map(t => t.textContent),
    tile_visible: tiles.every(t => t.getBoundingClientRect().height > 50),
    scores: [...document.querySelectorAll('#results .score')].map(s => s.textContent),
    thumbs: imgs.map(i => i.getAttribute('src') || ''),
    lazy: imgs.filter(i => i.loading === 'lazy').length,
    alts: imgs.map(i => i.alt),
    names: shown.map(f => text(f, '.name')),
    links: shown.map(f => { const a = f.querySelector('a'); return a ? a.getAttribute('href') || '' : ''; }),
    similar_buttons: shown.filter(f => f.querySelector('button.similar')).length,
    blocked_names: document.querySelectorAll('#results figure.hit.blocked .name').length,
    largest_side: Math.max(0, ...imgs.map(i => Math.max(i.naturalWidth, i.naturalHeight))),
    notice: notice ? notice.textContent : null,
    heading: heading ? heading.textContent : '',
  };
})()"#;

/// The page's current `page` parameter (1 when it has none).
const PAGE_NUMBER_JS: &str = "+(new URLSearchParams(location.search).get('page') || 1)";

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

    /// Waits (30 s at most) until `condition` (JavaScript) holds and the results have rendered
    /// ([`RESULTS_JS`]); then takes a screenshot. The page clears what it showed as soon as it
    /// starts a search, so results seen here are never the ones from before the action.
    fn wait_results(&mut self, what: &str, condition: &str) -> Result<ResultsView> {
        let expression = format!("({condition}) && {RESULTS_JS}");
        let state = self.cdp.wait_for(what, &expression, STATUS_JS, Duration::from_secs(30))?;
        let mut view: ResultsView = serde_json::from_value(state.clone())
            .map_err(|source| Error::PageState { state: state.to_string(), source })?;
        view.screenshot = self.cdp.screenshot()?;
        view.url = self.cdp.eval("location.search")?.as_str().unwrap_or_default().to_owned();
        Ok(view)
    }

    /// Runs `script` (JavaScript that acts on the page and gives `true`, or a string saying
    /// what it could not do, which becomes a [`Error::Mismatch`]).
    fn act(&mut self, script: &str) -> Result<()> {
        match self.cdp.eval(script)? {
            Value::Bool(true) => Ok(()),
            Value::String(why) => Err(Error::Mismatch(why)),
            other => Err(Error::Mismatch(format!("the page answered {other} to {script}"))),
        }
    }

    /// Searches for `query` and waits (30 s at most) until results are shown and every result
    /// image has loaded or failed, or the page says no photo matches well enough; then takes a
    /// screenshot.
    pub fn search(&mut self, query: &str) -> Result<ResultsView> {
        self.type_query(query)?;
        self.wait_results("the results to render", "true")
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
             document.getElementById('k').value === '{k}'"
        );
        self.wait_results("the linked results to render", &fresh)
    }

    /// Opens a shared link to the photos most like image `id`, `k` of them (`/?like=...&k=...`),
    /// and waits (30 s at most) until the page has shown them; then takes a screenshot.
    pub fn open_like_link(&mut self, id: u32, k: usize) -> Result<ResultsView> {
        let url = format!("http://{}/?like={id}&k={k}", self.addr);
        self.cdp.call("Page.navigate", json!({ "url": url }))?;
        let fresh = format!(
            "document.readyState === 'complete' && new URLSearchParams(location.search).get('like') === '{id}' && \
             document.getElementById('k').value === '{k}'"
        );
        self.wait_results("the linked similar photos to render", &fresh)
    }

    /// Clicks the page's "next" control and waits (30 s at most) for the next page's results,
    /// the page's address saying which page it is.
    pub fn next_page(&mut self) -> Result<ResultsView> {
        let page = self.cdp.eval(PAGE_NUMBER_JS)?.as_u64().unwrap_or(1);
        self.act(
            "(() => { const b = document.getElementById('next'); \
             if (!b || b.offsetParent === null) return 'the page shows no \"next\" control'; \
             if (b.disabled) return 'the page\\'s \"next\" control is disabled'; b.click(); return true; })()",
        )?;
        self.wait_results(
            "the next page to render",
            &format!("new URLSearchParams(location.search).get('page') === '{}'", page + 1),
        )
    }

    /// Clicks the "similar" button of the `nth` shown result (from 0) and waits (30 s at most)
    /// for the photos most like it. Returns the example's id (from its link to the original,
    /// `/images/{id}`) and what the page shows.
    pub fn similar(&mut self, nth: usize) -> Result<(u32, ResultsView)> {
        let tile = format!("[...document.querySelectorAll('#results figure.hit:not(.blocked)')][{nth}]");
        let href = self.cdp.eval(&format!(
            "(() => {{ const f = {tile}; const a = f && f.querySelector('a'); return a ? a.getAttribute('href') : null; }})()"
        ))?;
        let href = href.as_str().unwrap_or_default();
        let Some(id) = href.strip_prefix("/images/").and_then(|id| id.parse::<u32>().ok()) else {
            return Err(Error::Mismatch(format!("shown result {nth} has no link to its original (found {href:?})")));
        };
        self.act(&format!(
            "(() => {{ const f = {tile}; const b = f && f.querySelector('button.similar'); \
             if (!b) return 'shown result {nth} has no \"similar\" button'; b.click(); return true; }})()"
        ))?;
        let view = self.wait_results(
            "the similar photos to render",
            &format!("new URLSearchParams(location.search).get('like') === '{id}'"),
        )?;
        Ok((id, view))
    }

    /// Chooses `value` in the page's threshold menu (as a person picks an option; an option
    /// the menu lacks is an error) and waits (30 s at most) for the search in the box to be
    /// shown again with it.
    pub fn choose_threshold(&mut self, value: &str) -> Result<ResultsView> {
        let v = json!(value);
        self.act(&format!(
            "(() => {{ const s = document.getElementById('min'); \
             if (!s || s.tagName !== 'SELECT') return 'the page has no threshold menu'; \
             const options = [...s.options].map(o => o.value); \
             if (!options.includes({v})) return 'the threshold menu has no option ' + {v} + ': ' + JSON.stringify(options); \
             s.value = {v}; s.dispatchEvent(new Event('change')); return true; }})()"
        ))?;
        self.wait_results(
            "the results over the threshold to render",
            &format!("new URLSearchParams(location.search).get('min_score') === {v}"),
        )
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

/// What the page shows after a search (or a "more like this").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// The score labels, in page order (`score 0.912`, `likeness 0.803`).
    pub scores: Vec<String>,
    /// Each result image's `src`, in page order (`/thumbs/7`).
    pub thumbs: Vec<String>,
    /// Result images that load lazily (`loading="lazy"`).
    pub lazy: usize,
    /// Each result image's alt text.
    pub alts: Vec<String>,
    /// Each shown result's file name in its caption (empty when none).
    pub names: Vec<String>,
    /// Each shown result's link to its original (empty when none).
    pub links: Vec<String>,
    /// Shown results with a "similar" button.
    pub similar_buttons: usize,
    /// File names on disclaimer tiles (there must be none).
    pub blocked_names: usize,
    /// The longest side of the largest result image as loaded, in pixels.
    pub largest_side: u32,
    /// The notice shown instead of results when none passes the threshold.
    pub notice: Option<String>,
    /// The heading of a "more like this" (empty for a search).
    #[serde(default)]
    pub heading: String,
    /// The page's query string after the search (`?q=...`).
    #[serde(default)]
    pub url: String,
    /// A PNG of the whole page.
    #[serde(skip)]
    pub screenshot: Vec<u8>,
}

/// Alt text that says nothing about the picture (today's "result 3").
fn generic_alt(alt: &str) -> bool {
    let alt = alt.trim().to_lowercase();
    alt.is_empty() || alt.strip_prefix("result").is_some_and(|n| n.trim().chars().all(|c| c.is_ascii_digit()))
}

impl ResultsView {
    /// The API request behind what the page shows: its address's parameters, on
    /// `/api/similar` (with `id` for `like`) or `/api/search`.
    pub fn api_path(&self) -> String {
        let query = self.url.strip_prefix('?').unwrap_or(&self.url);
        if query.split('&').any(|p| p.starts_with("like=")) {
            let params: Vec<String> = query
                .split('&')
                .map(|p| p.strip_prefix("like=").map_or_else(|| p.to_owned(), |id| format!("id={id}")))
                .collect();
            format!("/api/similar?{}", params.join("&"))
        } else {
            format!("/api/search?{query}")
        }
    }

    /// Checks that the page shows what the API answered for the same request: one loaded,
    /// lazily loaded thumbnail (at most [`THUMB_SIDE`] pixels) per shown result, with its file
    /// name as caption and alt text, a link to its original and a "similar" button; one visible
    /// disclaimer tile without a name per blocked one; the first score; when nothing passes the
    /// threshold, the notice that no photo matches well enough.
    pub fn verify(&self, expected: &SearchResponse) -> Result<()> {
        let shown: Vec<&Hit> = expected.results.iter().filter(|h| !h.blocked).collect();
        let hidden = expected.results.len() - shown.len();
        let page = serde_json::to_string(self).unwrap_or_default();
        let fail = |message: String| Err(Error::Mismatch(format!("{message}: {page}")));
        if self.images != shown.len() {
            return fail(format!("the page shows {} images, the API {}", self.images, shown.len()));
        }
        if self.loaded != shown.len() {
            return fail(format!("only {} of {} result images loaded", self.loaded, shown.len()));
        }
        let thumbs: Vec<String> = shown.iter().map(|h| h.thumb.clone().unwrap_or_default()).collect();
        if self.thumbs != thumbs {
            return fail(format!("the result images are {:?}, not the API's thumbnails {thumbs:?}", self.thumbs));
        }
        if self.largest_side > THUMB_SIDE {
            return fail(format!(
                "a result image is {} px on its longest side; a thumbnail is at most {THUMB_SIDE}",
                self.largest_side
            ));
        }
        if self.lazy != shown.len() {
            return fail(format!("{} of {} result images load lazily", self.lazy, shown.len()));
        }
        for (alt, hit) in self.alts.iter().zip(&shown) {
            let named = hit.name.as_deref().is_none_or(|name| alt.contains(name));
            if generic_alt(alt) || !named {
                return fail(format!("result {} has the alt text {alt:?}, not its file name {:?}", hit.rank, hit.name));
            }
        }
        let names: Vec<String> = shown.iter().map(|h| h.name.clone().unwrap_or_default()).collect();
        if self.names != names {
            return fail(format!("the captions name {:?}, the API {names:?}", self.names));
        }
        let links: Vec<String> = shown.iter().map(|h| h.image.clone().unwrap_or_default()).collect();
        if self.links != links {
            return fail(format!("the links to the originals are {:?}, not {links:?}", self.links));
        }
        if self.similar_buttons != shown.len() {
            return fail(format!(
                "{} of {} shown results have a \"similar\" button",
                self.similar_buttons,
                shown.len()
            ));
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
        if self.blocked_names > 0 {
            return fail("a disclaimer tile shows a file name".to_owned());
        }
        if let Some(first) = expected.results.first() {
            let first_score = format!(" {:.3}", first.score);
            if !self.scores.first().is_some_and(|s| s.ends_with(&first_score)) {
                return fail(format!("the first score is not{first_score}"));
            }
        }
        let nothing = expected.results.is_empty() && !expected.blocked;
        match (&self.notice, nothing) {
            (Some(n), false) => return fail(format!("the page says {n:?} over results")),
            (None, true) => return fail("nothing passes the threshold but the page does not say so".to_owned()),
            (Some(n), true) if !n.starts_with(NO_MATCH) => {
                return fail(format!("nothing passes the threshold but the page says {n:?}, not {NO_MATCH:?}"))
            }
            _ => {}
        }
        if expected.like.is_some() && self.heading.is_empty() {
            return fail("the page does not say which photo these are like".to_owned());
        }
        if let Some(name) = expected.like_name.as_deref().filter(|n| !self.heading.contains(*n)) {
            return fail(format!("the page calls the example {:?}, not by its file name {name:?}", self.heading));
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
        Hit::from_ranked(rank, &crate::Ranked { id: rank as u32, score, blocked }, Some(format!("p{rank}.jpg")))
    }

    /// What the API answers in [`check_mismatch`]: image 1 shown, image 2 blocked, image 3 shown.
    fn expected() -> SearchResponse {
        SearchResponse {
            query: "dogs".into(),
            like: None,
            like_name: None,
            blocked: false,
            message: None,
            results: vec![hit(1, 0.9, false), hit(2, 0.7, true), hit(3, 0.2, false)],
            k: 3,
            page: 1,
            more: false,
            min_score: None,
            indexed: 3,
            took_ms: 1.0,
        }
    }

    /// What the page shows for [`expected`].
    fn view() -> ResultsView {
        ResultsView {
            images: 2,
            loaded: 2,
            tiles: 1,
            tile_texts: vec![DISCLAIMER.to_owned()],
            tile_visible: true,
            scores: vec!["score 0.900".into(), "score 0.700".into(), "score 0.200".into()],
            thumbs: vec!["/thumbs/1".into(), "/thumbs/3".into()],
            lazy: 2,
            alts: vec!["photo p1.jpg".into(), "photo p3.jpg".into()],
            names: vec!["p1.jpg".into(), "p3.jpg".into()],
            links: vec!["/images/1".into(), "/images/3".into()],
            similar_buttons: 2,
            blocked_names: 0,
            largest_side: 320,
            notice: None,
            heading: String::new(),
            url: "?q=dogs&k=3".into(),
            screenshot: Vec::new(),
        }
    }

    #[track_caller]
    fn check_mismatch(change: impl FnOnce(&mut ResultsView), fragment: &str) {
        let expected = expected();
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
        check_mismatch(|v| v.scores[0] = "score 0.899".into(), "the first score is not 0.900");
    }

    #[test]
    fn the_page_must_show_named_lazy_thumbnails_linking_to_originals() {
        // Today's page: full-size images, eager, "result N", no names, links or buttons.
        check_mismatch(
            |v| v.thumbs = vec!["/images/1".into(), "/images/3".into()],
            r#"the result images are ["/images/1", "/images/3"], not the API's thumbnails"#,
        );
        check_mismatch(|v| v.largest_side = 500, "500 px on its longest side; a thumbnail is at most 320");
        check_mismatch(|v| v.lazy = 0, "0 of 2 result images load lazily");
        check_mismatch(|v| v.alts[1] = "result 3".into(), r#"result 3 has the alt text "result 3""#);
        check_mismatch(|v| v.alts[0] = String::new(), "result 1 has the alt text \"\"");
        check_mismatch(|v| v.alts[0] = "a photo".into(), r#"not its file name Some("p1.jpg")"#);
        check_mismatch(
            |v| v.names = vec![String::new(); 2],
            r#"the captions name ["", ""], the API ["p1.jpg", "p3.jpg"]"#,
        );
        check_mismatch(|v| v.links[1] = String::new(), "the links to the originals are");
        check_mismatch(|v| v.similar_buttons = 0, "0 of 2 shown results have a \"similar\" button");
        check_mismatch(|v| v.blocked_names = 1, "a disclaimer tile shows a file name");
        check_mismatch(|v| v.notice = Some(NO_MATCH.into()), "over results");
    }

    #[test]
    fn nothing_over_the_threshold_must_be_said() {
        let nothing = SearchResponse { results: Vec::new(), min_score: Some(0.99), ..expected() };
        let empty = ResultsView {
            images: 0,
            loaded: 0,
            tiles: 0,
            tile_texts: Vec::new(),
            scores: Vec::new(),
            thumbs: Vec::new(),
            lazy: 0,
            alts: Vec::new(),
            names: Vec::new(),
            links: Vec::new(),
            similar_buttons: 0,
            largest_side: 0,
            notice: Some(format!("{NO_MATCH}. Choose a lower threshold.")),
            ..view()
        };
        empty.verify(&nothing).unwrap();
        let e = ResultsView { notice: None, ..empty.clone() }.verify(&nothing).unwrap_err();
        assert!(e.to_string().starts_with("nothing passes the threshold but the page does not say so"), "{e}");
        let e = ResultsView { notice: Some("No results.".into()), ..empty }.verify(&nothing).unwrap_err();
        assert!(e.to_string().contains("the page says \"No results.\""), "{e}");
    }

    #[test]
    fn more_like_this_must_say_what_it_is_like() {
        let like = SearchResponse { query: String::new(), like: Some(1), ..expected() };
        let v = ResultsView { heading: "Photos most like p1.jpg".into(), url: "?like=1&k=3&page=2".into(), ..view() };
        v.verify(&like).unwrap();
        let e = ResultsView { heading: String::new(), ..v.clone() }.verify(&like).unwrap_err();
        assert!(e.to_string().starts_with("the page does not say which photo"), "{e}");
        let named = SearchResponse { like_name: Some("p1.jpg".into()), ..like.clone() };
        v.verify(&named).unwrap();
        let e = ResultsView { heading: "Photos most like photo 1".into(), ..v.clone() }.verify(&named).unwrap_err();
        assert!(e.to_string().contains("not by its file name"), "{e}");
        assert_eq!(v.api_path(), "/api/similar?id=1&k=3&page=2");
        assert_eq!(view().api_path(), "/api/search?q=dogs&k=3");
        let v = ResultsView { url: "?q=two+dogs&k=12&page=2&min_score=0.5".into(), ..view() };
        assert_eq!(v.api_path(), "/api/search?q=two+dogs&k=12&page=2&min_score=0.5");
    }

    #[test]
    fn alt_text_like_result_n_is_generic() {
        for alt in ["", "  ", "result 3", "Result 12", "result"] {
            assert!(generic_alt(alt), "{alt:?}");
        }
        for alt in ["photo 1001773457_577c3a7d70.jpg", "results of the day", "photo ranked 3"] {
            assert!(!generic_alt(alt), "{alt:?}");
        }
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
