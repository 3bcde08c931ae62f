//! Choices made on validation: the fusion members of a split, the class bridge's settings and
//! the neighbourhood with the ensemble's weights, on the validation captions of several splits
//! pooled.

use std::{collections::BTreeMap, sync::Arc};

use candle::{Device, Tensor};
use imsearch_engine::{
    combine, match_features, select, BankNormalised, Bridge, Calibration, ClassTexts, ClassifierHead, Columns, Fusion,
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

/// One fusion model of a split before it is trained or loaded: the data it reads (every
/// encoder's features, or one encoder's: `columns`, its offset and width in the layout of
/// every encoder) and its checkpoints.
pub(crate) struct MemberPlan {
    pub(crate) data: Arc<TrainingData>,
    pub(crate) checkpoints: Checkpoints,
    pub(crate) columns: Option<(usize, usize)>,
}

/// The fusion models of one split: the model on every image encoder and, with `members`, one
/// model per image encoder when there are several; with `dual_views`, the same models trained
/// with the dual-encoder recipe on those views (with one encoder, that model on it), with the
/// class sentences as positives when `class_positives` says so.
pub(crate) fn member_plans(
    p: &Arc<TrainingData>,
    checkpoints: &Checkpoints,
    members: bool,
    dual_views: &[String],
    class_positives: bool,
) -> Result<Vec<MemberPlan>> {
    let whole = |checkpoints: Checkpoints| MemberPlan { data: p.clone(), checkpoints, columns: None };
    let mut out = vec![whole(checkpoints.clone())];
    if !dual_views.is_empty() && p.image_parts.len() > 1 {
        out.push(whole(checkpoints.dual(dual_views.to_vec(), class_positives)));
    }
    let mut per_encoder = Vec::new();
    if p.image_parts.len() > 1 && members {
        per_encoder.push(checkpoints.clone());
    }
    if !dual_views.is_empty() && (members || p.image_parts.len() == 1) {
        per_encoder.push(checkpoints.dual(dual_views.to_vec(), class_positives));
    }
    if !per_encoder.is_empty() {
        let parts = (0..p.image_parts.len()).map(|part| Ok(Arc::new(p.only(part)?))).collect::<Result<Vec<_>>>()?;
        for checkpoints in &per_encoder {
            for (part, data) in parts.iter().enumerate() {
                out.push(MemberPlan {
                    data: data.clone(),
                    checkpoints: checkpoints.only(part)?,
                    columns: Some(p.columns(part)?),
                });
            }
        }
    }
    Ok(out)
}

/// A training run for [`run_jobs`]: it reports its events to the callback it is given.
pub(crate) type Job<'a> = Box<dyn FnOnce(&mut dyn FnMut(Event<'_>)) -> Result<()> + Send + 'a>;

/// How many trainings run side by side: one per core, at most two (each one's matrix
/// products also use the cores; two keep a 2-core machine busy where one leaves it idle
/// between the small products of a fusion model's step).
pub(crate) fn training_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

