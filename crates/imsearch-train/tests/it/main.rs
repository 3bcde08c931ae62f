//! imsearch-train on the committed fixture dataset with toy embeddings: the training data, the
//! checkpoints trained then reused under their folder names, and an engine built and loaded.

use std::{cell::RefCell, path::PathBuf};

use candle::{Device, Tensor};
use imsearch_data::{Dataset, LoadOptions};
use imsearch_engine::{ClassTexts, ClassifierHead, Engine, ImagePart, MemberRecipe, Recipe, Scorer};
use imsearch_index::EmbeddingCache;
use imsearch_train::{
    build, default_recipe, neighbours_of, Checkpoints, Embeddings, Error, Event, ImageEmbeddings, Sources,
    TrainOptions, TrainingData,
};

const TEXT: &str = "toy-text";
const TEXT_DIM: usize = 5;

fn fixture() -> Dataset {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny");
    Dataset::load(dir, LoadOptions::default()).unwrap()
}

/// A deterministic toy embedding of `key`: values in -1..1 from an LCG seeded by its bytes.
fn toy(key: &str, dim: usize) -> Vec<f32> {
    let mut state = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (0..dim)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn cache<'a>(model: &str, dim: usize, keys: impl IntoIterator<Item = &'a str>) -> EmbeddingCache {
    let mut cache = EmbeddingCache::new(model, dim);
    for key in keys {
        cache.insert(key.to_owned(), format!("hash-of-{key}"), &toy(&format!("{model}/{key}"), dim)).unwrap();
    }
    cache
}

fn class_key(texts: ClassTexts, i: usize) -> String {
    format!("{texts:?}:{i}")
}

/// Toy caches of two image encoders (4 and 3 features) and of the texts, as `cargo xtask
/// embed` keys them: the train images on disk, the test images, captions, test queries and
/// class texts.
struct Caches {
    images: Vec<(String, EmbeddingCache, EmbeddingCache)>,
    texts: EmbeddingCache,
    /// Per encoder, the train images' features of the single views `v1` and `v2`.
    train_views: Vec<Vec<(String, EmbeddingCache)>>,
}

impl Caches {
    fn new(ds: &Dataset) -> Self {
        let train: Vec<String> =
            ds.train_images().into_iter().filter(|i| ds.train_image_files.contains(i)).map(|i| i.0).collect();
        let test: Vec<&str> = ds.test_images.iter().map(|r| r.image.as_str()).collect();
        let images = [("a@center", 4), ("b@center", 3)]
            .into_iter()
            .map(|(id, dim)| {
                (id.to_owned(), cache(id, dim, train.iter().map(String::as_str)), cache(id, dim, test.iter().copied()))
            })
            .collect();
        let mut keys: Vec<String> = ds.train_captions().keys().map(ToString::to_string).collect();
        keys.extend(ds.test_queries.iter().map(|q| q.query.to_string()));
        for texts in [ClassTexts::Names, ClassTexts::Sentences] {
            keys.extend((0..1000).map(|i| class_key(texts, i)));
        }
        let train_views = [("a", 4), ("b", 3)]
            .into_iter()
            .map(|(id, dim)| {
                ["v1", "v2"]
                    .into_iter()
                    .map(|v| (v.to_owned(), cache(&format!("{id}@{v}"), dim, train.iter().map(String::as_str))))
                    .collect()
            })
            .collect();
        Caches { images, texts: cache(TEXT, TEXT_DIM, keys.iter().map(String::as_str)), train_views }
    }

    fn view(&self) -> Embeddings<'_> {
        Embeddings {
            images: self
                .images
                .iter()
                .zip(&self.train_views)
                .map(|((id, train, test), train_views)| ImageEmbeddings { id, train, test, train_views })
                .collect(),
            texts: &self.texts,
            class_key,
        }
    }
}

/// The checkpoints of the engine tests: both toy encoders, under `<dir>/checkpoints`.
fn engine_checkpoints(dir: &std::path::Path) -> Checkpoints {
    Checkpoints {
        dir: dir.join("checkpoints"),
        image_encoders: vec!["a".into(), "b".into()],
        views: vec!["center".into()],
        options: small_options(),
        retrain: false,
    }
}

