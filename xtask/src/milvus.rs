//! `cargo xtask index` (a worker filling a Milvus collection with its share of a folder) and
//! `cargo xtask milvus start|stop|status|check|bench` (the pinned standalone server, the check
//! CI runs against it and its figures). The collection, the server and the engine's rows are
//! imsearch-store's and imsearch-engine's; this job parses flags, calls them and prints.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use imsearch_data::Dataset;
use imsearch_engine::{Shard, StoreSummary};
use imsearch_store::{
    server::{self, Install, Server, ServerGuard, ServerOptions},
    CollectionSpec, MilvusStore, Stamp, StoreUrl, StoredRow, VectorIndex,
};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::{paths, search::Setup};

/// The environment variable `--store` reads.
pub(crate) const STORE_ENV: &str = "IMSEARCH_STORE";

/// The deadline of every call to the server.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A client of the collection at `url`; an unreachable server is an error naming it.
pub(crate) fn connect(url: &StoreUrl) -> Result<MilvusStore> {
    MilvusStore::connect(url, CALL_TIMEOUT).with_context(|| {
        format!("failed to open {url} (is the server running? `cargo xtask milvus start` starts one here)")
    })
}

#[derive(clap::Args, Debug)]
pub(crate) struct IndexArgs {
    /// Index only worker I's share of the files, of N workers (0-based), e.g. 0/2: N workers
    /// on N machines together fill one collection. A file's worker is a hash of its path.
    #[arg(long, value_name = "I/N", default_value = "0/1")]
    shard: Shard,
    /// Print one JSON object on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// The folder (--images), the collection (--store: required), the engine and the policy.
    #[command(flatten)]
    setup: Setup,
}

/// `cargo xtask index`: this worker's files encoded (a rerun re-encodes only what changed,
/// by size and modification time first), prepared by the engine, decided by the image policy
/// and written to the collection, whole rows a few hundred at a time.
pub(crate) fn index(args: &IndexArgs) -> Result<()> {
    let Some(url) = &args.setup.store else {
        bail!("index needs a collection: --store milvus://HOST:PORT/COLLECTION (or {STORE_ENV})");
    };
    let summary = index_shard(&args.setup, args.shard, url)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        for s in &summary.index.skipped {
            println!("skipped {}: {}", s.file, s.reason);
        }
        println!("index: {}", summary.index);
        println!("{summary}");
    }
    Ok(())
}

fn index_shard(setup: &Setup, shard: Shard, url: &StoreUrl) -> Result<StoreSummary> {
    let index = crate::search::open_index(setup, Some(shard))?;
    let (engine, _, _) = crate::engine::ensure(&setup.pipeline, true, None)?;
    let (policy, _) = crate::search::policy_and_text(setup, true, &index.parts)?;
    let store = connect(url)?;
    let bar = crate::progress::bar(0, &format!("shard {shard}: writing rows"), "rows");
    let summary = imsearch_engine::index_into_store(&store, &engine, &index, policy.as_ref(), shard, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("failed to write shard {shard} into {url}"));
    bar.finish_and_clear();
    summary
}

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Install the pinned Milvus standalone server (PyPI wheel milvus==2.3.5, sha256 checked,
    /// into a venv under <workdir>/milvus) and start it in the background; returns once it is
    /// healthy. A server already running from the same data directory is reused.
    Start(ServerArgs),
    /// Stop the server started from the data directory (SIGTERM, then SIGKILL after 30 s).
    Stop(ServerArgs),
    /// Say whether a server runs from the data directory, its address, pid and memory.
    Status(ServerArgs),
    /// What CI runs: a fresh server, two `index` workers filling one collection with the test
    /// images (shards 0/2 and 1/2, at once), then every test query ranked from the collection
    /// and from a folder index of the same images: the ranks and scores must be identical.
    Check(Box<CheckArgs>),
    /// Figures: rows/s written, query latency p50/p99 for k = 10 over synthetic rows in the
    /// engine's layout with an exact (FLAT) and an approximate (HNSW) index, HNSW's recall@10
    /// against exact, the server's memory.
    Bench(BenchArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct ServerArgs {
    /// The gRPC port on 127.0.0.1.
    #[arg(long, default_value_t = server::DEFAULT_PORT)]
    port: u16,
    /// The server's data directory (default: <workdir>/milvus/data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The work directory (default: $IMSEARCH_WORKDIR, else ~/.local/share/imsearch).
    #[arg(long, value_name = "DIR", env = paths::WORKDIR_ENV, value_parser = paths::dir_arg)]
    workdir: Option<PathBuf>,
}

impl ServerArgs {
    fn milvus_dir(&self) -> PathBuf {
        paths::workdir(self.workdir.as_deref()).join("milvus")
    }

    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| self.milvus_dir().join("data"))
    }

    fn start(&self) -> Result<Server> {
        let install = install(&self.milvus_dir())?;
        let mut options = ServerOptions::new(self.data_dir());
        options.port = self.port;
        let started = Instant::now();
        let server = server::start(&install, &options)
            .with_context(|| format!("failed to start Milvus from {}", self.data_dir().display()))?;
        eprintln!("milvus: {} healthy after {:.1} s", server.address, started.elapsed().as_secs_f64());
        Ok(server)
    }
}

