//! Downloads from the Hugging Face hub with hf-hub's sync API, for machines that reach it.
//!
//! Behind the `hub` feature, off by default: the project's machines cannot reach the hub, so
//! nothing else in the workspace may depend on this path and no test exercises it.

use std::path::PathBuf;

use crate::{Error, ModelStore, Result};

impl ModelStore {
    /// Downloads `files` of the hub model repository `repo` (e.g. `openai/clip-vit-base-patch32`)
    /// at `revision` (default `main`) into `ROOT/hub`, hf-hub's cache layout, and returns their
    /// local paths in the order given. Files already in that cache are not downloaded again.
    pub fn fetch_from_hub(&self, repo: &str, revision: Option<&str>, files: &[&str]) -> Result<Vec<PathBuf>> {
        let hub_err =
            |file: &str, source| Error::Hub { repo: repo.to_owned(), file: file.to_owned(), source: Box::new(source) };
        let api = hf_hub::api::sync::ApiBuilder::new()
            .with_cache_dir(self.root().join("hub"))
            .with_progress(false)
            .build()
            .map_err(|e| hub_err("", e))?;
        let repo_api = api.repo(hf_hub::Repo::with_revision(
            repo.to_owned(),
            hf_hub::RepoType::Model,
            revision.unwrap_or("main").to_owned(),
        ));
        files
            .iter()
            .map(|file| {
                tracing::info!(repo, file, "fetching from the hub");
                repo_api.get(file).map_err(|e| hub_err(file, e))
            })
            .collect()
    }
}
