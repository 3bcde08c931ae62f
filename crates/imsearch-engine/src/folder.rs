//! A folder of photos indexed by every image encoder: one embedding cache per encoder, refreshed
//! incrementally (new and changed files encoded, deleted ones dropped), rows side by side.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
};

use candle::Device;
use image::RgbImage;
use imsearch_index::{Checkpoint, Content, EmbeddingCache, Item};
use imsearch_vision::{EncoderKind, ImageEncoder, View};
use serde::Serialize;

use crate::{engine::ImagePart, Error, Result};

/// File extensions indexed, matched case-insensitively: the formats imsearch-vision decodes
/// (JPEG, PNG, WebP, GIF, BMP, TIFF).
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// What indexing a folder did.
#[derive(Debug, Clone, Serialize)]
pub struct IndexSummary {
    pub images_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// Images with an embedding from every encoder: the ones searched.
    pub indexed: usize,
    /// Images encoded now, reused from the cache, dropped (deleted files); the most any encoder
    /// did (the fewest, for `reused`).
    pub encoded: usize,
    pub reused: usize,
    pub removed: usize,
    /// Files that could not be read or decoded, with the reason.
    pub skipped: Vec<Skipped>,
    /// Files that are not images by extension.
    pub ignored_files: usize,
    /// Caches found corrupt or of a newer format and rebuilt, with the reason.
    pub rebuilt: Vec<String>,
}

impl std::fmt::Display for IndexSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} images in {} ({} encoded, {} reused, {} removed; {} skipped, {} other files ignored); cache {}",
            self.indexed,
            self.images_dir.display(),
            self.encoded,
            self.reused,
            self.removed,
            self.skipped.len(),
            self.ignored_files,
            self.cache_dir.display()
        )?;
        for why in &self.rebuilt {
            write!(f, "; rebuilt: {why}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub file: String,
    pub reason: String,
}

/// A folder's images with the features of every encoder side by side.
#[derive(Debug, Clone)]
pub struct FolderIndex {
    /// Relative paths (with `/`) of the images with every encoder's features, sorted.
    pub keys: Vec<String>,
    /// The sha256 (hex) of each image's file, in the keys' order.
    pub hashes: Vec<String>,
    /// Row-major `(keys.len(), dim)`.
    pub features: Vec<f32>,
    pub dim: usize,
    /// Each encoder's part of a row, in order.
    pub parts: Vec<ImagePart>,
    pub summary: IndexSummary,
}

/// How to index a folder.
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// The encoders and the id under which each one's features are cached (views included).
    pub encoders: Vec<(EncoderKind, String)>,
    /// Views of each image whose features are averaged.
    pub views: Vec<View>,
    /// Images per forward pass.
    pub batch: usize,
    /// Where the caches of every folder go (one subfolder per folder and shard).
    pub cache_root: PathBuf,
    /// Only this worker's share of the files ([`Shard`]); `None`: all of them.
    pub shard: Option<Shard>,
}

/// Worker `worker` of `workers` (0-based): the files whose [`key_bucket`] is `worker` modulo
/// `workers`. Stable: a file belongs to the same worker on every machine and every run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub worker: u32,
    pub workers: u32,
}

impl Shard {
    /// Whether the file of `key` is this worker's.
    pub fn owns(&self, key: &str) -> bool {
        key_bucket(key) % self.workers == self.worker
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.worker, self.workers)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `I/N`: worker I (0-based) of N.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{s:?} is not a shard: write I/N, worker I (from 0) of N workers, e.g. 0/2");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (worker, workers): (u32, u32) =
            (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if workers == 0 || worker >= workers {
            return Err(format!("shard {s}: the worker must be from 0 to N-1 and N at least 1"));
        }
        Ok(Shard { worker, workers })
    }
}

/// A stable 31-bit hash of a file's key (its path relative to the folder): the first 4 bytes
/// of the key's sha256, halved. Decides which worker indexes the file.
pub fn key_bucket(key: &str) -> u32 {
    let hash = imsearch_index::Item::text("", key).content_hash().unwrap_or_default();
    u32::from_str_radix(hash.get(..8).unwrap_or("0"), 16).unwrap_or(0) >> 1
}

