//! The group split by image: every image, and so every pair that shows it, lands on exactly one
//! side.

use std::collections::BTreeSet;

use imsearch_types::{ImageId, Split};
use rand::{seq::SliceRandom, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Error, Result};

/// Which images are for training and which for validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSplit {
    train: BTreeSet<ImageId>,
    validation: BTreeSet<ImageId>,
}

impl ImageSplit {
    /// Shuffles the distinct `images` with `seed` and puts `round(n * train_fraction)` of them on
    /// the training side. The result depends only on the set of images, the fraction and the
    /// seed, not on the order of `images`.
    pub fn new(images: impl IntoIterator<Item = ImageId>, train_fraction: f64, seed: u64) -> Result<Self> {
        if !(train_fraction > 0.0 && train_fraction <= 1.0) {
            return Err(Error::Config(format!("train fraction must be in (0, 1], got {train_fraction}")));
        }
        let mut images: Vec<ImageId> = images.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
        images.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let n_train = ((images.len() as f64) * train_fraction).round() as usize;
        let validation = images.split_off(n_train.min(images.len()));
        Ok(ImageSplit { train: images.into_iter().collect(), validation: validation.into_iter().collect() })
    }

    pub fn side(&self, image: &ImageId) -> Option<Split> {
        if self.train.contains(image) {
            Some(Split::Train)
        } else if self.validation.contains(image) {
            Some(Split::Validation)
        } else {
            None
        }
    }

    pub fn train(&self) -> &BTreeSet<ImageId> {
        &self.train
    }

    pub fn validation(&self) -> &BTreeSet<ImageId> {
        &self.validation
    }

    /// Splits items by the side of the image `image_of` names; items whose image is on neither
    /// side are returned third.
    pub fn partition<T>(&self, items: impl IntoIterator<Item = T>, image_of: impl Fn(&T) -> &ImageId) -> Partition<T> {
        let mut out = Partition { train: Vec::new(), validation: Vec::new(), unassigned: Vec::new() };
        for item in items {
            match self.side(image_of(&item)) {
                Some(Split::Train) => out.train.push(item),
                Some(Split::Validation) => out.validation.push(item),
                None => out.unassigned.push(item),
            }
        }
        out
    }
}

/// Items split by [`ImageSplit::partition`].
#[derive(Debug, Clone)]
pub struct Partition<T> {
    pub train: Vec<T>,
    pub validation: Vec<T>,
    pub unassigned: Vec<T>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(n: usize) -> Vec<ImageId> {
        (0..n).map(|i| ImageId(format!("{i}.jpg"))).collect()
    }

    #[test]
    fn sides_are_disjoint_and_cover_everything() {
        let split = ImageSplit::new(images(100), 0.7, 42).unwrap();
        assert_eq!(split.train().len(), 70);
        assert_eq!(split.validation().len(), 30);
        assert!(split.train().is_disjoint(split.validation()));
    }

    #[test]
    fn seeded_and_order_independent() {
        let a = ImageSplit::new(images(50), 0.7, 7).unwrap();
        let b = ImageSplit::new(images(50).into_iter().rev(), 0.7, 7).unwrap();
        let c = ImageSplit::new(images(50), 0.7, 8).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn fraction_is_checked() {
        assert!(ImageSplit::new(images(3), 0.0, 1).is_err());
        assert!(ImageSplit::new(images(3), 1.5, 1).is_err());
        assert!(ImageSplit::new(images(3), f64::NAN, 1).is_err());
        assert_eq!(ImageSplit::new(images(3), 1.0, 1).unwrap().validation().len(), 0);
    }

    #[test]
    fn partition_follows_images() {
        let split = ImageSplit::new(images(10), 0.5, 3).unwrap();
        let items: Vec<(ImageId, u32)> = images(12).into_iter().zip(0..).collect();
        let p = split.partition(items, |(image, _)| image);
        assert_eq!((p.train.len(), p.validation.len(), p.unassigned.len()), (5, 5, 2));
        assert!(p.train.iter().all(|(i, _)| split.side(i) == Some(Split::Train)));
    }
}
