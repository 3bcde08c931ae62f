//! A training-free bridge from ImageNet classes into text space.

use std::collections::HashMap;

use candle::{DType, Device, Tensor};

use crate::{
    scorer::{Prepared, Scorer, State},
    Error, Result,
};

/// An image encoder's ImageNet classifier, a linear map of its features:
/// `(n, dim) -> (n, 1000)` logits.
#[derive(Debug, Clone)]
pub struct ClassifierHead {
    /// `(dim, classes)`.
    weight_t: Tensor,
    /// `(classes,)`.
    bias: Tensor,
}

impl ClassifierHead {
    pub fn new(weight_t: Tensor, bias: Tensor) -> Result<Self> {
        let (_, classes) = weight_t.dims2()?;
        if bias.dims() != [classes] {
            return Err(Error::Invalid(format!("a classifier bias of shape {:?} for {classes} classes", bias.dims())));
        }
        Ok(ClassifierHead { weight_t, bias })
    }

    /// The head of an image encoder, read through its `logits` (a linear layer): the bias is the
    /// logits of the zero vector, the weights those of the unit vectors less the bias. The engine
    /// keeps the head so that it needs the encoder's features only, never the network.
    pub fn of_encoder(encoder: &dyn imsearch_vision::ImageEncoder) -> Result<Self> {
        let dim = encoder.dim();
        let bias = encoder.logits(&Tensor::zeros((1, dim), DType::F32, &Device::Cpu)?)?;
        let weight_t = encoder.logits(&Tensor::eye(dim, DType::F32, &Device::Cpu)?)?.broadcast_sub(&bias)?;
        ClassifierHead::new(weight_t, bias.squeeze(0)?)
    }

    pub fn dim(&self) -> usize {
        self.weight_t.dims()[0]
    }

    /// `(n, dim) -> (n, classes)` logits.
    pub fn logits(&self, features: &Tensor) -> Result<Tensor> {
        Ok(features.matmul(&self.weight_t)?.broadcast_add(&self.bias)?)
    }
}

/// `(m, sum of dims)` features -> `(m, classes)`: each head's softmax of its slice of the
/// features at `temperature`, summed over the heads (divide by their number for the mean).
fn summed_probabilities(heads: &[ClassifierHead], images: &Tensor, temperature: f64) -> Result<Tensor> {
    let mut probs: Option<Tensor> = None;
    let mut offset = 0;
    for head in heads {
        let logits = head.logits(&images.narrow(1, offset, head.dim())?.contiguous()?)?;
        let p = candle_nn::ops::softmax_last_dim(&(logits / temperature)?)?;
        probs = Some(match probs {
            Some(acc) => (acc + p)?,
            None => p,
        });
        offset += head.dim();
    }
    probs.ok_or_else(|| Error::Invalid("class probabilities need at least one classifier".into()))
}

/// The most probable ImageNet class of each row of `(m, sum of dims)` features, by the heads'
/// mean softmax at temperature 1 ([`summed_probabilities`]); ties go to the lower class.
pub fn top_classes(heads: &[ClassifierHead], images: &Tensor) -> Result<Vec<usize>> {
    let probs = summed_probabilities(heads, images, 1.0)?.to_vec2::<f32>()?;
    Ok(probs
        .iter()
        .map(|row| row.iter().enumerate().fold((0, f32::MIN), |best, (c, &v)| if v > best.1 { (c, v) } else { best }).0)
        .collect())
}

/// An image's ImageNet class probabilities (each encoder's classifier at a softmax temperature,
/// averaged) carried into text space as the probability-weighted mean of the MiniLM embeddings
/// of the class texts; the score is its cosine with the query.
#[derive(Debug, Clone)]
pub struct Bridge {
    /// Each encoder's classifier, in the order of its slice of the concatenated features.
    heads: Vec<ClassifierHead>,
    /// `(classes, text_dim)` MiniLM embeddings of the class texts.
    classes: Tensor,
    /// Softmax temperature on the logits: above 1 spreads the probability over more classes.
    temperature: f64,
}

impl Bridge {
    pub fn new(heads: Vec<ClassifierHead>, classes: Tensor, temperature: f64) -> Result<Self> {
        if heads.is_empty() {
            return Err(Error::Invalid("a class bridge needs at least one classifier".into()));
        }
        Ok(Bridge { heads, classes, temperature })
    }

    pub fn with_classes(&self, classes: Tensor, temperature: f64) -> Bridge {
        Bridge { heads: self.heads.clone(), classes, temperature }
    }

    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// `(m, sum of dims)` features -> `(m, text_dim)` unit rows in text space.
    fn text_space(&self, images: &Tensor) -> Result<Tensor> {
        let v = summed_probabilities(&self.heads, images, self.temperature)?.matmul(&self.classes)?;
        Ok(v.broadcast_div(&v.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?)?)
    }

    pub(crate) fn to_tensors(&self, prefix: &str, out: &mut HashMap<String, Tensor>) {
        out.insert(format!("{prefix}.classes"), self.classes.clone());
        for (i, h) in self.heads.iter().enumerate() {
            out.insert(format!("{prefix}.head{i}.weight_t"), h.weight_t.clone());
            out.insert(format!("{prefix}.head{i}.bias"), h.bias.clone());
        }
    }

    pub(crate) fn from_tensors(
        t: &HashMap<String, Tensor>,
        prefix: &str,
        heads: usize,
        temperature: f64,
    ) -> Option<Self> {
        let get = |name: String| t.get(&format!("{prefix}.{name}")).cloned();
        let heads = (0..heads)
            .map(|i| ClassifierHead::new(get(format!("head{i}.weight_t"))?, get(format!("head{i}.bias"))?).ok())
            .collect::<Option<Vec<_>>>()?;
        Bridge::new(heads, get("classes".into())?, temperature).ok()
    }
}

impl Scorer for Bridge {
    fn prepare(&self, images: &Tensor) -> Result<Prepared> {
        Ok(Prepared::new(images, State::Projected(crate::scorer::stored(&self.text_space(images)?)?)))
    }
    fn matrix(&self, images: &Prepared, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        let v = match &images.state {
            State::Projected(v) => std::sync::Arc::clone(v),
            _ => crate::scorer::stored(&self.text_space(images.images()?)?)?,
        };
        crate::scorer::dots(texts, &v, |cos| (cos + 1.0) / 2.0, |cos| (cos + 1.0)? / 2.0)
    }
    fn pairs(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<f32>> {
        let v = crate::scorer::as_stored(&self.text_space(images)?)?;
        Ok((((texts * v)?.sum(1)? + 1.0)? / 2.0)?.to_vec1()?)
    }
}
