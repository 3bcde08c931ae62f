//! Choices made on validation: the fusion members of a split, the class bridge's settings and
//! the neighbourhood with the ensemble's weights, on the validation captions of several splits
//! pooled.

use std::{collections::BTreeMap, sync::Arc};

use candle::{Device, Tensor};
use imsearch_engine::{
    select, BankNormalised, Bridge, ClassTexts, ClassifierHead, Columns, Fusion, Neighbourhood, Neighbours, Scorer,
};

use crate::{neighbours_of, Checkpoints, Embeddings, Error, Event, Result, TrainingData};

/// The bridge's softmax temperatures and class texts tried on validation.
const BRIDGE_TEMPERATURES: [f64; 4] = [0.5, 1.0, 2.0, 4.0];
const CLASS_TEXTS: [ClassTexts; 2] = [ClassTexts::Names, ClassTexts::Sentences];

/// The neighbourhoods tried on validation.
const NEIGHBOURS_K: [usize; 4] = [5, 10, 20, 40];
const NEIGHBOURS_TEMPERATURES: [f32; 4] = [0.02, 0.05, 0.1, 1.0];

pub(crate) fn index(rows: &[usize]) -> candle::Result<Tensor> {
    Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>().as_slice(), &Device::Cpu)
}

/// Scores of every validation caption (rows of `texts`) against every validation image.
pub(crate) fn validation_matrix(scorer: &dyn Scorer, texts: &Tensor, p: &TrainingData) -> Result<Vec<Vec<f32>>> {
    let set = &p.validation;
    let candidates = p.images.index_select(&index(&set.candidates)?, 0)?;
    let queries = texts.index_select(&index(&set.positives.iter().map(|x| x.0).collect::<Vec<_>>())?, 0)?;
    Ok(scorer.matrix(&scorer.prepare(&candidates)?, &queries)?)
}

/// Each validation caption's own image as a column of [`validation_matrix`].
pub(crate) fn correct_columns(p: &TrainingData) -> Vec<usize> {
    let column: BTreeMap<usize, usize> = p.validation.candidates.iter().enumerate().map(|(k, &i)| (i, k)).collect();
    p.validation.positives.iter().map(|&(_, i)| column[&i]).collect()
}

/// One split of the training images for validation: its pairs and its fusion ensemble.
pub(crate) struct ValidationSplit {
    pub(crate) p: Arc<TrainingData>,
    pub(crate) group: Arc<dyn Scorer>,
}

impl ValidationSplit {
    pub(crate) fn matrix(&self, scorer: &dyn Scorer) -> Result<Vec<Vec<f32>>> {
        validation_matrix(scorer, &self.p.texts, &self.p)
    }

    /// Each validation caption's image as a column of [`ValidationSplit::matrix`].
    pub(crate) fn correct(&self) -> Vec<usize> {
        correct_columns(&self.p)
    }
}

/// Validation MRR of `scorer` pooled over the captions of every split.
fn pooled_mrr(splits: &[ValidationSplit], scorer: &dyn Scorer) -> Result<f64> {
    let mut ranks = Vec::new();
    for split in splits {
        ranks.extend(select::ranks(&split.matrix(scorer)?, &split.correct()));
    }
    Ok(select::mrr(&ranks))
}

/// A fusion model of the ensemble: its name in the table, the encoders it reads (none: all),
/// its scorer on the split and (when asked for) the same configuration retrained on every
/// training image with the epochs early stopping chose.
pub(crate) struct Member {
    pub(crate) name: String,
    pub(crate) encoders: Vec<String>,
    pub(crate) scorer: Arc<dyn Scorer>,
    pub(crate) all: Option<(Arc<dyn Scorer>, usize)>,
}

