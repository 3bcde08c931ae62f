//! MiniLM-L6 sentence embeddings (all-MiniLM-L6-v2): tokenise, run BERT ([`crate::bert`]) on
//! the real tokens of each batch (no padding), mean-pool over each text's tokens,
//! L2-normalise. Mirrors sentence-transformers' `Transformer -> Pooling(mean) -> Normalize`.

use std::{
    cmp::Reverse,
    fs, io,
    path::{Path, PathBuf},
};

use candle::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use imsearch_types::EmbeddingMatrix;
use serde::{Deserialize, Serialize};
use tokenizers::{Encoding, Tokenizer, TruncationParams};

use crate::bert::{Bert, BertConfig};
use crate::{Error, Result};

/// The three files of a MiniLM checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MiniLmFiles {
    /// `model.safetensors`: f32 BERT weights, names without a `bert.` prefix.
    pub weights: PathBuf,
    /// `config.json`: the Hugging Face BERT config.
    pub config: PathBuf,
    /// `tokenizer.json`: the Hugging Face fast tokenizer (WordPiece, lowercasing).
    pub tokenizer: PathBuf,
}

impl MiniLmFiles {
    /// The files under their usual names in `dir`.
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        MiniLmFiles {
            weights: dir.join("model.safetensors"),
            config: dir.join("config.json"),
            tokenizer: dir.join("tokenizer.json"),
        }
    }
}

/// How texts are tokenised and batched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MiniLmOptions {
    /// Longest token sequence, `[CLS]` and `[SEP]` included; longer texts are truncated.
    ///
    /// The default, 256, is `max_seq_length` in the checkpoint's `sentence_bert_config.json`,
    /// which sentence-transformers applies. (The model was trained on 128 tokens and
    /// `tokenizer.json` says 128, but sentence-transformers overrides that.)
    pub max_seq_length: usize,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// Batch texts of similar token length together (longest first) to cut padding.
    /// Rows still come back in input order; the embeddings do not depend on it beyond
    /// float rounding.
    pub sort_by_length: bool,
}

impl MiniLmOptions {
    /// The defaults, with `max_seq_length` taken from `dir/sentence_bert_config.json` when that
    /// file exists (as sentence-transformers does).
    pub fn for_dir(dir: impl AsRef<Path>) -> Result<Self> {
        #[derive(Deserialize)]
        struct SentenceBertConfig {
            max_seq_length: usize,
        }
        let path = dir.as_ref().join("sentence_bert_config.json");
        let mut options = MiniLmOptions::default();
        match fs::read(&path) {
            Ok(bytes) => {
                let c: SentenceBertConfig =
                    serde_json::from_slice(&bytes).map_err(|source| Error::Config { path, source })?;
                options.max_seq_length = c.max_seq_length;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Read { path, source }),
        }
        Ok(options)
    }
}

impl Default for MiniLmOptions {
    fn default() -> Self {
        MiniLmOptions { max_seq_length: 256, batch_size: 64, sort_by_length: true }
    }
}

/// A MiniLM sentence encoder: text in, L2-normalised 384-d embeddings out.
pub struct MiniLm {
    model: Bert,
    device: Device,
    tokenizer: Tokenizer,
    options: MiniLmOptions,
    dim: usize,
}