fn install(dir: &Path) -> Result<Install> {
    if let Some(install) = server::installed(dir) {
        return Ok(install);
    }
    eprintln!("milvus: installing {} into {} (once)", server::MILVUS_VERSION, dir.display());
    server::install(dir).with_context(|| format!("failed to install Milvus into {}", dir.display()))
}

pub(crate) fn run(args: &Args) -> Result<()> {
    match &args.command {
        Sub::Start(a) => {
            let server = a.start()?;
            println!(
                "milvus {} running at {} (pid {}, data {}); stop it with `cargo xtask milvus stop`",
                server::MILVUS_VERSION,
                server.address,
                server.pid,
                server.data_dir.display()
            );
            println!("index into it: cargo xtask index --images DIR --store milvus://{}/photos", server.address);
            Ok(())
        }
        Sub::Stop(a) => match Server::running(&a.data_dir()) {
            Some(server) => {
                let address = server.address.clone();
                server.stop().context("failed to stop Milvus")?;
                println!("milvus at {address} stopped");
                Ok(())
            }
            None => {
                println!("no Milvus server runs from {}", a.data_dir().display());
                Ok(())
            }
        },
        Sub::Status(a) => {
            match Server::running(&a.data_dir()) {
                Some(server) => println!(
                    "milvus running at {} (pid {}), {} MB resident",
                    server.address,
                    server.pid,
                    server.memory_rss_bytes().unwrap_or(0) / 1_000_000
                ),
                None => println!("no Milvus server runs from {}", a.data_dir().display()),
            }
            Ok(())
        }
        Sub::Check(a) => check(a),
        Sub::Bench(a) => bench(a),
    }
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// The port of the check's own server (a fresh data directory under <workdir>/milvus).
    #[arg(long, default_value_t = 19_630)]
    port: u16,
    /// Where the figures go.
    #[arg(long, value_name = "FILE", default_value = "target/milvus-check.json")]
    json: PathBuf,
    #[command(flatten)]
    setup: Setup,
}

#[derive(Debug, Serialize)]
struct CheckReport {
    server: String,
    collection: String,
    images: usize,
    /// Per worker: rows written, seconds preparing and writing, rows/s; and the whole run of
    /// the worker process (indexing its files included).
    workers: Vec<WorkerFigures>,
    queries: usize,
    /// Queries whose whole ranking (order, score, decision) from the collection equals the
    /// folder index's.
    identical_rankings: usize,
    /// The largest score difference over every query and image.
    max_score_difference: f32,
    /// Rerun of worker 0 with nothing changed: rows written (must be 0) and seconds.
    rerun_written: usize,
    rerun_seconds: f64,
    /// More like this through Milvus (FLAT, inner product of the stored vectors) against the
    /// searcher's own, for every image the policy shows (a blocked example gets no results):
    /// top-10 lists with the same images in the same order, and as sets.
    like_checked: usize,
    like_same_top10: usize,
    like_same_top10_set: usize,
    server_rss_mb: u64,
}

