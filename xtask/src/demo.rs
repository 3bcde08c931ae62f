//! `cargo xtask demo`: the task's closing test, end to end. Fetches the models if absent, finds
//! the dataset, computes or reuses the embeddings, loads the saved engine (or builds it from the
//! default recipe), draws N test queries at random (seeded) and ranks the test images for each
//! with the engine and the compliance policies: a query the text policy blocks gets the
//! disclaimer and no images; a result the image policy blocks (every result, without a usable
//! image policy) keeps its rank and is shown as the disclaimer, its file never opened.
//! imsearch-report's `results` draws `demo.png`, `rows/query-NN.png` and `index.html` in `--out`.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use imsearch_compliance::{Decision, TextPolicy, DISCLAIMER};
use imsearch_data::Dataset;
use imsearch_engine::Engine;
use imsearch_report::results::{self, MetricsTable, Outcome, Progress, QueryResults, RankedImage, ResultsPage, Shown};
use imsearch_types::ImageId;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::{
    compliance::{self, Collection, PolicyCheckpoint, PolicyOpts},
    embed, engine, paths,
    train::{self, Pipeline},
};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// How many test queries to draw at random (seeded by --seed).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    queries: u32,
    /// Results shown per query.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    top: u32,
    /// Where demo.png, index.html and rows/ go (default: target/demo in the workspace).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    pipeline: Pipeline,
    #[command(flatten)]
    policy: PolicyOpts,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let start = Instant::now();
    // Steps with what they did and how long they took, for the summary.
    let mut steps: Vec<(&str, String, Duration)> = Vec::new();

    let t = Instant::now();
    let store = args.pipeline.models.store()?;
    let kinds = args.pipeline.embed.kinds()?;
    let ids: Vec<&str> = std::iter::once(embed::TEXT_MODEL).chain(kinds.iter().map(|k| k.id())).collect();
    ids.iter().try_for_each(|id| crate::models::ensure(&store, id).map(drop))?;
    steps.push(("models", format!("{} in {}", ids.join(", "), store.root().display()), t.elapsed()));

    let t = Instant::now();
    let data = paths::data_dir(args.pipeline.data.as_deref())?;
    let data = data.canonicalize().unwrap_or(data);
    let spinner = crate::progress::spinner(&format!("loading the dataset at {}", data.display()));
    let ds = Dataset::load(&data, Default::default());
    spinner.finish_and_clear();
    let ds = ds.with_context(|| format!("failed to load the dataset at {}", data.display()))?;
    let (n_queries, n_images) = (ds.test_queries.len(), ds.test_images.len());
    let what = format!("{} ({n_queries} test queries, {n_images} test images)", data.display());
    steps.push(("dataset", what, t.elapsed()));

    let t = Instant::now();
    let emb = embed::embed_all(&ds, &store, &args.pipeline.embed)?;
    steps.push(("embeddings", format!("{}", emb.dir.display()), t.elapsed()));

    let t = Instant::now();
    let (engine, engine_dir, built) = engine::ensure(&args.pipeline, true, Some((&ds, &emb)))?;
    let what = format!("{} {}", if built { "built" } else { "reused" }, engine_dir.display());
    steps.push(("engine", what, t.elapsed()));
    let metrics_path = args.pipeline.embed.workdir().join("metrics.json");
    let (metrics_note, metrics) = metrics(&metrics_path, &engine_dir);

    let t = Instant::now();
    let (embed_opts, seed) = (&args.pipeline.embed, args.pipeline.train.seed);
    let policy_emb = args.policy.restrict(&emb, embed_opts)?;
    let fraction = args.pipeline.train.train_fraction;
    let policy = compliance::load_or_train_image_policy(&ds, &policy_emb, embed_opts, seed, fraction, &args.policy);
    let what = match &policy {
        Ok((_, path, fitted)) => format!("{} {}", if *fitted { "fitted" } else { "reused" }, path.display()),
        Err(e) => {
            println!("warning: no usable image policy ({e:#}); every result image is blocked (fail closed)");
            "unavailable: every result image blocked".to_owned()
        }
    };
    steps.push(("image policy", what, t.elapsed()));
    let policy: Option<PolicyCheckpoint> = policy.ok().map(|(ckpt, ..)| ckpt);
    let image_blocked = |key: &str| match &policy {
        Some(ckpt) => compliance::image_decision(ckpt, &policy_emb, Collection::Test, key).is_blocked(),
        None => true,
    };

    let t = Instant::now();
    let shown = rank_queries(args, &ds, &emb, &engine, &image_blocked)?;
    steps.push(("queries", results::summary(&shown, args.top as usize), t.elapsed()));
    for (i, q) in shown.iter().enumerate() {
        print!("\n{}", q.to_text(i + 1, DISCLAIMER));
    }

    let t = Instant::now();
    let out = args.out.clone().unwrap_or_else(|| paths::workspace_root().join("target/demo"));
    fs::create_dir_all(&out).with_context(|| format!("failed to create {}", out.display()))?;
    let out = out.canonicalize().with_context(|| format!("failed to resolve {}", out.display()))?;
    let (n, name, members, top) = (shown.len(), engine.name(), engine.members().len(), args.top);
    let page = ResultsPage {
        title: format!("imsearch demo: {n} random test queries"),
        intro: format!(
            "Each of {n} test queries drawn at random (seed {seed}) against the {n_images} test images, ranked by the \
             engine: {name} (the saved engine of `cargo xtask eval`, {members} fusion models); each score is the \
             probability that the photo matches the query (0 to 1, calibrated on graded validation pairs; estimated \
             for each photo on its own, apart from the ranking, so a photo lower in the list can score a little \
             higher). Green frame: the correct image, the one the query was written for; when it ranks below the top \
             {top}, it is shown last with its rank. Compliance: a query that names a child gets the \
             disclaimer and no images; an image the image policy blocks is replaced by the disclaimer and keeps its \
             rank. The whole contact sheet is demo.png in this folder."
        ),
        disclaimer: DISCLAIMER,
        queries: &shown,
        metrics_note,
        metrics,
    };
    let bar = crate::progress::bar(shown.iter().map(|q| q.shown().count() as u64).sum(), "drawing", "images");
    let rendered = results::render_sheet_and_page(&out, &page, &mut |p| match p {
        Progress::TileDrawn => bar.inc(1),
        Progress::Writing => bar.finish_and_clear(),
    })?;
    steps.push(("render", format!("{}", out.display()), t.elapsed()));

    match &page.metrics {
        Some(m) => print!("\nmetrics ({}):\n{}", metrics_path.display(), m.to_text()),
        None => println!("\nno metrics.json for this engine: `cargo xtask eval` measures every model and rebuilds it"),
    }
    println!("\nsummary (seed {seed}, {} queries, top {}):", shown.len(), args.top);
    for (name, what, took) in &steps {
        println!("  {name:<13} {:>6.1} s  {what}", took.as_secs_f64());
    }
    println!("  {:<13} {:>6.1} s", "total", start.elapsed().as_secs_f64());
    println!("\ncontact sheet: {}", rendered.sheet.display());
    println!("page:          {}", rendered.page.display());
    Ok(())
}