impl FolderIndex {
    /// Brings the folder's caches in line with its files and gathers the rows. `load_encoder`
    /// is called only when an encoder has work to do; `progress(encoder, done, total)` reports.
    pub fn open(
        folder: &Path,
        options: &IndexOptions,
        load_encoder: &dyn Fn(EncoderKind) -> std::result::Result<Box<dyn ImageEncoder>, String>,
        progress: &dyn Fn(&str, usize, usize),
    ) -> Result<FolderIndex> {
        if !folder.is_dir() {
            return Err(Error::Invalid(format!("{} is not a folder", folder.display())));
        }
        let root = folder.canonicalize().map_err(|source| Error::Read { path: folder.to_owned(), source })?;
        let mut listing = list_images_detailed(&root)?;
        let (mut files, mut ignored) = (listing.images, listing.ignored);
        if let Some(shard) = options.shard {
            // Other workers' files are neither indexed nor counted.
            files.retain(|(key, _)| shard.owns(key));
            ignored = 0;
            listing.skipped.retain(|s| shard.owns(&s.file));
        }
        let items: Vec<Item> = files.iter().map(|(key, path)| Item::file(key.clone(), path.clone())).collect();
        let digest = root
            .to_string_lossy()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        // A worker's caches are its own: two workers of one folder on one machine never share
        // one. The only worker of one (0/1) indexes the whole folder: the folder's own caches.
        let cache_dir = match options.shard {
            Some(s) if s.workers > 1 => {
                options.cache_root.join(format!("{digest:016x}-shard{}of{}", s.worker, s.workers))
            }
            _ => options.cache_root.join(format!("{digest:016x}")),
        };

        let mut caches = Vec::new();
        let mut checkpoints = Vec::new();
        // Loaded only when an encoder has work to do.
        let mut encoders: Vec<Option<Box<dyn ImageEncoder>>> = Vec::new();
        // Entries the listing skipped (broken links, special files), then files that failed.
        let mut skipped: BTreeMap<String, String> = listing.skipped.into_iter().map(|s| (s.file, s.reason)).collect();
        let mut rebuilt = Vec::new();
        for (kind, id) in &options.encoders {
            let path = cache_dir.join(format!("{id}.safetensors"));
            let mut encoder: Option<Box<dyn ImageEncoder>> = None;
            let cache = match EmbeddingCache::load(&path) {
                Ok(Some(cache)) if cache.model() == id => cache,
                other => {
                    if let Err(e) = other {
                        tracing::warn!("rebuilding the index cache: {e}");
                        rebuilt.push(e.to_string());
                    }
                    let enc = encoder.insert(load_encoder(*kind).map_err(Error::Invalid)?);
                    EmbeddingCache::new(id.clone(), enc.dim())
                }
            };
            caches.push(cache);
            checkpoints.push(Checkpoint::to(&path));
            encoders.push(encoder);
        }
        let label = options.encoders.iter().map(|(kind, _)| kind.id()).collect::<Vec<_>>().join(", ");
        let mut fatal = None;
        // One pass: each new or changed file is read and decoded once for every encoder, and
        // every cache is saved as it goes (a search killed while indexing resumes from the
        // last save).
        let all_stats = EmbeddingCache::refresh_together(
            &mut caches,
            &items,
            options.batch,
            &checkpoints.iter().map(Some).collect::<Vec<_>>(),
            |batch, need| {
                for &c in need {
                    if encoders[c].is_none() {
                        match load_encoder(options.encoders[c].0) {
                            Ok(e) => encoders[c] = Some(e),
                            Err(why) => {
                                fatal.get_or_insert(why.clone());
                                return batch.iter().map(|_| need.iter().map(|_| Err(why.clone())).collect()).collect();
                            }
                        }
                    }
                }
                let chosen: Vec<&dyn ImageEncoder> = need.iter().filter_map(|&c| encoders[c].as_deref()).collect();
                encode_images_all(&chosen, &options.views, batch, &mut EncodeTimes::default())
            },
            |done| progress(&label, done, items.len()),
        )?;
        if let Some(why) = fatal {
            return Err(Error::Invalid(why));
        }
        let (mut encoded, mut reused, mut removed) = (0, usize::MAX, 0);
        for ((cache, stats), checkpoint) in caches.iter().zip(all_stats).zip(&checkpoints) {
            if stats.changed() {
                cache.save(&checkpoint.path)?;
            }
            // Per image, not per encoder run: every encoder sees the same files.
            encoded = encoded.max(stats.encoded);
            reused = reused.min(stats.reused);
            removed = removed.max(stats.removed);
            for (key, why) in stats.failed {
                skipped.entry(key).or_insert(why);
            }
        }

        let rows: Vec<HashMap<&str, usize>> =
            caches.iter().map(|c| c.keys().iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect()).collect();
        let dim: usize = caches.iter().map(EmbeddingCache::dim).sum();
        let parts = caches.iter().map(|c| ImagePart { id: c.model().to_owned(), dim: c.dim() }).collect();
        let mut keys = Vec::new();
        let mut hashes = Vec::new();
        let mut features = Vec::new();
        for (key, _) in &files {
            let Some(found) = rows.iter().map(|r| r.get(key.as_str()).copied()).collect::<Option<Vec<usize>>>() else {
                continue;
            };
            if let (Some(cache), Some(&row)) = (caches.first(), found.first()) {
                hashes.push(cache.hashes()[row].clone());
            }
            for (cache, row) in caches.iter().zip(found) {
                features.extend_from_slice(cache.row(row));
            }
            keys.push(key.clone());
        }
        let summary = IndexSummary {
            images_dir: root,
            cache_dir,
            indexed: keys.len(),
            encoded,
            reused: if options.encoders.is_empty() { 0 } else { reused },
            removed,
            skipped: skipped.into_iter().map(|(file, reason)| Skipped { file, reason }).collect(),
            ignored_files: ignored,
            rebuilt,
        };
        Ok(FolderIndex { keys, hashes, features, dim, parts, summary })
    }

