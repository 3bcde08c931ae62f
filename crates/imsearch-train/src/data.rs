//! The dataset and the embedding caches as training data: the aggregated labels after the
//! compliance filter, as rows of one image matrix and one text matrix, split by image.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
};

use candle::{Device, Tensor};
use imsearch_compliance::TextPolicy;
use imsearch_data::{aggregate, Aggregation, Dataset, ImageSplit};
use imsearch_engine::{ClassTexts, ClassifierHead, ImagePart};
use imsearch_fusion::{FusionConfig, PairSet};
use imsearch_index::EmbeddingCache;
use imsearch_types::{GradedPair, ImageId, Split};
use serde::Serialize;

use crate::{Error, Result, TrainOptions};

/// Labels at or above this (experts' majority grade 3 of 4, or better) make a pair a positive
/// for the contrastive term as well.
pub const CONFIRMED: f32 = 0.66;

/// One image encoder's caches: its model id (`mobilenet-v2@center+squashed`) and the
/// features of the train and test images, keyed by file name.
#[derive(Clone, Copy)]
pub struct ImageEmbeddings<'a> {
    pub id: &'a str,
    pub train: &'a EmbeddingCache,
    pub test: &'a EmbeddingCache,
    /// The train images' features of single views (view name, cache), for training with views
    /// as augmentation ([`TrainOptions::train_views`]); may be empty.
    pub train_views: &'a [(String, EmbeddingCache)],
}

/// The embedding caches of a dataset, borrowed: filling them (running the encoders) is the
/// caller's work.
#[derive(Clone)]
pub struct Embeddings<'a> {
    /// Every image encoder, in the order of the feature layout.
    pub images: Vec<ImageEmbeddings<'a>>,
    /// The text encoder's embeddings of every caption and test query (keyed by query id) and of
    /// the ImageNet class texts; its model id names the text encoder.
    pub texts: &'a EmbeddingCache,
    /// The key in `texts` of ImageNet class `i`'s name or sentence.
    pub class_key: fn(ClassTexts, usize) -> String,
}

impl Embeddings<'_> {
    /// The feature layout: every encoder's id, joined by `+`.
    pub fn layout(&self) -> String {
        self.images.iter().map(|e| e.id).collect::<Vec<_>>().join("+")
    }

    /// The train images' features of every encoder side by side: the layout's name, the image
    /// ids (the first encoder's keys) and the `(n, sum of dims)` matrix.
    pub fn train_image_matrix(&self) -> Result<(String, Vec<ImageId>, Tensor)> {
        let Some(first) = self.images.first() else { return Err(Error::NoImageEncoder) };
        let ids: Vec<ImageId> = first.train.keys().iter().map(|k| ImageId(k.clone())).collect();
        let keys: Vec<&str> = ids.iter().map(|i| i.as_str()).collect();
        let parts = self.images.iter().map(|e| rows(e.train, &keys)).collect::<Result<Vec<_>>>()?;
        Ok((self.layout(), ids, Tensor::cat(&parts, 1)?))
    }

    /// The test images' features of every encoder side by side, rows in `ids` order.
    pub fn test_image_matrix(&self, ids: &[&str]) -> Result<Tensor> {
        let parts = self.images.iter().map(|e| rows(e.test, ids)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 1)?)
    }

    /// The text rows of the 1000 ImageNet class texts.
    pub fn class_rows(&self, texts: ClassTexts) -> Result<Tensor> {
        let keys: Vec<String> = (0..1000).map(|i| (self.class_key)(texts, i)).collect();
        rows(self.texts, &keys.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

/// Rows of `cache` for `keys`, as a `(keys.len(), dim)` tensor; a missing key is an error.
pub fn rows(cache: &EmbeddingCache, keys: &[&str]) -> Result<Tensor> {
    let index: HashMap<&str, usize> = cache.keys().iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
    let mut data = Vec::with_capacity(keys.len() * cache.dim());
    for k in keys {
        let i = index
            .get(k)
            .ok_or_else(|| Error::MissingEmbedding { model: cache.model().to_owned(), key: (*k).to_owned() })?;
        data.extend_from_slice(cache.row(*i));
    }
    Ok(Tensor::from_vec(data, (keys.len(), cache.dim()), &Device::Cpu)?)
}

/// Counts of what went into training, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataCounts {
    pub labelled_pairs: usize,
    pub pairs_removed_by_compliance: usize,
    pub images_affected_by_compliance: usize,
    pub pairs_without_embedding: usize,
    pub train_pairs: usize,
    pub validation_pairs: usize,
    pub train_images: usize,
    pub validation_images: usize,
    pub train_positives: usize,
    pub validation_positives: usize,
}

impl fmt::Display for DataCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pairs: {} labelled, {} removed by the compliance text policy (captions naming a child; \
             {} images affected), {} without an embedding; {} train / {} validation pairs over {} / {} images; \
             {} / {} caption-image positives",
            self.labelled_pairs,
            self.pairs_removed_by_compliance,
            self.images_affected_by_compliance,
            self.pairs_without_embedding,
            self.train_pairs,
            self.validation_pairs,
            self.train_images,
            self.validation_images,
            self.train_positives,
            self.validation_positives
        )
    }
}

