//! The saved engine: a round trip through disk scores the same, and an engine made for other
//! encoders or another format is a clear error naming both.

use std::{collections::BTreeMap, collections::HashMap, path::Path, sync::Arc};

use candle::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use imsearch_engine::{
    Bridge, Calibration, ClassTexts, ClassifierHead, Engine, EngineData, Error, ImagePart, MemberRecipe, Neighbourhood,
    Neighbours, Recipe, Scorer, ENGINE_FORMAT,
};
use imsearch_fusion::{FusionConfig, FusionModel};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TEXT: &str = "toy-text";

fn random(rng: &mut ChaCha8Rng, shape: (usize, usize)) -> Tensor {
    let data: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.gen_range(-1.0..1.0)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn unit_rows(t: Tensor) -> Tensor {
    t.broadcast_div(&t.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap()).unwrap()
}

/// A fusion model with random weights over `text_dim`-d texts, saved in `dir`.
fn member(dir: &Path, image_encoder: &str, image_dim: usize, text_dim: usize, seed: u64) -> FusionModel {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let config = FusionConfig {
        image_encoder: image_encoder.into(),
        text_encoder: TEXT.into(),
        image_dim,
        text_dim,
        hidden_dim: 0,
        shared_dim: 3,
        locked_text: false,
    };
    let model = FusionModel::new(config, vb).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tensors = HashMap::new();
    // In the order of the names: a HashMap's order changes from run to run, and with it which
    // weights a seed gives (the toy engine would differ between runs).
    let vars = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let values: Vec<f32> =
            (0..n).map(|_| if name.ends_with("inv_std") { 1.0 } else { rng.gen_range(-1.0..1.0) }).collect();
        var.set(&Tensor::from_vec(values, dims, &Device::Cpu).unwrap()).unwrap();
        tensors.insert(name.clone(), var.as_tensor().clone());
    }
    drop(vars);
    model.save(&tensors, dir).unwrap();
    FusionModel::load(dir, image_encoder, TEXT, &Device::Cpu).unwrap()
}

/// A toy engine over two encoders of 4 and 2 features, 5-d texts.
fn toy(dir: &Path) -> (Engine, Tensor, Tensor) {
    let layout = vec![ImagePart { id: "a@center".into(), dim: 4 }, ImagePart { id: "b@center".into(), dim: 2 }];
    toy_with(dir, layout, 5, false)
}

/// A toy engine over `layout` and `text_dim`-d texts (a member on every encoder and, with two
/// encoders or more, one on the last), with 4 queries and a collection of 5 images. With
/// `dual`, the member on the last encoder counts as a dual-encoder member and the recipe
/// bank-normalises it for ranking.
fn toy_with(dir: &Path, layout: Vec<ImagePart>, text_dim: usize, dual: bool) -> (Engine, Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let width: usize = layout.iter().map(|p| p.dim).sum();
    let images = random(&mut rng, (8, width));
    let texts = unit_rows(random(&mut rng, (10, text_dim)));
    let gallery: BTreeMap<usize, Vec<usize>> = (0..8).map(|i| (i, vec![i, (i + 1) % 10])).collect();
    let neighbours = Neighbours::new(
        &images,
        &texts,
        &gallery,
        &(0..8).collect::<Vec<_>>(),
        Neighbourhood { k: 3, temperature: 0.5 },
    )
    .unwrap();
    let heads = layout
        .iter()
        .map(|p| {
            ClassifierHead::new(random(&mut rng, (p.dim, 3)), random(&mut rng, (1, 3)).squeeze(0).unwrap()).unwrap()
        })
        .collect();
    let bridge = Bridge::new(heads, unit_rows(random(&mut rng, (3, text_dim))), 1.0).unwrap();
    let all = layout.iter().map(|p| p.id.as_str()).collect::<Vec<_>>().join("+");
    let mut members = vec![(
        MemberRecipe { encoders: vec![], epochs: 3, dual_encoder: None, class_positives: false },
        member(&dir.join("m0"), &all, width, text_dim, 1),
        dir.join("m0"),
    )];
    if let (true, Some(last)) = (layout.len() > 1, layout.last()) {
        members.push((
            MemberRecipe {
                encoders: vec![last.encoder().to_owned()],
                epochs: 2,
                dual_encoder: dual.then(|| vec!["center".to_owned()]),
                class_positives: dual,
            },
            member(&dir.join("m1"), &last.id, last.dim, text_dim, 2),
            dir.join("m1"),
        ));
    }
    let recipe = Recipe {
        members: members.iter().map(|m| m.0.clone()).collect(),
        weights: [1.0, 0.5, 0.25],
        neighbours: Neighbourhood { k: 3, temperature: 0.5 },
        bridge_temperature: 1.0,
        class_texts: ClassTexts::Sentences,
        calibration: Calibration { weights: [1.0, 0.5, 0.5], bias: -1.0 },
        dual_bank_normalised: dual,
        neighbour_views: vec!["center".into(), "squashed".into()],
    };
    let engine = Engine::new(EngineData {
        image_layout: layout,
        text_encoder: TEXT.into(),
        members,
        neighbours,
        bridge,
        bank: texts.narrow(0, 0, 6).unwrap(),
        recipe,
        provenance: serde_json::json!({ "test": true }),
    })
    .unwrap();
    let queries = unit_rows(random(&mut rng, (4, text_dim)));
    let collection = random(&mut rng, (5, width));
    (engine, queries, collection)
}