impl std::fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLm")
            .field("dim", &self.dim)
            .field("options", &self.options)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl MiniLm {
    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from `dir` with
    /// [`MiniLmOptions::for_dir`].
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        Self::load_files(&MiniLmFiles::in_dir(dir), MiniLmOptions::for_dir(dir)?, device)
    }

    /// Loads the checkpoint from explicit paths.
    pub fn load_files(files: &MiniLmFiles, options: MiniLmOptions, device: &Device) -> Result<Self> {
        let config_bytes =
            fs::read(&files.config).map_err(|source| Error::Read { path: files.config.clone(), source })?;
        let config: BertConfig = serde_json::from_slice(&config_bytes)
            .map_err(|source| Error::Config { path: files.config.clone(), source })?;
        let tokenizer = Tokenizer::from_file(&files.tokenizer)
            .map_err(|source| Error::Tokenizer { path: files.tokenizer.clone(), source })?;
        let weights_error = |source| Error::Weights { path: files.weights.clone(), source };
        // SAFETY: the safetensors file is memory-mapped read-only; it is a cache entry that is
        // written once (atomically renamed into place) and never modified while in use.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(std::slice::from_ref(&files.weights), DType::F32, device) }
                .map_err(weights_error)?;
        match Self::new(&config, tokenizer, options, vb) {
            Err(Error::Candle(source)) => Err(weights_error(source)),
            other => other,
        }
    }

    /// Builds the encoder from an already parsed config and tokenizer and a `VarBuilder` over the
    /// weights (read once and repacked; the encoder runs on the CPU and returns tensors on the
    /// `VarBuilder`'s device). The tokenizer's own padding is turned off (texts are never
    /// padded) and its truncation set to `options.max_seq_length`.
    pub fn new(config: &BertConfig, mut tokenizer: Tokenizer, options: MiniLmOptions, vb: VarBuilder) -> Result<Self> {
        if options.batch_size == 0 {
            return Err(Error::ZeroBatchSize);
        }
        if !(3..=config.max_position_embeddings).contains(&options.max_seq_length) {
            return Err(Error::MaxSeqLength {
                max_seq_length: options.max_seq_length,
                max_position_embeddings: config.max_position_embeddings,
            });
        }
        let truncation = TruncationParams {
            max_length: options.max_seq_length,
            ..tokenizer.get_truncation().cloned().unwrap_or_default()
        };
        tokenizer.with_padding(None);
        tokenizer.with_truncation(Some(truncation)).map_err(Error::TokenizerSetup)?;
        let device = vb.device().clone();
        let model = Bert::new(config, vb)?;
        Ok(MiniLm { model, device, tokenizer, options, dim: config.hidden_size })
    }

    /// Embedding width (384 for MiniLM-L6).
    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn options(&self) -> &MiniLmOptions {
        &self.options
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The tokenizer as configured: no padding, truncation at `max_seq_length`.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Encodes `texts` in batches of `options.batch_size`: one L2-normalised row per text, in
    /// input order. An empty or whitespace-only text is an error.
    pub fn encode(&self, texts: &[&str]) -> Result<EmbeddingMatrix> {
        let encodings = self.tokenize(texts)?;
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        if self.options.sort_by_length {
            order.sort_by_key(|&i| Reverse(encodings[i].len()));
        }
        let mut data = vec![0f32; texts.len() * self.dim];
        for batch in order.chunks(self.options.batch_size) {
            let ids: Vec<&[u32]> = batch.iter().map(|&i| encodings[i].get_ids()).collect();
            let rows = self.model.embed(&ids)?;
            for (&i, row) in batch.iter().zip(rows.chunks_exact(self.dim)) {
                data[i * self.dim..(i + 1) * self.dim].copy_from_slice(row);
            }
        }
        tracing::debug!(texts = texts.len(), "encoded texts with minilm");
        // `data` holds `texts.len()` rows of `self.dim` (> 0) values.
        Ok(EmbeddingMatrix::new(self.dim, data).expect("whole rows"))
    }

    /// Encodes `texts` in a single forward pass (no batching, no sorting):
    /// `n texts -> (n, dim)` L2-normalised embeddings on the model's device.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Tensor> {
        let encodings = self.tokenize(texts)?;
        let ids: Vec<&[u32]> = encodings.iter().map(Encoding::get_ids).collect();
        let rows = self.model.embed(&ids)?;
        Ok(Tensor::from_vec(rows, (texts.len(), self.dim), &self.device)?)
    }

    fn tokenize(&self, texts: &[&str]) -> Result<Vec<Encoding>> {
        if let Some(index) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(Error::EmptyText { index });
        }
        self.tokenizer
            .encode_batch_fast(texts.to_vec(), true)
            .map_err(|source| Error::Tokenize { texts: texts.len(), source })
    }
}

/// Mean of the token vectors where `mask` is 1: `(b, seq, h), (b, seq) -> (b, h)`.
/// A row whose mask is all zero pools to zeros (the count is clamped at 1e-9, as in
/// sentence-transformers).
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> candle::Result<Tensor> {
    let (b, seq, _h) = hidden.dims3()?;
    let mask = mask.to_dtype(hidden.dtype())?.reshape((b, seq, 1))?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    summed.broadcast_div(&counts)
}

/// Divides each row by its Euclidean norm (clamped at 1e-12, as torch's `F.normalize`):
/// `(b, h) -> (b, h)`.
pub fn l2_normalize(xs: &Tensor) -> candle::Result<Tensor> {
    let norms = xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    xs.broadcast_div(&norms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(got: &Tensor, expected: &[&[f32]]) {
        let got = got.to_vec2::<f32>().unwrap();
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(expected) {
            assert_eq!(g.len(), e.len());
            for (a, b) in g.iter().zip(e.iter()) {
                assert!((a - b).abs() < 1e-6, "{got:?} != {expected:?}");
            }
        }
    }

    #[test]
    fn mean_pool_ignores_padding() {
        let dev = Device::Cpu;
        // (2, 3, 2): the second text has one real token and two padded ones.
        let hidden =
            Tensor::new(&[[[1f32, 2.], [3., 4.], [5., 6.]], [[10., 20.], [99., 99.], [-99., 7.]]], &dev).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1], [1, 0, 0]], &dev).unwrap();
        check(&mean_pool(&hidden, &mask).unwrap(), &[&[3., 4.], &[10., 20.]]);

        let none = Tensor::new(&[[0u32, 0, 0], [0, 0, 0]], &dev).unwrap();
        check(&mean_pool(&hidden, &none).unwrap(), &[&[0., 0.], &[0., 0.]]);
    }

    #[test]
    fn l2_normalize_rows() {
        let xs = Tensor::new(&[[3f32, 4.], [0., 0.], [0., -2.]], &Device::Cpu).unwrap();
        check(&l2_normalize(&xs).unwrap(), &[&[0.6, 0.8], &[0., 0.], &[0., -1.]]);
    }

    #[test]
    fn options_from_json() {
        let o: MiniLmOptions = serde_json::from_str(r#"{"batch_size": 8}"#).unwrap();
        assert_eq!(o, MiniLmOptions { batch_size: 8, ..MiniLmOptions::default() });
        assert!(serde_json::from_str::<MiniLmOptions>(r#"{"batch": 8}"#).is_err());
    }
}
