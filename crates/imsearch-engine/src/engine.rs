//! The saved engine: the best scorer as one directory that a server loads.
//!
//! ```text
//! <dir>/engine.json           versioned spec: layout, members, weights, neighbours, bridge, recipe
//! <dir>/engine.safetensors    neighbour gallery and captions, caption bank, class texts, classifier heads
//! <dir>/members/<i>/fusion.*  each fusion member's checkpoint
//! ```

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use candle::{Device, Tensor};
use imsearch_fusion::FusionModel;
use serde::{Deserialize, Serialize};

use crate::{
    bridge::Bridge,
    neighbours::{Neighbourhood, Neighbours},
    scorer::{BankNormalised, Columns, Ensemble, Fusion, Prepared, Scorer, State},
    Error, Result,
};

/// The spec format this build writes and reads.
/// Format 2: the recipe carries the calibration of the match probability.
pub const ENGINE_FORMAT: u32 = 2;

/// What the saved engine is called in reports (the name eval's table gives it).
pub const ENGINE_SCORER: &str = "ensemble: fusion models + caption neighbours + class bridge";

const SPEC_FILE: &str = "engine.json";
const TENSORS_FILE: &str = "engine.safetensors";

/// One image encoder's slice of the feature rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePart {
    /// The features' model id, e.g. `mobilenet-v2@center+squashed`.
    pub id: String,
    pub dim: usize,
}

impl ImagePart {
    /// The encoder's id without its views (`mobilenet-v2`).
    pub fn encoder(&self) -> &str {
        self.id.split('@').next().unwrap_or(&self.id)
    }
}

/// The texts the bridge embeds for each ImageNet class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassTexts {
    /// The bare class names.
    Names,
    /// "a photo of a ..." sentences.
    Sentences,
}

/// One fusion member of the recipe: the encoders it reads (all of the layout's, or one) and
/// how many epochs it trains on every training image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRecipe {
    /// Encoder ids (`mobilenet-v2`, ...); empty: every encoder of the layout.
    pub encoders: Vec<String>,
    pub epochs: usize,
    /// Trained with the small-data dual-encoder recipe, these single views of the training
    /// images as augmentation; `None`: the fusion recipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dual_encoder: Option<Vec<String>>,
    /// Each training image's most probable ImageNet class sentence ([`crate::top_classes`]) is
    /// one more contrastive positive of its training.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub class_positives: bool,
}

/// Everything chosen on validation that makes an engine from training data: its members and
/// their epochs, the ensemble's weights, the neighbourhood and the bridge's settings.
/// `cargo xtask eval` chooses it; [`Recipe::default`] is its last choice, so a build without an
/// evaluation trains only what the engine needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub members: Vec<MemberRecipe>,
    /// Weights of the fusion members (z-scores averaged), the caption neighbours and the class
    /// bridge (both bank-normalised).
    pub weights: [f32; 3],
    pub neighbours: Neighbourhood,
    pub bridge_temperature: f64,
    pub class_texts: ClassTexts,
    /// The map from a pair's scores to the probability that it is a match.
    pub calibration: Calibration,
    /// The dual-encoder members' scores normalised over the caption bank before the members
    /// are averaged for ranking, as the neighbours and the bridge are (the match probability
    /// keeps their raw logits). Absent in engines saved before it existed: off.
    #[serde(default)]
    pub dual_bank_normalised: bool,
    /// The single views of the training images whose mean features the caption neighbours'
    /// gallery holds; empty: the features the images are scored with. Absent in engines saved
    /// before it existed: empty (their gallery is saved, so they rank as before).
    #[serde(default)]
    pub neighbour_views: Vec<String>,
}

