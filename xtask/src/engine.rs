//! The saved engine for these options: where it lives, loading it, and building it from the
//! dataset and a recipe (training only the fusion members the recipe names). `cargo xtask eval`
//! builds it with the recipe it chose on validation; `search`, `serve` and `demo` load it and
//! build it from [`Recipe::default`] when it is absent.

use std::{collections::BTreeMap, path::PathBuf, time::Instant};

use anyhow::{Context, Result};
use candle::{Device, Tensor};
use imsearch_data::Dataset;
use imsearch_engine::{
    Bridge, ClassTexts, ClassifierHead, Engine, EngineData, ImagePart, Neighbourhood, Neighbours, Recipe,
};
use imsearch_fusion::PairSet;

use crate::{
    embed::{self, Embeddings},
    paths,
    train::{self, Pipeline, Prepared, CONFIRMED},
};

/// Where the engine of these options is kept: `<workdir>/engine-seed<seed>-<options digest>`.
pub(crate) fn engine_dir(pipeline: &Pipeline) -> PathBuf {
    let key = train::options_digest(&pipeline.embed, &pipeline.train);
    paths::resolve(&pipeline.embed.workdir).join(format!("engine-seed{}-{key}", pipeline.train.seed))
}

/// The engine of these options when one is saved and loads; the error says why not.
pub(crate) fn load(pipeline: &Pipeline) -> Result<Engine> {
    let dir = engine_dir(pipeline);
    let layout = pipeline.embed.layout()?;
    Engine::load(&dir, &layout, embed::TEXT_MODEL).with_context(|| format!("no usable engine in {}", dir.display()))
}

/// The saved engine, or (when it is absent or unusable and `may_build`) one built from the
/// dataset with the default recipe and saved. Returns it, its folder and whether it was built.
pub(crate) fn ensure(pipeline: &Pipeline, may_build: bool) -> Result<(Engine, PathBuf, bool)> {
    let dir = engine_dir(pipeline);
    match load(pipeline) {
        Ok(engine) => return Ok((engine, dir, false)),
        Err(e) if !may_build => {
            return Err(e.context("run `cargo xtask eval` (or this command without --json) once to build it"))
        }
        Err(e) if Engine::exists(&dir) => eprintln!("{e:#}; building it again"),
        Err(_) => eprintln!("no engine in {}; building it from the default recipe", dir.display()),
    }
    let data = paths::data_dir(pipeline.data.as_deref())?;
    let ds = Dataset::load(&data, Default::default())
        .with_context(|| format!("failed to load the dataset at {}", data.display()))?;
    let emb = embed::embed_all(&ds, &pipeline.models.store()?, &pipeline.embed)?;
    let p = Prepared::new(&ds, &emb, &pipeline.train)?;
    let recipe = default_recipe(&p);
    let provenance = serde_json::json!({ "recipe": "the default (Recipe::default), chosen by cargo xtask eval" });
    let engine = build(&p, &emb, pipeline, recipe, false, provenance)?;
    Ok((engine, dir, true))
}

/// [`Recipe::default`] for this layout: its members whose encoders are all present (only the
/// model on every encoder when there is one).
pub(crate) fn default_recipe(p: &Prepared) -> Recipe {
    let mut recipe = Recipe::default();
    let ids: Vec<&str> = p.image_parts.iter().map(|(id, _)| id.split('@').next().unwrap_or(id)).collect();
    let epochs = recipe.members.first().map_or(10, |m| m.epochs);
    recipe.members.retain(|m| m.encoders.iter().all(|e| ids.contains(&e.as_str())));
    if ids.len() == 1 {
        recipe.members.retain(|m| m.encoders.is_empty());
    }
    if recipe.members.is_empty() {
        recipe.members.push(imsearch_engine::MemberRecipe { encoders: Vec::new(), epochs });
    }
    recipe
}

