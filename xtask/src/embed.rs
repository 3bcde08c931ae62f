//! `cargo xtask embed`: encodes every train and test image and every caption once, into
//! embedding caches keyed by model id and content hash; a rerun re-encodes only what changed.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result};
use candle::{Device, Tensor};
use imsearch_data::Dataset;
use imsearch_engine::EncodeTimes;
use imsearch_index::{CacheStats, Checkpoint, Content, EmbeddingCache, Item};
use imsearch_models::ModelStore;
use imsearch_vision::{EncoderKind, ImageEncoder, View};

use crate::{models::ModelsArg, paths};

/// The text encoder's model id.
pub(crate) const TEXT_MODEL: &str = imsearch_models::MINILM_L6_V2;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct EmbedOpts {
    /// Image encoders to run (mobilenet-v2, efficientnet-lite0, efficientnet-lite2); their
    /// features are concatenated. The default, all three, is the best on the validation split.
    #[arg(long, value_delimiter = ',', default_value = "mobilenet-v2,efficientnet-lite0,efficientnet-lite2")]
    pub(crate) image_encoders: Vec<String>,
    /// Views of each image whose features are averaged (center, center-flipped, squashed,
    /// squashed-flipped, the corner crops top-left, top-right, bottom-left, bottom-right, and the
    /// 2x2 grid at double scale zoom-top-left, zoom-top-right, zoom-bottom-left, zoom-bottom-right
    /// with zoom-center). The default, the centre crop and the whole image squashed to the
    /// input size, beat the centre crop and its mirror on the pooled validation captions at the
    /// same cost (docs/results.md).
    #[arg(long, value_delimiter = ',', default_value = "center,squashed")]
    pub(crate) views: Vec<String>,
    /// Single views of the training images, each its own cache (of the training images only),
    /// encoded in the same pass as --views (a view in both goes through each encoder once), for
    /// the fusion members trained with views as augmentation (the dual-encoder recipe; the
    /// default is the views of the default engine's members). Same names as --views; "none" for
    /// none (the engine then leaves those members out). The test images and searched folders are
    /// encoded with --views only.
    #[arg(long, value_delimiter = ',', default_values = imsearch_engine::DUAL_ENCODER_VIEWS)]
    pub(crate) train_views: Vec<String>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    pub(crate) batch: usize,
    /// Where embeddings, folder indexes, checkpoints, the saved engine and the reports'
    /// figures are kept (default: the user's data directory, $XDG_DATA_HOME/imsearch or
    /// ~/.local/share/imsearch on Linux; outside `target/`, so `cargo clean` keeps them).
    #[arg(long, value_name = "DIR", env = paths::WORKDIR_ENV, value_parser = crate::paths::dir_arg)]
    pub(crate) workdir: Option<PathBuf>,
}

impl EmbedOpts {
    /// The work directory: `--workdir`, else `$IMSEARCH_WORKDIR`, else the user's data directory.
    pub(crate) fn workdir(&self) -> PathBuf {
        paths::workdir(self.workdir.as_deref())
    }

    /// The image encoders, in order; an unknown or repeated one is an error.
    pub(crate) fn kinds(&self) -> Result<Vec<EncoderKind>> {
        let mut kinds = Vec::new();
        for id in &self.image_encoders {
            let kind = EncoderKind::from_id(id).with_context(|| {
                format!("unknown image encoder {id:?} (known: mobilenet-v2, efficientnet-lite0, efficientnet-lite2)")
            })?;
            if kinds.contains(&kind) {
                anyhow::bail!("--image-encoders names {id} twice ({})", self.image_encoders.join(","));
            }
            kinds.push(kind);
        }
        Ok(kinds)
    }

    /// The feature layout: every encoder's cache id, joined by `+`.
    pub(crate) fn layout(&self) -> Result<String> {
        Ok(self.kinds()?.into_iter().map(|k| self.image_model_id(k)).collect::<Vec<_>>().join("+"))
    }

    /// The names of `--train-views` ("none": none).
    pub(crate) fn train_view_names(&self) -> Vec<String> {
        self.train_views.iter().filter(|v| *v != "none").cloned().collect()
    }

    /// The single views of the training images to encode for augmentation (`--train-views`).
    pub(crate) fn train_views(&self) -> Result<Vec<View>> {
        self.train_view_names()
            .iter()
            .map(|v| v.parse::<View>().with_context(|| format!("invalid --train-views {}", self.train_views.join(","))))
            .collect()
    }