    /// Row `i`'s features of the parts `ids` side by side, in the index's order.
    pub fn slices(&self, i: usize, ids: &[String]) -> Vec<f32> {
        slices(&self.parts, &self.features[i * self.dim..(i + 1) * self.dim], ids)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The file of row `row`.
    pub fn path(&self, row: usize) -> Option<PathBuf> {
        self.keys.get(row).map(|key| self.summary.images_dir.join(key))
    }
}

/// The features of `row` (laid out as `parts`) of the parts `ids`, side by side in `parts`' order.
pub(crate) fn slices(parts: &[ImagePart], row: &[f32], ids: &[String]) -> Vec<f32> {
    let mut out = Vec::new();
    let mut at = 0;
    for p in parts {
        if let (true, Some(features)) = (ids.contains(&p.id), row.get(at..at + p.dim)) {
            out.extend_from_slice(features);
        }
        at += p.dim;
    }
    out
}

/// One image file's feature row in the layout of an index opened with `options` (every
/// encoder's features over the views, side by side), for a photo that is not in the index ("more
/// like this photo"). Nothing is cached. An unreadable or undecodable file is an error naming it.
pub fn encode_file(
    path: &Path,
    options: &IndexOptions,
    load_encoder: &dyn Fn(EncoderKind) -> std::result::Result<Box<dyn ImageEncoder>, String>,
) -> Result<Vec<f32>> {
    let encoders = options
        .encoders
        .iter()
        .map(|(kind, _)| load_encoder(*kind).map_err(Error::Invalid))
        .collect::<Result<Vec<_>>>()?;
    let encoders: Vec<&dyn ImageEncoder> = encoders.iter().map(|e| e.as_ref()).collect();
    let item = Item::file(path.display().to_string(), path.to_owned());
    // Read and decoded once for every encoder.
    let per_encoder =
        encode_images_all(&encoders, &options.views, std::slice::from_ref(&item), &mut EncodeTimes::default())
            .pop()
            .unwrap_or_default();
    if per_encoder.len() != encoders.len() {
        return Err(Error::Invalid(format!("{}: not encoded", path.display())));
    }
    let mut row = Vec::new();
    for features in per_encoder {
        row.extend(features.map_err(|why| Error::Invalid(format!("{}: {why}", path.display())))?);
    }
    Ok(row)
}

/// Features of a batch of image files, averaged over `views`: [`encode_images_all`] with one
/// encoder.
pub fn encode_images(encoder: &dyn ImageEncoder, views: &[View], items: &[Item]) -> Vec<Result<Vec<f32>, String>> {
    encode_images_all(&[encoder], views, items, &mut EncodeTimes::default())
        .into_iter()
        .map(|mut per_encoder| per_encoder.pop().unwrap_or_else(|| Err("not encoded".into())))
        .collect()
}

/// Where the time of [`encode_images_all`] went, added up over its calls: wall-clock seconds
/// of each stage. The stages run one after the other, each on every core (the forward passes
/// split each batch across the cores).
#[derive(Debug, Clone, Default, Serialize)]
pub struct EncodeTimes {
    /// Files read and decoded.
    pub images: usize,
    /// Reading the files, and decoding them into RGB pixels (one parallel stage; its wall time
    /// is split between the two by the threads' time in each).
    pub read: f64,
    pub decode: f64,
    /// Resizing, cropping and normalising every encoder's views.
    pub views: f64,
    /// The forward passes, per encoder, in the encoders' order.
    pub forward: Vec<ForwardTime>,
}

/// One encoder's forward passes in [`EncodeTimes`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct ForwardTime {
    pub encoder: String,
    pub seconds: f64,
    /// Images encoded (each over all the views).
    pub images: usize,
}