fn scores(engine: &Engine, images: &Tensor, texts: &Tensor) -> Vec<Vec<f32>> {
    let scorer: Arc<dyn Scorer> = engine.scorer();
    scorer.matrix(&scorer.prepare(images).unwrap(), texts).unwrap()
}

#[test]
fn a_saved_engine_scores_as_the_one_that_was_built() {
    let tmp = tempfile::tempdir().unwrap();
    let (engine, queries, collection) = toy(tmp.path());
    let before = scores(&engine, &collection, &queries);
    let dir = tmp.path().join("engine");
    engine.save(&dir).unwrap();
    // A second save replaces the first whole.
    engine.save(&dir).unwrap();
    let loaded = Engine::load(&dir, "a@center+b@center", TEXT).unwrap();
    assert_eq!(loaded.recipe(), engine.recipe());
    assert_eq!(loaded.members().len(), 2);
    let after = scores(&loaded, &collection, &queries);
    for (a, b) in before.iter().flatten().zip(after.iter().flatten()) {
        assert!((a - b).abs() < 1e-6, "{a} != {b}");
    }
    assert!(before.iter().flatten().all(|s| (0.0..=1.0).contains(s)));
    // Different queries rank the collection differently (the ensemble is not a constant).
    let order = |r: &Vec<f32>| {
        let mut o: Vec<usize> = (0..r.len()).collect();
        o.sort_by(|&a, &b| r[b].total_cmp(&r[a]));
        o
    };
    let orders: Vec<Vec<usize>> = before.iter().map(order).collect();
    assert!(orders.iter().any(|o| o != &orders[0]), "{before:?}");
    // Nothing but the engine is left in the parent folder.
    let names: Vec<String> =
        std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[test]
fn an_engine_for_other_encoders_or_another_format_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (engine, _, _) = toy(tmp.path());
    let dir = tmp.path().join("engine");
    engine.save(&dir).unwrap();
    match Engine::load(&dir, "a@center", TEXT) {
        Err(Error::Layout { found, expected, .. }) => {
            assert_eq!(found, "a@center+b@center");
            assert_eq!(expected, "a@center");
        }
        other => panic!("{other:?}"),
    }
    let err = Engine::load(&dir, "a@center+b@center", "minilm").unwrap_err().to_string();
    assert!(err.contains(TEXT) && err.contains("minilm"), "{err}");
    let spec = dir.join("engine.json");
    let text =
        std::fs::read_to_string(&spec).unwrap().replacen(&format!("\"format\": {ENGINE_FORMAT}"), "\"format\": 99", 1);
    std::fs::write(&spec, text).unwrap();
    let err = Engine::load(&dir, "a@center+b@center", TEXT).unwrap_err();
    assert!(matches!(err, Error::Format { found: 99, expected: ENGINE_FORMAT, .. }), "{err:?}");
    assert!(err.to_string().contains("99") && err.to_string().contains(&format!("format {ENGINE_FORMAT}")), "{err}");
    std::fs::remove_file(&spec).unwrap();
    assert!(matches!(Engine::load(&dir, "a@center+b@center", TEXT), Err(Error::Read { .. })));
}

