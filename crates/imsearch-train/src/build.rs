//! The engine of a recipe, built from every training image: its fusion members trained (or
//! reused) on every training image for their epochs, the caption neighbours over every
//! training image, the class bridge from the encoders' heads, the bank of every training
//! caption.

use std::{collections::BTreeMap, path::Path, time::Instant};

use candle::{Device, Tensor};
use imsearch_engine::{
    Bridge, ClassifierHead, Engine, EngineData, ImagePart, MemberRecipe, Neighbourhood, Neighbours, Recipe,
};
use imsearch_fusion::PairSet;

use crate::{
    select::{all_images_job, run_jobs, training_workers, Job},
    Checkpoints, Embeddings, Error, Event, Result, TrainOptions, TrainingData, CONFIRMED,
};

/// What an engine is built from: the training data, the embeddings (for the class texts) and
/// each image encoder's ImageNet classifier, in the layout's order.
#[derive(Clone, Copy)]
pub struct Sources<'a> {
    pub data: &'a TrainingData,
    pub embeddings: &'a Embeddings<'a>,
    pub heads: &'a [ClassifierHead],
}

/// [`Recipe::default`] for this layout and these single views of the training images: its
/// members whose encoders are all present (only the models on every encoder when there is one)
/// and, for a dual-encoder member, whose views are all in `views`; the neighbours' gallery of
/// the mean of its views when they are all in `views`, else of the features images are scored
/// with.
pub fn default_recipe(layout: &[ImagePart], views: &[String]) -> Recipe {
    let mut recipe = Recipe::default();
    let ids: Vec<&str> = layout.iter().map(ImagePart::encoder).collect();
    let epochs = recipe.members.first().map_or(10, |m| m.epochs);
    recipe.members.retain(|m| m.encoders.iter().all(|e| ids.contains(&e.as_str())));
    recipe.members.retain(|m| m.dual_encoder.as_ref().is_none_or(|d| d.iter().all(|v| views.contains(v))));
    if ids.len() == 1 {
        recipe.members.retain(|m| m.encoders.is_empty());
    }
    if recipe.members.iter().all(|m| m.dual_encoder.is_some()) {
        recipe
            .members
            .insert(0, MemberRecipe { encoders: Vec::new(), epochs, dual_encoder: None, class_positives: false });
    }
    if !recipe.neighbour_views.iter().all(|v| views.contains(v)) {
        recipe.neighbour_views.clear();
    }
    recipe
}

/// Builds the engine of `recipe` from every training image and saves it in `dir`: each member
/// retrained on every training image for its epochs (checkpoints of `checkpoints` reused unless
/// it says retrain; the missing ones trained side by side on the cores), the caption neighbours
/// over every training image, the bridge's heads, the bank of every training caption.
/// `provenance` gains the seed and the options' digest.
pub fn build(
    src: &Sources<'_>,
    recipe: Recipe,
    checkpoints: &Checkpoints,
    mut provenance: serde_json::Value,
    dir: &Path,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Engine> {
    let start = Instant::now();
    let seed = checkpoints.options.seed;
    // The class sentences as positives, for the members trained with them.
    let with_classes;
    let p = if recipe.members.iter().any(|m| m.class_positives) && src.data.class_positives.is_empty() {
        with_classes = src.data.clone().with_class_positives(src.embeddings, src.heads)?;
        &with_classes
    } else {
        src.data
    };
    // Each member's checkpoints and the data it reads (one encoder's columns, or all).
    let mut plans: Vec<(Checkpoints, Option<TrainingData>)> = Vec::with_capacity(recipe.members.len());
    for m in &recipe.members {
        let checkpoints = match &m.dual_encoder {
            Some(views) => checkpoints.dual(views.clone(), m.class_positives),
            None => {
                let options = TrainOptions { class_positives: m.class_positives, ..checkpoints.options.clone() };
                Checkpoints { options, ..checkpoints.clone() }
            }
        };
        plans.push(match m.encoders.as_slice() {
            [] => (checkpoints, None),
            [one] => {
                let part = p
                    .image_parts
                    .iter()
                    .position(|part| part.encoder() == one)
                    .ok_or_else(|| Error::MemberNotInLayout(one.clone()))?;
                (checkpoints.only(part)?, Some(p.only(part)?))
            }
            more => return Err(Error::MemberEncoders(more.join("+"))),
        });
    }
    // The members without a checkpoint (or all, to retrain), trained side by side; then every
    // member loaded from its checkpoint.
    let jobs: Vec<Job<'_>> = plans
        .iter()
        .zip(&recipe.members)
        .filter_map(|((ck, data), m)| all_images_job(ck, data.as_ref().unwrap_or(p), m.epochs))
        .collect();
    run_jobs(jobs, training_workers(), on_event)?;
    let mut members = Vec::with_capacity(plans.len());
    for ((ck, data), m) in plans.into_iter().zip(&recipe.members) {
        let ck = Checkpoints { retrain: false, ..ck };
        let (model, dir) = ck.load_or_train_all(data.as_ref().unwrap_or(p), seed, m.epochs, on_event)?;
        members.push((m.clone(), model, dir));
    }
    let neighbours = neighbours_of(p, true, recipe.neighbours, &recipe.neighbour_views)?;
    let classes = src.embeddings.class_rows(recipe.class_texts)?;
    let bridge = Bridge::new(src.heads.to_vec(), classes, recipe.bridge_temperature)?;
    let bank = caption_bank(p, &[&p.train, &p.validation])?;
    provenance["seed"] = seed.into();
    provenance["options"] = checkpoints.digest().into();
    let engine = Engine::new(EngineData {
        image_layout: p.image_parts.clone(),
        text_encoder: p.text_encoder.clone(),
        members,
        neighbours,
        bridge,
        bank,
        recipe,
        provenance,
    })?;
    engine.save(dir)?;
    on_event(Event::EngineBuilt { seconds: start.elapsed().as_secs_f64(), dir });
    Ok(engine)
}

/// Caption neighbours whose gallery is the training side of the split, or (`all`) every
/// training image with the validation side's captions and confirmed pairs too. The gallery's
/// images are described by the mean of their single `views` ([`TrainingData::view_mean`]); the
/// images it is asked about come with the features they are scored with.
pub fn neighbours_of(p: &TrainingData, all: bool, hood: Neighbourhood, views: &[String]) -> Result<Neighbours> {
    let features = p.view_mean(views)?;
    let mut gallery: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &(t, i) in &p.train.positives {
        gallery.entry(i).or_default().push(t);
    }
    if !all {
        return Ok(Neighbours::new(&features, &p.texts, &gallery, &p.train.candidates, hood)?);
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
    Ok(Neighbours::new(&features, &p.texts, &gallery, &all_rows, hood)?)
}

/// The text rows of the distinct captions of `sets`' positives: the bank the training-free
/// scorers are normalised over.
pub fn caption_bank(p: &TrainingData, sets: &[&PairSet]) -> Result<Tensor> {
    let rows: Vec<u32> = sets
        .iter()
        .flat_map(|s| s.positives.iter().map(|x| x.0 as u32))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    Ok(p.texts.index_select(&Tensor::new(rows.as_slice(), &Device::Cpu)?, 0)?)
}