impl EncodeTimes {
    /// Seconds in all stages.
    pub fn total(&self) -> f64 {
        self.read + self.decode + self.views + self.forward.iter().map(|f| f.seconds).sum::<f64>()
    }
}

/// Features of a batch of image files under several encoders, each averaged over `views`: a
/// file is read and decoded once for all the encoders and views, and a resized copy is shared
/// by every view and encoder of the same size. Returns per item one result per encoder, in
/// the encoders' order. A file that cannot be read or decoded fails for every encoder with the
/// reason; the other files of the batch are encoded. Adds the stages' time to `times`.
pub fn encode_images_all(
    encoders: &[&dyn ImageEncoder],
    views: &[View],
    items: &[Item],
    times: &mut EncodeTimes,
) -> Vec<Vec<Result<Vec<f32>, String>>> {
    let need: Vec<(usize, usize)> = (0..encoders.len()).map(|e| (e, 0)).collect();
    encode_image_outputs(encoders, &[views.to_vec()], &need, items, times)
}

/// Features of a batch of image files for several outputs of several encoders, each output
/// the mean of its views' features: `need` names the (encoder, output) pairs wanted, and the
/// result holds per item one result per pair, in `need`'s order. A file is read and decoded
/// once for everything, a resized copy is shared by every view and encoder of the same size,
/// and each view goes through an encoder once however many outputs name it (the centre crop
/// of a two-view mean and of its own single view, say). The features are those
/// [`encode_images_all`] gives for each output alone, bit for bit: each view is a forward
/// pass of its own, averaged in the order the output names them. A file that cannot be read
/// or decoded fails for every pair with the reason; the other files are encoded. Adds the
/// stages' time to `times` (an encoder's images once per call).
pub fn encode_image_outputs(
    encoders: &[&dyn ImageEncoder],
    outputs: &[Vec<View>],
    need: &[(usize, usize)],
    items: &[Item],
    times: &mut EncodeTimes,
) -> Vec<Vec<Result<Vec<f32>, String>>> {
    use rayon::prelude::*;
    use std::time::{Duration, Instant};

    let start = Instant::now();
    let decoded: Vec<(std::result::Result<RgbImage, String>, Duration, Duration)> = items
        .par_iter()
        .map(|item| {
            let Content::File(path) = &item.content else {
                return (Err(format!("{} is a text, not an image file", item.key)), Duration::ZERO, Duration::ZERO);
            };
            let t0 = Instant::now();
            let bytes = imsearch_vision::preprocess::read_image_file(path);
            let read = t0.elapsed();
            let t1 = Instant::now();
            let image = bytes.and_then(|b| imsearch_vision::preprocess::decode_rgb(&b, path));
            (image.map_err(|e| crate::error::chain(&e)), read, t1.elapsed())
        })
        .collect();
    let wall = start.elapsed().as_secs_f64();
    let (read, decode) =
        decoded.iter().fold((0.0, 0.0), |(r, d), (_, a, b)| (r + a.as_secs_f64(), d + b.as_secs_f64()));
    let busy = read + decode;
    times.read += if busy > 0.0 { wall * read / busy } else { 0.0 };
    times.decode += if busy > 0.0 { wall * decode / busy } else { wall };
    times.images += items.len();

    // The decoded images and their resized copies; `rows[j]` is the item of `prepared[j]`.
    let mut rows = Vec::new();
    let mut prepared: Vec<(RgbImage, Vec<(u32, RgbImage)>)> = Vec::new();
    let mut failed = Vec::new();
    for (i, (image, _, _)) in decoded.into_iter().enumerate() {
        match image {
            Ok(img) => {
                rows.push(i);
                prepared.push((img, Vec::new()));
            }
            Err(why) => failed.push((i, why)),
        }
    }
    // Per pair of `need`: the features of the decoded rows, or why they failed.
    let mut results: Vec<Option<Result<Vec<Vec<f32>>, String>>> = vec![None; need.len()];
    for (e, encoder) in encoders.iter().enumerate() {
        let wanted: Vec<usize> = (0..need.len()).filter(|&k| need[k].0 == e).collect();
        if wanted.is_empty() {
            continue;
        }
        // The views of this encoder's outputs, each once, in the order they are first named.
        let mut distinct: Vec<View> = Vec::new();
        for &k in &wanted {
            for v in outputs.get(need[k].1).map_or(&[][..], |o| o.as_slice()) {
                if !distinct.contains(v) {
                    distinct.push(*v);
                }
            }
        }
        let config = encoder.preprocess();
        let n = config.image_len();
        let side = config.crop as usize;
        let mut per_view: Vec<Result<candle::Tensor, String>> = Vec::with_capacity(distinct.len());
        for view in &distinct {
            let t = Instant::now();
            let mut data = vec![0f32; prepared.len() * n];
            let made = config.validate().and_then(|()| {
                data.par_chunks_mut(n.max(1)).zip(prepared.par_iter_mut()).try_for_each(|(out, (img, resized))| {
                    config.views_into(img, std::slice::from_ref(view), out, resized)
                })
            });
            times.views += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let features = made.map_err(|e| crate::error::chain(&e)).and_then(|()| {
                let xs = candle::Tensor::from_vec(data, (rows.len(), 3, side, side), &Device::Cpu).and_then(|xs| {
                    if rows.is_empty() {
                        Ok(xs)
                    } else {
                        encoder.features(&xs)
                    }
                });
                xs.map_err(|e| format!("{}: {}", encoder.id(), crate::error::chain(&e)))
            });
            forward_time(times, encoder.id()).seconds += t.elapsed().as_secs_f64();
            per_view.push(features);
        }
        forward_time(times, encoder.id()).images += rows.len();
        for k in wanted {
            let views = outputs.get(need[k].1).map_or(&[][..], |o| o.as_slice());
            let mean = || -> Result<Vec<Vec<f32>>, String> {
                if rows.is_empty() {
                    return Ok(Vec::new());
                }
                if views.is_empty() {
                    return Err(format!("{}: an output with no view", encoder.id()));
                }
                let parts = views
                    .iter()
                    .map(|v| per_view[distinct.iter().position(|d| d == v).unwrap_or(0)].clone())
                    .collect::<Result<Vec<_>, String>>()?;
                let run = || candle::Tensor::stack(&parts, 1)?.mean(1)?.to_vec2::<f32>();
                run().map_err(|e| format!("{}: {}", encoder.id(), crate::error::chain(&e)))
            };
            results[k] = Some(mean());
        }
    }
    let mut out: Vec<Vec<Result<Vec<f32>, String>>> = items.iter().map(|_| Vec::with_capacity(need.len())).collect();
    for result in results {
        let result = result.unwrap_or_else(|| Err("no such encoder".into()));
        for (i, why) in &failed {
            out[*i].push(Err(why.clone()));
        }
        match result {
            Ok(features) => {
                for (&i, f) in rows.iter().zip(features) {
                    out[i].push(Ok(f));
                }
            }
            Err(why) => {
                for &i in &rows {
                    out[i].push(Err(why.clone()));
                }
            }
        }
    }
    out
}