/// An "encoder" whose classifier is a known linear layer.
struct Linear {
    weight_t: Tensor,
    bias: Tensor,
    preprocess: imsearch_vision::PreprocessConfig,
}

impl imsearch_vision::ImageEncoder for Linear {
    fn id(&self) -> &str {
        "linear"
    }
    fn dim(&self) -> usize {
        self.weight_t.dims()[0]
    }
    fn preprocess(&self) -> &imsearch_vision::PreprocessConfig {
        &self.preprocess
    }
    fn features(&self, xs: &Tensor) -> candle::Result<Tensor> {
        Ok(xs.clone())
    }
    fn logits(&self, features: &Tensor) -> candle::Result<Tensor> {
        features.matmul(&self.weight_t)?.broadcast_add(&self.bias)
    }
}

#[test]
fn a_classifier_head_read_through_the_encoder_gives_its_logits() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let encoder = Linear {
        weight_t: random(&mut rng, (4, 3)),
        bias: random(&mut rng, (1, 3)).squeeze(0).unwrap(),
        preprocess: imsearch_vision::EncoderKind::MobileNetV2.preprocess(),
    };
    let head = ClassifierHead::of_encoder(&encoder).unwrap();
    assert_eq!(head.dim(), 4);
    let x = random(&mut rng, (5, 4));
    let want: Vec<Vec<f32>> = imsearch_vision::ImageEncoder::logits(&encoder, &x).unwrap().to_vec2().unwrap();
    let got: Vec<Vec<f32>> = head.logits(&x).unwrap().to_vec2().unwrap();
    for (a, b) in want.iter().flatten().zip(got.iter().flatten()) {
        assert!((a - b).abs() < 1e-5, "{a} != {b}");
    }
    // A bias that does not match the classes is an error.
    assert!(ClassifierHead::new(random(&mut rng, (4, 3)), random(&mut rng, (1, 2)).squeeze(0).unwrap()).is_err());
}

/// An "encoder" whose features are the mean of each colour channel.
struct ChannelMeans(imsearch_vision::PreprocessConfig);

impl imsearch_vision::ImageEncoder for ChannelMeans {
    fn id(&self) -> &str {
        "channel-means"
    }
    fn dim(&self) -> usize {
        3
    }
    fn preprocess(&self) -> &imsearch_vision::PreprocessConfig {
        &self.0
    }
    fn features(&self, xs: &Tensor) -> candle::Result<Tensor> {
        xs.mean((2, 3))
    }
    fn logits(&self, features: &Tensor) -> candle::Result<Tensor> {
        Ok(features.clone())
    }
}

#[test]
fn a_folder_index_reuses_its_cache_and_rebuilds_a_corrupt_one() {
    use imsearch_engine::{FolderIndex, IndexOptions};
    use imsearch_vision::{EncoderKind, ImageEncoder, View};
    use std::cell::Cell;

    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(photos.join("sub")).unwrap();
    for (name, rgb) in [("red.png", [255, 0, 0]), ("green.png", [0, 255, 0]), ("sub/blue.png", [0, 0, 255])] {
        image::RgbImage::from_pixel(40, 30, image::Rgb(rgb)).save(photos.join(name)).unwrap();
    }
    let options = IndexOptions {
        encoders: vec![(EncoderKind::MobileNetV2, "channel-means@center".to_owned())],
        views: vec![View::Center],
        batch: 2,
        cache_root: dir.path().join("index"),
        shard: None,
    };
    let loads = Cell::new(0);
    let load = |_: EncoderKind| -> Result<Box<dyn ImageEncoder>, String> {
        loads.set(loads.get() + 1);
        Ok(Box::new(ChannelMeans(EncoderKind::MobileNetV2.preprocess())))
    };
    let open = || FolderIndex::open(&photos, &options, &load, &|_, _, _| {}).unwrap();

    let first = open();
    assert_eq!(first.keys, ["green.png", "red.png", "sub/blue.png"]);
    assert_eq!((first.summary.encoded, first.summary.reused, first.dim), (3, 0, 3));
    // Red is brightest in the red channel.
    let red = &first.features[3..6];
    assert!(red[0] > red[1] && red[0] > red[2], "{red:?}");

    // Unchanged: nothing encoded, and the encoder is not even loaded.
    loads.set(0);
    let second = open();
    assert_eq!((second.summary.encoded, second.summary.reused, loads.get()), (0, 3, 0));
    assert_eq!(second.features, first.features);

    // A corrupt cache is reported in the summary and rebuilt.
    let cache = std::fs::read_dir(&first.summary.cache_dir).unwrap().next().unwrap().unwrap().path();
    std::fs::write(&cache, b"not a cache").unwrap();
    let third = open();
    assert_eq!((third.summary.encoded, third.summary.rebuilt.len()), (3, 1));
    assert!(third.summary.to_string().contains("rebuilt"), "{}", third.summary);
    assert_eq!(third.features, first.features);
}