/// Embeddings as tensors and the labelled pairs as rows of them, split by image.
#[derive(Debug, Clone)]
pub struct TrainingData {
    /// The feature layout's name (every encoder's id joined by `+`).
    pub image_encoder: String,
    /// The text encoder's model id.
    pub text_encoder: String,
    /// `(n_train_images, sum of encoder dims)`.
    pub images: Tensor,
    /// Query ids of every caption and test query (and the class texts' keys), in row order of
    /// `texts`.
    pub text_ids: Vec<String>,
    pub texts: Tensor,
    pub train: PairSet,
    pub validation: PairSet,
    /// The labelled validation pairs with their sources, parallel to `validation.pairs`.
    pub validation_pairs: Vec<GradedPair>,
    pub counts: DataCounts,
    /// Each image encoder's features, in column order of `images`.
    pub image_parts: Vec<ImagePart>,
    /// The features of each single view the embeddings hold for every encoder (for training
    /// with views as augmentation, [`TrainOptions::train_views`]): `(view, matrix)`, rows and
    /// columns as in `images`.
    pub image_views: Vec<(String, Tensor)>,
    /// `(text row, image row)`: each image (both sides of the split) with the sentence of its
    /// most probable ImageNet class, for training with [`TrainOptions::class_positives`]; empty
    /// until [`TrainingData::with_class_positives`] fills it.
    pub class_positives: Vec<(usize, usize)>,
}

impl TrainingData {
    /// The aggregated labels of `ds` whose caption the compliance text policy lets through, as
    /// rows of `emb`, split by image with `options.train_fraction` and `options.seed` (the only
    /// options read). A caption and the image it was written for are a positive pair; so is a
    /// pair graded [`CONFIRMED`] or better on the train side.
    pub fn new(ds: &Dataset, emb: &Embeddings<'_>, options: &TrainOptions) -> Result<Self> {
        let captions = ds.train_captions();
        let labels = aggregate(&ds.expert, &ds.crowd, Aggregation::default(), |q| captions.contains_key(q))?;
        let policy = TextPolicy::default();
        let mut removed_images = BTreeSet::new();
        let mut kept = Vec::new();
        for pair in labels.pairs {
            if policy.matched(captions[&pair.query]).is_some() {
                removed_images.insert(pair.image.clone());
            } else {
                kept.push(pair);
            }
        }
        let removed = labels.report.labelled - kept.len();

        let (image_encoder, image_ids, images) = emb.train_image_matrix()?;
        let image_row: HashMap<&ImageId, usize> = image_ids.iter().enumerate().map(|(i, k)| (k, i)).collect();
        let text_ids: Vec<String> = emb.texts.keys().to_vec();
        let text_row: HashMap<&str, usize> = text_ids.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
        let texts = rows(emb.texts, &text_ids.iter().map(String::as_str).collect::<Vec<_>>())?;

        let split = ImageSplit::new(image_ids.iter().cloned(), options.train_fraction, options.seed)?;
        let mut train = PairSet::default();
        let mut validation = PairSet::default();
        let mut validation_pairs = Vec::new();
        let mut missing = 0;
        for pair in kept {
            let (Some(&i), Some(&t)) = (image_row.get(&pair.image), text_row.get(pair.query.to_string().as_str()))
            else {
                missing += 1;
                continue;
            };
            match split.side(&pair.image) {
                Some(Split::Train) => {
                    train.pairs.push((i, t, pair.label.get()));
                    // A caption graded as describing another image is a positive for it too.
                    if pair.label.get() >= CONFIRMED && pair.query.source_image() != &pair.image {
                        train.positives.push((t, i));
                    }
                }
                Some(Split::Validation) => {
                    validation.pairs.push((i, t, pair.label.get()));
                    validation_pairs.push(pair);
                }
                None => missing += 1,
            }
        }
        // Positives: each caption and the image it was written for, on that image's side.
        // Captions that name a child are left out here too.
        for (query, text) in &captions {
            if policy.matched(text).is_some() {
                continue;
            }
            let (Some(&i), Some(&t)) = (image_row.get(query.source_image()), text_row.get(query.to_string().as_str()))
            else {
                continue;
            };
            match split.side(query.source_image()) {
                Some(Split::Train) => train.positives.push((t, i)),
                Some(Split::Validation) => validation.positives.push((t, i)),
                None => {}
            }
        }
        train.candidates = split.train().iter().filter_map(|i| image_row.get(i).copied()).collect();
        validation.candidates = split.validation().iter().filter_map(|i| image_row.get(i).copied()).collect();
        let counts = DataCounts {
            labelled_pairs: labels.report.labelled,
            pairs_removed_by_compliance: removed,
            images_affected_by_compliance: removed_images.len(),
            pairs_without_embedding: missing,
            train_pairs: train.pairs.len(),
            validation_pairs: validation.pairs.len(),
            train_images: split.train().len(),
            validation_images: split.validation().len(),
            train_positives: train.positives.len(),
            validation_positives: validation.positives.len(),
        };
        let image_parts = emb.images.iter().map(|e| ImagePart { id: e.id.to_owned(), dim: e.train.dim() }).collect();
        // The single views every encoder has features of, in the first encoder's order.
        let keys: Vec<&str> = image_ids.iter().map(|i| i.as_str()).collect();
        let mut image_views = Vec::new();
        for (view, _) in emb.images.first().map_or(&[][..], |e| e.train_views) {
            let caches: Option<Vec<&EmbeddingCache>> =
                emb.images.iter().map(|e| e.train_views.iter().find(|(v, _)| v == view).map(|(_, c)| c)).collect();
            if let Some(caches) = caches {
                let parts = caches.into_iter().map(|c| rows(c, &keys)).collect::<Result<Vec<_>>>()?;
                image_views.push((view.clone(), Tensor::cat(&parts, 1)?));
            }
        }
        Ok(TrainingData {
            image_encoder,
            text_encoder: emb.texts.model().to_owned(),
            images,
            text_ids,
            texts,
            train,
            validation,
            validation_pairs,
            counts,
            image_parts,
            image_views,
            class_positives: Vec::new(),
        })
    }

