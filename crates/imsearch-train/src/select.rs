//! Choices made on validation: the fusion members of a split, the class bridge's settings and
//! the neighbourhood with the ensemble's weights, on the validation captions of several splits
//! pooled.

use std::{collections::BTreeMap, sync::Arc};

use candle::{Device, Tensor};
use imsearch_engine::{
    match_features, select, BankNormalised, Bridge, Calibration, ClassTexts, ClassifierHead, Columns, Fusion,
    Neighbourhood, Neighbours, Scorer,
};
use imsearch_eval::{expected_calibration_error, fit_logistic, reliability, Bin};
use serde::Serialize;

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
    /// The fusion members `group` weighs equally.
    pub(crate) members: Vec<Arc<dyn Scorer>>,
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
    /// Trained with the dual-encoder recipe on these views (`None`: the fusion recipe).
    pub(crate) dual_encoder: Option<Vec<String>>,
    pub(crate) scorer: Arc<dyn Scorer>,
    pub(crate) all: Option<(Arc<dyn Scorer>, usize)>,
}

/// The fusion models of one split: the model on every image encoder and, with `members`, one
/// model per image encoder when there are several; with `dual_views`, the same models trained
/// with the dual-encoder recipe on those views (with one encoder, that model on it). `with_all` adds each one's twin
/// retrained on every training image for the epochs early stopping chose.
pub(crate) fn fusion_members(
    p: &TrainingData,
    checkpoints: &Checkpoints,
    members: bool,
    dual_views: &[String],
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
        let dual_encoder = (!ck.options.train_views.is_empty()).then(|| ck.options.train_views.clone());
        let name = match dual_encoder {
            Some(_) => format!("dual encoder {} + {}", p.image_encoder, p.text_encoder),
            None => format!("fusion {} + {}", p.image_encoder, p.text_encoder),
        };
        Ok(Member { name, encoders, dual_encoder, scorer: Arc::new(Fusion::new(model)), all })
    };
    let mut out = vec![load_or_train(p, checkpoints, Vec::new())?];
    if !dual_views.is_empty() && p.image_parts.len() > 1 {
        out.push(load_or_train(p, &checkpoints.dual(dual_views.to_vec()), Vec::new())?);
    }
    let mut per_encoder = Vec::new();
    if p.image_parts.len() > 1 && members {
        per_encoder.push(checkpoints.clone());
    }
    if !dual_views.is_empty() && (members || p.image_parts.len() == 1) {
        per_encoder.push(checkpoints.dual(dual_views.to_vec()));
    }
    for checkpoints in &per_encoder {
        for part in 0..p.image_parts.len() {
            let ck = checkpoints.only(part)?;
            let m = load_or_train(&p.only(part)?, &ck, ck.image_encoders.clone())?;
            let (offset, dim) = p.columns(part)?;
            let columns = |s: Arc<dyn Scorer>| Arc::new(Columns::new(s, offset, dim)) as Arc<dyn Scorer>;
            out.push(Member {
                name: m.name,
                encoders: m.encoders,
                dual_encoder: m.dual_encoder,
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

/// The calibration's L2 penalty: small, for a well-posed fit on thousands of pairs.
const CALIBRATION_L2: f64 = 1e-3;

/// Bins of the reliability tables (deciles).
const CALIBRATION_BINS: usize = 10;

/// How well one predictor of the match probability agrees with the labels of the validation
/// pairs: the deciles of its predictions with their mean label.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationFigures {
    /// Expected calibration error over the deciles.
    pub ece: f64,
    /// The largest gap between a decile's mean prediction and mean label.
    pub max_gap: f64,
    pub deciles: Vec<Bin>,
}

impl CalibrationFigures {
    fn of(predicted: &[f64], labels: &[f64]) -> Result<Self> {
        let deciles = reliability(predicted, labels, CALIBRATION_BINS);
        let ece = expected_calibration_error(&deciles).ok_or(Error::Empty("no validation pairs to calibrate on"))?;
        let max_gap = deciles.iter().map(Bin::gap).fold(0.0, f64::max);
        Ok(CalibrationFigures { ece, max_gap, deciles })
    }
}

/// The engine's calibration as fitted on the labelled validation pairs of every split pooled,
/// with what it changed (`metrics.json`'s `calibration`).
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationReport {
    pub calibration: Calibration,
    /// Labelled validation pairs, every split pooled.
    pub pairs: usize,
    /// The fusion model's own probability (its sigmoid), which the pair scores report.
    pub before_fusion: CalibrationFigures,
    /// The ensemble's 0..1 ranking score that search showed, over each split's validation
    /// images (it is z-scored over the collection searched).
    pub before_shown: CalibrationFigures,
    /// The calibration fitted on every split, on the same pairs.
    pub after: CalibrationFigures,
    /// Each split's pairs under the calibration fitted on the other splits alone.
    pub after_held_out: CalibrationFigures,
}

/// One split's labelled validation pairs: the calibration's inputs, the labels, and the two
/// scores it replaces.
struct CalibrationPairs {
    features: Vec<[f32; 3]>,
    labels: Vec<f64>,
    fusion: Vec<f64>,
    shown: Vec<f64>,
}

/// Every labelled validation pair of `split` scored by the parts of the engine trained on its
/// training side: the members, the bank-normalised neighbours and bridge; `weights` are the
/// ensemble's.
fn calibration_pairs(
    split: &ValidationSplit,
    neighbours: &dyn Scorer,
    bridge: &dyn Scorer,
    weights: [f32; 3],
) -> Result<CalibrationPairs> {
    let p = &split.p;
    let set = &p.validation;
    let column: BTreeMap<usize, usize> = set.candidates.iter().enumerate().map(|(k, &i)| (i, k)).collect();
    let text_rows: Vec<usize> =
        set.pairs.iter().map(|x| x.1).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let text_at: BTreeMap<usize, usize> = text_rows.iter().enumerate().map(|(k, &t)| (t, k)).collect();
    let images = p.images.index_select(&index(&set.candidates)?, 0)?;
    let texts = p.texts.index_select(&index(&text_rows)?, 0)?;
    let matrix = |s: &dyn Scorer| -> Result<Vec<Vec<f32>>> { Ok(s.matrix(&s.prepare(&images)?, &texts)?) };
    let members = split.members.iter().map(|m| matrix(m.as_ref())).collect::<Result<Vec<_>>>()?;
    let (nb, br) = (matrix(neighbours)?, matrix(bridge)?);
    // As the engine computes them: a part weighed 0 is not prepared there and counts as 0.
    let neutral = || vec![vec![0.5f32; set.candidates.len()]; text_rows.len()];
    let features = match_features(
        if weights[0] == 0.0 { &[] } else { &members },
        &if weights[1] == 0.0 { neutral() } else { nb.clone() },
        &if weights[2] == 0.0 { neutral() } else { br.clone() },
    );
    let shown = shown_scores(&[split_group_matrix(&members), nb, br], &weights);
    let mut out = CalibrationPairs { features: Vec::new(), labels: Vec::new(), fusion: Vec::new(), shown: Vec::new() };
    for &(i, t, label) in &set.pairs {
        let (Some(&c), Some(&r)) = (column.get(&i), text_at.get(&t)) else {
            return Err(Error::Empty("a validation pair whose image is not a validation candidate"));
        };
        out.features.push(features[r][c]);
        out.labels.push(f64::from(label));
        out.fusion.push(f64::from(members.first().map_or(0.5, |m| m[r][c])));
        out.shown.push(f64::from(shown[r][c]));
    }
    Ok(out)
}

/// The members' ensemble matrix as the engine's first part computes it (an equal-weight
/// ensemble: z-scored per text, summed, squashed).
fn split_group_matrix(members: &[Vec<Vec<f32>>]) -> Vec<Vec<f32>> {
    squashed(members, &vec![1.0; members.len()])
}

/// The ensemble's 0..1 score as search showed it: the parts z-scored per text over the
/// collection, weighed, then `0.5 + atan(z / sum of weights) / pi` (as `Ensemble::matrix`).
fn shown_scores(mats: &[Vec<Vec<f32>>], weights: &[f32; 3]) -> Vec<Vec<f32>> {
    squashed(mats, weights)
}

/// `Ensemble::matrix` of matrices `mats` with `weights`.
fn squashed(mats: &[Vec<Vec<f32>>], weights: &[f32]) -> Vec<Vec<f32>> {
    let total: f32 = weights.iter().sum();
    let mut out = imsearch_engine::combine(mats, weights);
    for z in out.iter_mut().flatten() {
        *z = 0.5 + (*z / total).atan() / std::f32::consts::PI;
    }
    out
}

fn as_f64(f: &[f32; 3]) -> Vec<f64> {
    f.iter().map(|&v| f64::from(v)).collect()
}

/// Fits the engine's [`Calibration`] on the labelled validation pairs of every split pooled
/// (their neighbours over each split's training side, `hood`; `banks` and `bridges` as in
/// [`choose_neighbours`]) and reports it against the scores it replaces, in-sample and with
/// each split held out.
pub(crate) fn fit_calibration(
    splits: &[ValidationSplit],
    banks: &[Tensor],
    bridges: &[Arc<dyn Scorer>],
    hood: Neighbourhood,
    weights: [f32; 3],
) -> Result<CalibrationReport> {
    let mut per_split = Vec::with_capacity(splits.len());
    for ((split, bank), bridge) in splits.iter().zip(banks).zip(bridges) {
        let neighbours: Arc<dyn Scorer> = Arc::new(neighbours_of(&split.p, false, hood)?);
        per_split.push(calibration_pairs(split, normalised(&neighbours, bank).as_ref(), bridge.as_ref(), weights)?);
    }
    let fit = |parts: &[&CalibrationPairs]| -> Result<Calibration> {
        let x: Vec<Vec<f64>> = parts.iter().flat_map(|p| p.features.iter().map(as_f64)).collect();
        let y: Vec<f64> = parts.iter().flat_map(|p| p.labels.iter().copied()).collect();
        let l = fit_logistic(&x, &y, CALIBRATION_L2).ok_or(Error::Empty("a calibration that does not converge"))?;
        let w = |k: usize| l.weights.get(k).copied().unwrap_or(0.0) as f32;
        Ok(Calibration { weights: [w(0), w(1), w(2)], bias: l.bias as f32 })
    };
    let all: Vec<&CalibrationPairs> = per_split.iter().collect();
    let calibration = fit(&all)?;
    let predict = |c: &Calibration, p: &CalibrationPairs| -> Vec<f64> {
        p.features.iter().map(|f| f64::from(c.probability(*f))).collect()
    };
    let mut held_out = Vec::new();
    for (k, pairs) in per_split.iter().enumerate() {
        let others: Vec<&CalibrationPairs> =
            per_split.iter().enumerate().filter(|(j, _)| *j != k).map(|x| x.1).collect();
        let c = if others.is_empty() { calibration } else { fit(&others)? };
        held_out.extend(predict(&c, pairs));
    }
    let pooled = |f: &dyn Fn(&CalibrationPairs) -> Vec<f64>| -> Vec<f64> { per_split.iter().flat_map(f).collect() };
    let labels = pooled(&|p| p.labels.clone());
    Ok(CalibrationReport {
        calibration,
        pairs: labels.len(),
        before_fusion: CalibrationFigures::of(&pooled(&|p| p.fusion.clone()), &labels)?,
        before_shown: CalibrationFigures::of(&pooled(&|p| p.shown.clone()), &labels)?,
        after: CalibrationFigures::of(&pooled(&|p| predict(&calibration, p)), &labels)?,
        after_held_out: CalibrationFigures::of(&held_out, &labels)?,
    })
}