/// Counts the images each forward pass sees.
struct Counting(ChannelMeans, &'static str, std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl imsearch_vision::ImageEncoder for Counting {
    fn id(&self) -> &str {
        self.1
    }
    fn dim(&self) -> usize {
        self.0.dim()
    }
    fn preprocess(&self) -> &imsearch_vision::PreprocessConfig {
        self.0.preprocess()
    }
    fn features(&self, xs: &Tensor) -> candle::Result<Tensor> {
        self.2.fetch_add(xs.dim(0)?, std::sync::atomic::Ordering::SeqCst);
        self.0.features(xs)
    }
    fn logits(&self, features: &Tensor) -> candle::Result<Tensor> {
        Ok(features.clone())
    }
}

#[test]
fn a_folder_indexed_by_two_encoders_at_once_gets_each_encoders_own_rows_and_skips_a_broken_file() {
    use imsearch_engine::{encode_images, FolderIndex, IndexOptions};
    use imsearch_index::Item;
    use imsearch_vision::{EncoderKind, ImageEncoder, PreprocessConfig, View};
    use std::sync::{atomic::AtomicUsize, Arc};

    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let mut img = image::RgbImage::new(64, 48);
    for (x, y, p) in img.enumerate_pixels_mut() {
        *p = image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8]);
    }
    img.save(photos.join("gradient.png")).unwrap();
    image::RgbImage::from_pixel(50, 70, image::Rgb([10, 200, 30])).save(photos.join("green.png")).unwrap();
    std::fs::write(photos.join("broken.jpg"), b"\xff\xd8 not really a jpeg").unwrap();
    let kinds = [(EncoderKind::MobileNetV2, "a"), (EncoderKind::EfficientNetLite2, "b")];
    let options = IndexOptions {
        encoders: kinds.iter().map(|(k, id)| (*k, format!("{id}@center+center-flipped"))).collect(),
        views: vec![View::Center, View::CenterFlipped],
        batch: 8,
        cache_root: dir.path().join("index"),
        shard: None,
    };
    let seen: Vec<Arc<AtomicUsize>> = kinds.iter().map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let encoder = |c: usize| Counting(ChannelMeans(kinds[c].0.preprocess()), kinds[c].1, seen[c].clone());
    let load = |kind: EncoderKind| -> Result<Box<dyn ImageEncoder>, String> {
        Ok(Box::new(encoder(kinds.iter().position(|(k, _)| *k == kind).unwrap())))
    };
    let index = FolderIndex::open(&photos, &options, &load, &|_, _, _| {}).unwrap();
    assert_eq!(index.keys, ["gradient.png", "green.png"]);
    assert_eq!(index.summary.skipped.len(), 1, "{:?}", index.summary.skipped);
    assert!(index.summary.skipped[0].reason.contains("broken.jpg"), "{:?}", index.summary.skipped);
    // Each encoder saw each photo's two views once.
    let counts: Vec<usize> = seen.iter().map(|s| s.load(std::sync::atomic::Ordering::SeqCst)).collect();
    assert_eq!(counts, [4, 4]);
    // The rows are what each encoder gives alone, side by side.
    for (row, key) in index.keys.iter().enumerate() {
        let item = Item::file(key.clone(), photos.join(key));
        let mut want = Vec::new();
        for c in 0..kinds.len() {
            want.extend(encode_images(&encoder(c), &options.views, std::slice::from_ref(&item)).remove(0).unwrap());
        }
        assert_eq!(&index.features[row * 6..(row + 1) * 6], &want[..], "{key}");
    }
    // The two encoders resize differently, so their views differ.
    assert_ne!(index.features[0..3], index.features[3..6]);
    assert_ne!(PreprocessConfig::imagenet(), kinds[1].0.preprocess());
}

