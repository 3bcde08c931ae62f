//! `cargo xtask demo`: the task's closing test, end to end. Fetches the models if absent, finds
//! the dataset, computes or reuses the embeddings, loads the saved engine (or builds it from the
//! default recipe, training only the fusion members it needs), then draws N test queries at
//! random (seeded) and shows the top images of the 100 test images for each, ranked by the
//! engine, with the compliance policies applied:
//!
//! - a query the text policy blocks gets a row with the disclaimer and no images;
//! - a result the image policy blocks keeps its rank and score, and a disclaimer tile replaces
//!   it (its file is never opened); without a usable image policy every result is blocked.
//!
//! Output: `demo.png` (one row per query: the query above, the ranked images with their scores
//! below, the image the query was written for framed in green, shown after the top results when
//! it ranked lower), `index.html` (the same rows, a table of each, and the metrics table) and
//! `rows/query-NN.png` (the rows the page shows), in `--out`.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use imsearch_compliance::{BlockReason, Decision, TextPolicy, DISCLAIMER};
use imsearch_data::Dataset;
use imsearch_engine::Engine;
use imsearch_report::{
    html::Page,
    sheet::{self, SheetOptions, SheetRow, Tile, CORRECT},
};
use imsearch_types::ImageId;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::{
    compliance::{self, Collection, PolicyCheckpoint, PolicyOpts},
    embed::{self},
    engine, paths,
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

/// One drawn test query and what the demo shows for it.
struct Shown {
    query: String,
    text: String,
    outcome: Outcome,
}

enum Outcome {
    /// The text policy blocks the query: the disclaimer, no images.
    Blocked(BlockReason),
    Ranked {
        results: Vec<Ranked>,
        /// The query's own image when it ranked below the shown results; `None` when it is
        /// among them or has no embedding.
        correct_below: Option<Ranked>,
        /// 1-based rank of the query's own image among all test images.
        correct_rank: Option<usize>,
    },
}

struct Ranked {
    rank: usize,
    score: f32,
    image: ImageId,
    /// Blocked by the image policy: drawn as a disclaimer tile, its file never opened.
    blocked: bool,
    correct: bool,
}

/// Steps with what they did and how long they took, for the summary.
#[derive(Default)]
struct Steps(Vec<(&'static str, String, Duration)>);

impl Steps {
    fn done(&mut self, name: &'static str, what: impl Into<String>, since: Instant) {
        self.0.push((name, what.into(), since.elapsed()));
    }
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let start = Instant::now();
    let mut steps = Steps::default();

    let t = Instant::now();
    let store = args.pipeline.models.store()?;
    let kinds = args.pipeline.embed.kinds()?;
    let mut ids = vec![embed::TEXT_MODEL];
    ids.extend(kinds.iter().map(|k| k.id()));
    for id in &ids {
        crate::models::ensure(&store, id)?;
    }
    steps.done("models", format!("{} in {}", ids.join(", "), store.root().display()), t);

    let t = Instant::now();
    let data = paths::data_dir(args.pipeline.data.as_deref())?;
    let data = data.canonicalize().unwrap_or(data);
    let spinner = crate::progress::spinner(&format!("loading the dataset at {}", data.display()));
    let ds = Dataset::load(&data, Default::default());
    spinner.finish_and_clear();
    let ds = ds.with_context(|| format!("failed to load the dataset at {}", data.display()))?;
    steps.done(
        "dataset",
        format!("{} ({} test queries, {} test images)", data.display(), ds.test_queries.len(), ds.test_images.len()),
        t,
    );

    let t = Instant::now();
    let emb = embed::embed_all(&ds, &store, &args.pipeline.embed)?;
    steps.done("embeddings", format!("{}", emb.dir.display()), t);

    let t = Instant::now();
    let (engine, engine_dir, built) = engine::ensure(&args.pipeline, true)?;
    steps.done("engine", format!("{} {}", if built { "built" } else { "reused" }, engine_dir.display()), t);
    let metrics_path = paths::resolve(&args.pipeline.embed.workdir).join("metrics.json");
    let metrics = metrics(&metrics_path, &engine_dir);

    let t = Instant::now();
    let policy_emb = args.policy.restrict(&emb, &args.pipeline.embed)?;
    let policy = compliance::load_or_train_image_policy(
        &ds,
        &policy_emb,
        &args.pipeline.embed,
        args.pipeline.train.seed,
        args.pipeline.train.train_fraction,
        &args.policy,
    );
    let policy: Option<PolicyCheckpoint> = match policy {
        Ok((ckpt, path, fitted)) => {
            steps.done("image policy", format!("{} {}", if fitted { "fitted" } else { "reused" }, path.display()), t);
            Some(ckpt)
        }
        Err(e) => {
            println!("warning: no usable image policy ({e:#}); every result image is blocked (fail closed)");
            steps.done("image policy", "unavailable: every result image blocked", t);
            None
        }
    };
    let image_decision = |key: &str| match &policy {
        Some(ckpt) => compliance::image_decision(ckpt, &policy_emb, Collection::Test, key),
        None => Decision::Block(BlockReason::Unscored { why: "no image policy".into() }),
    };

    let t = Instant::now();
    let shown = rank_queries(args, &ds, &emb, &engine, &image_decision)?;
    steps.done("queries", query_summary(&shown, args.top as usize), t);
    print_queries(&shown);

    let t = Instant::now();
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => paths::workspace_root().join("target/demo"),
    };
    fs::create_dir_all(&out).with_context(|| format!("failed to create {}", out.display()))?;
    let out = out.canonicalize().with_context(|| format!("failed to resolve {}", out.display()))?;
    let (sheet_path, page_path) = render(&out, &ds, &shown, &metrics, &metrics_path, &engine, args)?;
    steps.done("render", format!("{}", out.display()), t);

    match &metrics {
        Some(m) => {
            println!("\nmetrics ({}):", metrics_path.display());
            print_metrics(m);
        }
        None => println!("\nno metrics.json for this engine: `cargo xtask eval` measures every model and rebuilds it"),
    }
    println!("\nsummary (seed {}, {} queries, top {}):", args.pipeline.train.seed, shown.len(), args.top);
    for (name, what, took) in &steps.0 {
        println!("  {name:<13} {:>6.1} s  {what}", took.as_secs_f64());
    }
    println!("  {:<13} {:>6.1} s", "total", start.elapsed().as_secs_f64());
    println!("\ncontact sheet: {}", sheet_path.display());
    println!("page:          {}", page_path.display());
    Ok(())
}

/// `metrics.json` when `cargo xtask eval` wrote it with this engine (the one whose figures the
/// page shows); `None` otherwise.
fn metrics(path: &Path, engine_dir: &Path) -> Option<Value> {
    let v: Value = serde_json::from_str(&fs::read_to_string(path).ok()?).ok()?;
    (v["engine"].as_str() == Some(engine_dir.to_str()?)).then_some(v)
}

/// Draws the queries and ranks the test images for each allowed one.
fn rank_queries(
    args: &Args,
    ds: &Dataset,
    emb: &embed::Embeddings,
    engine: &Engine,
    image_decision: &dyn Fn(&str) -> Decision,
) -> Result<Vec<Shown>> {
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
    let top = args.top as usize;

    let mut shown = Vec::with_capacity(n);
    for i in picked {
        let q = &ds.test_queries[i];
        let outcome = match policy.decide(&q.text) {
            Decision::Block(reason) => Outcome::Blocked(reason),
            Decision::Allow => {
                let key = q.query.to_string();
                let text = embed::rows(&emb.texts, &[key.as_str()])?;
                let scores = engine.scorer().matrix(&images, &text)?.remove(0);
                let correct = ids.iter().position(|k| *k == q.image.as_str());
                let ranked = |row: usize, score: f32, rank: usize| Ranked {
                    rank,
                    score,
                    image: ImageId::from(ids[row]),
                    blocked: image_decision(ids[row]).is_blocked(),
                    correct: Some(row) == correct,
                };
                let hits = imsearch_index::top_k(&scores, top);
                let results: Vec<Ranked> =
                    hits.iter().enumerate().map(|(r, h)| ranked(h.row, h.score, r + 1)).collect();
                let correct_rank = correct.map(|c| imsearch_eval::rank_of(&scores, c));
                let correct_below = match (correct, correct_rank) {
                    (Some(c), Some(rank)) if !results.iter().any(|r| r.correct) => Some(ranked(c, scores[c], rank)),
                    _ => None,
                };
                Outcome::Ranked { results, correct_below, correct_rank }
            }
        };
        shown.push(Shown { query: q.query.to_string(), text: q.text.clone(), outcome });
    }
    Ok(shown)
}

fn query_summary(shown: &[Shown], top: usize) -> String {
    let blocked_queries = shown.iter().filter(|s| matches!(s.outcome, Outcome::Blocked(_))).count();
    let (mut hit, mut tiles_blocked, mut ranked) = (0, 0, 0);
    for s in shown {
        if let Outcome::Ranked { results, correct_below, .. } = &s.outcome {
            ranked += 1;
            hit += usize::from(results.iter().any(|r| r.correct));
            tiles_blocked += results.iter().chain(correct_below).filter(|r| r.blocked).count();
        }
    }
    format!(
        "{} drawn: {blocked_queries} blocked by the text policy; correct image in the top {top} for {hit} of {ranked}; \
         {tiles_blocked} images replaced by the disclaimer",
        shown.len()
    )
}

fn heading(n: usize, s: &Shown) -> String {
    match &s.outcome {
        Outcome::Blocked(reason) => format!("{n}. \u{201c}{}\u{201d}  (blocked: {reason})", s.text.trim()),
        Outcome::Ranked { correct_rank, .. } => {
            let rank = correct_rank.map_or("has no embedding".to_owned(), |r| format!("rank {r}"));
            format!("{n}. \u{201c}{}\u{201d}  (correct image: {rank})", s.text.trim())
        }
    }
}

fn print_queries(shown: &[Shown]) {
    for (i, s) in shown.iter().enumerate() {
        println!("\n{}  [{}]", heading(i + 1, s), s.query);
        match &s.outcome {
            Outcome::Blocked(_) => println!("     {DISCLAIMER}"),
            Outcome::Ranked { results, correct_below, .. } => {
                for r in results.iter().chain(correct_below) {
                    let what = if r.blocked { DISCLAIMER.to_owned() } else { r.image.as_str().to_owned() };
                    let mark = if r.correct { "  <- correct" } else { "" };
                    println!("    #{:<3} {:.3}  {what}{mark}", r.rank, r.score);
                }
            }
        }
    }
}

/// The tiles of one query's row; allowed images are decoded here, blocked ones never opened.
fn tiles(ds: &Dataset, s: &Shown, on_tile: &mut dyn FnMut()) -> Vec<Tile> {
    match &s.outcome {
        Outcome::Blocked(_) => vec![Tile::disclaimer().with_caption("query blocked: no results")],
        Outcome::Ranked { results, correct_below, .. } => results
            .iter()
            .chain(correct_below)
            .map(|r| {
                let tile = if r.blocked {
                    Tile::disclaimer()
                } else {
                    Tile::load(&ds.test_image_path(&r.image))
                        .unwrap_or_else(|e| Tile::disclaimer_with(format!("could not read this image: {e}")))
                };
                on_tile();
                let caption = match (r.correct, results.iter().any(|x| x.correct)) {
                    (true, true) => format!("#{} \u{b7} {:.3} \u{b7} correct", r.rank, r.score),
                    (true, false) => format!("correct: #{} \u{b7} {:.3}", r.rank, r.score),
                    _ => format!("#{} \u{b7} {:.3}", r.rank, r.score),
                };
                let tile = tile.with_caption(caption);
                if r.correct {
                    tile.with_outline(CORRECT)
                } else {
                    tile
                }
            })
            .collect(),
    }
}

/// Writes `demo.png`, `rows/query-NN.png` and `index.html` into `out`.
fn render(
    out: &Path,
    ds: &Dataset,
    shown: &[Shown],
    metrics: &Option<Value>,
    metrics_path: &Path,
    engine: &Engine,
    args: &Args,
) -> Result<(PathBuf, PathBuf)> {
    let total: usize = shown
        .iter()
        .map(|s| match &s.outcome {
            Outcome::Blocked(_) => 0,
            Outcome::Ranked { results, correct_below, .. } => results.len() + usize::from(correct_below.is_some()),
        })
        .sum();
    let bar = crate::progress::bar(total as u64, "drawing", "images");
    let rows: Vec<Vec<Tile>> = shown.iter().map(|s| tiles(ds, s, &mut || bar.inc(1))).collect();
    bar.finish_and_clear();

    let spinner = crate::progress::spinner("writing the contact sheet and the page");
    let options = SheetOptions::default();
    let sheet_rows: Vec<SheetRow> = shown
        .iter()
        .zip(&rows)
        .enumerate()
        .map(|(i, (s, t))| SheetRow::new(Some(heading(i + 1, s)), t.clone()))
        .collect();
    let sheet_path = out.join("demo.png");
    sheet::image_grid(&sheet_path, &sheet_rows, &options)?;

    let row_dir = out.join("rows");
    fs::create_dir_all(&row_dir).with_context(|| format!("failed to create {}", row_dir.display()))?;
    // Rows of an earlier run with more queries would linger on disk; they are ours to remove.
    for entry in fs::read_dir(&row_dir).with_context(|| format!("failed to list {}", row_dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("query-") && name.ends_with(".png") {
            fs::remove_file(&path).with_context(|| format!("failed to remove {}", path.display()))?;
        }
    }

    let mut page = Page::new(format!("imsearch demo: {} random test queries", shown.len()));
    page.paragraph(&format!(
        "Each of {} test queries drawn at random (seed {}) against the {} test images, ranked by the engine: {} \
         (the saved engine of `cargo xtask eval`, {} fusion models; score 0 to 1, rank-preserving). Green frame: the \
         correct image, the one the query was written for; when it ranks below the top {}, it is shown last with its \
         rank. Compliance: a query that names a child gets the disclaimer and no images; an image the image policy \
         blocks is replaced by the disclaimer and keeps its rank. The whole contact sheet is demo.png in this folder.",
        shown.len(),
        args.pipeline.train.seed,
        ds.test_images.len(),
        engine.name(),
        engine.members().len(),
        args.top
    ));
    for (i, (s, t)) in shown.iter().zip(&rows).enumerate() {
        let file = format!("query-{:02}.png", i + 1);
        sheet::image_grid(&row_dir.join(&file), &[SheetRow::new(None, t.clone())], &options)?;
        page.heading(3, &heading(i + 1, s));
        page.paragraph(&format!("test query {}", s.query));
        page.image(&format!("rows/{file}"), &format!("results for query {}", i + 1));
        match &s.outcome {
            Outcome::Blocked(_) => {
                page.paragraph(DISCLAIMER);
            }
            Outcome::Ranked { results, correct_below, .. } => {
                let table: Vec<Vec<String>> = results
                    .iter()
                    .chain(correct_below)
                    .map(|r| {
                        vec![
                            r.rank.to_string(),
                            format!("{:.3}", r.score),
                            if r.blocked { DISCLAIMER.to_owned() } else { r.image.as_str().to_owned() },
                            if r.correct { "correct".to_owned() } else { String::new() },
                        ]
                    })
                    .collect();
                page.table(&["rank", "score", "image", "correct image?"], &table);
            }
        }
    }
    page.heading(2, "Metrics");
    match metrics {
        Some(m) => {
            page.paragraph(&format!(
                "From {} (validation: the held-out train images; test: the 500 test queries against the 100 test \
                 images; allowed: the test queries the text policy lets through). Best on validation: {}.",
                metrics_path.display(),
                m["best"].as_str().unwrap_or("-")
            ));
            page.table(&METRIC_COLUMNS, &metric_rows(m));
        }
        None => {
            page.paragraph("No metrics for this engine yet: `cargo xtask eval` measures every model and baseline.");
        }
    }
    let page_path = out.join("index.html");
    page.write(&page_path)?;
    spinner.finish_and_clear();
    Ok((sheet_path, page_path))
}

const METRIC_COLUMNS: [&str; 10] = [
    "model",
    "val MRR",
    "val ROC-AUC",
    "test R@1",
    "test R@5",
    "test R@10",
    "test MRR",
    "test median rank",
    "allowed R@1",
    "allowed MRR",
];

fn metric_rows(m: &Value) -> Vec<Vec<String>> {
    let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |v| format!("{v:.3}"));
    let Some(models) = m["models"].as_object() else { return Vec::new() };
    models
        .iter()
        .map(|(name, x)| {
            let (v, t, a) = (&x["validation"], &x["test"], &x["test_allowed"]);
            vec![
                name.clone(),
                f(&v["mrr"]),
                f(&v["roc_auc"]),
                f(&t["recall_at_1"]),
                f(&t["recall_at_5"]),
                f(&t["recall_at_10"]),
                f(&t["mrr"]),
                t["median_rank"].as_f64().map_or("-".to_owned(), |v| format!("{v:.1}")),
                f(&a["recall_at_1"]),
                f(&a["mrr"]),
            ]
        })
        .collect()
}

fn print_metrics(m: &Value) {
    let rows = metric_rows(m);
    let width = rows.iter().map(|r| r[0].len()).max().unwrap_or(5).max(5);
    let header: Vec<String> = METRIC_COLUMNS[1..].iter().map(|c| format!("{c:>11}")).collect();
    println!("  {:<width$} {}", METRIC_COLUMNS[0], header.join(" "));
    for r in rows {
        let cells: Vec<String> = r[1..].iter().map(|c| format!("{c:>11}")).collect();
        println!("  {:<width$} {}", r[0], cells.join(" "));
    }
}
