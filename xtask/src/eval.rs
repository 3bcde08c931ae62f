//! `cargo xtask eval`: every model against the baselines, chosen on the validation split, then
//! scored once on the 500 test queries; prints a table, writes `metrics.json` (with the rank of
//! each test query's image under the best scorer) and saves the engine built with the choices.
//! The scorers live in imsearch-engine; this job wires them to the dataset and chooses.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use anyhow::{Context, Result};
use candle::{Device, Tensor};
use imsearch_compliance::TextPolicy;
use imsearch_data::Dataset;
use imsearch_engine::{
    select, BankNormalised, Bridge, ClassTexts, Columns, Ensemble, Fusion, MemberRecipe, Neighbourhood, Random, Recipe,
    Regressor, Scorer, ENGINE_SCORER,
};
use imsearch_eval::{kendall_tau_b, kendall_tau_c, mae, rmse, roc_auc, spearman, RetrievalMetrics};
use imsearch_fusion::FusionModel;
use imsearch_text::{Tfidf, TfidfOptions};
use serde::Serialize;

use crate::{
    embed::{self, EmbedOpts},
    engine, paths,
    train::{self, Pipeline, Prepared, TrainOpts},
};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) pipeline: Pipeline,
    /// Train the fusion models again even when their checkpoints exist.
    #[arg(long)]
    pub(crate) retrain: bool,
    /// Leave out the TF-IDF baseline, which trains a second fusion model.
    #[arg(long)]
    pub(crate) no_tfidf: bool,
    /// Leave out the fusion models on one image encoder each (the members of the fusion
    /// ensemble besides the model on all of them).
    #[arg(long)]
    pub(crate) no_members: bool,
    /// Splits of the training images (seeds --seed, --seed + 1, ...) whose validation captions
    /// are pooled for the ensemble's choices (the bridge's settings and the weights). The
    /// table's validation columns are of the first.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) validation_splits: u32,
}

/// Validation figures: agreement with the labels and retrieval among validation images.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Validation {
    mae: Option<f64>,
    rmse: Option<f64>,
    roc_auc: Option<f64>,
    kendall_tau_b: Option<f64>,
    spearman: Option<f64>,
    kendall_tau_c_expert: Option<f64>,
    recall_at_1: f64,
    recall_at_5: f64,
    recall_at_10: f64,
    mrr: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ModelMetrics {
    pub(crate) validation: Validation,
    pub(crate) test: RetrievalMetrics,
    pub(crate) test_allowed: RetrievalMetrics,
}

#[derive(Debug, Serialize)]
pub(crate) struct Metrics {
    pub(crate) seed: u64,
    pub(crate) best: String,
    pub(crate) models: BTreeMap<String, ModelMetrics>,
    pub(crate) test_queries: usize,
    pub(crate) test_queries_allowed: usize,
    pub(crate) test_images: usize,
    pub(crate) data: train::DataCounts,
    /// Wall time of scoring every test query against every test image with the best model.
    pub(crate) test_scoring_ms: f64,
    /// Wall time of the best model's work on the test images alone, done once before
    /// `test_scoring_ms` as indexing would (projections, votes, bank statistics).
    pub(crate) test_image_preparation_ms: f64,
    /// The saved engine (the ensemble, built from the models retrained on every training image).
    pub(crate) engine: String,
    /// For the best scorer, each test query id and the 1-based rank of its image among the test
    /// images (ties count against the scorer).
    pub(crate) test_ranks: BTreeMap<String, usize>,
}

/// A model under evaluation: its scorers and the text rows it reads (MiniLM or TF-IDF). The
/// test scorer may know more than the validation one (trained on every training image,
/// neighbours among all training images), never less.
struct Entry {
    name: String,
    scorer: Arc<dyn Scorer>,
    test_scorer: Arc<dyn Scorer>,
    texts: Tensor,
}

impl Entry {
    fn new(name: String, scorer: Arc<dyn Scorer>, texts: Tensor) -> Self {
        Entry { name, test_scorer: scorer.clone(), scorer, texts }
    }
}