/// The training pass of `embed`: a two-view mean and single views of two encoders at once, each
/// view through each encoder once, every pair as its own encode gives it, in the order asked.
#[test]
fn outputs_sharing_views_encode_each_view_once_and_match_their_own_encodes() {
    use imsearch_engine::{encode_image_outputs, encode_images, EncodeTimes};
    use imsearch_index::Item;
    use imsearch_vision::{EncoderKind, View};
    use std::sync::{atomic::AtomicUsize, atomic::Ordering, Arc};

    let dir = tempfile::tempdir().unwrap();
    let mut img = image::RgbImage::new(64, 48);
    for (x, y, p) in img.enumerate_pixels_mut() {
        *p = image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8]);
    }
    img.save(dir.path().join("gradient.png")).unwrap();
    let mut tall = image::RgbImage::new(40, 90);
    for (x, y, p) in tall.enumerate_pixels_mut() {
        *p = image::Rgb([(y * 2) as u8, 90, (x * 6) as u8]);
    }
    tall.save(dir.path().join("tall.png")).unwrap();
    std::fs::write(dir.path().join("broken.jpg"), b"\xff\xd8 not really a jpeg").unwrap();
    let items: Vec<Item> =
        ["gradient.png", "broken.jpg", "tall.png"].iter().map(|k| Item::file(*k, dir.path().join(k))).collect();
    let kinds = [(EncoderKind::MobileNetV2, "a"), (EncoderKind::EfficientNetLite2, "b")];
    let seen: Vec<Arc<AtomicUsize>> = kinds.iter().map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let encoder = |c: usize| Counting(ChannelMeans(kinds[c].0.preprocess()), kinds[c].1, seen[c].clone());
    let encoders = [encoder(0), encoder(1)];
    let encoders: Vec<&dyn imsearch_vision::ImageEncoder> =
        encoders.iter().map(|e| e as &dyn imsearch_vision::ImageEncoder).collect();
    let outputs =
        vec![vec![View::Center, View::Squashed], vec![View::Center], vec![View::Squashed], vec![View::TopLeft]];
    let need = [(1, 2), (0, 0), (0, 1), (1, 0), (0, 3), (1, 3), (0, 2), (1, 1)];
    let mut times = EncodeTimes::default();
    let got = encode_image_outputs(&encoders, &outputs, &need, &items, &mut times);
    // Three distinct views of the two photos that decode, once per encoder.
    let counts: Vec<usize> = seen.iter().map(|s| s.load(Ordering::SeqCst)).collect();
    assert_eq!(counts, [6, 6]);
    assert_eq!(times.images, 3);
    assert_eq!(got.len(), 3);
    for (item, per_pair) in items.iter().zip(&got) {
        assert_eq!(per_pair.len(), need.len());
        for (&(e, o), result) in need.iter().zip(per_pair) {
            if item.key == "broken.jpg" {
                let why = result.as_ref().unwrap_err();
                assert!(why.contains("broken.jpg"), "{why}");
                continue;
            }
            // Each view encoded alone, the mean taken here.
            let alone: Vec<Vec<f32>> = outputs[o]
                .iter()
                .map(|v| encode_images(&encoder(e), &[*v], std::slice::from_ref(item)).remove(0).unwrap())
                .collect();
            let want: Vec<f32> =
                (0..alone[0].len()).map(|j| alone.iter().map(|a| a[j]).sum::<f32>() / alone.len() as f32).collect();
            assert_eq!(result.as_ref().unwrap(), &want, "{} for encoder {e}, output {o}", item.key);
        }
    }
    // The outputs differ (the test would not see a pair answered with another's features).
    let g = &got[0];
    assert_ne!(g[1].as_ref().unwrap(), g[2].as_ref().unwrap());
    assert_ne!(g[4].as_ref().unwrap(), g[2].as_ref().unwrap());
    assert_ne!(g[1].as_ref().unwrap(), g[3].as_ref().unwrap());
}