/// The probability that a text matches an image, from the engine's parts' scores of the pair
/// ([`match_features`]): `sigmoid(weights . features + bias)`, fitted on validation pairs
/// against their aggregated labels (a logistic regression with soft labels: Platt scaling on
/// three inputs). Unlike the ranking score, which is z-scored over the collection searched, it
/// depends on the pair alone: the same photo and text get the same probability in any library,
/// so a threshold on it means "what an expert would call a match".
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Weights of the fusion members' mean logit, the caption neighbours' and the class
    /// bridge's bank z-scores.
    pub weights: [f32; 3],
    pub bias: f32,
}

impl Calibration {
    /// The probability of a match for a pair's [`match_features`].
    pub fn probability(&self, features: [f32; 3]) -> f32 {
        let z = self.bias + self.weights.iter().zip(features).map(|(w, f)| w * f).sum::<f32>();
        1.0 / (1.0 + (-z).exp())
    }
}

/// A probability's logit, its input kept within `1e-6..1 - 1e-6`.
fn logit(p: f32) -> f32 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

/// A bank-normalised score (`0.5 + z / (2 BANK_Z_RANGE)`) back to its z-score.
fn bank_z(score: f32) -> f32 {
    (score - 0.5) * 2.0 * crate::BANK_Z_RANGE
}

/// The calibration's inputs for each pair of a text (row) and an image (column), from the
/// parts' matrices over the same texts and images: each fusion member's probabilities, the
/// bank-normalised caption neighbours' and class bridge's scores. Per pair: the members' mean
/// logit and the two bank z-scores. Rows and columns past the shortest matrix are left out.
pub fn match_features(members: &[Vec<Vec<f32>>], neighbours: &[Vec<f32>], bridge: &[Vec<f32>]) -> Vec<Vec<[f32; 3]>> {
    let count = members.len().max(1) as f32;
    neighbours
        .iter()
        .zip(bridge)
        .enumerate()
        .map(|(t, (nb, br))| {
            nb.iter()
                .zip(br)
                .enumerate()
                .map(|(i, (&n, &b))| {
                    let mean_logit = members
                        .iter()
                        .map(|m| m.get(t).and_then(|row| row.get(i)).copied().map_or(0.0, logit))
                        .sum::<f32>()
                        / count;
                    [mean_logit, bank_z(n), bank_z(b)]
                })
                .collect()
        })
        .collect()
}

/// The single views of the training images the default recipe's dual-encoder members train on
/// (issue 16: eight views beat two on the pooled validation captions).
pub const DUAL_ENCODER_VIEWS: [&str; 8] = [
    "center",
    "center-flipped",
    "squashed",
    "squashed-flipped",
    "top-left",
    "top-right",
    "bottom-left",
    "bottom-right",
];

impl Default for Recipe {
    /// The choice of `cargo xtask eval` with seed 0 on the pooled validation captions of three
    /// splits (docs/results.md): the fusion model on all three encoders and one per encoder, and
    /// the same four trained with the dual-encoder recipe on the eight [`DUAL_ENCODER_VIEWS`] with
    /// each training image's most probable class sentence as one more positive, each retrained on
    /// every training image for the epochs its split chose; 5 neighbours at temperature 1; class
    /// sentences at temperature 1; weights 1, 0.25, 0.25; the probability of
    /// a match fitted on 32,107 validation pairs of the three splits; the dual-encoder members
    /// normalised over the caption bank for ranking; the neighbours' gallery of training images
    /// described by the mean of their eight single views. Features: the mean of the centre crop
    /// and the squashed whole image (`cargo xtask embed`'s default views).
    fn default() -> Self {
        let views: Vec<String> = DUAL_ENCODER_VIEWS.iter().map(|v| (*v).to_owned()).collect();
        let member = |encoders: &[&str], epochs, dual: bool| MemberRecipe {
            encoders: encoders.iter().map(|e| (*e).to_owned()).collect(),
            epochs,
            dual_encoder: dual.then(|| views.clone()),
            class_positives: dual,
        };
        Recipe {
            members: vec![
                member(&[], 7, false),
                member(&[], 6, true),
                member(&["mobilenet-v2"], 11, false),
                member(&["efficientnet-lite0"], 1, false),
                member(&["efficientnet-lite2"], 1, false),
                member(&["mobilenet-v2"], 15, true),
                member(&["efficientnet-lite0"], 28, true),
                member(&["efficientnet-lite2"], 10, true),
            ],
            weights: [1.0, 0.25, 0.25],
            neighbours: Neighbourhood { k: 5, temperature: 1.0 },
            bridge_temperature: 1.0,
            class_texts: ClassTexts::Sentences,
            calibration: Calibration { weights: [0.8666938, 0.1666268, 0.050475135], bias: -1.183411 },
            dual_bank_normalised: true,
            neighbour_views: views,
        }
    }
}

