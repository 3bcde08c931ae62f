//! The evaluation: every model and baseline scored on validation, the engine's recipe chosen
//! on the validation captions of several splits pooled, the engine built with it, then the test
//! queries scored once per model.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Instant};

use candle::{Device, Tensor};
use imsearch_compliance::TextPolicy;
use imsearch_data::Dataset;
use imsearch_engine::{
    combine, select, ClassifierHead, Ensemble, Fusion, MemberRecipe, Random, Recipe, Regressor, Scorer, ENGINE_SCORER,
};
use imsearch_eval::{kendall_tau_b, kendall_tau_c, mae, rmse, roc_auc, spearman, RetrievalMetrics};
use imsearch_text::{Tfidf, TfidfOptions};
use imsearch_types::QueryId;
use serde::Serialize;

use crate::{
    build, caption_bank, default_recipe, neighbours_of,
    select::{
        choose_bridge, choose_members, choose_neighbours, correct_columns, fit_calibration, fusion_members, index,
        member_plans, normalised, paired_standard_error, train_missing, validation_matrix, CalibrationReport, Member,
        NeighbourChoice, ValidationSplit,
    },
    Checkpoints, DataCounts, Embeddings, Error, Event, Result, Sources, TrainOptions, TrainingData,
};

/// What [`evaluate`] trains and tries.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// The fusion models' configuration and checkpoints (its seed is the first split's).
    pub checkpoints: Checkpoints,
    /// The TF-IDF baseline, which trains a second fusion model.
    pub tfidf: bool,
    /// The fusion models on one image encoder each (the members of the fusion ensemble besides
    /// the model on all of them).
    pub members: bool,
    /// Splits of the training images (seeds `seed`, `seed + 1`, ...) whose validation captions
    /// are pooled for the ensemble's choices; the validation figures are of the first.
    pub validation_splits: u32,
    /// Single views of the training images for the members trained with the dual-encoder
    /// recipe (on every encoder and, with `members`, on each one); empty: no such members.
    pub dual_encoder_views: Vec<String>,
    /// The dual-encoder members normalised over the caption bank before the members are
    /// averaged for ranking (each split's training captions on validation, every training
    /// caption in the engine): [`Recipe::dual_bank_normalised`].
    pub dual_bank_normalised: bool,
    /// The single views of the training images whose mean features describe the caption
    /// neighbours' gallery (empty: the features images are scored with):
    /// [`Recipe::neighbour_views`].
    pub neighbour_views: Vec<String>,
    /// The dual-encoder members trained with each training image's most probable ImageNet
    /// class sentence as one more positive ([`TrainOptions::class_positives`]).
    pub class_positives: bool,
}

/// Validation figures: agreement with the labels and retrieval among validation images.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    pub mae: Option<f64>,
    pub rmse: Option<f64>,
    pub roc_auc: Option<f64>,
    pub kendall_tau_b: Option<f64>,
    pub spearman: Option<f64>,
    pub kendall_tau_c_expert: Option<f64>,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub recall_at_10: f64,
    pub mrr: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelMetrics {
    pub validation: Validation,
    pub test: RetrievalMetrics,
    /// The test queries the compliance text policy lets through.
    pub test_allowed: RetrievalMetrics,
}

/// Everything the evaluation measured (`metrics.json`).
#[derive(Debug, Serialize)]
pub struct Metrics {
    pub seed: u64,
    /// The model with the best validation MRR.
    pub best: String,
    pub models: BTreeMap<String, ModelMetrics>,
    pub test_queries: usize,
    pub test_queries_allowed: usize,
    pub test_images: usize,
    pub data: DataCounts,
    /// Wall time of scoring every test query against every test image with the best model.
    pub test_scoring_ms: f64,
    /// Wall time of the best model's work on the test images alone, done once before
    /// `test_scoring_ms` as indexing would (projections, votes, bank statistics).
    pub test_image_preparation_ms: f64,
    /// The saved engine (the ensemble, built from the models retrained on every training image).
    pub engine: String,
    /// For the best scorer, each test query id and the 1-based rank of its image among the test
    /// images (ties count against the scorer).
    pub test_ranks: BTreeMap<String, usize>,
    /// The engine's probability of a match, fitted on the validation pairs.
    pub calibration: Option<CalibrationReport>,
}