#[test]
fn more_like_this_finds_the_photo_itself_and_its_copy_first() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _, collection) = toy(dir.path());
    let scorer = engine.scorer();
    // Row 5 is a copy of row 1.
    let collection = Tensor::cat(&[&collection, &collection.narrow(0, 1, 1).unwrap()], 0).unwrap();
    let prepared = scorer.prepare(&collection).unwrap().without_features();
    assert!(!prepared.spaces().is_empty(), "the engine's members and bridge have image spaces");
    let norms = imsearch_engine::space_norms(&prepared).unwrap();
    for row in 0..collection.dim(0).unwrap() {
        let like = imsearch_engine::likeness(&prepared, &norms, &prepared, row).unwrap();
        assert!(like.iter().all(|s| (-1.0 - 1e-3..=1.0 + 1e-3).contains(s)), "{like:?}");
        assert!((like[row] - 1.0).abs() < 1e-3, "row {row} against itself: {}", like[row]);
        let best = like.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap();
        assert!((best.1 - like[row]).abs() < 1e-6, "row {row}: best {best:?}");
    }
    let like = imsearch_engine::likeness(&prepared, &norms, &prepared, 1).unwrap();
    assert!((like[5] - 1.0).abs() < 1e-3, "the copy: {}", like[5]);
    assert!(like[0] < 0.999 && like[2] < 0.999, "other photos are less alike: {like:?}");
    // A photo from outside, prepared alone, is scored as the same photo inside.
    let outside = scorer.prepare(&collection.narrow(0, 3, 1).unwrap()).unwrap();
    let from_outside = imsearch_engine::likeness(&prepared, &norms, &outside, 0).unwrap();
    let from_inside = imsearch_engine::likeness(&prepared, &norms, &prepared, 3).unwrap();
    for (a, b) in from_outside.iter().zip(&from_inside) {
        assert!((a - b).abs() < 1e-3, "{from_outside:?} against {from_inside:?}");
    }
}

#[test]
fn the_match_probability_depends_on_the_pair_alone_not_on_the_collection() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, queries, collection) = toy(dir.path());
    let scorer = engine.scorer();
    let prepared = scorer.prepare(&collection).unwrap().without_features();
    let all = engine.match_probabilities(&prepared, &queries).unwrap();
    assert_eq!((all.len(), all[0].len()), (4, 5));
    assert!(all.iter().flatten().all(|p| (0.0..=1.0).contains(p)), "{all:?}");
    // The same pairs among fewer images, in another order, or prepared alone: the same
    // probabilities (the ranking score, z-scored over the collection, would change).
    let some = engine.match_probabilities(&prepared.select(&[3, 1]).unwrap(), &queries).unwrap();
    let alone =
        engine.match_probabilities(&scorer.prepare(&collection.narrow(0, 1, 1).unwrap()).unwrap(), &queries).unwrap();
    for q in 0..4 {
        assert!((some[q][0] - all[q][3]).abs() < 1e-5 && (some[q][1] - all[q][1]).abs() < 1e-5, "{some:?} {all:?}");
        assert!((alone[q][0] - all[q][1]).abs() < 1e-3, "{alone:?} {all:?}");
    }
    // Not a constant: the pairs get different probabilities.
    let (lo, hi) = all.iter().flatten().fold((1f32, 0f32), |(l, h), &p| (l.min(p), h.max(p)));
    assert!(hi - lo > 1e-3, "{all:?}");
    // The calibration is what the recipe says: sigmoid of the weighted features.
    let c = Calibration { weights: [1.0, 0.0, 0.0], bias: 0.0 };
    assert!((c.probability([0.0, 5.0, -5.0]) - 0.5).abs() < 1e-6);
    assert!(c.probability([2.0, 0.0, 0.0]) > c.probability([1.0, 0.0, 0.0]));
    let f = imsearch_engine::match_features(&[vec![vec![0.5, 0.9]]], &[vec![0.5, 0.6]], &[vec![0.5, 0.4]]);
    assert_eq!(f[0][0], [0.0, 0.0, 0.0]);
    assert!((f[0][1][0] - (0.9f32 / 0.1).ln()).abs() < 1e-4 && (f[0][1][1] - 10.0).abs() < 1e-3, "{f:?}");
}