/// The entry of `times` for `encoder`, made on first use.
fn forward_time<'a>(times: &'a mut EncodeTimes, encoder: &str) -> &'a mut ForwardTime {
    let at = match times.forward.iter().position(|f| f.encoder == encoder) {
        Some(at) => at,
        None => {
            times.forward.push(ForwardTime { encoder: encoder.to_owned(), ..Default::default() });
            times.forward.len() - 1
        }
    };
    &mut times.forward[at]
}

/// The image files under `root` as (path relative to `root` with `/` separators, path), sorted,
/// and the number of other entries: files that are not images by extension plus the entries
/// `list_images_detailed` skips with a reason (dangling symbolic links, ...). Hidden entries
/// are left out; symbolic links to folders are not followed.
pub fn list_images(root: &Path) -> Result<(Vec<(String, PathBuf)>, usize)> {
    let listing = list_images_detailed(root)?;
    Ok((listing.images, listing.ignored + listing.skipped.len()))
}

/// What [`list_images_detailed`] found under a folder.
#[derive(Debug, Clone, Default)]
pub struct ImageListing {
    /// The image files: (path relative to the root with `/` separators, path), sorted.
    pub images: Vec<(String, PathBuf)>,
    /// Files that are not images by extension.
    pub ignored: usize,
    /// Entries left out, with the reason, sorted by relative path: dangling symbolic links and
    /// symbolic link loops (whatever their name: the target may have been a folder of photos),
    /// symbolic links to folders (not followed), and special files (fifos, sockets, devices)
    /// named like images.
    pub skipped: Vec<Skipped>,
}

