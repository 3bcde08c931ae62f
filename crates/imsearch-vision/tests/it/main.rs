//! Integration tests of imsearch-vision: preprocessing against torchvision + Pillow, and the
//! encoders against the original PyTorch networks (reference outputs made by
//! `tests/data/make_reference.py`).
//!
//! The encoder tests need the converted weights: `$IMSEARCH_MODELS/<id>/model.safetensors`
//! (default `$XDG_CACHE_HOME/imsearch/models`, else `~/.cache/imsearch/models`, the model
//! store's default). Without them they fail when `CI` is set and are skipped, saying so,
//! otherwise.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle::{DType, Device, Tensor};
use imsearch_vision::preprocess::{self, PreprocessConfig};
use imsearch_vision::{EncoderKind, Error, ImageEncoder, View};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

struct Reference {
    images: Vec<String>,
    tensors: HashMap<String, Tensor>,
    json: serde_json::Value,
}

fn reference() -> Reference {
    let dir = data_dir();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let images = json["images"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    let tensors = candle::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    Reference { images, tensors, json }
}

fn stem(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(s, _)| s)
}

/// Largest absolute difference, in 8-bit levels, between two images of the same size.
fn max_level_diff(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
}

#[test]
fn preprocessing_matches_torchvision() {
    let r = reference();
    for kind in EncoderKind::ALL {
        let cfg = kind.preprocess();
        let m = &r.json["models"][kind.id()];
        assert_eq!(m["resize"].as_u64(), Some(cfg.resize.into()), "{kind}");
        assert_eq!(m["crop"].as_u64(), Some(cfg.crop.into()), "{kind}");
        for (c, (mean, std)) in cfg.mean.iter().zip(cfg.std).enumerate() {
            assert!((m["mean"][c].as_f64().unwrap() - *mean as f64).abs() < 1e-7);
            assert!((m["std"][c].as_f64().unwrap() - std as f64).abs() < 1e-7);
        }
        for name in &r.images {
            let img = preprocess::open_rgb(&data_dir().join(name)).unwrap();
            let ours = cfg.view(&img, View::Center);
            let want = image::open(data_dir().join(format!("crop{}_{}.png", cfg.crop, stem(name)))).unwrap().to_rgb8();
            let diff = max_level_diff(&ours, &want);
            // Pillow's resize is reproduced exactly; JPEG decoders differ by a few levels.
            let allowed = if name.ends_with(".png") { 0 } else { 3 };
            println!("{kind} {name}: max diff {diff} levels = {:.4} in 0..1", diff as f32 / 255.0);
            assert!(diff <= allowed, "{kind} {name}: {diff} levels");
        }
    }
}

#[test]
fn batches_hold_every_view_of_every_image() {
    let cfg = PreprocessConfig::imagenet();
    let paths: Vec<_> = ["gradient.png", "portrait.jpg"].iter().map(|n| data_dir().join(n)).collect();
    let xs = cfg.load_batch(&paths, &View::ALL, &Device::Cpu).unwrap();
    let n = View::ALL.len();
    assert_eq!(xs.dims(), [2 * n, 3, 224, 224]);
    // View 1 of image 1 is view 0 mirrored.
    let flipped = xs.get(n + 1).unwrap().flip(&[2]).unwrap();
    let diff = (flipped - xs.get(n).unwrap()).unwrap().abs().unwrap();
    let diff = diff.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-6, "{diff}");
    // The squashed view of the portrait keeps its whole height.
    let img = preprocess::open_rgb(&paths[1]).unwrap();
    assert_eq!(cfg.view(&img, View::Squashed).dimensions(), (224, 224));
    let none: [PathBuf; 0] = [];
    assert_eq!(cfg.load_batch(&none, &[View::Center], &Device::Cpu).unwrap().dims(), [0, 3, 224, 224]);
}

