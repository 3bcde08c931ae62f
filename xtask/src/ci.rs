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

pub(crate) fn run(root: &Path, args: &Args) -> Result<()> {
    super::fixtures::run(root, &super::fixtures::Args { check: true })?;
    cargo(root, &["fmt", "--all", "--", "--check"], None)?;
    cargo(root, &["clippy", "--workspace", "--all-targets", "--release", "--", "-D", "warnings"], None)?;
    if !args.no_test {
        // The reference-match tests need the real weights: fetch them (a no-op when cached)
        // and tell the tests where they are.
        let store = args.models.store()?;
        super::models::run(&super::models::Args { models: args.models.clone(), only: Vec::new() })?;
        cargo(root, &["test", "--workspace", "--release"], Some(store.root()))?;
    }
    println!("ci: all checks passed");
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