/// Trains, side by side on the cores, the models of every split's plans that have no usable
/// checkpoint (all of them when their checkpoints say retrain): first each split model, then,
/// for the first split's plans, its twin on every training image for the epochs early stopping
/// chose. Models are independent and each seeded by its options, so the checkpoints are those
/// of one-at-a-time training; [`fusion_members`] then loads them.
pub(crate) fn train_missing(splits: &[Vec<MemberPlan>], on_event: &mut dyn FnMut(Event<'_>)) -> Result<()> {
    let split_jobs: Vec<Job<'_>> = splits
        .iter()
        .flatten()
        .filter(|m| m.checkpoints.retrain || !m.checkpoints.has_split(&m.data))
        .map(|m| {
            let (data, ck) = (&m.data, &m.checkpoints);
            Box::new(move |ev: &mut dyn FnMut(Event<'_>)| ck.train(data, ck.options.seed, ev).map(|_| ())) as Job<'_>
        })
        .collect();
    run_jobs(split_jobs, training_workers(), on_event)?;
    let mut all_jobs = Vec::new();
    for m in splits.first().into_iter().flatten() {
        let epochs = m.checkpoints.best_epoch(m.checkpoints.options.seed)?.max(1);
        all_jobs.extend(all_images_job(&m.checkpoints, &m.data, epochs));
    }
    run_jobs(all_jobs, training_workers(), on_event)
}

/// The job that trains `ck`'s model of `data` on every training image for `epochs` from its
/// options' seed; `None` when that checkpoint is saved and `ck` does not say retrain.
pub(crate) fn all_images_job<'a>(ck: &'a Checkpoints, data: &'a TrainingData, epochs: usize) -> Option<Job<'a>> {
    let seed = ck.options.seed;
    (ck.retrain || !ck.has_all(data, seed, epochs)).then(|| {
        Box::new(move |ev: &mut dyn FnMut(Event<'_>)| ck.load_or_train_all(data, seed, epochs, ev).map(|_| ()))
            as Job<'a>
    })
}

/// A [`Event::Trained`] sent from a worker thread to the caller's.
struct TrainedMessage {
    model: String,
    all_images: bool,
    images: usize,
    epochs: usize,
    seconds: f64,
    dir: std::path::PathBuf,
}

/// Runs `jobs`, `workers` at a time; one at a time (every event passed on) when there is one
/// worker or one job. Side by side, only each job's [`Event::Trained`] is passed on, after
/// one [`Event::TrainingSideBySide`]. The first error stops the jobs not yet started.
pub(crate) fn run_jobs(jobs: Vec<Job<'_>>, workers: usize, on_event: &mut dyn FnMut(Event<'_>)) -> Result<()> {
    if workers <= 1 || jobs.len() <= 1 {
        return jobs.into_iter().try_for_each(|job| job(on_event));
    }
    on_event(Event::TrainingSideBySide { models: jobs.len(), workers });
    let queue = std::sync::Mutex::new(jobs.into_iter());
    let failed = std::sync::atomic::AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel::<TrainedMessage>();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (tx, queue, failed) = (tx.clone(), &queue, &failed);
                scope.spawn(move || -> Result<()> {
                    loop {
                        if failed.load(std::sync::atomic::Ordering::Relaxed) {
                            return Ok(());
                        }
                        let Some(job) = queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).next() else {
                            return Ok(());
                        };
                        let mut forward = |e: Event<'_>| {
                            if let Event::Trained { model, all_images, images, epochs, seconds, dir } = e {
                                let dir = dir.to_path_buf();
                                let model = model.to_owned();
                                // The receiver lives until every worker ends.
                                let _ = tx.send(TrainedMessage { model, all_images, images, epochs, seconds, dir });
                            }
                        };
                        if let Err(e) = job(&mut forward) {
                            failed.store(true, std::sync::atomic::Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        for m in rx {
            on_event(Event::Trained {
                model: &m.model,
                all_images: m.all_images,
                images: m.images,
                epochs: m.epochs,
                seconds: m.seconds,
                dir: &m.dir,
            });
        }
        handles.into_iter().try_for_each(|h| h.join().unwrap_or(Err(Error::Empty("a training thread panicked"))))
    })
}

/// The fusion models of `plans`, loaded from the checkpoints [`train_missing`] saved (any still
/// missing trained here, one at a time), with (where `with_all` says so) each one's twin
/// retrained on every training image for the epochs early stopping chose.
pub(crate) fn fusion_members(
    plans: &[MemberPlan],
    with_all: bool,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Vec<Member>> {
    let mut out = Vec::with_capacity(plans.len());
    for MemberPlan { data: p, checkpoints, columns } in plans {
        let ck = &Checkpoints { retrain: false, ..checkpoints.clone() };
        let wrap = |s: Arc<dyn Scorer>| match *columns {
            Some((offset, dim)) => Arc::new(Columns::new(s, offset, dim)) as Arc<dyn Scorer>,
            None => s,
        };
        let model = ck.load_or_train(p, on_event)?;
        let all = if with_all {
            let seed = ck.options.seed;
            let epochs = ck.best_epoch(seed)?.max(1);
            let all = ck.load_or_train_all(p, seed, epochs, on_event)?.0;
            Some((wrap(Arc::new(Fusion::new(all))), epochs))
        } else {
            None
        };
        let dual_encoder = (!ck.options.train_views.is_empty()).then(|| ck.options.train_views.clone());
        let name = match dual_encoder {
            Some(_) => format!("dual encoder {} + {}", p.image_encoder, p.text_encoder),
            None => format!("fusion {} + {}", p.image_encoder, p.text_encoder),
        };
        let encoders = if columns.is_some() { ck.image_encoders.clone() } else { Vec::new() };
        out.push(Member { name, encoders, dual_encoder, scorer: wrap(Arc::new(Fusion::new(model))), all });
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
    /// The rank of each pooled validation caption's image under the choice, split by split.
    pub(crate) ranks: Vec<usize>,
    pub(crate) gallery: Neighbours,
}

/// Neighbours among the training captions, with the gallery of each split's training side:
/// how many neighbours vote and how sharply their softmax weights favour the nearest, chosen
/// with the ensemble's weights on the pooled validation captions. `banks` and `bridges` are
/// each split's caption bank and bank-normalised bridge; the galleries' images are described
/// by the mean of their single `views` ([`neighbours_of`]).
pub(crate) fn choose_neighbours(
    splits: &[ValidationSplit],
    banks: &[Tensor],
    bridges: &[Arc<dyn Scorer>],
    views: &[String],
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
    let galleries =
        splits.iter().map(|split| neighbours_of(&split.p, false, first, views)).collect::<Result<Vec<_>>>()?;
    let correct: Vec<Vec<usize>> = splits.iter().map(ValidationSplit::correct).collect();
    // Every neighbourhood with every point of the weight grid, with its pooled ranks.
    let grid = select::weight_grid(3);
    let mut candidates: Vec<(Neighbourhood, [f32; 3], f64, Vec<usize>)> = Vec::new();
    for k in NEIGHBOURS_K {
        for temperature in NEIGHBOURS_TEMPERATURES {
            let hood = Neighbourhood { k, temperature };
            let mut mats = Vec::with_capacity(splits.len());
            for (((split, bank), gallery), (group, bridge)) in splits.iter().zip(banks).zip(&galleries).zip(&fixed) {
                let neighbours: Arc<dyn Scorer> = Arc::new(gallery.with(hood));
                mats.push(vec![group.clone(), split.matrix(normalised(&neighbours, bank).as_ref())?, bridge.clone()]);
            }
            let first = candidates.len();
            for w in &grid {
                let ranks = select::pooled_ranks(&mats, &correct, w);
                candidates.push((hood, [w[0], w[1], w[2]], select::mrr(&ranks), ranks));
            }
            // The neighbourhood's best weights (the earlier grid point on ties), as reported.
            let best = first + highest(candidates[first..].iter().map(|c| c.2));
            on_event(Event::NeighboursTried { hood, weights: candidates[best].1, mrr: candidates[best].2 });
        }
    }
    // The best pooled MRR, unless a choice that keeps more of the three parts (a weight above
    // 0) is within one paired standard error of it: the validation galleries hold the split's
    // training side only (700 images against the engine's 1,000), so validation undervalues
    // the training-free parts, and a weight of 0 drops one on the strength of noise.
    let parts: Vec<(usize, &[usize])> =
        candidates.iter().map(|c| (c.1.iter().filter(|&&w| w > 0.0).count(), c.3.as_slice())).collect();
    let top = highest(candidates.iter().map(|c| c.2));
    let kept = choose_members(&parts).ok_or(Error::Empty("no neighbours setting"))?;
    if kept != top {
        on_event(Event::WeightsKept {
            weights: candidates[kept].1,
            mrr: candidates[kept].2,
            best_weights: candidates[top].1,
            best: candidates[top].2,
            standard_error: paired_standard_error(&candidates[top].3, &candidates[kept].3),
        });
    }
    let (hood, weights, pooled, ranks) = candidates.swap_remove(kept);
    let gallery = galleries.into_iter().next().ok_or(Error::Empty("no validation split"))?.with(hood);
    Ok(NeighbourChoice { hood, weights, pooled, ranks, gallery })
}

/// The standard error of the mean of the per-caption differences of reciprocal rank between
/// two choices ranked on the same captions (a paired comparison); 0 with fewer than two.
pub(crate) fn paired_standard_error(a: &[usize], b: &[usize]) -> f64 {
    let d: Vec<f64> = a.iter().zip(b).map(|(&x, &y)| 1.0 / x as f64 - 1.0 / y as f64).collect();
    let n = d.len() as f64;
    if d.len() < 2 {
        return 0.0;
    }
    let mean = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (var / n).sqrt()
}

/// The position of the highest of `mrrs`, the earliest on ties (0 when empty).
fn highest(mrrs: impl Iterator<Item = f64>) -> usize {
    mrrs.enumerate().fold((0, f64::NEG_INFINITY), |best, (i, m)| if m > best.1 { (i, m) } else { best }).0
}

/// Which of several choices of ensemble members to keep, given each one's member count and
/// its per-caption ranks on the pooled validation (the same captions in the same order): the
/// one with the most members among those whose MRR is within one paired standard error of
/// the best (equal weights add no fitted parameter, and averaging more models lowers the
/// variance a single split's choice leaves), the higher MRR among equals. `None` when empty.
/// [`choose_neighbours`] applies the same rule to the ensemble's weights, counting the parts
/// weighed above 0.
pub(crate) fn choose_members(candidates: &[(usize, &[usize])]) -> Option<usize> {
    let mrrs: Vec<f64> = candidates.iter().map(|(_, r)| select::mrr(r)).collect();
    let best = (0..candidates.len()).max_by(|&a, &b| mrrs[a].total_cmp(&mrrs[b]).then(b.cmp(&a)))?;
    let within = |k: usize| mrrs[best] - mrrs[k] <= paired_standard_error(candidates[best].1, candidates[k].1);
    (0..candidates.len())
        .filter(|&k| within(k))
        .max_by(|&a, &b| candidates[a].0.cmp(&candidates[b].0).then(mrrs[a].total_cmp(&mrrs[b])).then(b.cmp(&a)))
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
    let shown = shown_scores(&[matrix(split.group.as_ref())?, nb, br], &weights);
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

/// The ensemble's 0..1 score as search showed it: the parts z-scored per text over the
/// collection, weighed, then `0.5 + atan(z / sum of weights) / pi` (as `Ensemble::matrix`).
fn shown_scores(mats: &[Vec<Vec<f32>>], weights: &[f32; 3]) -> Vec<Vec<f32>> {
    squashed(mats, weights)
}

/// `Ensemble::matrix` of matrices `mats` with `weights`.
fn squashed(mats: &[Vec<Vec<f32>>], weights: &[f32]) -> Vec<Vec<f32>> {
    let total: f32 = weights.iter().sum();
    let mut out = combine(mats, weights);
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
    views: &[String],
) -> Result<CalibrationReport> {
    let mut per_split = Vec::with_capacity(splits.len());
    for ((split, bank), bridge) in splits.iter().zip(banks).zip(bridges) {
        let neighbours: Arc<dyn Scorer> = Arc::new(neighbours_of(&split.p, false, hood, views)?);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_standard_error_of_hand_computed_ranks() {
        // Differences of reciprocal rank: 1 - 1/2, 1/2 - 1/2, 1/4 - 1 = 0.5, 0, -0.75.
        let se = paired_standard_error(&[1, 2, 4], &[2, 2, 1]);
        let d = [0.5f64, 0.0, -0.75];
        let mean = d.iter().sum::<f64>() / 3.0;
        let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 2.0;
        assert!((se - (var / 3.0).sqrt()).abs() < 1e-12, "{se}");
        assert_eq!(paired_standard_error(&[1, 2], &[1, 2]), 0.0);
        assert_eq!(paired_standard_error(&[1], &[3]), 0.0);
    }

    #[test]
    fn jobs_side_by_side_report_every_end_and_an_error() {
        let dir = std::path::PathBuf::from("/nowhere");
        let job = |k: usize, fail: bool| -> Job<'static> {
            let dir = dir.clone();
            Box::new(move |ev: &mut dyn FnMut(Event<'_>)| {
                let report = imsearch_fusion::EpochReport {
                    epoch: 1,
                    train_loss: 0.0,
                    validation_bce: 0.0,
                    validation_mrr: 0.0,
                };
                ev(Event::Epoch { report: &report, all_images: false });
                ev(Event::Trained {
                    model: &format!("m{k}"),
                    all_images: false,
                    images: 1,
                    epochs: k,
                    seconds: 0.0,
                    dir: &dir,
                });
                if fail {
                    Err(Error::Empty("a failing job"))
                } else {
                    Ok(())
                }
            })
        };
        for workers in [1, 2] {
            let mut seen = Vec::new();
            let mut side_by_side = 0;
            run_jobs((0..5).map(|k| job(k, false)).collect(), workers, &mut |e| match e {
                Event::Trained { epochs, .. } => seen.push(epochs),
                Event::TrainingSideBySide { models, workers } => side_by_side += models * workers,
                _ => {}
            })
            .unwrap();
            seen.sort();
            assert_eq!(seen, vec![0, 1, 2, 3, 4], "{workers} workers");
            assert_eq!(side_by_side, if workers == 2 { 10 } else { 0 });
        }
        for workers in [1, 2] {
            let jobs = vec![job(0, false), job(1, true), job(2, false)];
            let err = run_jobs(jobs, workers, &mut |_| {}).unwrap_err();
            assert!(err.to_string().contains("a failing job"), "{workers} workers: {err}");
        }
    }

    #[test]
    fn choose_members_prefers_more_members_within_the_noise() {
        let best: Vec<usize> = (0..1000).map(|i| if i % 2 == 0 { 1 } else { 3 }).collect();
        // One caption in a thousand ranked 2 instead of 1: a difference well within the noise.
        let mut close = best.clone();
        close[0] = 2;
        // Every caption ranked worse: outside it (the paired differences do not vary).
        let far: Vec<usize> = best.iter().map(|r| r + 1).collect();
        assert_eq!(choose_members(&[(4, &best), (8, &close)]), Some(1));
        assert_eq!(choose_members(&[(4, &best), (8, &far)]), Some(0));
        // Equal counts: the higher MRR; exact ties: the first.
        assert_eq!(choose_members(&[(4, &close), (4, &best)]), Some(1));
        assert_eq!(choose_members(&[(4, &best), (4, &best)]), Some(0));
        assert_eq!(choose_members(&[]), None);
    }
}
