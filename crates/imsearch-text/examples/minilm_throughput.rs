//! Measures MiniLM encoding throughput (sentences/s) on the 500 test queries.
//!
//! `cargo run --release -p imsearch-text --example minilm_throughput -- MODEL_DIR QUERIES_CSV [BATCH]`
//! where MODEL_DIR holds the MiniLM files and QUERIES_CSV is the `|`-separated
//! `test_queries.csv` with a `query_text` column.

use std::time::Instant;

use anyhow::{Context, Result};
use candle::Device;
use imsearch_text::{MiniLm, MiniLmFiles, MiniLmOptions};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, csv_path, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: minilm_throughput MODEL_DIR QUERIES_CSV [BATCH]");
    };
    let batch_size = match rest.first() {
        Some(b) => b.parse().with_context(|| format!("bad batch size {b:?}"))?,
        None => 64,
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b'|')
        .from_path(csv_path)
        .with_context(|| format!("failed to open {csv_path}"))?;
    let column = reader.headers()?.iter().position(|h| h == "query_text").context("no query_text column")?;
    let mut queries = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("failed to read {csv_path}"))?;
        queries.push(record.get(column).context("short record")?.to_owned());
    }
    let texts: Vec<&str> = queries.iter().map(String::as_str).collect();

    for sort_by_length in [true, false] {
        let options = MiniLmOptions { batch_size, sort_by_length, ..MiniLmOptions::default() };
        let model = MiniLm::load_files(&MiniLmFiles::in_dir(dir), options, &Device::Cpu)
            .with_context(|| format!("failed to load MiniLM from {dir}"))?;
        model.encode(&texts[..batch_size.min(texts.len())])?; // warm-up
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let start = Instant::now();
            let out = model.encode(&texts)?;
            assert_eq!(out.rows(), texts.len());
            best = best.min(start.elapsed().as_secs_f64());
        }
        println!(
            "{} sentences, batch {batch_size}, sort_by_length={sort_by_length}: best of 3 {:.3} s = {:.0} sentences/s",
            texts.len(),
            best,
            texts.len() as f64 / best
        );
    }
    Ok(())
}
