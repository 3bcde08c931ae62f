//! Image preprocessing and CPU image encoders for imsearch.
//!
//! Pipeline position: image files -> [`PreprocessConfig::load_batch`] -> `(batch, 3, s, s)`
//! tensors -> [`ImageEncoder::features`] -> `(batch, dim)` features, which the indexing and
//! search crates consume as plain tensors or slices.
//!
//! Architecture invariant: this crate never fetches or converts weights. Networks take a
//! candle `VarBuilder`; the only file access is decoding images and memory-mapping a
//! safetensors file in [`load`]. It must not depend on `imsearch-models` (nor on any dataset,
//! text or report crate); whoever wires the pipeline passes it the path the model store gives.
//!
//! The CPU speed comes from three custom candle ops, each with bias and ReLU6 fused:
//! [`DepthwiseConv2d`] (candle's grouped convolution runs one convolution per channel),
//! [`PointwiseConv2d`] (1x1 convolutions as one matrix multiply per image, residual fused) and
//! [`DenseConv2d`] (the 3x3 stems, im2col + multiply). Batch norm is folded into the
//! convolutions at load, and large batches go through the network a few images at a time.
//! Each op keeps a `forward_reference` on plain candle ops, used by the tests and on other
//! devices.

mod cpu;
pub mod dense;
pub mod depthwise;
pub mod efficientnet_lite;
mod encoder;
mod error;
mod layers;
pub mod mobilenet_v2;
pub mod pointwise;
pub mod preprocess;

pub use dense::DenseConv2d;
pub use depthwise::DepthwiseConv2d;
pub use efficientnet_lite::{EfficientNetLite, EfficientNetLiteConfig};
pub use encoder::{load, EncoderKind, ImageEncoder};
pub use error::{Error, Result};
pub use mobilenet_v2::{MobileNetV2, MobileNetV2Config};
pub use pointwise::PointwiseConv2d;
pub use preprocess::{PreprocessConfig, View};

/// The 1000 ImageNet-1k class names, in the order of the networks' logits (torchvision's
/// `_IMAGENET_CATEGORIES`, BSD-3-Clause).
pub fn imagenet_classes() -> Vec<&'static str> {
    include_str!("imagenet_classes.txt").lines().collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn imagenet_classes_are_in_logit_order() {
        let c = super::imagenet_classes();
        assert_eq!(c.len(), 1000);
        assert_eq!((c[0], c[1], c[999]), ("tench", "goldfish", "toilet tissue"));
    }
}