/// One fusion member as the spec records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    pub name: String,
    /// Its checkpoint folder, relative to the engine's folder.
    pub checkpoint: String,
    /// The columns of the feature rows it reads.
    pub offset: usize,
    pub dim: usize,
    pub epochs: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    format: u32,
    scorer: String,
    image_layout: Vec<ImagePart>,
    text_encoder: String,
    members: Vec<MemberSpec>,
    gallery_images: usize,
    bank_captions: usize,
    classifier_heads: usize,
    recipe: Recipe,
    /// Free-form provenance (the seed, what chose the recipe and its validation figure).
    provenance: serde_json::Value,
}

/// What [`Engine::new`] assembles: trained members and the training-free parts.
pub struct EngineData {
    pub image_layout: Vec<ImagePart>,
    pub text_encoder: String,
    /// Each member with the checkpoint folder it was saved in (copied into the engine's own).
    pub members: Vec<(MemberRecipe, FusionModel, PathBuf)>,
    /// Caption neighbours over every training image.
    pub neighbours: Neighbours,
    /// The class bridge with the recipe's class texts and temperature.
    pub bridge: Bridge,
    /// `(b, text_dim)` the caption bank the training-free parts are normalised over.
    pub bank: Tensor,
    pub recipe: Recipe,
    pub provenance: serde_json::Value,
}