#[test]
fn a_bank_normalised_dual_member_changes_the_ranking_and_keeps_the_raw_match_probability() {
    let dir = tempfile::tempdir().unwrap();
    let layout = || vec![ImagePart { id: "a@center".into(), dim: 4 }, ImagePart { id: "b@center".into(), dim: 2 }];
    let (plain, queries, collection) = toy_with(&dir.path().join("plain"), layout(), 5, false);
    let (banked, _, _) = toy_with(&dir.path().join("banked"), layout(), 5, true);
    assert!(banked.recipe().dual_bank_normalised);
    // The same members, the second one normalised over the bank: other ranking scores.
    let (a, b) = (scores(&plain, &collection, &queries), scores(&banked, &collection, &queries));
    let most = a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(most > 1e-3, "{a:?} {b:?}");
    // The match probability reads the members' raw logits: the same in both.
    let probabilities = |e: &Engine| {
        let prepared = e.scorer().prepare(&collection).unwrap().without_features();
        e.match_probabilities(&prepared, &queries).unwrap()
    };
    let (p, q) = (probabilities(&plain), probabilities(&banked));
    for (x, y) in p.iter().flatten().zip(q.iter().flatten()) {
        assert!((x - y).abs() < 1e-6, "{p:?} {q:?}");
    }
    // Saved and read back it ranks alike; a spec written before the settings existed reads as
    // off (and its neighbours' gallery, saved with it, as it was).
    let saved = dir.path().join("engine");
    banked.save(&saved).unwrap();
    let loaded = Engine::load(&saved, "a@center+b@center", TEXT).unwrap();
    for (x, y) in b.iter().flatten().zip(scores(&loaded, &collection, &queries).iter().flatten()) {
        assert!((x - y).abs() < 1e-6);
    }
    let spec_path = saved.join("engine.json");
    let mut spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
    assert!(spec["recipe"].as_object_mut().unwrap().remove("dual_bank_normalised").is_some());
    assert!(spec["recipe"].as_object_mut().unwrap().remove("neighbour_views").is_some());
    std::fs::write(&spec_path, serde_json::to_string(&spec).unwrap()).unwrap();
    let old = Engine::load(&saved, "a@center+b@center", TEXT).unwrap();
    assert!(!old.recipe().dual_bank_normalised && old.recipe().neighbour_views.is_empty());
    for (x, y) in a.iter().flatten().zip(scores(&old, &collection, &queries).iter().flatten()) {
        assert!((x - y).abs() < 1e-6);
    }
}

/// The MiniLM directory under `$IMSEARCH_MODELS`, or `None` (skip) outside CI when it is unset;
/// in CI (`CI` set) a missing variable fails the test.
fn minilm_dir() -> Option<std::path::PathBuf> {
    let Some(root) = std::env::var_os("IMSEARCH_MODELS") else {
        assert!(std::env::var_os("CI").is_none(), "IMSEARCH_MODELS is not set: CI must provide the model cache");
        eprintln!("skipping: IMSEARCH_MODELS is not set (it names the folder holding minilm-l6-v2/)");
        return None;
    };
    Some(std::path::PathBuf::from(root).join("minilm-l6-v2"))
}

