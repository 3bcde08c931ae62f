//! The saved engine for these options: where it lives, loading it, and building it with
//! imsearch-train from the dataset and a recipe. `cargo xtask eval` builds it with the recipe
//! it chose on validation; `search`, `serve` and `demo` load it and build it from
//! [`Recipe::default`](imsearch_engine::Recipe::default) when it is absent.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle::Device;
use imsearch_data::Dataset;
use imsearch_engine::{ClassifierHead, Engine};
use imsearch_train::Sources;

use crate::{
    embed,
    train::{self, Pipeline},
};

/// Where the engine of these options is kept: `<workdir>/engine-seed<seed>-<options digest>`.
pub(crate) fn engine_dir(pipeline: &Pipeline) -> PathBuf {
    let digest = pipeline.checkpoints(false).digest();
    pipeline.embed.workdir().join(format!("engine-seed{}-{digest}", pipeline.train.seed))
}

/// The engine of these options when one is saved and loads; the error says why not.
pub(crate) fn load(pipeline: &Pipeline) -> Result<Engine> {
    let dir = engine_dir(pipeline);
    let layout = pipeline.embed.layout()?;
    Engine::load(&dir, &layout, embed::TEXT_MODEL).with_context(|| format!("no usable engine in {}", dir.display()))
}

/// The saved engine, or (when it is absent or unusable and `may_build`) one built from the
/// dataset with the default recipe and saved: from `loaded` (the dataset and its embeddings)
/// when the caller has them, else loaded here. Returns it, its folder and whether it was built.
pub(crate) fn ensure(
    pipeline: &Pipeline,
    may_build: bool,
    loaded: Option<(&Dataset, &embed::Embeddings)>,
) -> Result<(Engine, PathBuf, bool)> {
    let dir = engine_dir(pipeline);
    match load(pipeline) {
        Ok(engine) => return Ok((engine, dir, false)),
        Err(e) if !may_build => {
            return Err(e.context("run `cargo xtask eval` (or this command without --json) once to build it"))
        }
        Err(e) if Engine::exists(&dir) => eprintln!("{e:#}; building it again"),
        Err(_) => eprintln!("no engine in {}; building it from the default recipe", dir.display()),
    }
    let fresh;
    let (ds, emb) = match loaded {
        Some(loaded) => loaded,
        None => {
            let ds = pipeline.dataset()?;
            let emb = embed::embed_all(&ds, &pipeline.models.store()?, &pipeline.embed)?;
            fresh = (ds, emb);
            (&fresh.0, &fresh.1)
        }
    };
    let data = train::prepare(ds, emb, &pipeline.train)?;
    let recipe = imsearch_train::default_recipe(&data.image_parts, &data.view_names());
    let dropped = imsearch_engine::Recipe::default().members.len() - recipe.members.len();
    if dropped > 0 {
        eprintln!(
            "note: {dropped} of the default recipe's fusion members left out: their encoders are not in --image-encoders \
             or their views not in --train-views"
        );
    }
    let provenance = serde_json::json!({ "recipe": "the default (Recipe::default), chosen by cargo xtask eval" });
    let sources = Sources { data: &data, embeddings: &train::caches(emb), heads: &heads(pipeline)? };
    let ck = pipeline.checkpoints(false);
    let engine = imsearch_train::build(&sources, recipe, &ck, provenance, &dir, &mut train::printer())?;
    Ok((engine, dir, true))
}

/// Each image encoder's ImageNet classifier, in the layout's order.
pub(crate) fn heads(pipeline: &Pipeline) -> Result<Vec<ClassifierHead>> {
    let store = pipeline.models.store()?;
    let mut heads = Vec::new();
    for kind in pipeline.embed.kinds()? {
        let files = crate::models::ensure(&store, kind.id())?;
        let encoder = imsearch_vision::load(kind, &files.weights, &Device::Cpu)
            .with_context(|| format!("failed to load {kind}"))?;
        heads.push(ClassifierHead::of_encoder(encoder.as_ref())?);
    }
    Ok(heads)
}