/// Toy ImageNet classifiers of the two toy encoders (4 and 3 features).
fn toy_heads() -> Vec<ClassifierHead> {
    [4, 3]
        .into_iter()
        .map(|dim| {
            let w = Tensor::from_vec(toy(&format!("head{dim}"), dim * 1000), (dim, 1000), &Device::Cpu).unwrap();
            ClassifierHead::new(w, Tensor::zeros(1000, candle::DType::F32, &Device::Cpu).unwrap()).unwrap()
        })
        .collect()
}

fn small_options() -> TrainOptions {
    TrainOptions { epochs: 2, shared_dim: 4, hidden_dim: 8, contrastive_batch: 4, ..TrainOptions::default() }
}

#[test]
fn training_data_of_the_fixture() {
    let ds = fixture();
    let caches = Caches::new(&ds);
    let data = TrainingData::new(&ds, &caches.view(), &TrainOptions::default()).unwrap();
    let c = &data.counts;
    assert_eq!(c.labelled_pairs, 9);
    // The caption of the girl in a yellow dress names a child: its two pairs go.
    assert_eq!((c.pairs_removed_by_compliance, c.images_affected_by_compliance), (2, 2));
    assert_eq!(c.train_pairs + c.validation_pairs + c.pairs_without_embedding, 9 - 2);
    assert_eq!(c.train_images + c.validation_images, 5);
    assert_eq!(data.validation_pairs.len(), c.validation_pairs);
    assert_eq!(data.image_encoder, "a@center+b@center");
    assert_eq!(data.text_encoder, TEXT);
    assert_eq!(data.images.dims(), [5, 7]);
    assert_eq!(data.texts.dims(), [data.text_ids.len(), TEXT_DIM]);

    let b = data.only(1).unwrap();
    assert_eq!(data.columns(1).unwrap(), (4, 3));
    assert_eq!(b.image_encoder, "b@center");
    assert_eq!(b.images.to_vec2::<f32>().unwrap()[0], data.images.to_vec2::<f32>().unwrap()[0][4..]);
    assert!(matches!(data.only(2), Err(Error::NoSuchPart { part: 2, encoders: 2 })));
    let config = data.fusion_config(&TrainOptions { locked_text: true, ..TrainOptions::default() }).unwrap();
    assert_eq!((config.image_dim, config.text_dim, config.shared_dim), (7, TEXT_DIM, TEXT_DIM));
}