#[derive(Debug, Serialize)]
struct WorkerFigures {
    shard: String,
    written: usize,
    seconds_writing: f64,
    rows_per_second: f64,
    process_seconds: f64,
}

/// The worker process: this binary's `index` with the setup's flags.
fn worker(setup: &Setup, shard: &str, url: &StoreUrl, folder: &Path) -> Result<Command> {
    let exe = std::env::current_exe().context("failed to find the xtask binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["index", "--json", "--shard", shard, "--store", &url.to_string()]);
    cmd.arg("--images").arg(folder);
    cmd.arg("--workdir").arg(setup.pipeline.embed.workdir());
    cmd.arg("--models").arg(setup.pipeline.models.store()?.root());
    if let Some(data) = &setup.pipeline.data {
        cmd.arg("--data").arg(data);
    }
    Ok(cmd)
}

/// A server of a job's own, in a fresh data directory `<workdir>/milvus/<name>` (a server left
/// running there by a killed run is stopped first), stopped when dropped. A server the user
/// started (`milvus start`, another data directory) is never touched.
fn fresh_server(workdir: &Path, name: &str, port: u16) -> Result<ServerGuard> {
    let server_args =
        ServerArgs { port, data_dir: Some(workdir.join("milvus").join(name)), workdir: Some(workdir.to_owned()) };
    let data_dir = server_args.data_dir();
    if let Some(old) = Server::running(&data_dir) {
        old.stop().with_context(|| format!("failed to stop the server left running from {}", data_dir.display()))?;
    }
    match std::fs::remove_dir_all(&data_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("failed to clear {}", data_dir.display()))
        }
        _ => {}
    }
    Ok(ServerGuard::new(server_args.start()?))
}