/// The image files under `root` (by extension, case-insensitively; a folder named like an
/// image is a folder and is searched), the number of other files, and the entries left out with
/// the reason. Hidden entries (names starting with `.`) are left out silently. A symbolic link
/// to a file is an image like the file; symbolic links to folders are not followed (a link to
/// an ancestor would loop). A folder that cannot be read is an error naming it.
pub fn list_images_detailed(root: &Path) -> Result<ImageListing> {
    let mut listing = ImageListing::default();
    let mut stack = vec![root.to_owned()];
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Read { path, source }
    };
    let key_of = |path: &Path| {
        let relative = path.strip_prefix(root).unwrap_or(path);
        relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
    };
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(read_err(&dir))? {
            let entry = entry.map_err(read_err(&dir))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let mut skip = |reason: String| listing.skipped.push(Skipped { file: key_of(&path), reason });
            let mut kind = entry.file_type().map_err(read_err(&path))?;
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            if kind.is_symlink() {
                match fs::metadata(&path) {
                    Ok(target) if target.is_dir() => {
                        skip("symbolic link to a folder (not followed)".into());
                        continue;
                    }
                    Ok(target) => kind = target.file_type(),
                    Err(e) => {
                        skip(symlink_problem(&path, &e));
                        continue;
                    }
                }
            }
            let is_image = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
            if !is_image {
                listing.ignored += 1;
            } else if !kind.is_file() {
                // Reading a fifo would block; a device or socket is no photo.
                skip("not a regular file (a fifo, socket or device)".into());
            } else {
                listing.images.push((key_of(&path), path));
            }
        }
    }
    listing.images.sort();
    listing.skipped.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(listing)
}