    pub(crate) fn views(&self) -> Result<Vec<View>> {
        self.views
            .iter()
            .map(|v| v.parse::<View>().with_context(|| format!("invalid --views {}", self.views.join(","))))
            .collect()
    }

    /// The id under which an encoder's features over these views are cached.
    pub(crate) fn image_model_id(&self, kind: EncoderKind) -> String {
        format!("{}@{}", kind.id(), self.views.join("+"))
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The dataset directory (default: ../shared/data/dsplus_integrated_project_4 next to the checkout).
    #[arg(long, value_name = "DIR", env = imsearch_data::DATA_ENV, value_parser = crate::paths::dir_arg)]
    data: Option<PathBuf>,
    #[command(flatten)]
    models: ModelsArg,
    #[command(flatten)]
    opts: EmbedOpts,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let data = paths::data_dir(args.data.as_deref())?;
    let ds = Dataset::load(&data, Default::default())
        .with_context(|| format!("failed to load the dataset at {}", data.display()))?;
    let store = args.models.store()?;
    let all = embed_all(&ds, &store, &args.opts)?;
    println!("embeddings in {}", all.dir.display());
    Ok(())
}

/// Every embedding the pipeline needs.
pub(crate) struct Embeddings {
    pub(crate) dir: PathBuf,
    /// Per image encoder: (id, train images, test images).
    pub(crate) images: Vec<(String, EmbeddingCache, EmbeddingCache)>,
    /// MiniLM embeddings of every train caption and test query, keyed by query id.
    pub(crate) texts: EmbeddingCache,
    /// Per image encoder (in the order of `images`): the train images' features of each single
    /// view of `--train-views`.
    pub(crate) train_views: Vec<Vec<(String, EmbeddingCache)>>,
}

pub(crate) fn embed_all(ds: &Dataset, store: &ModelStore, opts: &EmbedOpts) -> Result<Embeddings> {
    let dir = opts.workdir().join("embeddings");
    let views = opts.views()?;
    // Every flag checked before the first image is encoded.
    let single_views = opts.train_views()?;
    let kinds = opts.kinds()?;
    let mut encoders = Vec::new();
    let mut ids = Vec::new();
    for &kind in &kinds {
        let files = crate::models::ensure(store, kind.id())?;
        let encoder = imsearch_vision::load(kind, &files.weights, &Device::Cpu)
            .with_context(|| format!("failed to load {kind}"))?;
        encoders.push(encoder);
        ids.push(opts.image_model_id(kind));
    }
    let encoders: Vec<&dyn ImageEncoder> = encoders.iter().map(|e| e.as_ref()).collect();
    let train: Vec<Item> = ds
        .train_images()
        .into_iter()
        .filter(|i| ds.train_image_files.contains(i))
        .map(|i| Item::file(i.as_str(), ds.train_image_path(&i)))
        .collect();
    let test: Vec<Item> =
        ds.test_images.iter().map(|r| Item::file(r.image.as_str(), ds.test_image_path(&r.image))).collect();
    let mut times = EncodeTimes::default();
    // The training images in one pass: the mean over --views and each single view of
    // --train-views, a view shared by both (the centre crop, say) encoded once.
    let mut train_outputs = vec![views.clone()];
    train_outputs.extend(single_views.iter().map(|v| vec![*v]));
    let train_ids: Vec<Vec<String>> = kinds
        .iter()
        .zip(&ids)
        .map(|(k, id)| {
            let mut per = vec![id.clone()];
            per.extend(single_views.iter().map(|v| format!("{}@{v}", k.id())));
            per
        })
        .collect();
    // Per encoder: the mean's cache, then the single views' in order.
    let (train_caches, train_views): (Vec<EmbeddingCache>, Vec<Vec<(String, EmbeddingCache)>>) =
        embed_images(&encoders, &train_ids, &train_outputs, &train, opts.batch, &dir, "train", &mut times)?
            .into_iter()
            .map(|mut per| {
                let singles = per.split_off(1).into_iter().zip(&single_views).map(|(c, v)| (v.to_string(), c));
                (per.remove(0), singles.collect())
            })
            .unzip();
    let test_ids: Vec<Vec<String>> = ids.iter().map(|id| vec![id.clone()]).collect();
    let test_caches =
        embed_images(&encoders, &test_ids, std::slice::from_ref(&views), &test, opts.batch, &dir, "test", &mut times)?
            .into_iter()
            .flatten();
    if times.images > 0 {
        println!("{}", stage_report(&times));
    }
    let images =
        ids.into_iter().zip(train_caches).zip(test_caches).map(|((id, train), test)| (id, train, test)).collect();
    let texts = embed_texts(ds, store, &dir)?;
    Ok(Embeddings { dir, images, texts, train_views })
}

/// Where encoding the images took its time, one stage per line.
pub(crate) fn stage_report(times: &EncodeTimes) -> String {
    let total = times.total();
    let share = |s: f64| if total > 0.0 { 100.0 * s / total } else { 0.0 };
    let mut out = format!("encoding {} images: {total:.1} s in these stages", times.images);
    for (stage, s) in [("read", times.read), ("decode", times.decode), ("resize, crop, normalise", times.views)] {
        out += &format!("\n  {stage:<28} {s:>7.1} s {:>5.1} %", share(s));
    }
    for f in &times.forward {
        let (s, rate) = (f.seconds, if f.seconds > 0.0 { f.images as f64 / f.seconds } else { 0.0 });
        out +=
            &format!("\n  {:<28} {s:>7.1} s {:>5.1} %  {rate:.1} images/s", format!("forward {}", f.encoder), share(s));
    }
    out
}

/// Brings the caches `<dir>/<id>/<collection>.safetensors` of every encoder and output in line
/// with `items` in one pass (`ids[e][o]`: encoder `e`'s cache of output `o`, the mean of the
/// views `outputs[o]`): each file is read and decoded once for all of them, and each view goes
/// through each encoder once (see `imsearch_engine::encode_image_outputs`). Returns the
/// caches as `ids` names them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn embed_images(
    encoders: &[&dyn ImageEncoder],
    ids: &[Vec<String>],
    outputs: &[Vec<View>],
    items: &[Item],
    batch: usize,
    dir: &Path,
    collection: &str,
    times: &mut EncodeTimes,
) -> Result<Vec<Vec<EmbeddingCache>>> {
    // Flat, encoder by encoder: the cache at `k` is output `pairs[k].1` of encoder `pairs[k].0`.
    let pairs: Vec<(usize, usize)> =
        ids.iter().enumerate().flat_map(|(e, per)| (0..per.len()).map(move |o| (e, o))).collect();
    let flat_ids: Vec<&String> = ids.iter().flatten().collect();
    let paths: Vec<PathBuf> =
        flat_ids.iter().map(|id| dir.join(id).join(format!("{collection}.safetensors"))).collect();
    let mut caches = Vec::new();
    for (&(e, _), (id, path)) in pairs.iter().zip(flat_ids.iter().zip(&paths)) {
        caches.push(open_cache(path, id, encoders[e].dim())?);
    }
    let checkpoints: Vec<Checkpoint> = paths.iter().map(Checkpoint::to).collect();
    let label = format!("{} {collection}", encoders.iter().map(|e| e.id()).collect::<Vec<_>>().join(", "));
    let bar = crate::progress::bar(items.len() as u64, &label, "images");
    let start = Instant::now();
    let all_stats = EmbeddingCache::refresh_together(
        &mut caches,
        items,
        batch,
        &checkpoints.iter().map(Some).collect::<Vec<_>>(),
        |batch, need| {
            let need: Vec<(usize, usize)> = need.iter().map(|&k| pairs[k]).collect();
            imsearch_engine::encode_image_outputs(encoders, outputs, &need, batch, times)
        },
        |done| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    let elapsed = start.elapsed().as_secs_f64();
    let encoded = all_stats.iter().map(|s| s.encoded).max().unwrap_or(0);
    let busy = all_stats.iter().filter(|s| s.encoded > 0).count();
    if busy > 1 {
        println!(
            "{collection}: {encoded} images read and decoded once for {busy} caches in {elapsed:.1} s, {:.1} images/s",
            encoded as f64 / elapsed
        );
    }
    for ((cache, stats), (id, path)) in caches.iter().zip(&all_stats).zip(flat_ids.iter().zip(&paths)) {
        report(id, collection, stats, (busy <= 1).then_some(start));
        if stats.changed() {
            cache.save(path)?;
        }
    }
    let mut caches = caches.into_iter();
    Ok(ids.iter().map(|per| caches.by_ref().take(per.len()).collect()).collect())
}

/// The text-cache key of ImageNet class `i` (not a query id: it has no `#`).
pub(crate) fn imagenet_key(i: usize) -> String {
    format!("imagenet-class:{i}")
}

/// The text-cache key of ImageNet class `i` in a caption-like sentence ([`imagenet_prompt`]).
pub(crate) fn imagenet_prompt_key(i: usize) -> String {
    format!("imagenet-prompt:{i}")
}

/// Class `name` as a sentence like the captions ("a photo of a tench"), for the bridge.
pub(crate) fn imagenet_prompt(name: &str) -> String {
    let article = if name.starts_with(['a', 'e', 'i', 'o', 'u', 'A', 'E', 'I', 'O', 'U']) { "an" } else { "a" };
    format!("a photo of {article} {name}")
}

/// MiniLM embeddings of every train caption and test query, keyed by query id, and of the
/// ImageNet class names, keyed by [`imagenet_key`] (the bare name) and [`imagenet_prompt_key`]
/// (the name in a sentence).
pub(crate) fn embed_texts(ds: &Dataset, store: &ModelStore, dir: &Path) -> Result<EmbeddingCache> {
    let files = crate::models::ensure(store, TEXT_MODEL)?;
    let mut items: Vec<Item> = ds.train_captions().into_iter().map(|(q, t)| Item::text(q.to_string(), t)).collect();
    items.extend(ds.test_queries.iter().map(|q| Item::text(q.query.to_string(), q.text.clone())));
    // The ImageNet class names, for the bridge from class probabilities into text space.
    items.extend(imsearch_vision::imagenet_classes().iter().enumerate().map(|(i, c)| Item::text(imagenet_key(i), *c)));
    items.extend(
        imsearch_vision::imagenet_classes()
            .iter()
            .enumerate()
            .map(|(i, c)| Item::text(imagenet_prompt_key(i), imagenet_prompt(c))),
    );
    let path = dir.join(TEXT_MODEL).join("captions.safetensors");
    let mut cache = open_cache(&path, TEXT_MODEL, 384)?;
    let mut model = None;
    let bar = crate::progress::bar(items.len() as u64, &format!("{TEXT_MODEL} captions"), "texts");
    let start = Instant::now();
    let stats = cache.refresh(
        &items,
        256,
        |batch| {
            let model = match &model {
                Some(m) => m,
                None => match imsearch_text::MiniLm::load(&files.dir, &Device::Cpu) {
                    Ok(m) => model.insert(m),
                    Err(e) => return batch.iter().map(|_| Err(format!("failed to load MiniLM: {e}"))).collect(),
                },
            };
            let texts: Vec<&str> = batch
                .iter()
                .map(|i| match &i.content {
                    Content::Text(t) => t.as_str(),
                    Content::File(_) => "",
                })
                .collect();
            match model.encode(&texts) {
                Ok(m) => (0..m.rows()).map(|r| Ok(m.row(r).to_vec())).collect(),
                Err(e) => batch.iter().map(|_| Err(e.to_string())).collect(),
            }
        },
        |done| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    report(TEXT_MODEL, "captions", &stats, Some(start));
    if stats.changed() {
        cache.save(&path)?;
    }
    Ok(cache)
}

/// The cache at `path` for `model`; one that is corrupt or of a newer format is reported and
/// rebuilt.
fn open_cache(path: &Path, model: &str, dim: usize) -> Result<EmbeddingCache> {
    let (cache, rebuilt) = EmbeddingCache::load_or_rebuild(path, model, dim)?;
    if let Some(why) = rebuilt {
        println!("rebuilding the embedding cache: {why}");
    }
    Ok(cache)
}

/// One line on what a refresh did; with `start`, how long it took (left out for encoders that
/// shared one pass: the pass's line says).
fn report(model: &str, collection: &str, stats: &CacheStats, start: Option<Instant>) {
    let time = match start {
        Some(start) => {
            let secs = start.elapsed().as_secs_f64();
            let rate =
                if stats.encoded > 0 { format!(", {:.1}/s", stats.encoded as f64 / secs) } else { String::new() };
            format!(" in {secs:.1} s{rate}")
        }
        None => String::new(),
    };
    println!(
        "{model} {collection}: {} encoded, {} reused, {} removed, {} failed{time}",
        stats.encoded,
        stats.reused,
        stats.removed,
        stats.failed.len()
    );
    for (key, why) in &stats.failed {
        println!("  skipped {key}: {why}");
    }
}

/// The rows of `keys` in `cache`, stacked: imsearch-train's `rows`.
pub(crate) fn rows(cache: &EmbeddingCache, keys: &[&str]) -> Result<Tensor> {
    Ok(imsearch_train::rows(cache, keys)?)
}
