//! `cargo xtask ci`: the checks CI runs, cheapest first.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Skip the test run (format, clippy and fixture checks only).
    #[arg(long)]
    no_test: bool,
}

pub(crate) fn run(root: &Path, args: &Args) -> Result<()> {
    super::fixtures::run(root, &super::fixtures::Args { check: true })?;
    cargo(root, &["fmt", "--all", "--", "--check"])?;
    cargo(root, &["clippy", "--workspace", "--all-targets", "--release", "--", "-D", "warnings"])?;
    if !args.no_test {
        cargo(root, &["test", "--workspace", "--release"])?;
    }
    println!("ci: all checks passed");
    Ok(())
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("ci: cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("failed to start cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
