//! `cargo xtask throughput`: encoder speed on the same work as the PyTorch reference
//! (`../shared/bench/torch_reference.py`), for a side-by-side candle / PyTorch ratio.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use candle::{Device, Tensor};
use imsearch_data::Dataset;
use imsearch_vision::{EncoderKind, View};

use crate::{models::ModelsArg, paths};

/// What `cargo xtask throughput --help` explains after the options.
const HELP: &str = "\
Measures, on the work of ../shared/bench/torch_reference.py: images/s for mobilenet_v2 and \
efficientnet_lite0 features (from preprocessed tensors, batch 32), images/s for preprocess (JPEG \
decode + resize 256 + centre crop 224 + normalise, on every core) and sentences/s for minilm (the \
test queries, batch 64).

The images are the first --images files of train_images/ in byte order of their names, as the \
reference's sorted(os.listdir(...))[:256] takes them. Each figure is the median of --repeats timed \
passes after one untimed warm-up pass. The peak resident memory of the process (VmHWM) is printed \
on stderr.

Compare by running it alternately with
  python ../shared/bench/torch_reference.py --data DIR --threads 2
and dividing each figure by the reference's (its best of NCHW and channels-last for the images).";

/// Arguments of `cargo xtask throughput`.
#[derive(clap::Args, Debug)]
#[command(after_long_help = HELP)]
pub(crate) struct Args {
    /// The dataset directory (default: ../shared/data/dsplus_integrated_project_4 next to the checkout).
    #[arg(long, value_name = "DIR", env = imsearch_data::DATA_ENV, value_parser = crate::paths::dir_arg)]
    data: Option<PathBuf>,
    #[command(flatten)]
    models: ModelsArg,
    /// Print one JSON object {"mobilenet_v2", "efficientnet_lite0", "preprocess", "minilm"} (numbers)
    /// on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Train images to measure (the reference uses 256).
    #[arg(long, default_value_t = 256)]
    images: usize,
    /// Timed passes per figure; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
}

/// Images per forward pass of an image encoder, as in the reference.
const IMAGE_BATCH: usize = 32;
/// Texts per forward pass of MiniLM, as in the reference.
const TEXT_BATCH: usize = 64;

pub(crate) fn run(args: &Args) -> Result<()> {
    if args.repeats == 0 || args.images == 0 {
        bail!("--repeats and --images must be at least 1");
    }
    let data = paths::data_dir(args.data.as_deref())?;
    let store = args.models.store()?;
    let images = first_train_images(&data, args.images)?;
    let device = Device::Cpu;
    let say = |what: &str| {
        if !args.json {
            eprintln!("measuring {what}...");
        }
    };

    // JPEG decode + resize 256 + centre crop 224 + normalise: the MobileNetV2 (ImageNet)
    // preprocessing the reference applies with torchvision, here in parallel over all cores.
    say("preprocess");
    let prep = EncoderKind::MobileNetV2.preprocess();
    let preprocess = median_rate(images.len(), args.repeats, || {
        prep.load_batch(&images, &[View::Center], &device).map(drop).context("failed to preprocess the images")
    })?;

    let mut encoders = Vec::new();
    for kind in [EncoderKind::MobileNetV2, EncoderKind::EfficientNetLite0] {
        say(kind.id());
        let files = crate::models::ensure(&store, kind.id())?;
        let encoder =
            imsearch_vision::load(kind, &files.weights, &device).with_context(|| format!("failed to load {kind}"))?;
        let batches: Vec<Tensor> = images
            .chunks(IMAGE_BATCH)
            .map(|chunk| encoder.preprocess().load_batch(chunk, &[View::Center], &device))
            .collect::<Result<_, _>>()
            .context("failed to preprocess the images")?;
        let rate = median_rate(images.len(), args.repeats, || {
            for xs in &batches {
                encoder.features(xs).with_context(|| format!("{kind} failed"))?;
            }
            Ok(())
        })?;
        encoders.push(rate);
    }

    say("minilm");
    let ds = Dataset::load(&data, Default::default())
        .with_context(|| format!("failed to load the dataset at {}", data.display()))?;
    let texts: Vec<&str> = ds.test_queries.iter().map(|q| q.text.as_str()).collect();
    let files = crate::models::ensure(&store, crate::embed::TEXT_MODEL)?;
    let mut options = imsearch_text::MiniLmOptions::for_dir(&files.dir)?;
    options.batch_size = TEXT_BATCH;
    let minilm = imsearch_text::MiniLm::load_files(&imsearch_text::MiniLmFiles::in_dir(&files.dir), options, &device)
        .context("failed to load MiniLM")?;
    let minilm = median_rate(texts.len(), args.repeats, || minilm.encode(&texts).map(drop).context("MiniLM failed"))?;

    let figures = [
        ("mobilenet_v2", encoders[0], "images/s"),
        ("efficientnet_lite0", encoders[1], "images/s"),
        ("preprocess", preprocess, "images/s"),
        ("minilm", minilm, "sentences/s"),
    ];
    let peak = peak_rss_kib();
    if args.json {
        let mut out = serde_json::Map::new();
        for (key, rate, _) in figures {
            out.insert(key.to_owned(), serde_json::json!(rate));
        }
        println!("{}", serde_json::Value::Object(out));
    } else {
        println!(
            "{} train images (batch {IMAGE_BATCH}), {} test queries (batch {TEXT_BATCH}), median of {} after a warm-up",
            images.len(),
            texts.len(),
            args.repeats
        );
        println!("{:<20} {:>10}", "encoder", "rate");
        for (key, rate, unit) in figures {
            println!("{key:<20} {rate:>10.1} {unit}");
        }
    }
    // On stderr so that --json output stays one object.
    match peak {
        Some(kib) => eprintln!("peak resident memory (VmHWM): {:.0} MiB", kib as f64 / 1024.0),
        None => eprintln!("peak resident memory: unknown (no VmHWM in /proc/self/status)"),
    }
    Ok(())
}

/// The first `n` files of `data/train_images` in byte order of their names (Python's `sorted`
/// on `os.listdir` strings, which for these ASCII names is the same order).
fn first_train_images(data: &Path, n: usize) -> Result<Vec<PathBuf>> {
    let dir = data.join("train_images");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("failed to list {}", dir.display()))? {
        names.push(entry.with_context(|| format!("failed to list {}", dir.display()))?.file_name());
    }
    names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    names.truncate(n);
    if names.len() < n {
        bail!("{} holds {} files, fewer than the {n} requested", dir.display(), names.len());
    }
    Ok(names.into_iter().map(|name| dir.join(name)).collect())
}

/// Items per second of `pass` (which processes `items` items): the median of `repeats` timed
/// passes after one warm-up pass.
fn median_rate(items: usize, repeats: usize, mut pass: impl FnMut() -> Result<()>) -> Result<f64> {
    pass()?;
    let mut rates = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        pass()?;
        rates.push(items as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    Ok(median(&rates))
}

/// The median of sorted values (the mean of the middle two for an even count), as Python's
/// `statistics.median`.
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Peak resident set size of this process in KiB (`VmHWM` in `/proc/self/status`), where the
/// kernel reports it.
pub(crate) fn peak_rss_kib() -> Option<u64> {
    status_kib("VmHWM:")
}

/// A memory field of `/proc/self/status` in KiB (`VmHWM:` the peak, `VmRSS:` the current
/// resident set), where the kernel reports it.
pub(crate) fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[1.0, 2.0, 10.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 4.0, 10.0]), 3.0);
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_kib().is_some_and(|k| k > 0));
        }
    }
}
