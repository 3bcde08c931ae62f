//! `cargo xtask scale`: a photo library of thousands of files indexed and searched, measured
//! (issue 15). It makes the library once (`imsearch_engine::make_library`: the dataset's photos
//! re-encoded at other sizes, qualities and rotations in nested folders), then times opening a
//! searcher on it cold (every photo encoded), again (nothing read but metadata), queries against
//! it, and exact top-k over many synthetic vectors in the engine's layout. Wiring only: the
//! library, the index and the engine live in imsearch-engine.

use std::{path::PathBuf, time::Instant};

use anyhow::{bail, Context, Result};
use candle::{Device, Tensor};
use imsearch_data::Dataset;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use imsearch_web::check::KindReport;

use crate::{
    engine, paths,
    search::{self, Setup},
    throughput::{peak_rss_kib, status_kib},
};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Where the synthetic library is made (default: <workdir>/scale-library); photos already
    /// there are kept, so a second run measures the same files.
    #[arg(long, value_name = "DIR")]
    library: Option<PathBuf>,
    /// Photos in the library.
    #[arg(long, default_value_t = 5000)]
    photos: usize,
    /// Synthetic vectors in the engine's layout for the top-k timing.
    #[arg(long, default_value_t = 100_000)]
    vectors: usize,
    /// Queries timed against the library (the first training captions by id).
    #[arg(long, default_value_t = 50)]
    queries: usize,
    /// Also write the figures to this JSON file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    #[command(flatten)]
    setup: Setup,
}

#[derive(Debug, Serialize)]
struct Figures {
    cpu: String,
    photos: usize,
    library_mb: f64,
    indexed: usize,
    encoded: usize,
    skipped: usize,
    /// First open: indexing every photo plus loading the engine, MiniLM and the image policy.
    cold_open_s: f64,
    /// Second open: the same, with every photo reused by its metadata.
    rerun_open_s: f64,
    /// Photos encoded per second of (cold - rerun) time, so without the loading both share.
    images_per_s: f64,
    /// Index caches on disk per photo.
    cache_mb_per_image: f64,
    /// Growth of the resident set over the cold open, per photo (the searcher kept in memory).
    resident_kb_per_image: f64,
    peak_rss_mb_after_index: f64,
    query_p50_ms: f64,
    query_p99_ms: f64,
    /// Exact top-10 over `vectors` synthetic rows, per query (text encoding excluded).
    vectors: usize,
    topk_prepare_s: f64,
    topk_p50_ms: f64,
    topk_p99_ms: f64,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    if args.photos == 0 || args.queries == 0 {
        bail!("--photos and --queries must be at least 1");
    }
    let pipeline = &args.setup.pipeline;
    let data = paths::data_dir(pipeline.data.as_deref())?;
    let ds = Dataset::load(&data, Default::default())
        .with_context(|| format!("failed to load the dataset at {}", data.display()))?;
    let library = match &args.library {
        Some(dir) => dir.clone(),
        None => pipeline.embed.workdir().join("scale-library"),
    };

    // The engine and the image policy first (built if missing), so the timings below are of
    // indexing and loading only.
    println!("engine and image policy: loading (built if missing) on the test images");
    drop(search::open(&Setup { images: None, ..args.setup.clone() }, true)?);