/// The bridge's softmax temperatures and class texts tried on validation.
const BRIDGE_TEMPERATURES: [f64; 4] = [0.5, 1.0, 2.0, 4.0];
const CLASS_TEXTS: [ClassTexts; 2] = [ClassTexts::Names, ClassTexts::Sentences];

/// The neighbourhoods tried on validation.
const NEIGHBOURS_K: [usize; 4] = [5, 10, 20, 40];
const NEIGHBOURS_TEMPERATURES: [f32; 4] = [0.02, 0.05, 0.1, 1.0];

fn index(rows: &[usize]) -> candle::Result<Tensor> {
    Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>().as_slice(), &Device::Cpu)
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let metrics = evaluate(args)?;
    let path = paths::resolve(&args.pipeline.embed.workdir).join("metrics.json");
    paths::write_atomic(&path, serde_json::to_string_pretty(&metrics)?.as_bytes())?;
    print_table(&metrics);
    println!("\nbest on validation: {}", metrics.best);
    println!("engine: {}", metrics.engine);
    println!("wrote {}", path.display());
    Ok(())
}

/// One split of the training images for validation: its pairs and its fusion ensemble.
struct ValidationSplit {
    p: Arc<Prepared>,
    group: Arc<dyn Scorer>,
}

impl ValidationSplit {
    fn matrix(&self, scorer: &dyn Scorer) -> Result<Vec<Vec<f32>>> {
        validation_matrix(scorer, &self.p.texts, &self.p)
    }

