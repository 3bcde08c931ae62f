//! The image policy's checkpoint: one JSON file with the policy, the feature layout it reads and
//! how it was chosen, read and written by any service (`compliance-seed0.json`).

use std::{fs, io, path::Path};

use serde::{Deserialize, Serialize};

use crate::{
    fit::{LabelRule, ValidationReport},
    BlockReason, Decision, Error, ImagePolicy, Result, TrainOptions,
};

/// The checkpoint format this build reads and writes; bumped whenever the checkpoint's layout or
/// the way candidates are chosen changes.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// An image policy with the feature layout it reads and how it was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCheckpoint {
    pub format: u32,
    /// The feature layout: image encoder ids (with views) joined by `+`, in the order their
    /// features sit side by side.
    pub image_encoder: String,
    pub seed: u64,
    pub train_fraction: f64,
    pub recall_target: f32,
    /// FNV-1a 64 of the features, labels and settings the policy was made from, in hex
    /// ([`crate::PolicyData::fingerprint`]).
    pub fingerprint: String,
    /// Train images the final policy was fitted on, and those labelled positive.
    pub train_images: usize,
    pub train_positives: usize,
    pub labels: LabelRule,
    pub options: TrainOptions,
    pub validation: ValidationReport,
    pub policy: ImagePolicy,
}

/// Only the format, read before the rest so that another format is named, not misparsed.
#[derive(Deserialize)]
struct Header {
    format: u32,
}

impl PolicyCheckpoint {
    /// The checkpoint at `path`: an error when it is missing, unreadable, not a checkpoint or of
    /// another format.
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
        let parse_error = |source| Error::Parse { path: path.into(), source };
        let header: Header = serde_json::from_str(&text).map_err(parse_error)?;
        if header.format != CHECKPOINT_FORMAT {
            return Err(Error::Format { path: path.into(), found: header.format, expected: CHECKPOINT_FORMAT });
        }
        serde_json::from_str(&text).map_err(parse_error)
    }

    /// As [`PolicyCheckpoint::load`], but `None` when there is no file at `path`.
    pub fn read(path: &Path) -> Result<Option<Self>> {
        match PolicyCheckpoint::load(path) {
            Err(Error::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
            other => other.map(Some),
        }
    }

    /// Writes the checkpoint as pretty JSON to `path` atomically: to a temporary name in the same
    /// folder (created if missing), then renamed, so a reader never sees half a file.
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(|source| Error::Encode { path: path.into(), source })?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|source| Error::Write { path: path.into(), source })?;
        imsearch_fsio::write_bytes_atomic(path, json.as_bytes())
            .map_err(|source| Error::Save { path: path.into(), source })
    }

    /// An error naming both layouts unless the policy reads features of `layout` and `dim`.
    pub fn check_layout(&self, layout: &str, dim: usize) -> Result<()> {
        if self.image_encoder == layout && self.policy.dim == dim {
            return Ok(());
        }
        Err(Error::Layout {
            policy_layout: self.image_encoder.clone(),
            policy_dim: self.policy.dim,
            layout: layout.to_owned(),
            dim,
        })
    }

    /// The policy's decision on an image whose `features` are of `layout`: blocked when they are
    /// missing (fail closed), and always when `layout` is not the one the policy reads.
    pub fn decide(&self, layout: &str, features: Option<&[f32]>) -> Decision {
        if layout != self.image_encoder {
            return Decision::Block(BlockReason::Unscored {
                why: format!("features of {layout}, but the policy reads {}", self.image_encoder),
            });
        }
        self.policy.decide(features)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fit::tests::{sides, synthetic, SETTINGS};

    fn fitted() -> PolicyCheckpoint {
        let d = synthetic();
        d.fit(&sides(40), &SETTINGS, &mut |_| {}).unwrap()
    }

    /// A fresh folder under the system's temporary one, removed when dropped.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("imsearch-compliance-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn round_trips_and_bad_files_are_errors() {
        let ckpt = fitted();
        let dir = TempDir::new("round-trip");
        let path = dir.0.join("sub").join("compliance-seed0.json");
        assert!(PolicyCheckpoint::read(&path).unwrap().is_none());
        assert!(matches!(PolicyCheckpoint::load(&path), Err(Error::Read { .. })));
        ckpt.write(&path).unwrap();
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temporary left");
        let back = PolicyCheckpoint::read(&path).unwrap().unwrap();
        assert_eq!(back.policy, ckpt.policy);
        assert_eq!(serde_json::to_string(&back).unwrap(), serde_json::to_string(&ckpt).unwrap());
        // Byte-compatible with the files `cargo xtask compliance` wrote before: pretty JSON, no
        // trailing newline.
        assert_eq!(fs::read_to_string(&path).unwrap(), serde_json::to_string_pretty(&ckpt).unwrap());

        fs::write(&path, "{ not json").unwrap();
        let err = PolicyCheckpoint::read(&path).unwrap_err();
        assert!(matches!(err, Error::Parse { .. }) && err.to_string().contains("not an image policy checkpoint"));
        assert!(err.to_string().contains("compliance-seed0.json"), "{err}");

        let mut other = serde_json::to_value(&ckpt).unwrap();
        other["format"] = 2.into();
        other["a_field_of_format_2"] = 1.into();
        fs::write(&path, other.to_string()).unwrap();
        let err = PolicyCheckpoint::load(&path).unwrap_err();
        assert!(matches!(err, Error::Format { found: 2, expected: CHECKPOINT_FORMAT, .. }), "{err}");
        assert!(err.to_string().contains("format 2; this build reads format 1"), "{err}");

        let mut unknown = serde_json::to_value(&ckpt).unwrap();
        unknown["surprise"] = 1.into();
        fs::write(&path, unknown.to_string()).unwrap();
        assert!(matches!(PolicyCheckpoint::load(&path), Err(Error::Parse { .. })));
    }

    #[test]
    fn a_failed_write_names_the_file_and_leaves_nothing() {
        let ckpt = fitted();
        let dir = TempDir::new("failed-write");
        // The target is a folder: the rename fails.
        let path = dir.0.join("compliance-seed0.json");
        fs::create_dir_all(path.join("inside")).unwrap();
        let err = ckpt.write(&path).unwrap_err();
        assert!(matches!(err, Error::Save { .. }) && err.to_string().contains("compliance-seed0.json"), "{err}");
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1, "the temporary is removed");
    }

    #[test]
    fn layout_is_checked_and_other_layouts_are_blocked() {
        let ckpt = fitted();
        assert!(ckpt.check_layout("m", 4).is_ok());
        let err = ckpt.check_layout("m+n", 8).unwrap_err();
        assert_eq!(err.to_string(), "the image policy reads m (4-d), not m+n (8-d)");
        assert!(ckpt.check_layout("m", 5).is_err());
        let child = [1.0, 1.0, 0.0, 0.5];
        assert!(ckpt.decide("m", Some(&child)).is_blocked());
        assert_eq!(ckpt.decide("m", Some(&[-1.0, -1.0, 0.0, -0.5])), Decision::Allow);
        assert!(ckpt.decide("m", None).is_blocked());
        let Decision::Block(BlockReason::Unscored { why }) = ckpt.decide("n", Some(&[-1.0, -1.0, 0.0, -0.5])) else {
            panic!("another layout must be blocked unscored");
        };
        assert_eq!(why, "features of n, but the policy reads m");
    }
}