/// The fusion models of one split: the model on every image encoder and, with `members`, one
/// model per image encoder when there are several. `with_all` adds each one's twin retrained on
/// every training image for the epochs early stopping chose.
pub(crate) fn fusion_members(
    p: &TrainingData,
    checkpoints: &Checkpoints,
    members: bool,
    with_all: bool,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Vec<Member>> {
    let mut load_or_train = |p: &TrainingData, ck: &Checkpoints, encoders: Vec<String>| -> Result<Member> {
        let model = ck.load_or_train(p, on_event)?;
        let all = if with_all {
            let seed = ck.options.seed;
            let epochs = ck.best_epoch(seed)?.max(1);
            let all = ck.load_or_train_all(p, seed, epochs, on_event)?.0;
            Some((Arc::new(Fusion::new(all)) as Arc<dyn Scorer>, epochs))
        } else {
            None
        };
        let name = format!("fusion {} + {}", p.image_encoder, p.text_encoder);
        Ok(Member { name, encoders, scorer: Arc::new(Fusion::new(model)), all })
    };
    let mut out = vec![load_or_train(p, checkpoints, Vec::new())?];
    if p.image_parts.len() > 1 && members {
        for part in 0..p.image_parts.len() {
            let ck = checkpoints.only(part)?;
            let m = load_or_train(&p.only(part)?, &ck, ck.image_encoders.clone())?;
            let (offset, dim) = p.columns(part)?;
            let columns = |s: Arc<dyn Scorer>| Arc::new(Columns::new(s, offset, dim)) as Arc<dyn Scorer>;
            out.push(Member {
                name: m.name,
                encoders: m.encoders,
                scorer: columns(m.scorer),
                all: m.all.map(|(s, epochs)| (columns(s), epochs)),
            });
        }
    }
    Ok(out)
}

/// The bridge from ImageNet classes into text space whose class texts (bare names or "a photo
/// of a ..." sentences) and softmax temperature give the best pooled validation MRR (the first
/// best on ties).
pub(crate) fn choose_bridge(
    splits: &[ValidationSplit],
    heads: &[ClassifierHead],
    emb: &Embeddings<'_>,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<(Bridge, ClassTexts)> {
    let captions = splits.iter().map(|s| s.p.validation.positives.len()).sum();
    let mut chosen: Option<(Bridge, ClassTexts, f64)> = None;
    for class_texts in CLASS_TEXTS {
        let classes = emb.class_rows(class_texts)?;
        for temperature in BRIDGE_TEMPERATURES {
            let candidate = Bridge::new(heads.to_vec(), classes.clone(), temperature)?;
            let mrr = pooled_mrr(splits, &candidate)?;
            on_event(Event::BridgeTried { class_texts, temperature, mrr, captions, splits: splits.len() });
            if chosen.as_ref().is_none_or(|b| mrr > b.2) {
                chosen = Some((candidate, class_texts, mrr));
            }
        }
    }
    let (bridge, class_texts, _) = chosen.ok_or(Error::Empty("no bridge configuration"))?;
    on_event(Event::BridgeChosen { class_texts, temperature: bridge.temperature() });
    Ok((bridge, class_texts))
}

/// The training-free scorer `s` normalised over a bank of training captions: each image's
/// scores standardised by its scores for the bank's captions, so that an image that matches
/// every text a little (a hub) no longer comes first for all of them.
pub(crate) fn normalised(s: &Arc<dyn Scorer>, bank: &Tensor) -> Arc<dyn Scorer> {
    Arc::new(BankNormalised::new(s.clone(), bank.clone()))
}

/// What [`choose_neighbours`] chose: the neighbourhood, the ensemble's weights (fusion
/// models, neighbours, bridge), their pooled validation MRR and the first split's gallery.
pub(crate) struct NeighbourChoice {
    pub(crate) hood: Neighbourhood,
    pub(crate) weights: [f32; 3],
    pub(crate) pooled: f64,
    pub(crate) gallery: Neighbours,
}

/// Neighbours among the training captions, with the gallery of each split's training side:
/// how many neighbours vote and how sharply their softmax weights favour the nearest, chosen
/// with the ensemble's weights on the pooled validation captions. `banks` and `bridges` are
/// each split's caption bank and bank-normalised bridge.
pub(crate) fn choose_neighbours(
    splits: &[ValidationSplit],
    banks: &[Tensor],
    bridges: &[Arc<dyn Scorer>],
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<NeighbourChoice> {
    // The fusion models' and the bridge's matrices do not depend on the neighbourhood:
    // computed once per split. So is each split's gallery.
    let fixed = splits
        .iter()
        .zip(bridges)
        .map(|(split, bridge)| Ok((split.matrix(split.group.as_ref())?, split.matrix(bridge.as_ref())?)))
        .collect::<Result<Vec<_>>>()?;
    let first = Neighbourhood { k: NEIGHBOURS_K[0], temperature: NEIGHBOURS_TEMPERATURES[0] };
    let galleries = splits.iter().map(|split| neighbours_of(&split.p, false, first)).collect::<Result<Vec<_>>>()?;
    let correct: Vec<Vec<usize>> = splits.iter().map(ValidationSplit::correct).collect();
    let mut best: Option<(Neighbourhood, [f32; 3], f64)> = None;
    for k in NEIGHBOURS_K {
        for temperature in NEIGHBOURS_TEMPERATURES {
            let hood = Neighbourhood { k, temperature };
            let mut mats = Vec::with_capacity(splits.len());
            for (((split, bank), gallery), (group, bridge)) in splits.iter().zip(banks).zip(&galleries).zip(&fixed) {
                let neighbours: Arc<dyn Scorer> = Arc::new(gallery.with(hood));
                mats.push(vec![group.clone(), split.matrix(normalised(&neighbours, bank).as_ref())?, bridge.clone()]);
            }
            let (w, mrr) = select::choose_weights(&mats, &correct);
            let weights = [w[0], w[1], w[2]];
            on_event(Event::NeighboursTried { hood, weights, mrr });
            if best.as_ref().is_none_or(|b| mrr > b.2) {
                best = Some((hood, weights, mrr));
            }
        }
    }
    let (hood, weights, pooled) = best.ok_or(Error::Empty("no neighbours setting"))?;
    let gallery = galleries.into_iter().next().ok_or(Error::Empty("no validation split"))?.with(hood);
    Ok(NeighbourChoice { hood, weights, pooled, gallery })
}