/// A model under evaluation: its scorers and the text rows it reads (the text encoder's or
/// TF-IDF's). The test scorer may know more than the validation one (trained on every training
/// image, neighbours among all training images), never less.
struct Entry {
    name: String,
    scorer: Arc<dyn Scorer>,
    test_scorer: Arc<dyn Scorer>,
    texts: Tensor,
}

impl Entry {
    fn new(name: impl Into<String>, scorer: Arc<dyn Scorer>, texts: Tensor) -> Self {
        Entry { name: name.into(), test_scorer: scorer.clone(), scorer, texts }
    }
}

/// Every model against the baselines on the validation split of `config`'s seed; the
/// ensemble's recipe chosen on the validation captions of `validation_splits` splits pooled;
/// the engine built with it and saved in `engine_dir`; then the test queries of `ds` scored
/// once per model against the test images.
pub fn evaluate(
    ds: &Dataset,
    emb: &Embeddings<'_>,
    heads: &[ClassifierHead],
    config: &EvalConfig,
    engine_dir: &Path,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Metrics> {
    let ck = &config.checkpoints;
    let seed = ck.options.seed;
    // The class positives only where a member trains with them.
    let class_positives = config.class_positives && !config.dual_encoder_views.is_empty();
    let data = |options: &TrainOptions| -> Result<TrainingData> {
        let data = TrainingData::new(ds, emb, options)?;
        if class_positives {
            return data.with_class_positives(emb, heads);
        }
        Ok(data)
    };
    let p = Arc::new(data(&ck.options)?);
    on_event(Event::Data { counts: &p.counts });
    if class_positives {
        let classes = p.class_positives.iter().map(|x| x.0).collect::<std::collections::BTreeSet<_>>().len();
        on_event(Event::ClassPositives { images: p.class_positives.len(), classes });
    }

    let mut entries = vec![Entry::new("random", Arc::new(Random(seed)), p.texts.clone())];
    let start = Instant::now();
    let regressor = Regressor::train(&p.images, &p.texts, &p.train, seed)?;
    on_event(Event::Baseline { what: "the concatenation regressor", seconds: start.elapsed().as_secs_f64() });
    entries.push(Entry::new("regressor-concat (original task)", Arc::new(regressor), p.texts.clone()));
    if config.tfidf {
        entries.push(tfidf_entry(ds, &p, ck, on_event)?);
    }

    // The fusion models of every split: trained side by side where their checkpoints are
    // missing, then loaded. The first split's models also have their twin on every training
    // image, retrained for the epochs validation chose (for the test set). The other splits
    // (the next seeds) serve the ensemble's choices only: one split's 198 validation captions
    // leave differences of 0.02 in MRR to chance. Each split has its own fusion models and
    // neighbours; their validation captions are pooled.
    let dual = config.dual_encoder_views.as_slice();
    let mut split_data = vec![(p.clone(), ck.clone())];
    for k in 1..u64::from(config.validation_splits) {
        let ck = ck.with_seed(seed + k);
        split_data.push((Arc::new(data(&ck.options)?), ck));
    }
    let plans = split_data
        .iter()
        .map(|(q, ck)| member_plans(q, ck, config.members, dual, class_positives))
        .collect::<Result<Vec<_>>>()?;
    train_missing(&plans, on_event)?;
    let mut plans = plans.into_iter();
    let all_members = fusion_members(&plans.next().ok_or(Error::Empty("no validation split"))?, true, on_event)?;
    for m in &all_members {
        let (test, _) = m.all.clone().ok_or(Error::Empty("a member without its all-images twin"))?;
        entries.push(Entry {
            name: m.name.clone(),
            scorer: m.scorer.clone(),
            test_scorer: test,
            texts: p.texts.clone(),
        });
    }
    let mut split_members = vec![(p.clone(), all_members.iter().map(|m| m.scorer.clone()).collect::<Vec<_>>())];
    for (k, (plans, (q, ck))) in plans.zip(split_data.iter().skip(1)).enumerate() {
        on_event(Event::ValidationSplit { number: k as u64 + 2, of: config.validation_splits, seed: ck.options.seed });
        let members = fusion_members(&plans, false, on_event)?;
        split_members.push((q.clone(), members.into_iter().map(|m| m.scorer).collect()));
    }
    // The bank of training captions the training-free scorers (and, with
    // `dual_bank_normalised`, the dual-encoder members) are normalised over. On validation
    // the bank is the split's training side's captions; on the test set (in the engine),
    // every training caption.
    let banks = split_members.iter().map(|(q, _)| caption_bank(q, &[&q.train])).collect::<Result<Vec<_>>>()?;
    let test_bank = caption_bank(&p, &[&p.train, &p.validation])?;
    let ranked = |m: &Member, s: &Arc<dyn Scorer>, bank: &Tensor| match m.dual_encoder.is_some()
        && config.dual_bank_normalised
    {
        true => normalised(s, bank),
        false => s.clone(),
    };
    // The splits with the fusion members `keep` chooses (by their training recipe).
    let splits_of = |keep: &dyn Fn(&Member) -> bool| -> Vec<ValidationSplit> {
        split_members
            .iter()
            .zip(&banks)
            .map(|((q, scorers), bank)| {
                let kept: Vec<(&Member, &Arc<dyn Scorer>)> =
                    all_members.iter().zip(scorers).filter(|(m, _)| keep(m)).collect();
                let group = kept.iter().map(|(m, s)| ranked(m, s, bank)).collect::<Vec<_>>();
                let members = kept.into_iter().map(|(_, s)| s.clone()).collect();
                ValidationSplit { p: q.clone(), group: Arc::new(Ensemble::equal(group)), members }
            })
            .collect()
    };
    let mut splits = splits_of(&|_| true);
    let pooled_queries: usize = splits.iter().map(|s| s.p.validation.positives.len()).sum();

    // The bridge from ImageNet classes into text space, chosen on validation.
    let (bridge, class_texts) = choose_bridge(&splits, heads, emb, on_event)?;
    let bridge_temperature = bridge.temperature();
    let bridge: Arc<dyn Scorer> = Arc::new(bridge);
    entries.push(Entry::new("ImageNet-class bridge (training-free)", bridge.clone(), p.texts.clone()));

    // The training-free scorers, normalised over the banks.
    let bridge_bn: Vec<Arc<dyn Scorer>> = banks.iter().map(|b| normalised(&bridge, b)).collect();

    // Which fusion members the ensemble averages, by training recipe, each with its best
    // neighbourhood and weights on the pooled validation captions.
    type Keep = fn(&Member) -> bool;
    let mut compositions: Vec<(&str, Keep)> = vec![("fusion recipe", |m| m.dual_encoder.is_none())];
    if !dual.is_empty() {
        compositions.push(("dual-encoder recipe", |m| m.dual_encoder.is_some()));
        compositions.push(("fusion and dual-encoder recipes", |_| true));
    }
    let mut tried: Vec<(NeighbourChoice, Keep, Vec<ValidationSplit>, usize, &str)> = Vec::new();
    for (which, keep) in compositions {
        let candidate = splits_of(&keep);
        let choice = choose_neighbours(&candidate, &banks, &bridge_bn, &config.neighbour_views, on_event)?;
        let members = all_members.iter().filter(|m| keep(m)).count();
        on_event(Event::MembersTried { which, members, mrr: choice.pooled });
        tried.push((choice, keep, candidate, members, which));
    }
    let candidates: Vec<(usize, &[usize])> = tried.iter().map(|t| (t.3, t.0.ranks.as_slice())).collect();
    let k = choose_members(&candidates).ok_or(Error::Empty("no fusion members"))?;
    let best = (0..tried.len()).max_by(|&a, &b| tried[a].0.pooled.total_cmp(&tried[b].0.pooled)).unwrap_or(k);
    on_event(Event::MembersChosen {
        which: tried[k].4,
        members: tried[k].3,
        mrr: tried[k].0.pooled,
        best: tried[best].0.pooled,
        standard_error: paired_standard_error(&tried[best].0.ranks, &tried[k].0.ranks),
    });
    let (choice, keep, chosen_splits, _, _) = tried.swap_remove(k);
    splits = chosen_splits;
    let members: Vec<&Member> = all_members.iter().filter(|m| keep(m)).collect();
    let group = splits[0].group.clone();
    if members.len() > 1 {
        let all = members.iter().filter_map(|m| m.all.as_ref().map(|a| ranked(m, &a.0, &test_bank)));
        entries.push(Entry {
            name: format!("fusion ensemble ({} models, equal weights)", members.len()),
            scorer: group.clone(),
            test_scorer: Arc::new(Ensemble::equal(all)),
            texts: p.texts.clone(),
        });
    }

    // Neighbours among the training captions: on validation the gallery is the training side;
    // on the test set, every training image.
    let (hood, w) = (choice.hood, choice.weights);
    let neighbours: Arc<dyn Scorer> = Arc::new(choice.gallery);
    let parts = vec![group.clone(), normalised(&neighbours, &banks[0]), bridge_bn[0].clone()];
    entries.push(Entry {
        name: "caption neighbours (training-free)".into(),
        scorer: neighbours.clone(),
        test_scorer: Arc::new(neighbours_of(&p, true, hood, &config.neighbour_views)?),
        texts: p.texts.clone(),
    });
    let first_mats = parts.iter().map(|s| splits[0].matrix(s.as_ref())).collect::<Result<Vec<_>>>()?;
    let first = select::mrr(&select::ranks(&combine(&first_mats, &w), &splits[0].correct()));
    on_event(Event::EnsembleChosen {
        weights: w,
        hood,
        pooled: choice.pooled,
        captions: pooled_queries,
        splits: splits.len(),
        first,
    });

    // The probability of a match: the parts' scores of each labelled validation pair mapped
    // to its label, every split pooled.
    let calibration = fit_calibration(&splits, &banks, &bridge_bn, hood, w, &config.neighbour_views)?;
    on_event(Event::Calibrated { report: &calibration });

    // The engine: the recipe chosen above, built from the models retrained on every training
    // image, saved for search, serve and the demo.
    let recipe = Recipe {
        members: members
            .iter()
            .map(|m| MemberRecipe {
                encoders: m.encoders.clone(),
                epochs: m.all.as_ref().map_or(1, |a| a.1),
                dual_encoder: m.dual_encoder.clone(),
                class_positives: class_positives && m.dual_encoder.is_some(),
            })
            .collect(),
        weights: w,
        neighbours: hood,
        bridge_temperature,
        class_texts,
        calibration: calibration.calibration,
        dual_bank_normalised: config.dual_bank_normalised,
        neighbour_views: config.neighbour_views.clone(),
    };
    if recipe != default_recipe(&p.image_parts, &p.view_names()) {
        on_event(Event::RecipeDiffers { recipe: &recipe });
    }
    let provenance = serde_json::json!({
        "recipe": "chosen by cargo xtask eval on the pooled validation captions",
        "validation_splits": splits.len(),
        "pooled_validation_mrr": choice.pooled,
    });
    let sources = Sources { data: &p, embeddings: emb, heads };
    // The members' twins on every training image were trained above (retrained, when asked):
    // the engine loads them.
    let trained = Checkpoints { retrain: false, ..ck.clone() };
    let engine = build(&sources, recipe, &trained, provenance, engine_dir, on_event)?;
    entries.push(Entry {
        name: ENGINE_SCORER.into(),
        scorer: Arc::new(Ensemble::new(parts.into_iter().zip(w.iter().copied()).collect())),
        test_scorer: engine.scorer(),
        texts: p.texts.clone(),
    });

    // Validation first, for every model; the choice is made here.
    let mut validation = BTreeMap::new();
    for e in &entries {
        validation.insert(e.name.clone(), validate(e, &p)?);
    }
    let best = validation
        .iter()
        .max_by(|a, b| a.1.mrr.total_cmp(&b.1.mrr))
        .map(|(k, _)| k.clone())
        .ok_or(Error::Empty("no model to evaluate"))?;
    if best != ENGINE_SCORER {
        on_event(Event::EngineNotBest { best: &best });
    }
    let mut metrics = test(ds, emb, &p, &entries, &best, validation)?;
    metrics.seed = seed;
    metrics.calibration = Some(calibration);
    metrics.engine = engine_dir.display().to_string();
    Ok(metrics)
}

/// The test set, scored once per model; the best one first, so that its image-side work is
/// timed in full.
fn test(
    ds: &Dataset,
    emb: &Embeddings<'_>,
    p: &TrainingData,
    entries: &[Entry],
    best: &str,
    mut validation: BTreeMap<String, Validation>,
) -> Result<Metrics> {
    let test_ids: Vec<&str> = ds.test_images.iter().map(|r| r.image.as_str()).collect();
    let emb_images = &emb.test_image_matrix(&test_ids)?;
    let column: BTreeMap<&str, usize> = test_ids.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let text_row: BTreeMap<&str, usize> = p.text_ids.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
    let policy = TextPolicy::default();
    let (mut rows, mut correct, mut allowed, mut ids) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for q in &ds.test_queries {
        let key = q.query.to_string();
        let r = *text_row
            .get(key.as_str())
            .ok_or_else(|| Error::MissingEmbedding { model: p.text_encoder.clone(), key: key.clone() })?;
        let c = *column
            .get(q.image.as_str())
            .ok_or_else(|| Error::UnlistedTestImage { query: key.clone(), image: q.image.as_str().to_owned() })?;
        rows.push(r);
        correct.push(c);
        allowed.push(policy.matched(&q.text).is_none());
        ids.push(key);
    }
    let mut models = BTreeMap::new();
    let (mut test_scoring_ms, mut test_image_preparation_ms, mut test_ranks) = (0.0, 0.0, BTreeMap::new());
    let order = entries.iter().filter(|e| e.name == best).chain(entries.iter().filter(|e| e.name != best));
    for e in order {
        let texts = e.texts.index_select(&index(&rows)?, 0)?;
        let start = Instant::now();
        let prepared = e.test_scorer.prepare(emb_images)?;
        let prepared_ms = start.elapsed().as_secs_f64() * 1e3;
        let start = Instant::now();
        let scores = e.test_scorer.matrix(&prepared, &texts)?;
        let ranks = select::ranks(&scores, &correct);
        if e.name == best {
            test_scoring_ms = start.elapsed().as_secs_f64() * 1e3;
            test_image_preparation_ms = prepared_ms;
            test_ranks = ids.iter().cloned().zip(ranks.iter().copied()).collect();
        }
        let allowed_ranks: Vec<usize> = ranks.iter().zip(&allowed).filter(|(_, &a)| a).map(|(&r, _)| r).collect();
        models.insert(
            e.name.clone(),
            ModelMetrics {
                validation: validation.remove(&e.name).ok_or(Error::Empty("a model without validation figures"))?,
                test: RetrievalMetrics::from_ranks(&ranks).ok_or(Error::Empty("no test queries"))?,
                test_allowed: RetrievalMetrics::from_ranks(&allowed_ranks)
                    .ok_or(Error::Empty("every test query is blocked"))?,
            },
        );
    }
    Ok(Metrics {
        seed: 0,
        best: best.to_owned(),
        models,
        test_queries: ds.test_queries.len(),
        test_queries_allowed: allowed.iter().filter(|&&a| a).count(),
        test_images: test_ids.len(),
        data: p.counts.clone(),
        test_scoring_ms,
        test_image_preparation_ms,
        engine: String::new(),
        test_ranks,
        calibration: None,
    })
}

/// The TF-IDF baseline: a fusion model on TF-IDF text rows fitted on the training side's
/// captions only.
fn tfidf_entry(ds: &Dataset, p: &TrainingData, ck: &Checkpoints, on_event: &mut dyn FnMut(Event<'_>)) -> Result<Entry> {
    let caption_text = ds.train_captions();
    let test_text: BTreeMap<String, &str> =
        ds.test_queries.iter().map(|q| (q.query.to_string(), q.text.as_str())).collect();
    let text_of = |id: &str| -> &str {
        QueryId::parse(id)
            .ok()
            .and_then(|q| caption_text.get(&q).copied())
            .or_else(|| test_text.get(id).copied())
            .unwrap_or("")
    };
    let train_docs: Vec<&str> = p.train.positives.iter().map(|&(t, _)| text_of(&p.text_ids[t])).collect();
    let tfidf = Tfidf::fit(&train_docs, TfidfOptions::default()).map_err(Error::Tfidf)?;
    let all_texts: Vec<&str> = p.text_ids.iter().map(|id| text_of(id)).collect();
    let m = tfidf.transform_dense(&all_texts);
    let tfidf_texts = Tensor::from_vec(m.as_slice().to_vec(), (m.rows(), m.dim()), &Device::Cpu)?;
    let mut config = p.fusion_config(&ck.options)?;
    config.text_encoder = format!("tfidf-{}", m.dim());
    config.text_dim = m.dim();
    let start = Instant::now();
    let tc = ck.options.train_config();
    let (model, _, _) = imsearch_fusion::train(config, &tc, &p.images, &tfidf_texts, &p.train, &p.validation, |_| {})?;
    on_event(Event::Baseline { what: "the TF-IDF fusion model", seconds: start.elapsed().as_secs_f64() });
    let name = format!("fusion {} + tf-idf", p.image_encoder);
    Ok(Entry::new(name, Arc::new(Fusion::new(model)), tfidf_texts))
}

fn validate(e: &Entry, p: &TrainingData) -> Result<Validation> {
    let set = &p.validation;
    let images = p.images.index_select(&index(&set.pairs.iter().map(|x| x.0).collect::<Vec<_>>())?, 0)?;
    let texts = e.texts.index_select(&index(&set.pairs.iter().map(|x| x.1).collect::<Vec<_>>())?, 0)?;
    let pred: Vec<f64> = e.scorer.pairs(&images, &texts)?.into_iter().map(f64::from).collect();
    let label: Vec<f64> = set.pairs.iter().map(|x| f64::from(x.2)).collect();
    let positive: Vec<bool> = label.iter().map(|&l| l >= 0.5).collect();
    let (mut expert_pred, mut expert_grade) = (Vec::new(), Vec::new());
    for (pair, &s) in p.validation_pairs.iter().zip(&pred) {
        if let Some(g) = pair.sources.expert {
            expert_pred.push(s);
            expert_grade.push(f64::from(g.mean()));
        }
    }
    // Retrieval: each validation caption against every validation image.
    let scores = validation_matrix(e.scorer.as_ref(), &e.texts, p)?;
    let r = RetrievalMetrics::from_ranks(&select::ranks(&scores, &correct_columns(p)))
        .ok_or(Error::Empty("no validation captions"))?;
    Ok(Validation {
        mae: mae(&pred, &label),
        rmse: rmse(&pred, &label),
        roc_auc: roc_auc(&pred, &positive),
        kendall_tau_b: kendall_tau_b(&pred, &label),
        spearman: spearman(&pred, &label),
        kendall_tau_c_expert: kendall_tau_c(&expert_pred, &expert_grade),
        recall_at_1: r.recall_at_1,
        recall_at_5: r.recall_at_5,
        recall_at_10: r.recall_at_10,
        mrr: r.mrr,
    })
}