    /// The same data with [`TrainingData::class_positives`]: each image's most probable
    /// ImageNet class by the mean softmax of `heads` (each encoder's classifier, in the layout's
    /// order) over the features it is scored with, paired with that class's sentence in `emb`.
    pub fn with_class_positives(mut self, emb: &Embeddings<'_>, heads: &[ClassifierHead]) -> Result<Self> {
        let classes = imsearch_engine::top_classes(heads, &self.images)?;
        let text_row: HashMap<&str, usize> = self.text_ids.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
        let mut positives = Vec::with_capacity(classes.len());
        for (image, class) in classes.into_iter().enumerate() {
            let key = (emb.class_key)(ClassTexts::Sentences, class);
            let text = text_row
                .get(key.as_str())
                .ok_or_else(|| Error::MissingEmbedding { model: self.text_encoder.clone(), key })?;
            positives.push((*text, image));
        }
        self.class_positives = positives;
        Ok(self)
    }

    /// The same pairs with the features of image encoder `part` alone (a member of the fusion
    /// ensemble).
    pub fn only(&self, part: usize) -> Result<TrainingData> {
        let (offset, dim) = self.columns(part)?;
        let id = self.image_parts[part].id.clone();
        Ok(TrainingData {
            image_encoder: id.clone(),
            images: self.images.narrow(1, offset, dim)?.contiguous()?,
            image_views: self
                .image_views
                .iter()
                .map(|(view, v)| Ok((view.clone(), v.narrow(1, offset, dim)?.contiguous()?)))
                .collect::<candle::Result<_>>()?,
            image_parts: vec![ImagePart { id, dim }],
            ..self.clone()
        })
    }

    /// The names of [`TrainingData::image_views`].
    pub fn view_names(&self) -> Vec<String> {
        self.image_views.iter().map(|(v, _)| v.clone()).collect()
    }

    /// The features of `views` (each as [`TrainingData::image_views`] holds it), in that order.
    pub fn views(&self, views: &[String]) -> Result<Vec<Tensor>> {
        views
            .iter()
            .map(|view| {
                self.image_views
                    .iter()
                    .find(|(v, _)| v == view)
                    .map(|(_, t)| t.clone())
                    .ok_or_else(|| Error::MissingView { encoders: self.image_encoder.clone(), view: view.clone() })
            })
            .collect()
    }

    /// The mean of the features of `views` (as [`TrainingData::views`]); no views: `images`.
    pub fn view_mean(&self, views: &[String]) -> Result<Tensor> {
        match views {
            [] => Ok(self.images.clone()),
            _ => Ok(Tensor::stack(&self.views(views)?, 0)?.mean(0)?),
        }
    }

    /// Where image encoder `part`'s columns start in `images`, and its width.
    pub fn columns(&self, part: usize) -> Result<(usize, usize)> {
        let encoders = self.image_parts.len();
        let dim = self.image_parts.get(part).ok_or(Error::NoSuchPart { part, encoders })?.dim;
        Ok((self.image_parts[..part].iter().map(|p| p.dim).sum(), dim))
    }

    /// The fusion model's shape for this data under `options`.
    pub fn fusion_config(&self, options: &TrainOptions) -> Result<FusionConfig> {
        let text_dim = self.texts.dims2()?.1;
        Ok(FusionConfig {
            image_encoder: self.image_encoder.clone(),
            text_encoder: self.text_encoder.clone(),
            image_dim: self.images.dims2()?.1,
            text_dim,
            hidden_dim: options.hidden_dim,
            shared_dim: if options.locked_text { text_dim } else { options.shared_dim },
            locked_text: options.locked_text,
        })
    }
}