/// Builds the engine of `recipe` from every training image and saves it in [`engine_dir`]:
/// each member retrained on every training image for its epochs (checkpoints reused unless
/// `retrain`), the caption neighbours over every training image, the bridge's heads from the
/// encoders, the bank of every training caption.
pub(crate) fn build(
    p: &Prepared,
    emb: &Embeddings,
    pipeline: &Pipeline,
    recipe: Recipe,
    retrain: bool,
    mut provenance: serde_json::Value,
) -> Result<Engine> {
    let start = Instant::now();
    let mut members = Vec::new();
    for m in &recipe.members {
        let (model, dir) = match m.encoders.as_slice() {
            [] => {
                train::load_or_train_all(p, &pipeline.embed, &pipeline.train, retrain, pipeline.train.seed, m.epochs)?
            }
            [one] => {
                let part = p
                    .image_parts
                    .iter()
                    .position(|(id, _)| id.split('@').next() == Some(one.as_str()))
                    .with_context(|| format!("the recipe's member on {one} has no features in this layout"))?;
                let (mp, membed) = p.only(part, &pipeline.embed)?;
                train::load_or_train_all(&mp, &membed, &pipeline.train, retrain, pipeline.train.seed, m.epochs)?
            }
            more => anyhow::bail!("a fusion member reads every encoder or one, not {}", more.join("+")),
        };
        members.push((m.clone(), model, dir));
    }
    let neighbours = neighbours_of(p, true, recipe.neighbours)?;
    let bridge = Bridge::new(heads(pipeline)?, class_rows(emb, recipe.class_texts)?, recipe.bridge_temperature)?;
    let bank = caption_bank(p, &[&p.train, &p.validation])?;
    provenance["seed"] = pipeline.train.seed.into();
    provenance["options"] = train::options_digest(&pipeline.embed, &pipeline.train).into();
    let engine = Engine::new(EngineData {
        image_layout: p.image_parts.iter().map(|(id, dim)| ImagePart { id: id.clone(), dim: *dim }).collect(),
        text_encoder: embed::TEXT_MODEL.to_owned(),
        members,
        neighbours,
        bridge,
        bank,
        recipe,
        provenance,
    })?;
    let dir = engine_dir(pipeline);
    engine.save(&dir)?;
    println!("engine: built in {:.1} s, saved in {}", start.elapsed().as_secs_f64(), dir.display());
    Ok(engine)
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

/// The MiniLM rows of the 1000 class texts.
pub(crate) fn class_rows(emb: &Embeddings, texts: ClassTexts) -> Result<Tensor> {
    let key = match texts {
        ClassTexts::Names => embed::imagenet_key,
        ClassTexts::Sentences => embed::imagenet_prompt_key,
    };
    let keys: Vec<String> = (0..1000).map(key).collect();
    embed::rows(&emb.texts, &keys.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Caption neighbours whose gallery is the training side of the split, or (`all`) every
/// training image with the validation side's captions and confirmed pairs too.
pub(crate) fn neighbours_of(p: &Prepared, all: bool, hood: Neighbourhood) -> Result<Neighbours> {
    let mut gallery: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &(t, i) in &p.train.positives {
        gallery.entry(i).or_default().push(t);
    }
    if !all {
        return Ok(Neighbours::new(&p.images, &p.texts, &gallery, &p.train.candidates, hood)?);
    }
    for &(t, i) in &p.validation.positives {
        gallery.entry(i).or_default().push(t);
    }
    for &(i, t, y) in &p.validation.pairs {
        if y >= CONFIRMED {
            gallery.entry(i).or_default().push(t);
        }
    }
    let all_rows: Vec<usize> = (0..p.images.dims2()?.0).collect();
    Ok(Neighbours::new(&p.images, &p.texts, &gallery, &all_rows, hood)?)
}

/// The MiniLM rows of the distinct captions of `sets`' positives.
pub(crate) fn caption_bank(p: &Prepared, sets: &[&PairSet]) -> Result<Tensor> {
    let rows: Vec<u32> = sets
        .iter()
        .flat_map(|s| s.positives.iter().map(|x| x.0 as u32))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    Ok(p.texts.index_select(&Tensor::new(rows.as_slice(), &Device::Cpu)?, 0)?)
}