    let mut sources: Vec<PathBuf> =
        ds.train_images().iter().map(|i| data.join("train_images").join(i.as_str())).collect();
    sources.extend(ds.test_images.iter().map(|r| data.join("test_images").join(r.image.as_str())));
    let bar = crate::progress::bar(args.photos as u64, "making the library", "photos");
    let made = imsearch_engine::make_library(&sources, &library, args.photos, &|done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    println!(
        "library: {} photos ({} made now) in {}, {:.0} MB",
        made.photos,
        made.photos - made.kept,
        library.display(),
        made.bytes as f64 / 1e6
    );

    let setup = Setup { images: Some(library.clone()), ..args.setup.clone() };
    let rss_before = status_kib("VmRSS:").unwrap_or(0);
    let start = Instant::now();
    let searcher = search::open(&setup, false)?;
    let cold = start.elapsed().as_secs_f64();
    let rss_after = status_kib("VmRSS:").unwrap_or(0);
    let peak = peak_rss_kib().unwrap_or(0);
    let summary = searcher.summary().clone();
    println!("cold open: {summary} in {cold:.1} s");
    drop(searcher);
    let start = Instant::now();
    let searcher = search::open(&setup, false)?;
    let rerun = start.elapsed().as_secs_f64();
    let again = searcher.summary().clone();
    println!(
        "rerun open: {again} in {rerun:.2} s ({} of {} prepared rows read back)",
        searcher.reused_preparations(),
        searcher.len()
    );
    if again.encoded != 0 {
        bail!("the rerun encoded {} photos; an unchanged library should encode none", again.encoded);
    }
    let cache_bytes: u64 = std::fs::read_dir(&summary.cache_dir)
        .with_context(|| format!("failed to list {}", summary.cache_dir.display()))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();

    let captions = ds.train_captions();
    let queries: Vec<&str> = captions.values().copied().take(args.queries).collect();
    let mut times = Vec::new();
    for q in &queries {
        let start = Instant::now();
        searcher.rank(q, 10)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let query = KindReport::of(times);
    drop(searcher);

    // Exact top-k over synthetic rows in the engine's layout.
    let engine = engine::load(pipeline)?;
    let dim: usize = engine.image_layout().iter().map(|p| p.dim).sum();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let rows: Vec<f32> = (0..args.vectors * dim).map(|_| rng.gen::<f32>()).collect();
    let images = Tensor::from_vec(rows, (args.vectors, dim), &Device::Cpu)?;
    let start = Instant::now();
    let prepared = imsearch_engine::prepare_for_search(engine.scorer().as_ref(), &images)?;
    let prepare_s = start.elapsed().as_secs_f64();
    drop(images);
    let mut times = Vec::new();
    // 100 random queries after one untimed (its first touch of the prepared rows).
    for n in 0..=100 {
        let q: Vec<f32> = (0..384).map(|_| rng.gen::<f32>() - 0.5).collect();
        let q = Tensor::from_vec(q, (1, 384), &Device::Cpu)?;
        let start = Instant::now();
        let scores = engine.scorer().matrix(&prepared, &q)?.remove(0);
        let top = imsearch_index::top_k(&scores, 10);
        if n > 0 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        if top.len() != 10.min(args.vectors) {
            bail!("top-10 over {} rows returned {} rows", args.vectors, top.len());
        }
    }
    let topk = KindReport::of(times);

    let f = Figures {
        cpu: cpu_name(),
        photos: made.photos,
        library_mb: made.bytes as f64 / 1e6,
        indexed: summary.indexed,
        encoded: summary.encoded,
        skipped: summary.skipped.len(),
        cold_open_s: cold,
        rerun_open_s: rerun,
        images_per_s: summary.encoded as f64 / (cold - rerun).max(1e-9),
        cache_mb_per_image: cache_bytes as f64 / 1e6 / summary.indexed.max(1) as f64,
        resident_kb_per_image: rss_after.saturating_sub(rss_before) as f64 / summary.indexed.max(1) as f64,
        peak_rss_mb_after_index: peak as f64 / 1024.0,
        query_p50_ms: query.p50_ms,
        query_p99_ms: query.p99_ms,
        vectors: args.vectors,
        topk_prepare_s: prepare_s,
        topk_p50_ms: topk.p50_ms,
        topk_p99_ms: topk.p99_ms,
    };
    println!("\n{}", serde_json::to_string_pretty(&f)?);
    if let Some(path) = &args.json {
        paths::write_atomic(path, serde_json::to_string_pretty(&f)?.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The CPU's model name and whether it has AVX-512 (the machines here differ).
pub(crate) fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines().find(|l| l.starts_with(name)).and_then(|l| l.split(':').nth(1)).unwrap_or("").trim().to_owned()
    };
    let avx512 = field("flags").split_whitespace().any(|f| f == "avx512f");
    format!("{} ({})", field("model name"), if avx512 { "avx512f" } else { "no avx512f" })
}