/// The page's metrics paragraph and table: from `metrics.json` when `cargo xtask eval` wrote it
/// with this engine (the one whose figures the page shows), none otherwise.
fn metrics(path: &Path, engine_dir: &Path) -> (String, Option<MetricsTable>) {
    let read = || -> Option<Value> {
        let v: Value = serde_json::from_str(&fs::read_to_string(path).ok()?).ok()?;
        (v["engine"].as_str() == Some(engine_dir.to_str()?)).then_some(v)
    };
    let Some(m) = read() else {
        return ("No metrics for this engine yet: `cargo xtask eval` measures every model and baseline.".into(), None);
    };
    let (source, best) = (path.display(), m["best"].as_str().unwrap_or("-"));
    let note = format!(
        "From {source} (validation: the held-out train images; test: the 500 test queries against the 100 test \
         images; allowed: the test queries the text policy lets through). Best on validation: {best}."
    );
    (note, Some(metrics_table(&m)))
}

/// Draws the queries and ranks the test images for each one the text policy allows.
fn rank_queries(
    args: &Args,
    ds: &Dataset,
    emb: &embed::Embeddings,
    engine: &Engine,
    image_blocked: &dyn Fn(&str) -> bool,
) -> Result<Vec<QueryResults>> {
    // Test images with every encoder's features are the candidates.
    let ids: Vec<&str> = ds
        .test_images
        .iter()
        .map(|r| r.image.as_str())
        .filter(|k| emb.images.iter().all(|(_, _, test)| test.get(k).is_some()))
        .collect();
    if ids.len() < ds.test_images.len() {
        println!("note: {} test images have no embedding and are left out", ds.test_images.len() - ids.len());
    }
    let images = engine.scorer().prepare(&train::test_image_matrix(emb, &ids)?)?;
    let policy = TextPolicy::default();
    let mut rng = ChaCha8Rng::seed_from_u64(args.pipeline.train.seed);
    let n = (args.queries as usize).min(ds.test_queries.len());
    let picked = rand::seq::index::sample(&mut rng, ds.test_queries.len(), n).into_vec();

    let mut shown = Vec::with_capacity(n);
    for i in picked {
        let q = &ds.test_queries[i];
        let outcome = match policy.decide(&q.text) {
            Decision::Block(reason) => Outcome::Blocked { reason: reason.to_string() },
            Decision::Allow => {
                let key = q.query.to_string();
                let text = embed::rows(&emb.texts, &[key.as_str()])?;
                let scores = engine.scorer().matrix(&images, &text)?.remove(0);
                let correct = ids.iter().position(|k| *k == q.image.as_str());
                let ranked = |row: usize, score: f32, rank: usize| {
                    let id = ImageId::from(ids[row]);
                    let shown = match image_blocked(ids[row]) {
                        true => Shown::Blocked,
                        false => Shown::Image { path: ds.test_image_path(&id), id: id.0 },
                    };
                    RankedImage { rank, score, shown, correct: Some(row) == correct }
                };
                let hits = imsearch_index::top_k(&scores, args.top as usize);
                let correct_rank = correct.map(|c| imsearch_eval::rank_of(&scores, c));
                // Ranked by the engine; each shown with its calibrated probability of a match.
                let mut rows: Vec<usize> = hits.iter().map(|h| h.row).collect();
                rows.extend(correct);
                let matches = engine.match_probabilities(&images.select(&rows)?, &text)?.remove(0);
                let top: Vec<_> =
                    hits.iter().zip(&matches).enumerate().map(|(r, (h, &p))| ranked(h.row, p, r + 1)).collect();
                let correct_below = match (correct, correct_rank, matches.last()) {
                    (Some(c), Some(rank), Some(&p)) if !top.iter().any(|r| r.correct) => Some(ranked(c, p, rank)),
                    _ => None,
                };
                Outcome::Ranked { top, correct_below, correct_rank }
            }
        };
        shown.push(QueryResults { id: q.query.to_string(), text: q.text.clone(), outcome });
    }
    Ok(shown)
}