    /// Each validation caption's image as a column of [`ValidationSplit::matrix`].
    fn correct(&self) -> Vec<usize> {
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
/// its scorer on the split and the same configuration retrained on every training image.
struct Member {
    name: String,
    encoders: Vec<String>,
    scorer: Arc<dyn Scorer>,
    test_scorer: Option<Arc<dyn Scorer>>,
}

/// The fusion models of one split: the model on every image encoder and, unless `--no-members`,
/// one model per image encoder when there are several. Checkpoints are reused unless
/// `--retrain`; `with_all` adds each one's twin retrained on every training image for the
/// epochs early stopping chose.
fn fusion_members(p: &Prepared, args: &Args, opts: &TrainOpts, with_all: bool) -> Result<Vec<Member>> {
    let load_or_train = |p: &Prepared, embed: &EmbedOpts, encoders: Vec<String>| -> Result<Member> {
        let dir = train::checkpoint_dir(embed, opts);
        let model = match FusionModel::load(&dir, &p.image_encoder, embed::TEXT_MODEL, &Device::Cpu) {
            Ok(model) if !args.retrain => {
                println!("reusing the checkpoint in {}", dir.display());
                model
            }
            _ => train::train_and_save(p, embed, opts)?.0,
        };
        let test_scorer = if with_all {
            let epochs = train::best_epoch(embed, opts, opts.seed)?.max(1);
            let all = train::load_or_train_all(p, embed, opts, args.retrain, opts.seed, epochs)?.0;
            Some(Arc::new(Fusion::new(all)) as Arc<dyn Scorer>)
        } else {
            None
        };
        let name = format!("fusion {} + {}", p.image_encoder, embed::TEXT_MODEL);
        Ok(Member { name, encoders, scorer: Arc::new(Fusion::new(model)), test_scorer })
    };
    let embed = &args.pipeline.embed;
    let mut members = vec![load_or_train(p, embed, Vec::new())?];
    if p.image_parts.len() > 1 && !args.no_members {
        for part in 0..p.image_parts.len() {
            let (mp, membed) = p.only(part, embed)?;
            let m = load_or_train(&mp, &membed, membed.image_encoders.clone())?;
            let (offset, dim) = p.columns(part);
            let columns = |s: Arc<dyn Scorer>| Arc::new(Columns::new(s, offset, dim)) as Arc<dyn Scorer>;
            members.push(Member {
                name: m.name,
                encoders: m.encoders,
                scorer: columns(m.scorer),
                test_scorer: m.test_scorer.map(columns),
            });
        }
    }
    Ok(members)
}

pub(crate) fn evaluate(args: &Args) -> Result<Metrics> {
    let pipeline = &args.pipeline;
    let data = paths::data_dir(pipeline.data.as_deref())?;
    let ds = Dataset::load(&data, Default::default())
        .with_context(|| format!("failed to load the dataset at {}", data.display()))?;
    let emb = embed::embed_all(&ds, &pipeline.models.store()?, &pipeline.embed)?;
    let p = Arc::new(Prepared::new(&ds, &emb, &pipeline.train)?);
    p.print_counts();
    let seed = pipeline.train.seed;

    let mut entries = vec![Entry::new("random".into(), Arc::new(Random(seed)), p.texts.clone())];
    let start = Instant::now();
    let regressor = Regressor::train(&p.images, &p.texts, &p.train, seed)?;
    println!("trained the concatenation regressor in {:.1} s", start.elapsed().as_secs_f64());
    entries.push(Entry::new("regressor-concat (original task)".into(), Arc::new(regressor), p.texts.clone()));
    if !args.no_tfidf {
        entries.push(tfidf_entry(&ds, &p, &pipeline.train)?);
    }

    // The fusion models: trained on the split, and (for the test set) the same configuration
    // retrained on every training image for the number of epochs validation chose.
    let members = fusion_members(&p, args, &pipeline.train, true)?;
    for m in &members {
        let test = m.test_scorer.clone().context("a member without its all-images twin")?;
        entries.push(Entry {
            name: m.name.clone(),
            scorer: m.scorer.clone(),
            test_scorer: test,
            texts: p.texts.clone(),
        });
    }
    let group: Arc<dyn Scorer> = Arc::new(Ensemble::equal(members.iter().map(|m| m.scorer.clone())));
    if members.len() > 1 {
        let all = members.iter().filter_map(|m| m.test_scorer.clone());
        entries.push(Entry {
            name: format!("fusion ensemble ({} models, equal weights)", members.len()),
            scorer: group.clone(),
            test_scorer: Arc::new(Ensemble::equal(all)),
            texts: p.texts.clone(),
        });
    }

    // More splits of the training images (the next seeds), for the ensemble's choices: one
    // split's 198 validation captions leave differences of 0.02 in MRR to chance. Each split
    // has its own fusion models and neighbours; their validation captions are pooled.
    let mut splits = vec![ValidationSplit { p: p.clone(), group: group.clone() }];
    for k in 1..u64::from(args.validation_splits) {
        let opts = TrainOpts { seed: seed + k, ..pipeline.train.clone() };
        println!("validation split {} of {} (seed {})", k + 1, args.validation_splits, opts.seed);
        let q = Arc::new(Prepared::new(&ds, &emb, &opts)?);
        let members = fusion_members(&q, args, &opts, false)?;
        splits.push(ValidationSplit { p: q, group: Arc::new(Ensemble::equal(members.into_iter().map(|m| m.scorer))) });
    }
    let pooled_queries: usize = splits.iter().map(|s| s.p.validation.positives.len()).sum();

    // The bridge from ImageNet classes into text space; its class texts (bare names or
    // "a photo of a ..." sentences) and its softmax temperature chosen on validation MRR.
    let heads = engine::heads(pipeline)?;
    let mut chosen: Option<(Bridge, ClassTexts, f64)> = None;
    for texts in CLASS_TEXTS {
        let classes = engine::class_rows(&emb, texts)?;
        for temperature in BRIDGE_TEMPERATURES {
            let candidate = Bridge::new(heads.clone(), classes.clone(), temperature)?;
            let mrr = pooled_mrr(&splits, &candidate)?;
            println!(
                "class bridge with class {texts:?}, temperature {temperature}: validation MRR {mrr:.3} \
                 ({pooled_queries} captions of {} splits)",
                splits.len()
            );
            if chosen.as_ref().is_none_or(|b| mrr > b.2) {
                chosen = Some((candidate, texts, mrr));
            }
        }
    }
    let (bridge, class_texts, _) = chosen.context("no bridge configuration")?;
    let bridge_temperature = bridge.temperature();
    println!("class bridge: class {class_texts:?}, temperature {bridge_temperature} (chosen on validation)");
    let bridge: Arc<dyn Scorer> = Arc::new(bridge);
    entries.push(Entry::new("ImageNet-class bridge (training-free)".into(), bridge.clone(), p.texts.clone()));

    // The training-free scorers, normalised over a bank of training captions: each image's
    // scores standardised by its scores for the bank's captions, so an image that matches
    // every text a little (a hub) no longer comes first for all of them. On validation the bank
    // is the training side's captions; on the test set (in the engine), every training caption.
    let normalised = |s: &Arc<dyn Scorer>, bank: &Tensor| -> Arc<dyn Scorer> {
        Arc::new(BankNormalised::new(s.clone(), bank.clone()))
    };
    let banks = splits.iter().map(|s| engine::caption_bank(&s.p, &[&s.p.train])).collect::<Result<Vec<_>>>()?;
    let bridge_bn: Vec<Arc<dyn Scorer>> = banks.iter().map(|b| normalised(&bridge, b)).collect();

    // Neighbours among the training captions: on validation the gallery is the training side;
    // on the test set, every training image. How many neighbours vote, and how sharply their
    // softmax weights favour the nearest, are chosen with the ensemble's weights, on the pooled
    // validation captions. The fusion models' and the bridge's matrices do not depend on the
    // neighbourhood: computed once per split. So is each split's gallery.
    let fixed = splits
        .iter()
        .zip(&bridge_bn)
        .map(|(split, bridge)| Ok((split.matrix(split.group.as_ref())?, split.matrix(bridge.as_ref())?)))
        .collect::<Result<Vec<_>>>()?;
    let first = Neighbourhood { k: NEIGHBOURS_K[0], temperature: NEIGHBOURS_TEMPERATURES[0] };
    let galleries =
        splits.iter().map(|split| engine::neighbours_of(&split.p, false, first)).collect::<Result<Vec<_>>>()?;
    let correct: Vec<Vec<usize>> = splits.iter().map(ValidationSplit::correct).collect();
    let mut best: Option<(Neighbourhood, Vec<f32>, f64)> = None;
    for k in NEIGHBOURS_K {
        for temperature in NEIGHBOURS_TEMPERATURES {
            let hood = Neighbourhood { k, temperature };
            let mut mats = Vec::with_capacity(splits.len());
            for (((split, bank), gallery), (group, bridge)) in splits.iter().zip(&banks).zip(&galleries).zip(&fixed) {
                let neighbours: Arc<dyn Scorer> = Arc::new(gallery.with(hood));
                mats.push(vec![group.clone(), split.matrix(normalised(&neighbours, bank).as_ref())?, bridge.clone()]);
            }
            let (w, mrr) = select::choose_weights(&mats, &correct);
            println!(
                "caption neighbours: {k} at temperature {temperature}: ensemble weights {:.2} / {:.2} / {:.2}, \
                 validation MRR {mrr:.3}",
                w[0], w[1], w[2]
            );
            if best.as_ref().is_none_or(|b| mrr > b.2) {
                best = Some((hood, w, mrr));
            }
        }
    }
    let (hood, w, pooled) = best.context("no neighbours setting")?;
    let neighbours: Arc<dyn Scorer> = Arc::new(galleries[0].with(hood));
    let parts = vec![group.clone(), normalised(&neighbours, &banks[0]), bridge_bn[0].clone()];
    let neighbours_all: Arc<dyn Scorer> = Arc::new(engine::neighbours_of(&p, true, hood)?);
    entries.push(Entry {
        name: "caption neighbours (training-free)".into(),
        scorer: neighbours.clone(),
        test_scorer: neighbours_all,
        texts: p.texts.clone(),
    });
    let primary = select::mrr(&select::ranks(
        &imsearch_engine::combine(&parts.iter().map(|s| splits[0].matrix(s.as_ref())).collect::<Result<Vec<_>>>()?, &w),
        &correct[0],
    ));
    println!(
        "ensemble: fusion models 1.00, caption neighbours {:.2} ({} at temperature {}), class bridge {:.2} \
         (both bank-normalised; validation MRR {pooled:.3} over {pooled_queries} captions of {} splits, {primary:.3} \
         on the first)",
        w[1],
        hood.k,
        hood.temperature,
        w[2],
        splits.len()
    );

    // The engine: the recipe chosen above, built from the models retrained on every training
    // image, saved for search, serve and the demo.
    let recipe = Recipe {
        members: members
            .iter()
            .map(|m| {
                let embed = EmbedOpts { image_encoders: m.encoders.clone(), ..pipeline.embed.clone() };
                let embed = if m.encoders.is_empty() { pipeline.embed.clone() } else { embed };
                Ok(MemberRecipe {
                    encoders: m.encoders.clone(),
                    epochs: train::best_epoch(&embed, &pipeline.train, seed)?.max(1),
                })
            })
            .collect::<Result<Vec<_>>>()?,
        weights: [w[0], w[1], w[2]],
        neighbours: hood,
        bridge_temperature,
        class_texts,
    };
    if recipe != engine::default_recipe(&p) {
        println!("note: the recipe chosen here differs from the default in the source (Recipe::default): {recipe:?}");
    }
    let provenance = serde_json::json!({
        "recipe": "chosen by cargo xtask eval on the pooled validation captions",
        "validation_splits": splits.len(),
        "pooled_validation_mrr": pooled,
    });
    let engine = engine::build(&p, &emb, pipeline, recipe, args.retrain, provenance)?;
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
        .context("no model to evaluate")?;
    if best != ENGINE_SCORER {
        println!("warning: {best} beats the engine's ensemble on validation; the engine still ranks search");
    }
    let mut metrics = test(&ds, &emb, &p, &entries, &best, validation)?;
    metrics.seed = seed;
    metrics.engine = engine::engine_dir(pipeline).display().to_string();
    Ok(metrics)
}

/// The test set, scored once per model; the best one first, so that its image-side work is
/// timed in full.
fn test(
    ds: &Dataset,
    emb: &embed::Embeddings,
    p: &Prepared,
    entries: &[Entry],
    best: &str,
    mut validation: BTreeMap<String, Validation>,
) -> Result<Metrics> {
    let test_ids: Vec<&str> = ds.test_images.iter().map(|r| r.image.as_str()).collect();
    let emb_images = &train::test_image_matrix(emb, &test_ids)?;
    let column: BTreeMap<&str, usize> = test_ids.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let text_row: BTreeMap<&str, usize> = p.text_ids.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
    let policy = TextPolicy::default();
    let (mut rows, mut correct, mut allowed, mut ids) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for q in &ds.test_queries {
        let key = q.query.to_string();
        let r = *text_row.get(key.as_str()).with_context(|| format!("no text embedding for test query {key}"))?;
        let c = *column.get(q.image.as_str()).with_context(|| {
            format!("test query {key} is written for {}, which test_images.csv does not list", q.image.as_str())
        })?;
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
                validation: validation.remove(&e.name).context("a model without validation figures")?,
                test: RetrievalMetrics::from_ranks(&ranks).context("no test queries")?,
                test_allowed: RetrievalMetrics::from_ranks(&allowed_ranks).context("every test query is blocked")?,
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
    })
}

/// The TF-IDF baseline: a fusion model on TF-IDF text rows fitted on the training side's
/// captions only.
fn tfidf_entry(ds: &Dataset, p: &Prepared, opts: &TrainOpts) -> Result<Entry> {
    let caption_text = train::caption_texts(ds);
    let test_text: BTreeMap<String, &str> =
        ds.test_queries.iter().map(|q| (q.query.to_string(), q.text.as_str())).collect();
    let text_of = |id: &str| -> &str {
        imsearch_types::QueryId::parse(id)
            .ok()
            .and_then(|q| caption_text.get(&q))
            .map(String::as_str)
            .or_else(|| test_text.get(id).copied())
            .unwrap_or("")
    };
    let train_docs: Vec<&str> = p.train.positives.iter().map(|&(t, _)| text_of(&p.text_ids[t])).collect();
    let tfidf = Tfidf::fit(&train_docs, TfidfOptions::default()).context("failed to fit TF-IDF")?;
    let all_texts: Vec<&str> = p.text_ids.iter().map(|id| text_of(id)).collect();
    let m = tfidf.transform_dense(&all_texts);
    let tfidf_texts = Tensor::from_vec(m.as_slice().to_vec(), (m.rows(), m.dim()), &Device::Cpu)?;
    let mut config = p.fusion_config(opts)?;
    config.text_encoder = format!("tfidf-{}", m.dim());
    config.text_dim = m.dim();
    let start = Instant::now();
    let (model, _, _) = imsearch_fusion::train(
        config,
        &train::train_config(opts),
        &p.images,
        &tfidf_texts,
        &p.train,
        &p.validation,
        |_| {},
    )?;
    println!("trained the TF-IDF fusion model in {:.1} s", start.elapsed().as_secs_f64());
    Ok(Entry::new(format!("fusion {} + tf-idf", p.image_encoder), Arc::new(Fusion::new(model)), tfidf_texts))
}

/// Scores of every validation caption (rows of `texts`) against every validation image.
fn validation_matrix(scorer: &dyn Scorer, texts: &Tensor, p: &Prepared) -> Result<Vec<Vec<f32>>> {
    let set = &p.validation;
    let candidates = p.images.index_select(&index(&set.candidates)?, 0)?;
    let queries = texts.index_select(&index(&set.positives.iter().map(|x| x.0).collect::<Vec<_>>())?, 0)?;
    Ok(scorer.matrix(&scorer.prepare(&candidates)?, &queries)?)
}

/// Each validation caption's own image as a column of [`validation_matrix`].
fn correct_columns(p: &Prepared) -> Vec<usize> {
    let column: BTreeMap<usize, usize> = p.validation.candidates.iter().enumerate().map(|(k, &i)| (i, k)).collect();
    p.validation.positives.iter().map(|&(_, i)| column[&i]).collect()
}

fn validate(e: &Entry, p: &Prepared) -> Result<Validation> {
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
    let r =
        RetrievalMetrics::from_ranks(&select::ranks(&scores, &correct_columns(p))).context("no validation captions")?;
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

fn print_table(m: &Metrics) {
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
    println!(
        "\n{:<58} | {:>6} {:>6} {:>6} {:>6} {:>6} | {:>6} {:>6} {:>6} {:>6} {:>6} | {:>6} {:>6}",
        "model", "MAE", "AUC", "tau-b", "tau-c", "MRR", "R@1", "R@5", "R@10", "MRR", "medR", "R@1*", "MRR*"
    );
    println!("{:<58} | {:^34} | {:^34} | {:^13}", "", "validation", "test (500 queries x 100 images)", "allowed*");
    for (name, x) in &m.models {
        let v = &x.validation;
        println!(
            "{name:<58} | {:>6} {:>6} {:>6} {:>6} {:>6.3} | {:>6.3} {:>6.3} {:>6.3} {:>6.3} {:>6.1} | {:>6.3} {:>6.3}",
            f(v.mae),
            f(v.roc_auc),
            f(v.kendall_tau_b),
            f(v.kendall_tau_c_expert),
            v.mrr,
            x.test.recall_at_1,
            x.test.recall_at_5,
            x.test.recall_at_10,
            x.test.mrr,
            x.test.median_rank,
            x.test_allowed.recall_at_1,
            x.test_allowed.mrr
        );
    }
    println!(
        "* test queries the compliance text policy lets through: {} of {}; scoring all test pairs with the best model took {:.1} ms \
         (after {:.1} ms of work on the test images alone, as indexing does)",
        m.test_queries_allowed, m.test_queries, m.test_scoring_ms, m.test_image_preparation_ms
    );
}
