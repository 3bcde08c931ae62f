//! Integration tests of `imsearch-text` against the real MiniLM checkpoint and the reference
//! embeddings that sentence-transformers made (`tests/data/make_reference.py`).

use std::path::PathBuf;

use candle::Device;
use imsearch_text::{Error, MiniLm, MiniLmFiles, MiniLmOptions};
use serde::Deserialize;

/// The MiniLM directory under `$IMSEARCH_MODELS`, or `None` (skip) outside CI when it is unset.
/// In CI (`CI` set) a missing variable or missing files fail the test.
fn model_dir() -> Option<PathBuf> {
    let in_ci = std::env::var_os("CI").is_some();
    let Some(root) = std::env::var_os("IMSEARCH_MODELS") else {
        assert!(!in_ci, "IMSEARCH_MODELS is not set: CI must provide the model cache");
        eprintln!("skipping: IMSEARCH_MODELS is not set (it names the folder holding minilm-l6-v2/)");
        return None;
    };
    let dir = PathBuf::from(root).join("minilm-l6-v2");
    let files = MiniLmFiles::in_dir(&dir);
    for f in [&files.weights, &files.config, &files.tokenizer] {
        assert!(f.is_file(), "{} is missing (IMSEARCH_MODELS is set)", f.display());
    }
    Some(dir)
}

fn load(options: MiniLmOptions) -> Option<MiniLm> {
    let dir = model_dir()?;
    Some(MiniLm::load_files(&MiniLmFiles::in_dir(dir), options, &Device::Cpu).unwrap())
}

#[derive(Deserialize)]
struct Reference {
    sentences: Vec<String>,
    untruncated_tokens: Vec<usize>,
    embeddings: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let text = include_str!("../data/minilm_reference.json");
    serde_json::from_str(text).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn matches_sentence_transformers() {
    let Some(model) = load(MiniLmOptions::default()) else { return };
    let r = reference();
    // The set covers a text over 128 tokens and one over the 256-token limit.
    assert!(r.untruncated_tokens.iter().any(|&n| (129..=256).contains(&n)));
    assert!(r.untruncated_tokens.iter().any(|&n| n > 256));
    let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
    let got = model.encode(&texts).unwrap();
    assert_eq!((got.rows(), got.dim()), (texts.len(), 384));
    let mut worst = 0f32;
    for (i, want) in r.embeddings.iter().enumerate() {
        let d = max_abs_diff(got.row(i), want);
        assert!(d < 1e-4, "sentence {i} {:?}: max abs diff {d}", texts[i]);
        worst = worst.max(d);
    }
    eprintln!("max abs diff vs sentence-transformers: {worst:e}");
}

#[test]
fn rows_do_not_depend_on_batching_or_sorting() {
    let Some(model) = load(MiniLmOptions::default()) else { return };
    let r = reference();
    let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
    let sorted = model.encode(&texts).unwrap();
    let opts = MiniLmOptions { batch_size: 3, sort_by_length: false, ..MiniLmOptions::default() };
    let plain = load(opts).unwrap().encode(&texts).unwrap();
    for i in 0..texts.len() {
        assert!(max_abs_diff(sorted.row(i), plain.row(i)) < 1e-5, "row {i}");
        let norm: f32 = sorted.row(i).iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "row {i} norm {norm}");
    }
    // One text alone is padded to nothing.
    let alone = model.encode_batch(&texts[1..2]).unwrap().to_vec2::<f32>().unwrap();
    assert!(max_abs_diff(&alone[0], sorted.row(1)) < 1e-5);
}

#[test]
fn tokenizer_pads_nothing_and_truncates_at_max_seq_length() {
    let Some(model) = load(MiniLmOptions::default()) else { return };
    let enc = model.tokenizer().encode_batch(vec!["a dog", "a dog runs"], true).unwrap();
    assert_eq!(enc.iter().map(|e| e.len()).collect::<Vec<_>>(), [4, 5]);
    let long = "dog ".repeat(400);
    assert_eq!(model.tokenizer().encode(long.as_str(), true).unwrap().len(), 256);
}

#[test]
fn empty_texts_are_errors() {
    let Some(model) = load(MiniLmOptions::default()) else { return };
    for texts in [&["a dog", ""][..], &["a dog", " \t\n"]] {
        let err = model.encode(texts).unwrap_err();
        assert!(matches!(err, Error::EmptyText { index: 1 }), "{err}");
    }
    let none = model.encode(&[]).unwrap();
    assert_eq!((none.rows(), none.dim()), (0, 384));
}

#[test]
fn load_reads_max_seq_length_beside_the_weights() {
    let Some(dir) = model_dir() else { return };
    let options = MiniLmOptions::for_dir(&dir).unwrap();
    assert_eq!(options, MiniLmOptions::default());
    assert_eq!(MiniLm::load(&dir, &Device::Cpu).unwrap().options(), &options);
}

#[test]
fn bad_options_are_errors() {
    let Some(dir) = model_dir() else { return };
    let files = MiniLmFiles::in_dir(dir);
    let load = |o| MiniLm::load_files(&files, o, &Device::Cpu).unwrap_err();
    let err = load(MiniLmOptions { batch_size: 0, ..MiniLmOptions::default() });
    assert!(matches!(err, Error::ZeroBatchSize), "{err}");
    let err = load(MiniLmOptions { max_seq_length: 513, ..MiniLmOptions::default() });
    assert_eq!(err.to_string(), "max_seq_length 513 is outside 3..=512 (the model's positions)");
}

#[test]
fn missing_files_name_the_path() {
    let files = MiniLmFiles::in_dir("/nonexistent/minilm");
    let err = MiniLm::load_files(&files, MiniLmOptions::default(), &Device::Cpu).unwrap_err();
    assert_eq!(err.to_string(), "failed to read /nonexistent/minilm/config.json");
}
