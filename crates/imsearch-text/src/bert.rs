//! An inference-only BERT encoder (the forward pass of MiniLM) on packed tokens: the real tokens
//! of every text in a batch are rows of one `(tokens, hidden)` matrix, so no work is spent on
//! padding; each linear layer is one [`gemm::matmul`] with weights packed at load time (Q, K
//! and V fused into one), attention runs per text over its true length, and bias, GELU (erf),
//! residual and layer norm are fused into the matmul epilogues. Mean pooling and L2
//! normalisation finish the sentence embedding, as in sentence-transformers.

use candle::DType;
use candle_nn::VarBuilder;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::gemm::{self, multiversion, Epilogue, Isa, PackedWeight};
use crate::{Error, Result};

/// The fields of a Hugging Face BERT `config.json` this encoder reads (others are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    /// Only `gelu` (the exact, erf-based GELU) is supported.
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: usize,
    /// Only `absolute` is supported.
    pub position_embedding_type: String,
}

impl Default for BertConfig {
    /// all-MiniLM-L6-v2.
    fn default() -> Self {
        BertConfig {
            vocab_size: 30522,
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 1536,
            hidden_act: "gelu".to_owned(),
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: "absolute".to_owned(),
        }
    }
}

impl BertConfig {
    fn validate(&self) -> Result<()> {
        let unsupported = |reason: String| Err(Error::UnsupportedModel { reason });
        if self.hidden_act != "gelu" {
            return unsupported(format!("hidden_act {:?} (only \"gelu\")", self.hidden_act));
        }
        if self.position_embedding_type != "absolute" {
            return unsupported(format!(
                "position_embedding_type {:?} (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return unsupported(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.type_vocab_size == 0 || self.hidden_size == 0 {
            return unsupported("type_vocab_size and hidden_size must be positive".to_owned());
        }
        Ok(())
    }
}

/// Layer norm parameters over the hidden width.
struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

/// A linear layer `y = x · W^T + b` with `W` packed for [`gemm::matmul`].
struct Linear {
    weight: PackedWeight,
    bias: Vec<f32>,
}

struct Layer {
    /// Query, key and value stacked: `hidden -> 3 * hidden`.
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// The BERT encoder with mean pooling and L2 normalisation on top.
pub(crate) struct Bert {
    isa: Isa,
    hidden: usize,
    heads: usize,
    eps: f32,
    max_positions: usize,
    vocab: usize,
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    /// Token type 0, the only one sentence embeddings use.
    token_type_embedding: Vec<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
}

fn host(vb: &VarBuilder, shape: &[usize], name: &str) -> Result<Vec<f32>> {
    Ok(vb.get(shape, name)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

fn layer_norm(vb: &VarBuilder, h: usize) -> Result<LayerNorm> {
    Ok(LayerNorm { gamma: host(vb, &[h], "weight")?, beta: host(vb, &[h], "bias")? })
}

fn linear(vbs: &[VarBuilder], n: usize, k: usize) -> Result<Linear> {
    let mut w = Vec::with_capacity(vbs.len() * n * k);
    let mut bias = Vec::with_capacity(vbs.len() * n);
    for vb in vbs {
        w.extend(host(vb, &[n, k], "weight")?);
        bias.extend(host(vb, &[n], "bias")?);
    }
    Ok(Linear { weight: PackedWeight::pack(&w, vbs.len() * n, k), bias })
}

impl Bert {
    /// Reads the checkpoint's tensors (Hugging Face names without a `bert.` prefix) from `vb`
    /// and packs them.
    pub(crate) fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let emb = vb.pp("embeddings");
        let word_embeddings = host(&emb.pp("word_embeddings"), &[cfg.vocab_size, h], "weight")?;
        let position_embeddings = host(&emb.pp("position_embeddings"), &[cfg.max_position_embeddings, h], "weight")?;
        let token_types = host(&emb.pp("token_type_embeddings"), &[cfg.type_vocab_size, h], "weight")?;
        let embedding_norm = layer_norm(&emb.pp("LayerNorm"), h)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let vb = vb.pp(format!("encoder.layer.{i}"));
                let att = vb.pp("attention");
                let this = att.pp("self");
                Ok(Layer {
                    qkv: linear(&[this.pp("query"), this.pp("key"), this.pp("value")], h, h)?,
                    attention_out: linear(&[att.pp("output.dense")], h, h)?,
                    attention_norm: layer_norm(&att.pp("output.LayerNorm"), h)?,
                    intermediate: linear(&[vb.pp("intermediate.dense")], inter, h)?,
                    output: linear(&[vb.pp("output.dense")], h, inter)?,
                    output_norm: layer_norm(&vb.pp("output.LayerNorm"), h)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Bert {
            isa: Isa::from_env()?,
            hidden: h,
            heads: cfg.num_attention_heads,
            eps: cfg.layer_norm_eps as f32,
            max_positions: cfg.max_position_embeddings,
            vocab: cfg.vocab_size,
            word_embeddings,
            position_embeddings,
            token_type_embedding: token_types[..h].to_vec(),
            embedding_norm,
            layers,
        })
    }

    /// Sentence embeddings of token id sequences: mean of the last hidden states over each
    /// text's tokens, L2-normalised. `texts` sequences -> `texts.len() * hidden` values, row-major.
    pub(crate) fn embed(&self, texts: &[&[u32]]) -> Result<Vec<f32>> {
        let h = self.hidden;
        let mut offsets = Vec::with_capacity(texts.len() + 1);
        offsets.push(0);
        for ids in texts {
            if ids.len() > self.max_positions {
                return Err(Error::UnsupportedModel {
                    reason: format!("{} tokens exceed the {} positions", ids.len(), self.max_positions),
                });
            }
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab) {
                return Err(Error::UnsupportedModel { reason: format!("token id {id} outside the vocabulary") });
            }
            offsets.push(offsets.last().unwrap_or(&0) + ids.len());
        }
        let tokens = offsets[texts.len()];
        let mut x = vec![0f32; tokens * h];
        self.embeddings(texts, &mut x);
        let mut qkv = vec![0f32; tokens * 3 * h];
        let mut context = vec![0f32; tokens * h];
        let mut x1 = vec![0f32; tokens * h];
        let mut hidden = vec![0f32; tokens * self.layers.first().map_or(0, |l| l.intermediate.weight.n())];
        let (isa, eps) = (self.isa, self.eps);
        for layer in &self.layers {
            gemm::matmul(isa, &x, &layer.qkv.weight, &mut qkv, Epilogue::Bias(&layer.qkv.bias));
            self.attention(&qkv, &offsets, &mut context);
            let (bias, norm) = (&layer.attention_out.bias, &layer.attention_norm);
            let epilogue = Epilogue::BiasResidualNorm { bias, residual: &x, gamma: &norm.gamma, beta: &norm.beta, eps };
            gemm::matmul(isa, &context, &layer.attention_out.weight, &mut x1, epilogue);
            gemm::matmul(
                isa,
                &x1,
                &layer.intermediate.weight,
                &mut hidden,
                Epilogue::BiasGelu(&layer.intermediate.bias),
            );
            let (bias, norm) = (&layer.output.bias, &layer.output_norm);
            let epilogue =
                Epilogue::BiasResidualNorm { bias, residual: &x1, gamma: &norm.gamma, beta: &norm.beta, eps };
            gemm::matmul(isa, &hidden, &layer.output.weight, &mut x, epilogue);
        }
        let mut out = vec![0f32; texts.len() * h];
        for (row, span) in out.chunks_exact_mut(h).zip(offsets.windows(2)) {
            mean_normalize(&x[span[0] * h..span[1] * h], row);
        }
        Ok(out)
    }

    /// Word + token type 0 + position embeddings of every token, layer-normed, into `x`.
    fn embeddings(&self, texts: &[&[u32]], x: &mut [f32]) {
        let h = self.hidden;
        let mut rows = x.chunks_exact_mut(h);
        for ids in texts {
            for (pos, (&id, row)) in ids.iter().zip(&mut rows).enumerate() {
                let word = &self.word_embeddings[id as usize * h..][..h];
                let position = &self.position_embeddings[pos * h..][..h];
                for (((x, w), t), p) in row.iter_mut().zip(word).zip(&self.token_type_embedding).zip(position) {
                    *x = (w + t) + p;
                }
                norm_row(row, &self.embedding_norm.gamma, &self.embedding_norm.beta, self.eps);
            }
        }
    }

    /// Multi-head self-attention of each text over its own tokens: `qkv` rows are
    /// `[q | k | v]` (`3 * hidden`), `context` rows get the heads' outputs side by side.
    fn attention(&self, qkv: &[f32], offsets: &[usize], context: &mut [f32]) {
        let h = self.hidden;
        let mut spans = Vec::with_capacity(offsets.len().saturating_sub(1));
        let mut rest = context;
        for span in offsets.windows(2) {
            let (this, tail) = rest.split_at_mut((span[1] - span[0]) * h);
            spans.push((span[0], this));
            rest = tail;
        }
        let isa = self.isa;
        spans.into_par_iter().for_each(|(start, out)| {
            let len = out.len() / h;
            attend(isa, &qkv[start * 3 * h..(start + len) * 3 * h], out, h, self.heads);
        });
    }
}

/// Lanes of the vectors the attention loops work on (one AVX-512 register).
const LANES: usize = 16;
type Lane = [f32; LANES];

multiversion! {
    /// [`attend_any`] compiled for `isa`.
    fn attend(qkv: &[f32], out: &mut [f32], h: usize, heads: usize) => attend_any
}

/// Query rows whose attention is computed together: their independent sums fill the
/// floating-point pipes that one row's chain of dependent additions leaves idle.
const ROWS: usize = 4;

/// Attention of one text: `qkv` holds its `len` rows of `3 * h`, `out` its `len` rows of `h`.
/// Scores are kept in whole [`Lane`]s (the padding masked out) so that every loop vectorises.
/// Each output is summed in the same order as one row at a time would sum it.
#[inline(always)]
fn attend_any(_: Isa, qkv: &[f32], out: &mut [f32], h: usize, heads: usize) {
    let len = out.len() / h;
    let d = h / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let lanes = len.div_ceil(LANES);
    let row = |i: usize| &qkv[i * 3 * h..(i + 1) * 3 * h];
    // keys[e * lanes + j / LANES][j % LANES]: K^T of one head, so that a row of scores is a
    // sum of scaled rows of it; the padding stays zero.
    let mut keys = vec![[0f32; LANES]; d * lanes];
    // scores[t * lanes + j / LANES][j % LANES]: query row `i0 + t` against key `j`.
    let mut scores = vec![[0f32; LANES]; ROWS * lanes];
    for head in 0..heads {
        for (j, r) in qkv.chunks_exact(3 * h).enumerate() {
            for (e, &v) in r[h + head * d..h + head * d + d].iter().enumerate() {
                keys[e * lanes + j / LANES][j % LANES] = v;
            }
        }
        for i0 in (0..len).step_by(ROWS) {
            let rows = ROWS.min(len - i0);
            // Rows past the end repeat the last one; their results are not used.
            let q: [&[f32]; ROWS] = std::array::from_fn(|t| &row(i0 + t.min(rows - 1))[head * d..head * d + d]);
            // Accumulators are locals (registers), not memory, so that the loops vectorise.
            for jc in 0..lanes {
                let mut acc = [[0f32; LANES]; ROWS];
                for e in 0..d {
                    let k = &keys[e * lanes + jc];
                    for (acc, q) in acc.iter_mut().zip(&q) {
                        for (a, k) in acc.iter_mut().zip(k) {
                            *a += q[e] * k;
                        }
                    }
                }
                for (t, acc) in acc.iter().enumerate() {
                    scores[t * lanes + jc] = *acc;
                }
            }
            for scores in scores.chunks_exact_mut(lanes).take(rows) {
                softmax(scores, len, scale);
            }
            let p = |t: usize, j: usize| scores[t.min(rows - 1) * lanes + j / LANES][j % LANES];
            for lane in 0..d / LANES {
                let mut acc = [[0f32; LANES]; ROWS];
                for j in 0..len {
                    let v: &Lane = row(j)[2 * h + head * d + lane * LANES..][..LANES].try_into().expect("a whole lane");
                    for (t, acc) in acc.iter_mut().enumerate() {
                        let p = p(t, j);
                        for (a, v) in acc.iter_mut().zip(v) {
                            *a += p * v;
                        }
                    }
                }
                for (t, acc) in acc.iter().enumerate().take(rows) {
                    let at = (i0 + t) * h + head * d + lane * LANES;
                    out[at..at + LANES].copy_from_slice(acc);
                }
            }
            let done = d / LANES * LANES;
            for t in 0..rows {
                for e in done..d {
                    out[(i0 + t) * h + head * d + e] = (0..len).map(|j| p(t, j) * row(j)[2 * h + head * d + e]).sum();
                }
            }
        }
    }
}

/// `x <- softmax(scale * x)` over the first `len` values of the lanes; the rest become 0.
#[inline(always)]
fn softmax(x: &mut [Lane], len: usize, scale: f32) {
    let mut max = [f32::NEG_INFINITY; LANES];
    for (j, v) in x.iter().flatten().enumerate().take(len) {
        max[j % LANES] = max[j % LANES].max(*v);
    }
    let max = max.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    // The padding becomes e^-87 (about 1e-38), too small to change the sum, then 0.
    for v in x.iter_mut().flatten().skip(len) {
        *v = f32::NEG_INFINITY;
    }
    let mut sum = [0f32; LANES];
    for lane in x.iter_mut() {
        for (v, s) in lane.iter_mut().zip(&mut sum) {
            *v = exp((*v - max) * scale);
            *s += *v;
        }
    }
    for v in x.iter_mut().flatten().skip(len) {
        *v = 0.0;
    }
    let inv = 1.0 / sum.iter().sum::<f32>();
    for v in x.iter_mut().flatten() {
        *v *= inv;
    }
}

/// Adds `bias` to every row of `rows`.
#[inline(always)]
pub(crate) fn add_bias(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        for (x, b) in row.iter_mut().zip(bias) {
            *x += b;
        }
    }
}

/// `gelu(x + bias)` on every row, GELU with the exact erf as PyTorch's default.
#[inline(always)]
pub(crate) fn add_bias_gelu(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        for (x, b) in row.iter_mut().zip(bias) {
            let v = *x + b;
            *x = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

/// `layer_norm(x + bias + residual)` on every row.
#[inline(always)]
pub(crate) fn add_bias_residual_norm(
    rows: &mut [f32],
    bias: &[f32],
    residual: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    for (row, res) in rows.chunks_exact_mut(bias.len()).zip(residual.chunks_exact(bias.len())) {
        for ((x, b), r) in row.iter_mut().zip(bias).zip(res) {
            *x = (*x + b) + r;
        }
        norm_row(row, gamma, beta, eps);
    }
}

/// Sum of `x`, in 16 independent lanes so that it vectorises.
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// Layer norm of one row in place: `(x - mean) / sqrt(var + eps) * gamma + beta`.
#[inline(always)]
fn norm_row(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = sum(row) / n;
    for x in row.iter_mut() {
        *x -= mean;
    }
    let mut lanes = [0f32; 16];
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v * v;
        }
    }
    let var = (lanes.iter().sum::<f32>() + chunks.remainder().iter().map(|v| v * v).sum::<f32>()) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((x, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *x = *x * inv * g + b;
    }
}

/// The mean of `tokens` (whole rows of `out.len()`), L2-normalised (norm clamped at 1e-12 as
/// torch's `F.normalize`), into `out`. No tokens give zeros.
fn mean_normalize(tokens: &[f32], out: &mut [f32]) {
    let h = out.len();
    out.fill(0.0);
    let count = tokens.len() / h;
    for row in tokens.chunks_exact(h) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
    let count = (count as f32).max(1e-9);
    for o in out.iter_mut() {
        *o /= count;
    }
    let norm = out.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    for o in out.iter_mut() {
        *o /= norm;
    }
}

/// `e^x` to about 2 ulp, branch-free so that loops over it vectorise; inputs below -87 give
/// about `e^-87` instead of tiny or zero values (enough for softmax, whose largest term is 1).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // n = round(x / ln 2) by the 1.5 * 2^23 trick; its low bits are n as an integer.
    const SHIFT: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + SHIFT;
    let n = t - SHIFT;
    let ni = t.to_bits() as i32 - SHIFT.to_bits() as i32;
    // r = x - n ln 2 in two parts (Cody and Waite), |r| <= ln 2 / 2.
    let r = (x - n * 0.693_145_75) - n * 1.428_606_8e-6;
    // e^r by its degree-6 Taylor polynomial (error below 2e-8 on |r| <= 0.347).
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    p * f32::from_bits(((ni + 127) << 23) as u32)
}

/// The error function to about 1e-7 absolute: a rational approximation on [-4, 4] (Eigen's
/// `generic_fast_erf_float`), ±1 beyond; branch-free so that loops over it vectorise.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = -2.726_142_3e-10_f32;
    let p = p * x2 + 2.770_681_4e-8;
    let p = p * x2 - 2.101_024e-6;
    let p = p * x2 - 5.692_506_4e-5;
    let p = p * x2 - 7.349_906_3e-4;
    let p = p * x2 - 2.954_600_2e-3;
    let p = p * x2 - 1.609_603_3e-2;
    let q = -1.456_607_2e-5_f32;
    let q = q * x2 - 2.133_740_6e-4;
    let q = q * x2 - 1.682_827e-3;
    let q = q * x2 - 7.373_329e-3;
    let q = q * x2 - 1.426_474e-2;
    x * p / q
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// erf by its Taylor series (|x| < 3) or continued fraction, in f64.
    pub(crate) fn erf64(x: f64) -> f64 {
        if x.abs() < 3.0 {
            let (mut term, mut sum, mut n) = (x, x, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -x * x / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(x) = exp(-x^2) / sqrt(pi) * 1 / (x + 1/2 / (x + 1 / (x + 3/2 / (x + ...)))).
            let a = x.abs();
            let mut f = a;
            for k in (1..60).rev() {
                f = a + k as f64 / 2.0 / f;
            }
            let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / f;
            x.signum() * (1.0 - erfc)
        }
    }

    #[test]
    fn erf_is_accurate() {
        let mut worst = 0f64;
        for i in -7000..=7000 {
            let x = i as f64 / 1000.0;
            worst = worst.max((erf(x as f32) as f64 - erf64(x)).abs());
        }
        assert!(worst < 4e-7, "max abs error {worst:e}");
        assert_eq!(erf(0.0), 0.0);
        assert!((erf(f32::INFINITY) - 1.0).abs() < 1e-6 && (erf(-1e30) + 1.0).abs() < 1e-6);
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - want) / want).abs());
        }
        assert!(worst < 5e-7, "max relative error {worst:e}");
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1e-37);
    }

    #[test]
    fn softmax_sums_to_one() {
        for len in [1usize, 4, 16, 17, 40] {
            let values: Vec<f32> = (0..len).map(|i| ((i * 37 % 11) as f32 - 5.0) * 2.0).collect();
            let mut x = vec![[7f32; LANES]; len.div_ceil(LANES)];
            for (j, v) in values.iter().enumerate() {
                x[j / LANES][j % LANES] = *v;
            }
            softmax(&mut x, len, 0.5);
            let e: Vec<f64> = values.iter().map(|&v| (v as f64 * 0.5).exp()).collect();
            let total: f64 = e.iter().sum();
            let got: Vec<f32> = x.iter().flatten().copied().collect();
            for (j, g) in got.iter().enumerate() {
                let want = if j < len { e[j] / total } else { 0.0 };
                assert!((*g as f64 - want).abs() < 1e-7, "len {len} at {j}: {g} vs {want}");
            }
        }
    }

    #[test]
    fn layer_norm_of_a_row() {
        let mut row: Vec<f32> = (0..37).map(|i| (i * i % 11) as f32 - 3.0).collect();
        let norm = LayerNorm { gamma: (0..37).map(|i| 1.0 + i as f32 / 10.0).collect(), beta: vec![0.5; 37] };
        let n = row.len() as f64;
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let want: Vec<f64> = row
            .iter()
            .zip(&norm.gamma)
            .map(|(&v, &g)| (v as f64 - mean) / (var + 1e-12).sqrt() * g as f64 + 0.5)
            .collect();
        norm_row(&mut row, &norm.gamma, &norm.beta, 1e-12);
        for (got, want) in row.iter().zip(want) {
            assert!((*got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        }
    }

    #[test]
    fn mean_normalize_pools_and_normalises() {
        let mut out = [0f32; 2];
        mean_normalize(&[1.0, 2.0, 5.0, 6.0], &mut out);
        assert!((out[0] - 0.6).abs() < 1e-6 && (out[1] - 0.8).abs() < 1e-6);
        mean_normalize(&[], &mut out);
        assert_eq!(out, [0.0, 0.0]);
    }

    /// Attention of one text against a direct f64 computation, on every instruction set.
    #[test]
    fn attention_matches_the_definition() {
        for (len, h, heads) in [(5, 8, 2), (19, 64, 2), (33, 48, 3), (17, 80, 2)] {
            let d = h / heads;
            let qkv: Vec<f32> = (0..len * 3 * h).map(|i| ((i * 7919 % 97) as f32 / 97.0) - 0.5).collect();
            for isa in Isa::available() {
                let mut out = vec![0f32; len * h];
                attend(isa, &qkv, &mut out, h, heads);
                for head in 0..heads {
                    for i in 0..len {
                        let q = |e: usize| qkv[i * 3 * h + head * d + e] as f64;
                        let s: Vec<f64> = (0..len)
                            .map(|j| (0..d).map(|e| q(e) * qkv[j * 3 * h + h + head * d + e] as f64).sum::<f64>())
                            .map(|s| (s / (d as f64).sqrt()).exp())
                            .collect();
                        let total: f64 = s.iter().sum();
                        for e in 0..d {
                            let want: f64 =
                                (0..len).map(|j| s[j] / total * qkv[j * 3 * h + 2 * h + head * d + e] as f64).sum();
                            let got = out[i * h + head * d + e] as f64;
                            assert!((got - want).abs() < 1e-6, "{isa:?} head {head} row {i}: {got} vs {want}");
                        }
                    }
                }
            }
        }
    }
}