/// The best scorer, ready to prepare a collection and rank texts against it.
pub struct Engine {
    spec: Spec,
    members: Vec<(FusionModel, PathBuf)>,
    neighbours: Neighbours,
    bridge: Bridge,
    bank: Tensor,
    scorer: Arc<dyn Scorer>,
    /// The fusion members, each as a scorer of the whole feature row giving its raw
    /// probabilities (for the match probability); `true` where `scorer`'s first part ranks with
    /// it bank-normalised.
    raw: Vec<(Arc<dyn Scorer>, bool)>,
    /// `scorer`'s parts: the members' ensemble, the bank-normalised neighbours and bridge.
    parts: Vec<Arc<dyn Scorer>>,
    /// sha256 of the files it was loaded from; `None` for an engine assembled in memory.
    fingerprint: Option<String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl Engine {
    /// Assembles an engine from its parts; an error when a member's encoders are not in the
    /// layout.
    pub fn new(data: EngineData) -> Result<Engine> {
        let mut members = Vec::new();
        let mut specs = Vec::new();
        for (i, (recipe, model, checkpoint)) in data.members.into_iter().enumerate() {
            let (offset, dim) = member_columns(&data.image_layout, &recipe.encoders)?;
            let name = if recipe.encoders.is_empty() {
                format!("fusion on {}", data.image_layout.iter().map(ImagePart::encoder).collect::<Vec<_>>().join("+"))
            } else {
                format!("fusion on {}", recipe.encoders.join("+"))
            };
            specs.push(MemberSpec { name, checkpoint: format!("members/{i}"), offset, dim, epochs: recipe.epochs });
            members.push((model, checkpoint));
        }
        let heads = data.image_layout.len();
        let spec = Spec {
            format: ENGINE_FORMAT,
            scorer: ENGINE_SCORER.to_owned(),
            image_layout: data.image_layout,
            text_encoder: data.text_encoder,
            members: specs,
            gallery_images: data.neighbours.len(),
            bank_captions: data.bank.dims2()?.0,
            classifier_heads: heads,
            recipe: data.recipe,
            provenance: data.provenance,
        };
        Engine::assemble(spec, members, data.neighbours, data.bridge, data.bank)
    }

    fn assemble(
        spec: Spec,
        members: Vec<(FusionModel, PathBuf)>,
        neighbours: Neighbours,
        bridge: Bridge,
        bank: Tensor,
    ) -> Result<Engine> {
        let width: usize = spec.image_layout.iter().map(|p| p.dim).sum();
        if spec.recipe.members.len() != spec.members.len() {
            return Err(Error::Invalid(format!(
                "the recipe has {} members and the engine {}",
                spec.recipe.members.len(),
                spec.members.len()
            )));
        }
        let mut group: Vec<Arc<dyn Scorer>> = Vec::new();
        let mut raw = Vec::new();
        for (((model, _), m), r) in members.iter().zip(&spec.members).zip(&spec.recipe.members) {
            let fusion: Arc<dyn Scorer> = Arc::new(Fusion::new(model.clone()));
            let member = if m.dim == width { fusion } else { Arc::new(Columns::new(fusion, m.offset, m.dim)) };
            let banked = spec.recipe.dual_bank_normalised && r.dual_encoder.is_some();
            group.push(match banked {
                true => Arc::new(BankNormalised::new(member.clone(), bank.clone())),
                false => member.clone(),
            });
            raw.push((member, banked));
        }
        if group.is_empty() {
            return Err(Error::Invalid("an engine needs at least one fusion member".into()));
        }
        let w = spec.recipe.weights;
        let neighbours_scorer: Arc<dyn Scorer> = Arc::new(neighbours.clone());
        let bridge_scorer: Arc<dyn Scorer> = Arc::new(bridge.clone());
        let parts: Vec<Arc<dyn Scorer>> = vec![
            Arc::new(Ensemble::equal(group)),
            Arc::new(BankNormalised::new(neighbours_scorer, bank.clone())),
            Arc::new(BankNormalised::new(bridge_scorer, bank.clone())),
        ];
        let scorer: Arc<dyn Scorer> = Arc::new(Ensemble::new(parts.iter().cloned().zip(w.iter().copied()).collect()));
        Ok(Engine { spec, members, neighbours, bridge, bank, scorer, raw, parts, fingerprint: None })
    }

    /// The calibrated probability ([`Calibration`]) that each text of `texts` `(q, d)` matches
    /// each image of `prepared` (this engine's preparation, usually of a search's few results:
    /// [`Prepared::select`]): `q` rows. A part the recipe weighs 0 is not prepared and counts
    /// as a z-score of 0.
    pub fn match_probabilities(&self, prepared: &Prepared, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        let fresh;
        let parts = match &prepared.state {
            State::Parts(parts) if parts.len() == self.parts.len() => parts,
            _ => {
                fresh = self.scorer.prepare(prepared.images()?)?;
                match &fresh.state {
                    State::Parts(parts) => parts,
                    _ => return Err(Error::Invalid("the engine's preparation has no parts".into())),
                }
            }
        };
        let (q, n) = (texts.dims2()?.0, prepared.len());
        let matrix = |at: usize| -> Result<Vec<Vec<f32>>> {
            match &parts[at] {
                Some(p) => self.parts[at].matrix(p, texts),
                None => Ok(vec![vec![0.5; n]; q]),
            }
        };
        let members = match &parts[0] {
            // Each member's raw probabilities; a bank-normalised member's from its inner
            // preparation.
            Some(Prepared { state: State::Parts(members), .. }) => self
                .raw
                .iter()
                .zip(members)
                .filter_map(|((scorer, banked), p)| {
                    p.as_ref().map(|p| match (&p.state, banked) {
                        (State::Bank { inner, .. }, true) => scorer.matrix(inner, texts),
                        _ => scorer.matrix(p, texts),
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            _ => Vec::new(),
        };
        let calibration = self.spec.recipe.calibration;
        Ok(match_features(&members, &matrix(1)?, &matrix(2)?)
            .into_iter()
            .map(|row| row.into_iter().map(|f| calibration.probability(f)).collect())
            .collect())
    }

    /// sha256 over the files it was loaded from (spec, tensors, every member's checkpoint):
    /// two engines with the same fingerprint score alike, so work done for one (a folder's
    /// prepared rows) serves the other. `None` for an engine assembled in memory.
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// The ensemble as a scorer (`Send + Sync`).
    pub fn scorer(&self) -> Arc<dyn Scorer> {
        self.scorer.clone()
    }

    /// The feature layout it reads: the image parts' ids joined by `+`.
    pub fn layout(&self) -> String {
        layout_name(&self.spec.image_layout)
    }

    pub fn image_layout(&self) -> &[ImagePart] {
        &self.spec.image_layout
    }

    pub fn text_encoder(&self) -> &str {
        &self.spec.text_encoder
    }

    pub fn recipe(&self) -> &Recipe {
        &self.spec.recipe
    }

    pub fn members(&self) -> &[MemberSpec] {
        &self.spec.members
    }

    /// The scorer's name in reports.
    pub fn name(&self) -> &str {
        &self.spec.scorer
    }

    pub fn provenance(&self) -> &serde_json::Value {
        &self.spec.provenance
    }

    /// Writes the engine into `dir`: built beside it under a temporary name, then swapped in,
    /// so a killed save leaves the previous engine (or none), never half of one.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("engine");
        fs::create_dir_all(parent).map_err(|source| Error::Write { path: parent.to_owned(), source })?;
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let write = |path: &Path, bytes: &[u8]| {
            fs::write(path, bytes).map_err(|source| Error::Write { path: path.to_owned(), source })
        };
        for ((_, checkpoint), m) in self.members.iter().zip(&self.spec.members) {
            let to = tmp.join(&m.checkpoint);
            fs::create_dir_all(&to).map_err(|source| Error::Write { path: to.clone(), source })?;
            for file in ["fusion.safetensors", "fusion.json"] {
                let from = checkpoint.join(file);
                let bytes = fs::read(&from).map_err(|source| Error::Read { path: from.clone(), source })?;
                write(&to.join(file), &bytes)?;
            }
        }
        let mut tensors = HashMap::new();
        self.neighbours.to_tensors("neighbours", &mut tensors)?;
        self.bridge.to_tensors("bridge", &mut tensors);
        tensors.insert("bank".to_owned(), self.bank.clone());
        candle::safetensors::save(&tensors, tmp.join(TENSORS_FILE))?;
        let json = serde_json::to_string_pretty(&self.spec).expect("a spec serialises");
        write(&tmp.join(SPEC_FILE), json.as_bytes())?;
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        if dir.exists() {
            fs::rename(dir, &old).map_err(|source| Error::Write { path: dir.to_owned(), source })?;
        }
        fs::rename(&tmp, dir).map_err(|source| Error::Write { path: dir.to_owned(), source })?;
        let _ = fs::remove_dir_all(&old);
        Ok(())
    }

    /// Whether `dir` holds an engine spec at all (it may still fail to load).
    pub fn exists(dir: &Path) -> bool {
        dir.join(SPEC_FILE).is_file()
    }

    /// Reads the engine in `dir`. An engine of another format, or made for another feature
    /// layout (`expected_layout`: the image parts' ids joined by `+`) or text encoder, is an
    /// error naming both.
    pub fn load(dir: &Path, expected_layout: &str, text_encoder: &str) -> Result<Engine> {
        let spec_path = dir.join(SPEC_FILE);
        let text = fs::read_to_string(&spec_path).map_err(|source| Error::Read { path: spec_path.clone(), source })?;
        // The format first, so an engine of another version gets that message, not a field error.
        let format = serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|source| Error::Spec { path: spec_path.clone(), source })?["format"]
            .as_u64();
        if format != Some(u64::from(ENGINE_FORMAT)) {
            return Err(Error::Format {
                path: dir.to_owned(),
                found: format.map_or(0, |f| f as u32),
                expected: ENGINE_FORMAT,
            });
        }
        let spec: Spec = serde_json::from_str(&text).map_err(|source| Error::Spec { path: spec_path, source })?;
        let layout = layout_name(&spec.image_layout);
        if layout != expected_layout {
            return Err(Error::Layout { path: dir.to_owned(), found: layout, expected: expected_layout.to_owned() });
        }
        if spec.text_encoder != text_encoder {
            return Err(Error::Layout {
                path: dir.to_owned(),
                found: spec.text_encoder.clone(),
                expected: text_encoder.to_owned(),
            });
        }
        let tensors_path = dir.join(TENSORS_FILE);
        if !tensors_path.is_file() {
            return Err(Error::Missing { path: dir.to_owned(), what: TENSORS_FILE.into() });
        }
        let tensors = candle::safetensors::load(&tensors_path, &Device::Cpu)?;
        let missing = |what: &str| Error::Missing { path: dir.to_owned(), what: what.to_owned() };
        let neighbours = Neighbours::from_tensors(&tensors, "neighbours", spec.recipe.neighbours)
            .ok_or_else(|| missing("a valid neighbour gallery"))?;
        let bridge = Bridge::from_tensors(&tensors, "bridge", spec.image_layout.len(), spec.recipe.bridge_temperature)
            .ok_or_else(|| missing("the class bridge's tensors"))?;
        let bank = tensors.get("bank").cloned().ok_or_else(|| missing("the caption bank"))?;
        let mut members = Vec::new();
        for m in &spec.members {
            let ids: Vec<&str> = spec
                .image_layout
                .iter()
                .scan(0, |at, p| {
                    let start = *at;
                    *at += p.dim;
                    Some((start, p))
                })
                .filter(|(start, p)| *start >= m.offset && start + p.dim <= m.offset + m.dim)
                .map(|(_, p)| p.id.as_str())
                .collect();
            let checkpoint = dir.join(&m.checkpoint);
            let model = FusionModel::load(&checkpoint, &ids.join("+"), text_encoder, &Device::Cpu)?;
            members.push((model, checkpoint));
        }
        let mut files = vec![dir.join(SPEC_FILE), tensors_path.clone()];
        for (_, checkpoint) in &members {
            files.extend(["fusion.json", "fusion.safetensors"].map(|f| checkpoint.join(f)));
        }
        let hashes = files
            .iter()
            .map(|f| {
                imsearch_index::Item::file("", f)
                    .content_hash()
                    .map_err(|e| Error::Invalid(format!("{}: {e}", f.display())))
            })
            .collect::<Result<Vec<_>>>()?;
        let fingerprint = imsearch_index::Item::text("", hashes.join("\n")).content_hash().ok();
        Ok(Engine { fingerprint, ..Engine::assemble(spec, members, neighbours, bridge, bank)? })
    }
}

/// The image parts' ids joined by `+`.
pub fn layout_name(parts: &[ImagePart]) -> String {
    parts.iter().map(|p| p.id.as_str()).collect::<Vec<_>>().join("+")
}

/// The columns a member on `encoders` reads: every part when empty, else exactly one part.
fn member_columns(layout: &[ImagePart], encoders: &[String]) -> Result<(usize, usize)> {
    let width = layout.iter().map(|p| p.dim).sum();
    match encoders {
        [] => Ok((0, width)),
        [one] => {
            let mut offset = 0;
            for p in layout {
                if p.encoder() == one {
                    return Ok((offset, p.dim));
                }
                offset += p.dim;
            }
            Err(Error::Invalid(format!(
                "a fusion member reads {one}, which is not in the layout {}",
                layout_name(layout)
            )))
        }
        _ => Err(Error::Invalid(format!(
            "a fusion member reads every encoder or one, not {} (layout {})",
            encoders.join("+"),
            layout_name(layout)
        ))),
    }
}
