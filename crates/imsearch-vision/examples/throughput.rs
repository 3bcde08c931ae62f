//! Feature-extraction throughput of the image encoders on this machine (release build):
//!
//! ```text
//! cargo run --release -p imsearch-vision --example throughput -- [MODELS_DIR] [BATCH] [PASSES]
//! ```
//!
//! `MODELS_DIR` defaults to `$IMSEARCH_MODELS`; the weights are `MODELS_DIR/<id>/model.safetensors`.
//! Prints images/s per encoder: the median of `PASSES` (default 5) timed batches after one
//! warm-up batch, like `shared/bench/torch_reference.py`. Threads: rayon's default (one per
//! core) unless `RAYON_NUM_THREADS` says otherwise.

use std::path::PathBuf;
use std::time::Instant;

use candle::{Device, Tensor};
use imsearch_vision::EncoderKind;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir: PathBuf = match args.next() {
        Some(d) => d.into(),
        None => std::env::var_os("IMSEARCH_MODELS").ok_or("pass MODELS_DIR or set IMSEARCH_MODELS")?.into(),
    };
    let batch: usize = args.next().map_or(Ok(32), |s| s.parse())?;
    let passes: usize = args.next().map_or(Ok(5), |s| s.parse())?;
    println!("threads: {}", rayon::current_num_threads());
    for kind in EncoderKind::ALL {
        let path = dir.join(kind.id()).join("model.safetensors");
        if !path.exists() {
            println!("{kind}: no weights at {}", path.display());
            continue;
        }
        let enc = imsearch_vision::load(kind, &path, &Device::Cpu)?;
        let side = enc.preprocess().crop as usize;
        // Deterministic input in about [-2, 2]; values do not change the work done.
        let n = batch * 3 * side * side;
        let data: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 / 250.0) - 2.0).collect();
        let xs = Tensor::from_vec(data, (batch, 3, side, side), &Device::Cpu)?;
        enc.features(&xs)?;
        let cpu0 = cpu_seconds();
        let mut rates: Vec<f64> = (0..passes)
            .map(|_| {
                let t = Instant::now();
                enc.features(&xs).map(|_| batch as f64 / t.elapsed().as_secs_f64())
            })
            .collect::<Result<_, _>>()?;
        let cpu = cpu_seconds() - cpu0;
        rates.sort_by(f64::total_cmp);
        println!(
            "{kind}: {:.1} images/s at batch {batch}, {side}x{side} (median of {passes}; min {:.1}, max {:.1}); {:.1} ms of CPU time per image",
            rates[rates.len() / 2],
            rates[0],
            rates[rates.len() - 1],
            cpu * 1e3 / (passes * batch) as f64
        );
    }
    Ok(())
}

/// User + system CPU time of this process so far (Linux; 0 elsewhere). Less disturbed than
/// wall time when other processes share the cores.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