#[test]
fn checkpoints_are_trained_once_then_reused() {
    let ds = fixture();
    let caches = Caches::new(&ds);
    let data = TrainingData::new(&ds, &caches.view(), &TrainOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ck = Checkpoints {
        dir: dir.path().to_owned(),
        image_encoders: vec!["a".into(), "b".into()],
        views: vec!["center".into()],
        options: small_options(),
        retrain: false,
    };
    let lines = RefCell::new(Vec::new());
    let mut record = |e: Event<'_>| lines.borrow_mut().push(e.to_string());

    let (_, report, split) = ck.train(&data, 0, &mut record).unwrap();
    assert_eq!(split, dir.path().join(format!("fusion-seed0-{}", ck.digest())));
    assert!(split.join("train_report.json").is_file());
    assert_eq!(ck.best_epoch(0).unwrap(), report.best_epoch);
    ck.load_or_train(&data, &mut record).unwrap();
    assert_eq!(lines.borrow().last().unwrap(), &format!("reusing the checkpoint in {}", split.display()));

    let (_, all) = ck.load_or_train_all(&data, 0, 1, &mut record).unwrap();
    assert_eq!(all, split.with_file_name(format!("fusion-seed0-{}-all-e1", ck.digest())));
    assert!(lines.borrow().last().unwrap().starts_with("retrained a@center+b@center on all 5 training images"));
    ck.load_or_train_all(&data, 0, 1, &mut record).unwrap();
    assert_eq!(lines.borrow().last().unwrap(), &format!("reusing the all-images checkpoint in {}", all.display()));
    assert!(matches!(ck.load_or_train_all(&data, 0, 0, &mut record), Err(Error::NoEpochs)));

    // Another member's folder, and another split's.
    let b = ck.only(1).unwrap();
    assert_eq!(b.image_encoders, ["b"]);
    assert_ne!(b.digest(), ck.digest());
    assert_ne!(ck.with_seed(1).digest(), ck.digest());
    assert!(ck.with_seed(1).split_dir().ends_with(format!("fusion-seed1-{}", ck.with_seed(1).digest())));
}

#[test]
fn default_recipe_keeps_the_members_of_the_layout() {
    let layout = |ids: &[&str]| -> Vec<ImagePart> {
        ids.iter().map(|id| ImagePart { id: format!("{id}@center+center-flipped"), dim: 1280 }).collect()
    };
    let encoders = |r: &Recipe| -> Vec<Vec<String>> { r.members.iter().map(|m| m.encoders.clone()).collect() };
    let all = Recipe::default();
    let three = layout(&["mobilenet-v2", "efficientnet-lite0", "efficientnet-lite2"]);
    let views: Vec<String> = all.members.iter().flat_map(|m| m.dual_encoder.clone().unwrap_or_default()).collect();
    assert_eq!(default_recipe(&three, &views), all);
    // The neighbours' gallery is described by the mean of the default's eight views when the
    // embeddings hold them all, else by the features images are scored with.
    assert_eq!(all.neighbour_views.len(), 8);
    assert!(all.neighbour_views.iter().all(|v| views.contains(v)));
    let seven = &all.neighbour_views[..7];
    assert!(default_recipe(&three, seven).neighbour_views.is_empty());
    // Without the views, the dual-encoder members go (the default has some: issue 16).
    let fusion_only: Vec<MemberRecipe> = all.members.iter().filter(|m| m.dual_encoder.is_none()).cloned().collect();
    assert!(fusion_only.len() < all.members.len());
    assert_eq!(default_recipe(&three, &[]).members, fusion_only);
    // One encoder: only the models on every encoder (that is, on it), with the default's epochs.
    let one = default_recipe(&layout(&["efficientnet-lite0"]), &[]);
    assert_eq!(
        one.members,
        [MemberRecipe {
            encoders: Vec::new(),
            epochs: all.members[0].epochs,
            dual_encoder: None,
            class_positives: false
        }]
    );
    assert_eq!((one.weights, one.neighbours), (all.weights, all.neighbours));
    let one = default_recipe(&layout(&["efficientnet-lite0"]), &views);
    assert!(one.members.iter().all(|m| m.encoders.is_empty()) && one.members[0].dual_encoder.is_none(), "{one:?}");
    let two = default_recipe(&layout(&["mobilenet-v2", "efficientnet-lite2"]), &[]);
    assert_eq!(encoders(&two), [vec![], vec!["mobilenet-v2".to_owned()], vec!["efficientnet-lite2".to_owned()]]);
    assert_eq!(encoders(&default_recipe(&layout(&["other", "another"]), &[])), [Vec::<String>::new()]);
}

#[test]
fn an_engine_is_built_from_a_recipe_and_loads() {
    let ds = fixture();
    let caches = Caches::new(&ds);
    let emb = caches.view();
    let data = TrainingData::new(&ds, &emb, &TrainOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ck = engine_checkpoints(dir.path());
    let heads = toy_heads();
    let recipe = Recipe {
        members: vec![
            MemberRecipe { encoders: vec![], epochs: 2, dual_encoder: None, class_positives: false },
            MemberRecipe { encoders: vec!["b".into()], epochs: 1, dual_encoder: None, class_positives: false },
        ],
        neighbours: imsearch_engine::Neighbourhood { k: 2, temperature: 1.0 },
        neighbour_views: Vec::new(),
        ..Recipe::default()
    };
    let engine_dir = dir.path().join("engine");
    let sources = Sources { data: &data, embeddings: &emb, heads: &heads };
    let mut events = Vec::new();
    let engine =
        build(&sources, recipe.clone(), &ck, serde_json::json!({}), &engine_dir, &mut |e| events.push(e.to_string()))
            .unwrap();
    assert!(events.last().unwrap().starts_with("engine: built in "));
    assert_eq!(engine.provenance()["options"], ck.digest());
    let loaded = Engine::load(&engine_dir, "a@center+b@center", TEXT).unwrap();
    assert_eq!(loaded.recipe(), &recipe);
    // The members' checkpoints stay for the next build.
    assert!(ck.all_dir(0, 2).join("fusion.json").is_file());
    assert!(ck.only(1).unwrap().all_dir(0, 1).join("fusion.json").is_file());

    let bad = Recipe {
        members: vec![MemberRecipe {
            encoders: vec!["c".into()],
            epochs: 1,
            dual_encoder: None,
            class_positives: false,
        }],
        ..recipe
    };
    let err = build(&sources, bad, &ck, serde_json::json!({}), &engine_dir, &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::MemberNotInLayout(ref e) if e == "c"), "{err}");
}

#[test]
fn dual_encoder_members_train_on_the_views_and_build_into_an_engine() {
    let ds = fixture();
    let caches = Caches::new(&ds);
    let emb = caches.view();
    let data = TrainingData::new(&ds, &emb, &TrainOptions::default()).unwrap();
    // Each view side by side over the encoders, rows as the averaged features'.
    let views: Vec<&str> = data.image_views.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(views, ["v1", "v2"]);
    assert!(data.image_views.iter().all(|(_, t)| t.dims() == data.images.dims()));
    assert_eq!(data.only(1).unwrap().image_views[1].1.dims(), [5, 3]);
    let err = data.views(&["v1".into(), "v3".into()]).unwrap_err();
    assert!(matches!(err, Error::MissingView { ref view, .. } if view == "v3"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let ck = engine_checkpoints(dir.path());
    let dual = ck.dual(vec!["v1".into(), "v2".into()], true);
    assert_eq!((dual.options.hidden_dim, dual.options.positive_batches, dual.options.epochs), (0, true, 30));
    assert!(dual.options.class_positives);
    assert_ne!(dual.digest(), ck.digest());
    assert_ne!(dual.digest(), ck.dual(vec!["v1".into(), "v2".into()], false).digest());
    let heads = toy_heads();
    let recipe = Recipe {
        members: vec![
            MemberRecipe { encoders: vec![], epochs: 1, dual_encoder: None, class_positives: false },
            MemberRecipe {
                encoders: vec!["b".into()],
                epochs: 2,
                dual_encoder: Some(vec!["v1".into(), "v2".into()]),
                class_positives: true,
            },
        ],
        neighbours: imsearch_engine::Neighbourhood { k: 2, temperature: 1.0 },
        neighbour_views: vec!["v1".into(), "v2".into()],
        ..Recipe::default()
    };
    let engine_dir = dir.path().join("engine");
    let sources = Sources { data: &data, embeddings: &emb, heads: &heads };
    build(&sources, recipe.clone(), &ck, serde_json::json!({}), &engine_dir, &mut |_| {}).unwrap();
    let loaded = Engine::load(&engine_dir, "a@center+b@center", TEXT).unwrap();
    assert_eq!(loaded.recipe(), &recipe);
    // The dual member's checkpoint is the dual recipe's with the class positives (the build
    // found them with the heads), a linear projection.
    let member = dual.only(1).unwrap().all_dir(0, 2);
    let config = std::fs::read_to_string(member.join("fusion.json")).unwrap();
    assert!(config.contains("\"hidden_dim\": 0"), "{config}");
    assert!(!ck.only(1).unwrap().all_dir(0, 2).exists());

    // A view the embeddings lack is an error naming it, not a model trained without it.
    let missing = Recipe {
        members: vec![MemberRecipe {
            encoders: vec!["a".into()],
            epochs: 1,
            dual_encoder: Some(vec!["v9".into()]),
            class_positives: false,
        }],
        ..recipe
    };
    let err = build(&sources, missing, &ck, serde_json::json!({}), &engine_dir, &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::MissingView { ref view, .. } if view == "v9"), "{err}");
}

#[test]
fn the_neighbours_gallery_is_described_by_the_mean_of_its_views() {
    let ds = fixture();
    let caches = Caches::new(&ds);
    let emb = caches.view();
    let data = TrainingData::new(&ds, &emb, &TrainOptions::default()).unwrap();
    let both = ["v1".to_owned(), "v2".to_owned()];
    // The mean of the named views, element by element; no views: the scored features.
    let mean = data.view_mean(&both).unwrap().to_vec2::<f32>().unwrap();
    let (v1, v2) = (data.image_views[0].1.to_vec2::<f32>().unwrap(), data.image_views[1].1.to_vec2::<f32>().unwrap());
    for ((m, a), b) in mean.iter().flatten().zip(v1.iter().flatten()).zip(v2.iter().flatten()) {
        assert!((m - (a + b) / 2.0).abs() < 1e-6, "{m} {a} {b}");
    }
    assert_eq!(data.view_mean(&[]).unwrap().to_vec2::<f32>().unwrap(), data.images.to_vec2::<f32>().unwrap());
    let err = data.view_mean(&["v1".into(), "v7".into()]).unwrap_err();
    assert!(matches!(err, Error::MissingView { ref view, .. } if view == "v7"), "{err}");

    // The votes come from the views' mean: other scores than from the scored features, and the
    // same as neighbours whose gallery features are that mean.
    let hood = imsearch_engine::Neighbourhood { k: 2, temperature: 0.1 };
    let scores = |n: imsearch_engine::Neighbours| {
        let n: &dyn Scorer = &n;
        n.matrix(&n.prepare(&data.images).unwrap(), &data.texts).unwrap()
    };
    let viewed = scores(neighbours_of(&data, true, hood, &both).unwrap());
    let plain = scores(neighbours_of(&data, true, hood, &[]).unwrap());
    let moved = viewed.iter().flatten().zip(plain.iter().flatten()).filter(|(a, b)| (*a - *b).abs() > 1e-6).count();
    assert!(moved > 0, "{viewed:?}");
    let by_hand = TrainingData { images: data.view_mean(&both).unwrap(), ..data.clone() };
    assert_eq!(scores(neighbours_of(&by_hand, true, hood, &[]).unwrap()), viewed);
}

/// Each image's class positive is the sentence of the class the heads' mean softmax ranks
/// first; training with the option needs them.
#[test]
fn class_positives_pair_each_image_with_its_top_class_sentence() {
    let ds = fixture();
    let caches = Caches::new(&ds);
    let emb = caches.view();
    let data = TrainingData::new(&ds, &emb, &TrainOptions::default()).unwrap();
    assert!(data.class_positives.is_empty());
    let heads = toy_heads();
    let with = data.clone().with_class_positives(&emb, &heads).unwrap();
    let images = data.images.to_vec2::<f32>().unwrap();
    assert_eq!(with.class_positives.len(), images.len());
    let softmax = |l: Vec<f32>| -> Vec<f32> {
        let max = l.iter().copied().fold(f32::MIN, f32::max);
        let e: Vec<f32> = l.iter().map(|v| (v - max).exp()).collect();
        let total: f32 = e.iter().sum();
        e.into_iter().map(|v| v / total).collect()
    };
    let mut classes = std::collections::BTreeSet::new();
    for &(text, image) in &with.class_positives {
        // By hand: each head's softmax of its columns, averaged.
        let (a, b) = images[image].split_at(4);
        let logits = |x: &[f32], h: &ClassifierHead| {
            h.logits(&Tensor::new(x, &Device::Cpu).unwrap().unsqueeze(0).unwrap()).unwrap().to_vec2::<f32>().unwrap()[0]
                .clone()
        };
        let (pa, pb) = (softmax(logits(a, &heads[0])), softmax(logits(b, &heads[1])));
        let mean: Vec<f32> = pa.iter().zip(&pb).map(|(x, y)| (x + y) / 2.0).collect();
        let top = (0..1000).max_by(|&i, &j| mean[i].total_cmp(&mean[j]).then(j.cmp(&i))).unwrap();
        assert_eq!(with.text_ids[text], class_key(ClassTexts::Sentences, top), "image row {image}");
        classes.insert(top);
    }
    assert!(classes.len() > 1, "every image got the same class: {classes:?}");

    // The option without them is an error, not a model trained without them.
    let dir = tempfile::tempdir().unwrap();
    let mut ck = engine_checkpoints(dir.path());
    ck.options.class_positives = true;
    let err = ck.train(&data, 0, &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::NoClassPositives), "{err}");
    // With them, the split model trains; its twin on every image too.
    ck.train(&with, 0, &mut |_| {}).unwrap();
    ck.load_or_train_all(&with, 0, 1, &mut |_| {}).unwrap();
    assert!(ck.all_dir(0, 1).join("fusion.json").is_file());
    assert_ne!(ck.digest(), engine_checkpoints(dir.path()).digest());
}