/// The columns of the metrics table: (header, section of metrics.json, figure, decimals).
const METRICS: [(&str, &str, &str, usize); 9] = [
    ("val MRR", "validation", "mrr", 3),
    ("val ROC-AUC", "validation", "roc_auc", 3),
    ("test R@1", "test", "recall_at_1", 3),
    ("test R@5", "test", "recall_at_5", 3),
    ("test R@10", "test", "recall_at_10", 3),
    ("test MRR", "test", "mrr", 3),
    ("test median rank", "test", "median_rank", 1),
    ("allowed R@1", "test_allowed", "recall_at_1", 3),
    ("allowed MRR", "test_allowed", "mrr", 3),
];

/// One row per model of `metrics.json`, `-` for a figure it lacks.
fn metrics_table(m: &Value) -> MetricsTable {
    let cell = |x: &Value, (_, section, key, digits): &(&str, &str, &str, usize)| {
        x[section][key].as_f64().map_or("-".to_owned(), |v| format!("{v:.digits$}"))
    };
    let models = m["models"].as_object().into_iter().flatten();
    MetricsTable {
        header: std::iter::once("model").chain(METRICS.iter().map(|c| c.0)).map(str::to_owned).collect(),
        rows: models
            .map(|(name, x)| std::iter::once(name.clone()).chain(METRICS.iter().map(|c| cell(x, c))).collect())
            .collect(),
    }
}
