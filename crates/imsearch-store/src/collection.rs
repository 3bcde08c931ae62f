//! The collection in Milvus: one row per image, written whole by [`MilvusStore::upsert`] (so a
//! worker killed half-way leaves whole rows or none) and read back by any number of servers.
//!
//! Every call has a deadline ([`MilvusStore::connect`]'s `timeout`): a server that is down or
//! does not answer is an error naming its address, never a hang.

use std::{
    collections::HashMap,
    future::Future,
    str::FromStr,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use base64::Engine as _;
use milvus::{
    client::Client,
    data::FieldColumn,
    index::{IndexParams, IndexType, MetricType},
    mutate::{DeleteOptions, UpsertOptions},
    options::{CreateCollectionOptions, LoadOptions},
    query::{QueryOptions, SearchOptions},
    schema::{CollectionSchema, CollectionSchemaBuilder, FieldSchema},
    value::{Value, ValueVec},
};
use serde::{Deserialize, Serialize};

/// The collection's format: what [`MilvusStore::create_or_open`] writes into its description
/// and checks when it opens one.
pub const STORE_FORMAT: u32 = 1;

/// The longest key (a path relative to the library's root), in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// The longest engine state of one row, in bytes (stored as base64 in a VarChar of at most
/// 65,535 bytes).
pub const MAX_STATE_BYTES: usize = 49_000;

/// Rows per upsert request (a row of the default engine is about 10 KB on the wire; a request
/// stays well under the server's 64 MB limit).
const ROWS_PER_REQUEST: usize = 512;
/// Rows per page read back, on average. The client reads answers of at most 4 MB (tonic's
/// default, which the SDK does not let us raise): 192 rows of the default engine are about 2 MB,
/// and a page whose answer is larger still (larger engine state, an unlucky range) is split in
/// two and read again.
const ROWS_PER_READ: usize = 192;

const KEY: &str = "key";
const HASH: &str = "hash";
const BUCKET: &str = "bucket";
const SIZE: &str = "size";
const MTIME: &str = "mtime_ns";
const SHOWN: &str = "shown";
const REASON: &str = "reason";
const STATE: &str = "state";
const LIKE: &str = "like";
const INDEX_NAME: &str = "like_index";
const ALL_FIELDS: [&str; 9] = [KEY, HASH, BUCKET, SIZE, MTIME, SHOWN, REASON, STATE, LIKE];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{url} is not a store address: {why} (expected milvus://HOST:PORT/COLLECTION)")]
    Url { url: String, why: String },
    #[error("cannot reach the Milvus server at {address} within {timeout:?}: {what}")]
    Unreachable { address: String, timeout: Duration, what: String },
    #[error("the Milvus server at {address} did not answer `{call}` within {timeout:?}")]
    Timeout { address: String, call: &'static str, timeout: Duration },
    #[error("Milvus at {address} failed `{call}`")]
    Milvus {
        address: String,
        call: &'static str,
        #[source]
        source: Box<milvus::error::Error>,
    },
    #[error("collection {collection} at {address}: {why}")]
    Collection { address: String, collection: String, why: String },
    #[error("row {key:?}: {why}")]
    Row { key: String, why: String },
    #[error("cannot start the async runtime of the Milvus client")]
    Runtime(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The collection has no vector index yet, so it cannot be loaded (another worker created it
    /// a moment ago and is building the index).
    fn is_index_missing(&self) -> bool {
        match self {
            Error::Milvus { source, .. } => match &**source {
                milvus::error::Error::Server(code, message) => {
                    format!("{code:?}") == "IndexNotExist" || message.contains("index not found")
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// The server's answer was larger than the client reads in one message (gRPC's
    /// `OUT_OF_RANGE`); the same request for fewer rows succeeds.
    fn is_answer_too_large(&self) -> bool {
        match self {
            Error::Milvus { source, .. } => {
                matches!(&**source, milvus::error::Error::Grpc(status) if status.code() == tonic::Code::OutOfRange)
            }
            _ => false,
        }
    }
}

/// Where a collection lives: `milvus://HOST:PORT/COLLECTION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    pub host: String,
    pub port: u16,
    pub collection: String,
}

impl StoreUrl {
    /// `HOST:PORT`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "milvus://{}:{}/{}", self.host, self.port, self.collection)
    }
}

impl FromStr for StoreUrl {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self> {
        let bad = |why: &str| Error::Url { url: url.to_owned(), why: why.to_owned() };
        let rest = url.strip_prefix("milvus://").ok_or_else(|| bad("it does not start with milvus://"))?;
        let (address, collection) = rest.split_once('/').ok_or_else(|| bad("no collection after the address"))?;
        let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port: u16 = port.parse().map_err(|_| bad(&format!("port {port:?} is not a number from 1 to 65535")))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        // Milvus's rule for collection names.
        let mut chars = collection.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || collection.len() > 255 {
            return Err(bad(&format!(
                "collection {collection:?} must be a letter or '_' then letters, digits or '_' (at most 255)"
            )));
        }
        Ok(StoreUrl { host: host.to_owned(), port, collection: collection.to_owned() })
    }
}

/// A file's size and modification time: unchanged, the file is not read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i64,
}

/// One image of the collection, written and read whole.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    /// The file's path relative to the library's root, `/`-separated: the primary key.
    pub key: String,
    /// The sha256 of its bytes, in hex.
    pub hash: String,
    /// A stable hash of the key (below 2^31) that assigns the row to a worker's shard:
    /// `bucket % workers == worker`.
    pub bucket: u32,
    pub stamp: Stamp,
    /// Why the image policy hides it; `None`: shown.
    pub blocked: Option<String>,
    /// The engine's work on the image, opaque here.
    pub state: Vec<u8>,
    /// The vector "more like this" searches by inner product.
    pub like: Vec<f32>,
}

/// What a collection holds: the length of its vectors and a description of whatever made the
/// rows (for imsearch: the engine's fingerprint and feature layout), checked on open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionSpec {
    pub like_dim: usize,
    /// Opaque to the store; two specs of one collection must be equal.
    pub made_by: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Description {
    imsearch_store: u32,
    spec: CollectionSpec,
}

/// The index Milvus searches `like` with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorIndex {
    /// Exact: every row compared.
    Flat,
    /// Approximate (a graph of `m` links per node, built with `ef_construction`), searched with
    /// `ef` candidates.
    Hnsw { m: u32, ef_construction: u32, ef: u32 },
}

/// A client of one collection on one Milvus server, blocking: it runs its own single-threaded
/// async runtime.
pub struct MilvusStore {
    runtime: tokio::runtime::Runtime,
    client: Client,
    url: StoreUrl,
    timeout: Duration,
    /// The HNSW search's `ef` (0: an exact index).
    ef: AtomicU32,
}

impl std::fmt::Debug for MilvusStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MilvusStore").field("url", &self.url).field("timeout", &self.timeout).finish()
    }
}

impl MilvusStore {
    /// Connects to the server of `url`; every call after this one has `timeout` too.
    pub fn connect(url: &StoreUrl, timeout: Duration) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let address = url.address();
        let endpoint = format!("http://{address}");
        let unreachable = |what: String| Error::Unreachable { address: address.clone(), timeout, what };
        let client = runtime
            .block_on(async {
                tokio::time::timeout(timeout, Client::with_timeout(endpoint, timeout, None, None)).await
            })
            .map_err(|_| unreachable("no answer".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let store = MilvusStore { runtime, client, url: url.clone(), timeout, ef: AtomicU32::new(0) };
        // A server that accepts connections but does not serve fails here, not on first use.
        store.call("list_collections", |c| async move { c.list_collections().await })?;
        Ok(store)
    }

    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    fn call<'a, T, F, Fut>(&'a self, call: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(&'a Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, milvus::error::Error>> + 'a,
    {
        self.call_within(call, self.timeout, f)
    }

    fn call_within<'a, T, F, Fut>(&'a self, call: &'static str, timeout: Duration, f: F) -> Result<T>
    where
        F: FnOnce(&'a Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, milvus::error::Error>> + 'a,
    {
        let address = self.url.address();
        match self.runtime.block_on(async { tokio::time::timeout(timeout, f(&self.client)).await }) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(Error::Milvus { address, call, source: Box::new(source) }),
            Err(_) => Err(Error::Timeout { address, call, timeout }),
        }
    }

    fn collection_error(&self, why: impl Into<String>) -> Error {
        Error::Collection { address: self.url.address(), collection: self.url.collection.clone(), why: why.into() }
    }

    fn schema(&self, spec: &CollectionSpec) -> Result<CollectionSchema> {
        let description = serde_json::to_string(&Description { imsearch_store: STORE_FORMAT, spec: spec.clone() })
            .map_err(|e| self.collection_error(e.to_string()))?;
        CollectionSchemaBuilder::new(&self.url.collection, &description)
            .add_field(FieldSchema::new_primary_varchar(
                KEY,
                "path relative to the library root",
                false,
                MAX_KEY_BYTES as i32,
            ))
            .add_field(FieldSchema::new_varchar(HASH, "sha256 of the file", 64))
            .add_field(FieldSchema::new_int64(BUCKET, "stable hash of the key: its shard"))
            .add_field(FieldSchema::new_int64(SIZE, "file size in bytes"))
            .add_field(FieldSchema::new_int64(MTIME, "file modification time, ns"))
            .add_field(FieldSchema::new_bool(SHOWN, "the image policy allows it"))
            .add_field(FieldSchema::new_varchar(REASON, "why the image policy hides it", 2048))
            .add_field(FieldSchema::new_varchar(STATE, "the engine's state, base64", 65_535))
            .add_field(FieldSchema::new_float_vector(LIKE, "more like this, by inner product", spec.like_dim as i64))
            .build()
            .map_err(|e| self.collection_error(e.to_string()))
    }

    /// The collection's spec, or `None` when there is no such collection.
    pub fn spec(&self) -> Result<Option<CollectionSpec>> {
        let name = self.url.collection.clone();
        if !self.call("has_collection", |c| async move { c.has_collection(name).await })? {
            return Ok(None);
        }
        let name = self.url.collection.clone();
        let described = self.call("describe_collection", |c| async move { c.describe_collection(name).await })?;
        let description: Description = serde_json::from_str(&described.schema.description).map_err(|e| {
            self.collection_error(format!("not an imsearch collection (its description does not parse: {e})"))
        })?;
        if description.imsearch_store != STORE_FORMAT {
            return Err(self.collection_error(format!(
                "format {}, this build reads {STORE_FORMAT}: drop it and index again",
                description.imsearch_store
            )));
        }
        Ok(Some(description.spec))
    }

    /// Opens the collection for `spec`, creating it (with an exact index, loaded) when there is
    /// none; a collection made for another spec is an error naming both.
    pub fn create_or_open(&self, spec: &CollectionSpec) -> Result<()> {
        if let Some(found) = self.spec()? {
            if found != *spec {
                return Err(self.collection_error(format!(
                    "it holds rows made by {} ({} values per vector), not by {} ({}): index into another collection or drop this one",
                    found.made_by, found.like_dim, spec.made_by, spec.like_dim
                )));
            }
            return self.load_when_indexed();
        }
        let schema = self.schema(spec)?;
        let options = CreateCollectionOptions::with_consistency_level(milvus::client::ConsistencyLevel::Strong);
        match self.call("create_collection", |c| async move { c.create_collection(schema, Some(options)).await }) {
            // This worker made it, so this worker indexes it; but Milvus also answers success to
            // a `create_collection` for a collection that exists with the same schema, so
            // another worker may be building the same index: nothing is dropped here (a drop
            // would pull the index from under the other worker's wait for it, seen in CI as
            // `create_index` failing with IndexNotExist), and the server accepts a second
            // identical `create_index`.
            Ok(()) => match self.build_index(VectorIndex::Flat) {
                Ok(()) => self.load(),
                Err(e) => {
                    tracing::debug!("building the index of the new collection: {e}; waiting for another worker's");
                    self.load_when_indexed()
                }
            },
            // Another worker created it first and indexes it.
            Err(e) if self.spec()?.as_ref() == Some(spec) => {
                tracing::debug!("collection created meanwhile: {e}");
                self.load_when_indexed()
            }
            Err(e) => Err(e),
        }
    }

    /// Loads the collection. One that another worker has just created has no index until that
    /// worker builds it, and cannot be loaded before: wait for the index (up to the call
    /// timeout), then, if it never came (its creator died in between), build it here.
    fn load_when_indexed(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            match self.load() {
                Err(e) if e.is_index_missing() => {
                    if std::time::Instant::now() >= deadline {
                        tracing::warn!("{}: no index after {:?}; building it", self.url, self.timeout);
                        return self.set_index(VectorIndex::Flat);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    fn load(&self) -> Result<()> {
        let name = self.url.collection.clone();
        self.call("load_collection", |c| async move { c.load_collection(name, Some(LoadOptions::default())).await })
    }

    /// Replaces the vector index (the collection is released while it is rebuilt).
    pub fn set_index(&self, index: VectorIndex) -> Result<()> {
        let name = self.url.collection.clone();
        let _ = self.call("release_collection", |c| async move { c.release_collection(name).await });
        let name = self.url.collection.clone();
        if let Err(e) = self.call("drop_index", |c| async move { c.drop_index(name, INDEX_NAME.to_owned()).await }) {
            tracing::debug!("no index to drop: {e}");
        }
        self.build_index(index)?;
        self.load()
    }

    /// Builds the vector index and waits until it is built (the collection has none, or the
    /// same one).
    fn build_index(&self, index: VectorIndex) -> Result<()> {
        let (kind, params, ef) = match index {
            VectorIndex::Flat => (IndexType::Flat, HashMap::new(), 0),
            VectorIndex::Hnsw { m, ef_construction, ef } => (
                IndexType::HNSW,
                HashMap::from([
                    ("M".to_owned(), m.to_string()),
                    ("efConstruction".to_owned(), ef_construction.to_string()),
                ]),
                ef.max(1),
            ),
        };
        let params = IndexParams::new(INDEX_NAME.to_owned(), kind, MetricType::IP, params);
        // The SDK's create_index waits until the index is built: minutes for a graph over a
        // large collection (128 s for HNSW over 100,000 rows here), so it gets a longer deadline.
        let name = self.url.collection.clone();
        let build = self.timeout.max(INDEX_BUILD_TIMEOUT);
        self.call_within("create_index", build, |c| async move { c.create_index(name, LIKE, params).await })?;
        self.ef.store(ef, Ordering::Relaxed);
        Ok(())
    }

    /// Writes `rows` whole (a row with the same key is replaced), in requests of a few hundred
    /// rows; a row too long for the collection is an error naming its key, before anything of
    /// its request is sent.
    pub fn upsert(&self, rows: &[StoredRow], spec: &CollectionSpec) -> Result<()> {
        let schema = self.schema(spec)?;
        for chunk in rows.chunks(ROWS_PER_REQUEST) {
            for row in chunk {
                let bad = |why: String| Error::Row { key: row.key.clone(), why };
                if row.key.len() > MAX_KEY_BYTES {
                    return Err(bad(format!("a key of {} bytes (at most {MAX_KEY_BYTES})", row.key.len())));
                }
                if row.state.len() > MAX_STATE_BYTES {
                    return Err(bad(format!("a state of {} bytes (at most {MAX_STATE_BYTES})", row.state.len())));
                }
                if row.like.len() != spec.like_dim {
                    return Err(bad(format!(
                        "a vector of {} values, the collection's have {}",
                        row.like.len(),
                        spec.like_dim
                    )));
                }
            }
            let field = |name: &str| schema.get_field(name).expect("the schema has every field");
            let columns = vec![
                FieldColumn::new(field(KEY), chunk.iter().map(|r| r.key.clone()).collect::<Vec<_>>()),
                FieldColumn::new(field(HASH), chunk.iter().map(|r| r.hash.clone()).collect::<Vec<_>>()),
                FieldColumn::new(field(BUCKET), chunk.iter().map(|r| i64::from(r.bucket)).collect::<Vec<_>>()),
                FieldColumn::new(field(SIZE), chunk.iter().map(|r| r.stamp.size as i64).collect::<Vec<_>>()),
                FieldColumn::new(field(MTIME), chunk.iter().map(|r| r.stamp.mtime_ns).collect::<Vec<_>>()),
                FieldColumn::new(field(SHOWN), chunk.iter().map(|r| r.blocked.is_none()).collect::<Vec<_>>()),
                FieldColumn::new(
                    field(REASON),
                    chunk.iter().map(|r| r.blocked.clone().unwrap_or_default()).collect::<Vec<_>>(),
                ),
                FieldColumn::new(
                    field(STATE),
                    chunk
                        .iter()
                        .map(|r| base64::engine::general_purpose::STANDARD.encode(&r.state))
                        .collect::<Vec<_>>(),
                ),
                FieldColumn::new(field(LIKE), chunk.iter().flat_map(|r| r.like.iter().copied()).collect::<Vec<f32>>()),
            ];
            let name = self.url.collection.clone();
            self.call("upsert", |c| async move { c.upsert(name, columns, None::<UpsertOptions>).await.map(|_| ()) })?;
        }
        Ok(())
    }

    /// Seals what was written, so it survives a restart of the server without replaying its log.
    pub fn flush(&self) -> Result<()> {
        let name = self.url.collection.clone();
        self.call("flush", |c| async move { c.flush(name).await })
    }

    /// Deletes the rows of `keys`.
    pub fn delete(&self, keys: &[String]) -> Result<()> {
        for chunk in keys.chunks(ROWS_PER_REQUEST) {
            let options = DeleteOptions::with_filter(self.keys_filter(chunk)?);
            let name = self.url.collection.clone();
            self.call("delete", |c| async move { c.delete(name, &options).await.map(|_| ()) })?;
        }
        Ok(())
    }

    /// Rows in the collection.
    pub fn count(&self) -> Result<usize> {
        Ok(self.stamps(None)?.len())
    }

    /// Every row's key, hash and stamp, of shard `worker` of `workers` when given.
    pub fn stamps(&self, shard: Option<(u32, u32)>) -> Result<Vec<(String, String, Stamp)>> {
        let columns = self.read_all(shard, &[KEY, HASH, SIZE, MTIME])?;
        let keys = strings(&columns, KEY, self)?;
        let hashes = strings(&columns, HASH, self)?;
        let sizes = longs(&columns, SIZE, self)?;
        let mtimes = longs(&columns, MTIME, self)?;
        Ok(keys
            .into_iter()
            .zip(hashes)
            .zip(sizes.into_iter().zip(mtimes))
            .map(|((k, h), (size, mtime_ns))| (k, h, Stamp { size: size as u64, mtime_ns }))
            .collect())
    }

    /// Every row, whole, sorted by key (so every server reads the same order).
    pub fn rows(&self) -> Result<Vec<StoredRow>> {
        let columns = self.read_all(None, &ALL_FIELDS)?;
        let mut rows = self.parse_rows(&columns)?;
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(rows)
    }

    /// The rows of `keys` that exist, whole, sorted by key.
    pub fn rows_by_key(&self, keys: &[String]) -> Result<Vec<StoredRow>> {
        let mut rows = Vec::new();
        let mut chunks: Vec<&[String]> = keys.chunks(ROWS_PER_READ).rev().collect();
        while let Some(chunk) = chunks.pop() {
            let options = QueryOptions::new().output_fields(ALL_FIELDS.iter().map(|f| (*f).to_owned()).collect());
            let filter = self.keys_filter(chunk)?;
            let name = self.url.collection.clone();
            match self.call("query", |c| async move { c.query(name, filter.as_str(), &options).await }) {
                Ok(columns) => rows.extend(self.parse_rows(&columns)?),
                Err(e) if e.is_answer_too_large() && chunk.len() > 1 => {
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    chunks.push(b);
                    chunks.push(a);
                }
                Err(e) => return Err(e),
            }
        }
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(rows)
    }

    /// `key in [...]`, each key a JSON string literal (which Milvus's expressions read with its
    /// escapes).
    fn keys_filter(&self, keys: &[String]) -> Result<String> {
        let list = serde_json::to_string(keys).map_err(|e| self.collection_error(e.to_string()))?;
        Ok(format!("{KEY} in {list}"))
    }

    fn parse_rows(&self, columns: &[FieldColumn]) -> Result<Vec<StoredRow>> {
        let keys = strings(columns, KEY, self)?;
        let hashes = strings(columns, HASH, self)?;
        let buckets = longs(columns, BUCKET, self)?;
        let sizes = longs(columns, SIZE, self)?;
        let mtimes = longs(columns, MTIME, self)?;
        let shown = bools(columns, SHOWN, self)?;
        let reasons = strings(columns, REASON, self)?;
        let states = strings(columns, STATE, self)?;
        let like = floats(columns, LIKE, self)?;
        let n = keys.len();
        if [hashes.len(), buckets.len(), sizes.len(), mtimes.len(), shown.len(), reasons.len(), states.len()]
            .iter()
            .any(|&l| l != n)
            || (n > 0 && like.len() % n != 0)
        {
            return Err(self.collection_error("the server returned columns of different lengths"));
        }
        let dim = like.len().checked_div(n).unwrap_or(0);
        let mut rows = Vec::with_capacity(n);
        for i in 0..n {
            let state = base64::engine::general_purpose::STANDARD
                .decode(&states[i])
                .map_err(|e| Error::Row { key: keys[i].clone(), why: format!("its state is not base64: {e}") })?;
            rows.push(StoredRow {
                key: keys[i].clone(),
                hash: hashes[i].clone(),
                bucket: buckets[i] as u32,
                stamp: Stamp { size: sizes[i] as u64, mtime_ns: mtimes[i] },
                // Fail closed: a row is shown only when it says so.
                blocked: if shown[i] { None } else { Some(reasons[i].clone()) },
                state,
                like: like[i * dim..(i + 1) * dim].to_vec(),
            });
        }
        Ok(rows)
    }

    /// The `k` rows whose `like` vectors have the largest inner product with `vector`, best
    /// first, with that product. Read with bounded staleness: rows written in the last few
    /// seconds may not be searched yet ([`MilvusStore::rows`] reads strongly).
    pub fn search_like(&self, vector: &[f32], k: usize) -> Result<Vec<(String, f32)>> {
        // Bounded staleness: a strong read waits for the next time tick (about 200 ms on 2.3).
        let mut options = SearchOptions::new()
            .consistency_level(milvus::client::ConsistencyLevel::Bounded as i32)
            .limit(k)
            .output_fields(vec![KEY.to_owned()])
            .add_param("anns_field", LIKE)
            .add_param("metric_type", "IP");
        let ef = self.ef.load(Ordering::Relaxed);
        if ef > 0 {
            options = options.add_param("ef", ef.max(k as u32).to_string());
        }
        let name = self.url.collection.clone();
        let data = vec![Value::from(vector.to_vec())];
        let results = self.call("search", |c| async move {
            c.search(name, data, Some(options)).await.map(|r| {
                r.into_iter()
                    .map(|hits| {
                        let keys: Vec<String> = hits
                            .field
                            .iter()
                            .find(|f| f.name == KEY)
                            .and_then(|f| f.value.clone().try_into().ok())
                            .unwrap_or_default();
                        (keys, hits.score)
                    })
                    .collect::<Vec<_>>()
            })
        })?;
        let Some((keys, scores)) = results.into_iter().next() else { return Ok(Vec::new()) };
        if keys.len() != scores.len() {
            return Err(self.collection_error("a search returned keys and scores of different lengths"));
        }
        Ok(keys.into_iter().zip(scores).collect())
    }

    /// Drops the collection and everything in it (nothing to drop is not an error).
    pub fn drop_collection(&self) -> Result<()> {
        let name = self.url.collection.clone();
        if self.call("has_collection", |c| async move { c.has_collection(name).await })? {
            let name = self.url.collection.clone();
            self.call("drop_collection", |c| async move { c.drop_collection(name).await })?;
        }
        Ok(())
    }

    /// Every row (of one shard) with `fields`, page by page: pages are ranges of `bucket` (a
    /// uniform hash of the key), sized from the collection's row count, and a page that fills
    /// the server's query window is split in two and read again. (The SDK's query iterator is
    /// not used: it pages by key with the key unescaped in its filter, and it cuts vector
    /// columns short.)
    fn read_all(&self, shard: Option<(u32, u32)>, fields: &[&str]) -> Result<Vec<FieldColumn>> {
        let name = self.url.collection.clone();
        let stats = self.call("get_collection_stats", |c| async move { c.get_collection_stats(&name).await })?;
        let rows: u64 = stats.get("row_count").and_then(|v| v.parse().ok()).unwrap_or(0);
        let pages = (rows / ROWS_PER_READ as u64 + 1).min(1 << 20);
        let span = (BUCKETS / pages).max(1);
        let mut ranges: Vec<(u64, u64)> =
            (0..pages).map(|p| (p * span, if p + 1 == pages { BUCKETS } else { (p + 1) * span })).collect();
        ranges.reverse();
        let mut all: Vec<FieldColumn> = Vec::new();
        while let Some((lo, hi)) = ranges.pop() {
            let mut filter = format!("{BUCKET} >= {lo} && {BUCKET} < {hi}");
            if let Some((worker, workers)) = shard {
                filter = format!("{BUCKET} % {workers} == {worker} && {filter}");
            }
            let options = QueryOptions::new()
                .limit(QUERY_WINDOW as i64)
                .output_fields(fields.iter().map(|f| (*f).to_owned()).collect());
            let name = self.url.collection.clone();
            let page = match self.call("query", |c| async move { c.query(name, filter.as_str(), &options).await }) {
                Ok(page) => page,
                Err(e) if e.is_answer_too_large() && hi - lo > 1 => {
                    let mid = lo + (hi - lo) / 2;
                    ranges.push((mid, hi));
                    ranges.push((lo, mid));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let len = page.iter().find(|c| c.name == KEY).map_or(0, FieldColumn::len);
            if len >= QUERY_WINDOW && hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                ranges.push((mid, hi));
                ranges.push((lo, mid));
                continue;
            }
            if len == 0 {
                continue;
            }
            if all.is_empty() {
                all = page;
                continue;
            }
            for column in page {
                let Some(into) = all.iter_mut().find(|c| c.name == column.name) else {
                    return Err(self.collection_error(format!("a page without the column {}", column.name)));
                };
                append(&mut into.value, column.value).map_err(|why| self.collection_error(why))?;
            }
        }
        Ok(all)
    }
}

/// How long building a vector index may take (the SDK waits for the build to finish).
const INDEX_BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Buckets are 31-bit: `0..BUCKETS`.
const BUCKETS: u64 = 1 << 31;
/// The most rows one query returns (Milvus's `maxQueryResultWindow` default).
const QUERY_WINDOW: usize = 16_384;

fn append(into: &mut ValueVec, more: ValueVec) -> std::result::Result<(), String> {
    match (into, more) {
        (ValueVec::String(a), ValueVec::String(b)) => a.extend(b),
        (ValueVec::Long(a), ValueVec::Long(b)) => a.extend(b),
        (ValueVec::Bool(a), ValueVec::Bool(b)) => a.extend(b),
        (ValueVec::Float(a), ValueVec::Float(b)) => a.extend(b),
        (a, b) => return Err(format!("pages of different types ({a:?} then {b:?})")),
    }
    Ok(())
}

fn column<'a>(columns: &'a [FieldColumn], name: &str, store: &MilvusStore) -> Result<Option<&'a ValueVec>> {
    if columns.is_empty() {
        return Ok(None);
    }
    columns
        .iter()
        .find(|c| c.name == name)
        .map(|c| Some(&c.value))
        .ok_or_else(|| store.collection_error(format!("the server returned no column {name}")))
}

macro_rules! typed_column {
    ($fn:ident, $variant:ident, $t:ty) => {
        fn $fn(columns: &[FieldColumn], name: &str, store: &MilvusStore) -> Result<Vec<$t>> {
            match column(columns, name, store)? {
                None => Ok(Vec::new()),
                Some(ValueVec::$variant(v)) => Ok(v.clone()),
                Some(other) => Err(store.collection_error(format!("column {name} holds {other:?}"))),
            }
        }
    };
}
typed_column!(strings, String, String);
typed_column!(longs, Long, i64);
typed_column!(bools, Bool, bool);
typed_column!(floats, Float, f32);

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(url: &str, want: std::result::Result<(&str, u16, &str), &str>) {
        match (url.parse::<StoreUrl>(), want) {
            (Ok(got), Ok((host, port, collection))) => {
                assert_eq!(got, StoreUrl { host: host.into(), port, collection: collection.into() })
            }
            (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{e}"),
            (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn store_addresses_parse_or_say_what_is_wrong() {
        check("milvus://127.0.0.1:19530/photos", Ok(("127.0.0.1", 19530, "photos")));
        check("milvus://milvus.internal:443/_team_2", Ok(("milvus.internal", 443, "_team_2")));
        check("http://127.0.0.1:19530/photos", Err("does not start with milvus://"));
        check("milvus://127.0.0.1:19530", Err("no collection"));
        check("milvus://127.0.0.1/photos", Err("no port"));
        check("milvus://:19530/photos", Err("no host"));
        check("milvus://h:99999/photos", Err("not a number"));
        check("milvus://h:1/9photos", Err("must be a letter"));
        check("milvus://h:1/my-photos", Err("must be a letter"));
        check("milvus://h:1/", Err("must be a letter"));
    }

    #[test]
    fn an_unreachable_server_is_an_error_naming_it_not_a_hang() {
        // A port nothing listens on (bound then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url: StoreUrl = format!("milvus://127.0.0.1:{port}/photos").parse().unwrap();
        let started = std::time::Instant::now();
        let err = MilvusStore::connect(&url, Duration::from_secs(3)).unwrap_err().to_string();
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());

        // A listener that accepts and never answers: the call times out instead of hanging.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = silent.local_addr().unwrap();
        let url: StoreUrl = format!("milvus://{address}/photos").parse().unwrap();
        let started = std::time::Instant::now();
        let err = MilvusStore::connect(&url, Duration::from_secs(2)).unwrap_err().to_string();
        assert!(err.contains(&address.to_string()), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    }
}
