//! Metrics for image-text scores, as pure functions over slices: retrieval (Recall@k, MRR,
//! median rank, text to image), agreement with human labels (MAE, RMSE, ROC-AUC, Kendall
//! tau-b and tau-c, Spearman), calibration (reliability table, expected calibration error, a
//! logistic regression with soft labels) and the confusion counts of a yes/no decision
//! (recall, precision).
//!
//! Architecture invariant: depends on `serde` only. It knows nothing of models, tensors or
//! files: callers pass scores and labels as `f32`/`f64` slices.
//!
//! Conventions: ties are never resolved in a scorer's favour. In retrieval an image that scores
//! the same as the correct one is ranked above it (a constant scorer gets the worst rank, not the
//! best); rank correlations use average ranks for ties, as scipy does.

pub mod agreement;
pub mod calibration;
pub mod confusion;
pub mod retrieval;

pub use agreement::{kendall_tau_b, kendall_tau_c, mae, rmse, roc_auc, spearman};
pub use calibration::{expected_calibration_error, fit_logistic, reliability, Bin, Logistic};
pub use confusion::Confusion;
pub use retrieval::{rank_of, RetrievalMetrics};
