//! `cargo xtask ci`: the checks CI runs, cheapest first; then the weights, then the tests.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::models::ModelsArg;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Skip the test run (fixtures, format and clippy checks only).
    #[arg(long)]
    no_test: bool,
    #[command(flatten)]
    models: ModelsArg,
}

/// Architecture invariants (docs/ARCHITECTURE.md): per crate, the package prefixes it must never
/// depend on (directly or not), and the packages allowed despite them.
const FORBIDDEN: &[(&str, &[&str], &[&str])] = &[
    ("imsearch-fsio", &["imsearch-", "candle"], &[]),
    ("imsearch-types", &["imsearch-", "candle"], &[]),
    ("imsearch-data", &["candle", "image", "imsearch-models", "imsearch-engine"], &[]),
    ("imsearch-eval", &["candle", "imsearch-"], &[]),
    // Compliance: the shared types and the metrics, nothing that reads data or runs a model.
    ("imsearch-compliance", &["candle", "imsearch-"], &["imsearch-types", "imsearch-eval", "imsearch-fsio"]),
    // Index, report and models: no other imsearch crate but imsearch-fsio (atomic writes).
    ("imsearch-index", &["candle", "imsearch-"], &["imsearch-fsio"]),
    ("imsearch-report", &["candle", "imsearch-"], &["imsearch-fsio"]),
    ("imsearch-models", &["candle", "imsearch-"], &["imsearch-fsio"]),
    ("imsearch-vision", &["imsearch-models", "imsearch-text", "imsearch-data", "imsearch-engine"], &[]),
    ("imsearch-text", &["imsearch-models", "imsearch-vision", "imsearch-data", "imsearch-engine"], &[]),
    (
        "imsearch-fusion",
        &["imsearch-vision", "imsearch-text", "imsearch-models", "imsearch-data", "imsearch-engine"],
        &["imsearch-fsio"],
    ),
    ("imsearch-web", &["candle", "imsearch-"], &[]),
    // The collection knows rows, not the engine.
    ("imsearch-store", &["candle", "imsearch-"], &[]),
    // The engine takes tensors, paths and pairs: it never fetches weights nor reads the dataset.
    ("imsearch-engine", &["imsearch-models", "imsearch-data", "imsearch-report", "imsearch-train"], &[]),
    ("imsearch-train", &["imsearch-models", "imsearch-report", "imsearch-web"], &[]),
];

/// Checks [`FORBIDDEN`] with `cargo tree`.
fn dependency_rules(root: &Path) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for (krate, forbidden, allowed) in FORBIDDEN {
        let out = Command::new(&cargo)
            .args(["tree", "-p", krate, "-e", "normal", "--prefix", "none", "--format", "{p}"])
            .current_dir(root)
            .output()
            .with_context(|| format!("failed to run cargo tree -p {krate}"))?;
        if !out.status.success() {
            bail!("cargo tree -p {krate} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let tree = String::from_utf8_lossy(&out.stdout);
        for line in tree.lines().skip(1) {
            let name = line.split_whitespace().next().unwrap_or("");
            if allowed.contains(&name) {
                continue;
            }
            if let Some(rule) = forbidden.iter().find(|f| name.starts_with(*f)) {
                bail!("{krate} depends on {name}, which its architecture invariant forbids ({rule}*)");
            }
        }
    }
    println!("ci: dependency rules hold for {} crates", FORBIDDEN.len());
    Ok(())
}

pub(crate) fn run(root: &Path, args: &Args) -> Result<()> {
    super::fixtures::run(root, &super::fixtures::Args { check: true })?;
    dependency_rules(root)?;
    cargo(root, &["fmt", "--all", "--", "--check"], None)?;
    cargo(root, &["clippy", "--workspace", "--all-targets", "--release", "--", "-D", "warnings"], None)?;
    if !args.no_test {
        // The reference-match tests need the real weights: fetch them (a no-op when cached)
        // and tell the tests where they are.
        let store = args.models.store()?;
        super::models::run(&super::models::Args { models: args.models.clone(), only: Vec::new() })?;
        cargo(root, &["test", "--workspace", "--release"], Some(store.root()))?;
        // The server with the real models under load, then in headless Chromium.
        ensure_chromium()?;
        web_check(store.root())?;
        // The collection in a real Milvus server, filled by two workers at once.
        milvus_check(store.root())?;
    }
    println!("ci: all checks passed");
    Ok(())
}

/// Installs Debian's Chromium for the browser test when none is on PATH (as root, with apt-get),
/// so the README's test command passes on a fresh machine as written.
fn ensure_chromium() -> Result<()> {
    if imsearch_web::check::find_browser().is_some() {
        return Ok(());
    }
    println!("ci: no Chromium on PATH; installing Debian's chromium for the browser test (apt-get)");
    for args in [&["update", "-qq"][..], &["install", "-y", "-qq", "chromium"][..]] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("failed to run apt-get; install chromium yourself (`apt-get install chromium`)")?;
        if !status.success() {
            bail!(
                "apt-get {} failed ({status}); install chromium yourself (`apt-get install chromium`)",
                args.join(" ")
            );
        }
    }
    Ok(())
}

/// Runs `cargo xtask web-check` (this binary) with the models in `models`; it trains what is
/// missing, so the first run takes a few minutes.
fn web_check(models: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("failed to find the xtask binary")?;
    println!("ci: cargo xtask web-check");
    let status = Command::new(exe)
        .arg("web-check")
        .arg("--models")
        .arg(models)
        .status()
        .context("failed to start cargo xtask web-check")?;
    if !status.success() {
        bail!("cargo xtask web-check failed ({status})");
    }
    Ok(())
}

/// Runs `cargo xtask milvus check` (this binary): it installs the pinned Milvus wheel (once per
/// machine), starts a server of its own, and stops it at the end.
fn milvus_check(models: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("failed to find the xtask binary")?;
    println!("ci: cargo xtask milvus check");
    let status = Command::new(exe)
        .args(["milvus", "check", "--models"])
        .arg(models)
        .status()
        .context("failed to start cargo xtask milvus check")?;
    if !status.success() {
        bail!("cargo xtask milvus check failed ({status})");
    }
    Ok(())
}

fn cargo(root: &Path, args: &[&str], models: Option<&Path>) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("ci: cargo {}", args.join(" "));
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(root);
    if let Some(models) = models {
        cmd.env(imsearch_models::MODELS_ENV, models);
    }
    let status = cmd.status().with_context(|| format!("failed to start cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