#[test]
fn unreadable_images_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let jpeg = std::fs::read(data_dir().join("portrait.jpg")).unwrap();
    let png = std::fs::read(data_dir().join("shapes.png")).unwrap();
    let cases = [
        ("truncated.jpg", jpeg[..jpeg.len() / 3].to_vec()),
        ("truncated.png", png[..png.len() / 2].to_vec()),
        ("garbage.jpg", b"this is not an image".to_vec()),
        ("empty.png", Vec::new()),
    ];
    for (name, bytes) in &cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = preprocess::open_rgb(&path).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
    let missing = dir.path().join("missing.jpg");
    let err = PreprocessConfig::imagenet()
        .load_batch(&[data_dir().join("gradient.png"), missing], &[View::Center], &Device::Cpu)
        .unwrap_err();
    assert!(matches!(err, Error::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.jpg"), "{err}");
}

fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("IMSEARCH_MODELS") {
        return dir.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_default();
    cache.join("imsearch/models")
}

/// The encoder, or `None` (after saying so) when its weights are absent outside CI.
fn encoder(kind: EncoderKind) -> Option<Box<dyn ImageEncoder>> {
    let path = models_dir().join(kind.id()).join("model.safetensors");
    if !path.exists() {
        let msg = format!("{} is missing: run the model store's fetch (or set IMSEARCH_MODELS)", path.display());
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        // Straight to stderr: libtest would swallow `eprintln!` of a passing test.
        let _ = writeln!(std::io::stderr(), "SKIPPED {kind}: {msg}");
        return None;
    }
    Some(imsearch_vision::load(kind, &path, &Device::Cpu).unwrap())
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

#[track_caller]
fn check_against_pytorch(kind: EncoderKind) {
    let Some(enc) = encoder(kind) else { return };
    let r = reference();
    let cfg = enc.preprocess().clone();
    assert_eq!(cfg, kind.preprocess());
    // The same input PyTorch was given: its own resized and cropped images.
    let crops: Vec<_> = r
        .images
        .iter()
        .map(|n| image::open(data_dir().join(format!("crop{}_{}.png", cfg.crop, stem(n)))).unwrap().to_rgb8())
        .collect();
    let xs = cfg.to_tensor(&crops, &Device::Cpu).unwrap();
    let features = enc.features(&xs).unwrap();
    assert_eq!(features.dims(), [r.images.len(), enc.dim()]);
    let logits = enc.logits(&features).unwrap();

    let want_f = &r.tensors[&format!("{}.features", kind.id())];
    let want_l = &r.tensors[&format!("{}.logits", kind.id())];
    let rel_f = max_abs(&(&features - want_f).unwrap()) / max_abs(want_f);
    let rel_l = max_abs(&(&logits - want_l).unwrap()) / max_abs(want_l);
    println!("{kind}: features max rel diff {rel_f:.2e}, logits max rel diff {rel_l:.2e}");
    assert!(rel_f < 1e-3, "{kind}: features differ by {rel_f}");
    assert!(rel_l < 1e-3, "{kind}: logits differ by {rel_l}");

    let want_top5: Vec<Vec<u32>> = serde_json::from_value(r.json["models"][kind.id()]["top5"].clone()).unwrap();
    let order = logits.arg_sort_last_dim(false).unwrap().narrow(1, 0, 5).unwrap();
    let top5: Vec<Vec<u32>> = order.to_dtype(DType::U32).unwrap().to_vec2().unwrap();
    assert_eq!(top5, want_top5, "{kind}: top-5 classes");
}

#[test]
fn mobilenet_v2_matches_pytorch() {
    check_against_pytorch(EncoderKind::MobileNetV2);
}

#[test]
fn efficientnet_lite0_matches_pytorch() {
    check_against_pytorch(EncoderKind::EfficientNetLite0);
}

#[test]
fn efficientnet_lite2_matches_pytorch() {
    check_against_pytorch(EncoderKind::EfficientNetLite2);
}

#[test]
fn encoders_end_to_end_from_files() {
    let Some(enc) = encoder(EncoderKind::MobileNetV2) else {
        return;
    };
    let paths: Vec<_> = ["shapes.png", "rings_gray.png"].iter().map(|n| data_dir().join(n)).collect();
    let xs = enc.preprocess().load_batch(&paths, &View::ALL, &Device::Cpu).unwrap();
    let f = enc.features(&xs).unwrap();
    assert_eq!(f.dims(), [2 * View::ALL.len(), 1280]);
    // The flipped views of a real image give close but not identical features.
    let a = f.get(0).unwrap();
    let b = f.get(1).unwrap();
    let cos = (&a * &b).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
        / (a.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt()
            * b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt());
    assert!(cos > 0.8 && cos < 0.99999, "{cos}");
}