/// Why the symbolic link `path` cannot be followed (`error` is what following it gave).
fn symlink_problem(path: &Path, error: &std::io::Error) -> String {
    if error.kind() == std::io::ErrorKind::NotFound {
        return "dangling symbolic link (its target does not exist)".into();
    }
    // Follow the chain by hand: a link seen twice, or more links than the kernel follows
    // (40 on Linux), is a loop.
    let mut seen = std::collections::HashSet::new();
    let mut at = path.to_owned();
    for _ in 0..=40 {
        if !seen.insert(at.clone()) {
            return "symbolic link loop".into();
        }
        match fs::read_link(&at) {
            Ok(target) => {
                at = match at.parent() {
                    Some(dir) => dir.join(target),
                    None => target,
                }
            }
            Err(_) => return format!("cannot follow symbolic link: {error}"),
        }
    }
    "symbolic link loop".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_share_out_every_file_to_exactly_one_worker_stably() {
        assert_eq!("1/3".parse::<Shard>().unwrap(), Shard { worker: 1, workers: 3 });
        assert_eq!(Shard { worker: 1, workers: 3 }.to_string(), "1/3");
        for bad in ["3/3", "0/0", "1", "a/2", "-1/2", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad:?} parsed");
        }
        let keys: Vec<String> = (0..3000).map(|i| format!("album {}/IMG_{i:04}.jpg", i % 7)).collect();
        let shards: Vec<Shard> = (0..3).map(|worker| Shard { worker, workers: 3 }).collect();
        let mut sizes = [0usize; 3];
        for key in &keys {
            let owners: Vec<usize> = (0..3).filter(|&w| shards[w].owns(key)).collect();
            assert_eq!(owners.len(), 1, "{key} belongs to {owners:?}");
            sizes[owners[0]] += 1;
            assert!(key_bucket(key) < 1 << 31);
        }
        assert!(sizes.iter().all(|&n| (900..=1100).contains(&n)), "unbalanced: {sizes:?}");
        // The same worker on every machine and in every version: the sha256 of the key.
        assert_eq!(key_bucket("a.jpg"), 676_169_379);
    }

    #[test]
    fn lists_images_recursively_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::create_dir_all(dir.join(".hidden")).unwrap();
        for f in ["b.JPG", "a.png", "notes.txt", "sub/c.jpeg", ".hidden/d.jpg", ".e.jpg"] {
            fs::write(dir.join(f), b"x").unwrap();
        }
        let (images, ignored) = list_images(dir).unwrap();
        let keys: Vec<&str> = images.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a.png", "b.JPG", "sub/c.jpeg"]);
        assert_eq!(ignored, 1);
    }

    #[test]
    fn every_decoded_format_is_listed_in_any_case() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let names = ["a.jpg", "b.JPEG", "c.png", "d.WebP", "e.gif", "f.bmp", "g.tif", "h.TIFF", "i.heic", "j.svg"];
        for f in names {
            fs::write(dir.join(f), b"x").unwrap();
        }
        let listing = list_images_detailed(dir).unwrap();
        let keys: Vec<&str> = listing.images.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, names[..8]);
        assert_eq!(listing.ignored, 2);
        assert!(listing.skipped.is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn broken_links_are_counted_with_a_reason_and_folders_named_like_images_are_searched() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        // A folder named like an image: searched, not taken for a file.
        fs::create_dir_all(dir.join("trip.jpg/day1")).unwrap();
        fs::write(dir.join("trip.jpg/day1/beach.png"), b"x").unwrap();
        fs::write(dir.join("real.jpg"), b"x").unwrap();
        symlink("real.jpg", dir.join("link.jpg")).unwrap();
        symlink("gone.jpg", dir.join("dangling.jpg")).unwrap();
        // Dangling whatever its name: it may have pointed to a folder of photos.
        symlink("/nonexistent/photos", dir.join("old-photos")).unwrap();
        symlink("loop-b.jpg", dir.join("loop-a.jpg")).unwrap();
        symlink("loop-a.jpg", dir.join("loop-b.jpg")).unwrap();
        symlink("self.png", dir.join("self.png")).unwrap();
        symlink("trip.jpg", dir.join("trip-link.jpg")).unwrap();
        symlink(".", dir.join("here")).unwrap();

        let listing = list_images_detailed(dir).unwrap();
        let keys: Vec<&str> = listing.images.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["link.jpg", "real.jpg", "trip.jpg/day1/beach.png"]);
        assert_eq!(listing.images[2].1, dir.join("trip.jpg/day1/beach.png"));
        assert_eq!(listing.ignored, 0);
        let skipped: Vec<(&str, &str)> = listing.skipped.iter().map(|s| (s.file.as_str(), s.reason.as_str())).collect();
        let dangling = "dangling symbolic link (its target does not exist)";
        let folder = "symbolic link to a folder (not followed)";
        assert_eq!(
            skipped,
            [
                ("dangling.jpg", dangling),
                ("here", folder),
                ("loop-a.jpg", "symbolic link loop"),
                ("loop-b.jpg", "symbolic link loop"),
                ("old-photos", dangling),
                ("self.png", "symbolic link loop"),
                ("trip-link.jpg", folder),
            ]
        );
        // The old signature counts them with the other files.
        let (images, ignored) = list_images(dir).unwrap();
        assert_eq!(images, listing.images);
        assert_eq!(ignored, 7);
    }

    #[cfg(unix)]
    #[test]
    fn special_files_named_like_images_are_skipped() {
        use std::os::unix::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let _socket = UnixListener::bind(dir.join("camera.jpg")).unwrap();
        let _other = UnixListener::bind(dir.join("control")).unwrap();
        let listing = list_images_detailed(dir).unwrap();
        assert!(listing.images.is_empty());
        assert_eq!(listing.ignored, 1);
        assert_eq!(listing.skipped.len(), 1);
        assert_eq!(listing.skipped[0].file, "camera.jpg");
        assert!(listing.skipped[0].reason.starts_with("not a regular file"), "{:?}", listing.skipped);
    }
}