#[test]
fn a_searcher_scores_matches_keeps_a_threshold_and_finds_photos_alike_with_the_policy() {
    use imsearch_compliance::{BlockReason, ImagePolicy};
    use imsearch_engine::{FolderIndex, ImagePolicySource, IndexOptions, Searcher};
    use imsearch_vision::{EncoderKind, ImageEncoder, View};

    let Some(minilm) = minilm_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let colours = [
        ("blue.png", [0, 0, 255]),
        ("green.png", [0, 200, 0]),
        ("green2.png", [10, 190, 10]),
        ("red.png", [255, 0, 0]),
    ];
    for (name, rgb) in colours {
        image::RgbImage::from_pixel(40, 30, image::Rgb(rgb)).save(photos.join(name)).unwrap();
    }
    let options = IndexOptions {
        encoders: vec![(EncoderKind::MobileNetV2, "channel-means@center".to_owned())],
        views: vec![View::Center],
        batch: 4,
        cache_root: dir.path().join("index"),
        shard: None,
    };
    let load = |_: EncoderKind| -> Result<Box<dyn ImageEncoder>, String> {
        Ok(Box::new(ChannelMeans(EncoderKind::MobileNetV2.preprocess())))
    };
    let index = FolderIndex::open(&photos, &options, &load, &|_, _, _| {}).unwrap();
    assert_eq!(index.keys, ["blue.png", "green.png", "green2.png", "red.png"]);
    let layout = vec![ImagePart { id: "channel-means@center".into(), dim: 3 }];
    let (engine, _, _) = toy_with(&dir.path().join("engine"), layout, 384, true);
    // The policy blocks red photos (a high red channel), nothing else.
    let policy = ImagePolicy {
        dim: 3,
        mean: vec![0.0; 3],
        inv_std: vec![1.0; 3],
        weights: vec![10.0, 0.0, 0.0],
        bias: -5.0,
        threshold: 0.5,
    };
    let source =
        ImagePolicySource { policy, parts: vec!["channel-means@center".into()], path: dir.path().join("policy.json") };
    let text_model = imsearch_text::MiniLm::load(&minilm, &Device::Cpu).unwrap();
    let green_features = index.slices(1, &["channel-means@center".to_owned()]);
    let searcher = Searcher::new(index, engine, text_model, Some(source)).unwrap();
    assert_eq!((0..4).map(|r| searcher.is_blocked(r).unwrap()).collect::<Vec<_>>(), [false, false, false, true]);

    // A text search: every image, each with a probability of a match; a threshold keeps those
    // at or above it, possibly none.
    let all = searcher.rank("a green photo", 4).unwrap();
    assert_eq!(all.len(), 4);
    assert!(all.iter().all(|r| (0.0..=1.0).contains(&r.score)), "{all:?}");
    assert_eq!(all.iter().find(|r| r.row == 3).map(|r| r.blocked), Some(true));
    assert_eq!(searcher.rank_matching("a green photo", 4, 0.0).unwrap(), all);
    let best = all.iter().map(|r| r.score).fold(0.0f32, f32::max);
    assert!(searcher.rank_matching("a green photo", 4, best + 1e-6).unwrap().is_empty());
    let kept = searcher.rank_matching("a green photo", 4, best).unwrap();
    assert!(!kept.is_empty() && kept.iter().all(|r| r.score >= best), "{kept:?}");

    // More like green: its near copy first, itself left out, red still a disclaimer.
    let like = searcher.similar(1, 3).unwrap().unwrap();
    assert_eq!(like.iter().map(|r| r.row).collect::<Vec<_>>().first(), Some(&2), "{like:?}");
    assert!(like.iter().all(|r| r.row != 1), "{like:?}");
    assert!(like.iter().all(|r| r.blocked == (r.row == 3)), "{like:?}");
    // The same photo from outside the index: itself first, alike to 1.
    let outside = searcher.similar_to(&green_features, 2).unwrap().unwrap();
    assert_eq!(outside[0].row, 1);
    assert!(outside[0].score > 0.999, "{outside:?}");
    // A blocked example is never searched with, from inside or outside.
    assert!(matches!(searcher.similar(3, 3).unwrap(), Err(BlockReason::Image { .. })));
    let red = [3.0, -2.0, -2.0];
    assert!(matches!(searcher.similar_to(&red, 3).unwrap(), Err(BlockReason::Image { .. })));
    // Wrong input is an error, not a panic.
    assert!(searcher.similar(4, 3).is_err());
    assert!(searcher.similar_to(&[1.0, 2.0], 3).is_err());
}