fn check(args: &CheckArgs) -> Result<()> {
    let workdir = args.setup.pipeline.embed.workdir();
    let data = paths::data_dir(args.setup.pipeline.data.as_deref())?;
    let folder = args.setup.images.clone().unwrap_or_else(|| data.join("test_images"));
    let dataset = Dataset::load(&data, Default::default())
        .with_context(|| format!("failed to load the dataset at {}", data.display()))?;
    let queries: Vec<String> = dataset.test_queries.iter().map(|q| q.text.clone()).collect();
    ensure!(!queries.is_empty(), "the dataset has no test queries");

    // A fresh server of its own, stopped at the end whatever happens.
    let server = fresh_server(&workdir, "check-data", args.port)?;
    let url: StoreUrl = format!("milvus://{}/imsearch_check", server.address).parse()?;
    connect(&url)?.drop_collection()?;

    // The engine and the policy first, so the two workers only load them.
    let folder_setup = Setup { store: None, images: Some(folder.clone()), ..args.setup.clone() };
    let local = crate::search::open(&folder_setup, true)?;

    println!("milvus check: two workers index {} into {url}", folder.display());
    let started = Instant::now();
    let children = ["0/2", "1/2"]
        .iter()
        .map(|shard| {
            let mut cmd = worker(&args.setup, shard, &url, &folder)?;
            cmd.stdout(std::process::Stdio::piped());
            Ok((shard.to_string(), cmd.spawn().context("failed to start an index worker")?))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut workers = Vec::new();
    for (shard, child) in children {
        let out = child.wait_with_output().context("failed to wait for an index worker")?;
        ensure!(out.status.success(), "the index worker of shard {shard} failed ({})", out.status);
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("the worker of shard {shard} printed no JSON summary"))?;
        let written = summary["written"].as_u64().unwrap_or(0) as usize;
        let seconds = summary["seconds"].as_f64().unwrap_or(0.0);
        workers.push(WorkerFigures {
            shard,
            written,
            seconds_writing: seconds,
            rows_per_second: written as f64 / seconds.max(1e-9),
            process_seconds: started.elapsed().as_secs_f64(),
        });
    }
    let total: usize = workers.iter().map(|w| w.written).sum();
    ensure!(total == local.len(), "the workers wrote {total} rows for {} images", local.len());
    ensure!(workers.iter().all(|w| w.written > 0), "a worker wrote nothing: the shards are not shared out");

    // A rerun with nothing changed writes nothing.
    let rerun_started = Instant::now();
    let out = worker(&args.setup, "0/2", &url, &folder)?.output().context("failed to rerun worker 0")?;
    ensure!(out.status.success(), "the rerun of worker 0 failed: {}", String::from_utf8_lossy(&out.stderr));
    let rerun: serde_json::Value = serde_json::from_slice(&out.stdout).context("the rerun printed no JSON summary")?;
    let rerun_written = rerun["written"].as_u64().unwrap_or(u64::MAX) as usize;
    let rerun_seconds = rerun_started.elapsed().as_secs_f64();
    ensure!(rerun_written == 0, "a rerun over unchanged files wrote {rerun_written} rows");

    // Every test query ranked both ways.
    let remote_setup = Setup { store: Some(url.clone()), images: Some(folder.clone()), ..args.setup.clone() };
    let remote = crate::search::open(&remote_setup, false)?;
    ensure!(
        remote.len() == local.len(),
        "{} rows in the collection, {} images in the folder",
        remote.len(),
        local.len()
    );
    let key = |s: &imsearch_engine::Searcher, row: usize| s.path(row).map(|p| p.display().to_string());
    let mut identical = 0;
    let mut max_diff = 0f32;
    for q in &queries {
        let a = local.rank(q, local.len())?;
        let b = remote.rank(q, remote.len())?;
        let same = a.len() == b.len()
            && a.iter().zip(&b).all(|(x, y)| key(&local, x.row) == key(&remote, y.row) && x.blocked == y.blocked);
        for (x, y) in a.iter().zip(&b) {
            max_diff = max_diff.max((x.score - y.score).abs());
        }
        if same && max_diff == 0.0 {
            identical += 1;
        } else if !same {
            eprintln!("milvus check: {q:?} ranks differently from the collection");
        }
    }
    // More like this: Milvus's exact search of the stored vectors against the searcher's.
    let store = connect(&url)?;
    let (mut like_checked, mut like_same, mut like_same_set) = (0, 0, 0);
    for row in 0..remote.len() {
        let Ok(Ok(mine)) = remote.similar(row, 10) else { continue };
        let mine: Vec<String> = mine.iter().filter_map(|r| key(&remote, r.row)).collect();
        let me = key(&remote, row).unwrap_or_default();
        let Some(rel) =
            remote.path(row).and_then(|p| p.strip_prefix(&remote.summary().images_dir).ok().map(Path::to_path_buf))
        else {
            continue;
        };
        let stored = store.rows_by_key(&[rel.to_string_lossy().into_owned()])?;
        let Some(stored) = stored.first() else { continue };
        let hits = store.search_like(&stored.like, 11)?;
        let theirs: Vec<String> = hits
            .iter()
            .map(|(k, _)| remote.summary().images_dir.join(k).display().to_string())
            .filter(|k| *k != me)
            .take(10)
            .collect();
        like_checked += 1;
        like_same += usize::from(theirs == mine);
        let (mut x, mut y) = (theirs.clone(), mine.clone());
        x.sort();
        y.sort();
        like_same_set += usize::from(x == y);
    }
    let report = CheckReport {
        server: server.address.clone(),
        collection: url.to_string(),
        images: local.len(),
        workers,
        queries: queries.len(),
        identical_rankings: identical,
        max_score_difference: max_diff,
        rerun_written,
        rerun_seconds,
        like_checked,
        like_same_top10: like_same,
        like_same_top10_set: like_same_set,
        server_rss_mb: server.memory_rss_bytes().unwrap_or(0) / 1_000_000,
    };
    let json = paths::resolve(&args.json);
    paths::write_atomic(&json, serde_json::to_string_pretty(&report)?.as_bytes())?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    ensure!(
        identical == queries.len(),
        "{} of {} test queries rank identically from the collection and from the folder index (largest score difference {max_diff})",
        identical,
        queries.len()
    );
    println!("milvus check: all {} test queries rank identically from {url} ({})", queries.len(), json.display());
    Ok(())
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Synthetic rows in the engine's layout (vectors of the default engine's length, state of
    /// its size).
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Queries timed per index.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// The length of a row's vector (default: the default engine's, 1,408).
    #[arg(long, default_value_t = 1408)]
    dim: usize,
    /// Bytes of engine state per row (the default engine's is about 3,600).
    #[arg(long, default_value_t = 3600)]
    state_bytes: usize,
    /// Clusters the synthetic vectors gather around.
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    /// HNSW's search breadth (`ef`): larger finds more of the exact top 10, slower.
    #[arg(long, default_value_t = 64)]
    ef: u32,
    /// Clients writing at once, each with its own connection (indexing workers).
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Where the figures go.
    #[arg(long, value_name = "FILE", default_value = "target/milvus-bench.json")]
    json: PathBuf,
    /// The port of the benchmark's own server (a fresh data directory under <workdir>/milvus,
    /// removed at the end).
    #[arg(long, default_value_t = 19_640)]
    port: u16,
    /// The work directory (default: $IMSEARCH_WORKDIR, else ~/.local/share/imsearch).
    #[arg(long, value_name = "DIR", env = paths::WORKDIR_ENV, value_parser = paths::dir_arg)]
    workdir: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct BenchReport {
    cpu: String,
    rows: usize,
    dim: usize,
    state_bytes: usize,
    /// All writers together, and each writer alone (rows/s while the others write too).
    insert_rows_per_second: f64,
    writers: Vec<WriterFigures>,
    flush_seconds: f64,
    /// Every row read back whole, as `search`/`serve --store` do at start.
    read_all_seconds: f64,
    flat: Latency,
    hnsw: Latency,
    clusters: usize,
    hnsw_ef: u32,
    hnsw_recall_at_10: f64,
    hnsw_build_seconds: f64,
    server_rss_mb: u64,
}

#[derive(Debug, Serialize)]
struct WriterFigures {
    rows: usize,
    seconds: f64,
    rows_per_second: f64,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
}

fn latency(mut ms: Vec<f64>) -> Latency {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Latency { p50_ms: at(0.5), p99_ms: at(0.99) }
}

fn bench(args: &BenchArgs) -> Result<()> {
    ensure!(args.writers >= 1 && args.rows >= args.writers, "--writers must be at least 1 and at most --rows");
    ensure!(args.queries >= 1 && args.dim >= 1, "--queries and --dim must be at least 1");
    let workdir = paths::workdir(args.workdir.as_deref());
    let server = fresh_server(&workdir, "bench-data", args.port)?;
    let url: StoreUrl = format!("milvus://{}/imsearch_bench", server.address).parse()?;
    let store = connect(&url)?;
    store.drop_collection()?;
    let spec = CollectionSpec { like_dim: args.dim, made_by: "synthetic rows (cargo xtask milvus bench)".into() };
    store.create_or_open(&spec)?;
    // Vectors with structure, as photos have (uniform random vectors in 1,408 dimensions are
    // all nearly orthogonal, which no image collection is): unit vectors scattered around
    // `--clusters` random centres.
    let normalised = |v: Vec<f32>| {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.into_iter().map(|x| x / n).collect::<Vec<f32>>()
    };
    let mut centre_rng = rand_chacha::ChaCha8Rng::seed_from_u64(u64::MAX);
    let centres: Vec<Vec<f32>> = (0..args.clusters.max(1))
        .map(|_| normalised((0..args.dim).map(|_| centre_rng.gen_range(-1.0f32..1.0)).collect()))
        .collect();
    let unit = |rng: &mut rand_chacha::ChaCha8Rng| {
        let centre = &centres[rng.gen_range(0..centres.len())];
        // Noise of the centre's norm: a vector's cosine to its centre is about 0.7.
        let scale = 1.0 / (args.dim as f32 / 3.0).sqrt();
        normalised(centre.iter().map(|c| c + scale * rng.gen_range(-1.0f32..1.0)).collect())
    };
    // `--writers` clients at once, each with its own connection, writing rows i with
    // i % writers == w, 2,048 per call, as indexing workers on other machines would.
    let bar = crate::progress::bar(args.rows as u64, "writing synthetic rows", "rows");
    let started = Instant::now();
    let writers: Vec<WriterFigures> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.writers)
            .map(|w| {
                let (url, spec, bar, unit) = (&url, &spec, &bar, &unit);
                scope.spawn(move || -> Result<WriterFigures> {
                    let store = connect(url)?;
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1 + w as u64);
                    let mine: Vec<usize> = (w..args.rows).step_by(args.writers).collect();
                    let started = Instant::now();
                    for block in mine.chunks(2048) {
                        let rows: Vec<StoredRow> = block
                            .iter()
                            .map(|&i| {
                                let key = format!("bench/{:03}/{i:07}.jpg", i % 997);
                                StoredRow {
                                    bucket: imsearch_engine::key_bucket(&key),
                                    key,
                                    hash: format!("{i:064x}"),
                                    stamp: Stamp { size: 100_000, mtime_ns: i as i64 },
                                    blocked: None,
                                    state: vec![(i % 251) as u8; args.state_bytes],
                                    like: unit(&mut rng),
                                }
                            })
                            .collect();
                        store.upsert(&rows, spec)?;
                        bar.inc(rows.len() as u64);
                    }
                    let seconds = started.elapsed().as_secs_f64();
                    Ok(WriterFigures {
                        rows: mine.len(),
                        seconds,
                        rows_per_second: mine.len() as f64 / seconds.max(1e-9),
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("a writer panicked"))?)
            .collect::<Result<Vec<_>>>()
    })?;
    bar.finish_and_clear();
    let insert = args.rows as f64 / started.elapsed().as_secs_f64();
    let flushed = Instant::now();
    store.flush()?;
    let flush_seconds = flushed.elapsed().as_secs_f64();
    // What a search server does at start: every row read back whole.
    let read = Instant::now();
    let back = store.rows()?.len();
    let read_all_seconds = read.elapsed().as_secs_f64();
    ensure!(back == args.rows, "{back} rows read back, {} were written", args.rows);
    ensure!(store.count()? == args.rows, "the collection holds {} rows, {} were written", store.count()?, args.rows);

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let queries: Vec<Vec<f32>> = (0..args.queries).map(|_| unit(&mut rng)).collect();
    let time = |store: &MilvusStore| -> Result<(Latency, Vec<Vec<String>>)> {
        // One untimed query loads what the index needs.
        store.search_like(&queries[0], 10)?;
        let mut ms = Vec::new();
        let mut hits = Vec::new();
        for q in &queries {
            let t = Instant::now();
            let h = store.search_like(q, 10)?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            hits.push(h.into_iter().map(|(k, _)| k).collect());
        }
        Ok((latency(ms), hits))
    };
    let (flat, exact) = time(&store)?;
    let built = Instant::now();
    store.set_index(VectorIndex::Hnsw { m: 16, ef_construction: 200, ef: args.ef })?;
    let hnsw_build_seconds = built.elapsed().as_secs_f64();
    let (hnsw, approx) = time(&store)?;
    let found: usize = exact.iter().zip(&approx).map(|(e, a)| a.iter().filter(|k| e.contains(k)).count()).sum();
    let recall = found as f64 / exact.iter().map(Vec::len).sum::<usize>().max(1) as f64;
    let report = BenchReport {
        cpu: crate::scale::cpu_name(),
        rows: args.rows,
        dim: args.dim,
        state_bytes: args.state_bytes,
        insert_rows_per_second: insert,
        writers,
        read_all_seconds,
        flush_seconds,
        flat,
        hnsw,
        clusters: args.clusters,
        hnsw_ef: args.ef,
        hnsw_recall_at_10: recall,
        hnsw_build_seconds,
        server_rss_mb: server.memory_rss_bytes().unwrap_or(0) / 1_000_000,
    };
    store.drop_collection()?;
    let data_dir = server.data_dir.clone();
    server.stop().context("failed to stop the benchmark's server")?;
    std::fs::remove_dir_all(&data_dir).with_context(|| format!("failed to remove {}", data_dir.display()))?;
    let json = paths::resolve(&args.json);
    paths::write_atomic(&json, serde_json::to_string_pretty(&report)?.as_bytes())?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    println!("wrote {}", json.display());
    Ok(())
}
