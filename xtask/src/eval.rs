//! `cargo xtask eval`: every model against the baselines, chosen on the validation split, then
//! scored once on the 500 test queries; prints a table, writes `metrics.json` (with the rank of
//! each test query's image under the best scorer) and saves the engine built with the choices.
//! The scorers live in imsearch-engine and the evaluation in imsearch-train; this job wires
//! them to the dataset and prints.

use anyhow::Result;
use imsearch_train::{EvalConfig, Metrics};

use crate::{embed, engine, paths, train};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) pipeline: train::Pipeline,
    /// Train the fusion models again even when their checkpoints exist.
    #[arg(long)]
    pub(crate) retrain: bool,
    /// Leave out the TF-IDF baseline, which trains a second fusion model.
    #[arg(long)]
    pub(crate) no_tfidf: bool,
    /// Leave out the fusion models on one image encoder each (the members of the fusion
    /// ensemble besides the models on all of them), of both training recipes.
    #[arg(long)]
    pub(crate) no_members: bool,
    /// Splits of the training images (seeds --seed, --seed + 1, ...) whose validation captions
    /// are pooled for the ensemble's choices (the bridge's settings and the weights). The
    /// table's validation columns are of the first.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) validation_splits: u32,
    /// Rank with the dual-encoder members' raw scores instead of normalising each over the
    /// bank of training captions first (the default, chosen on the pooled validation
    /// captions; docs/results.md). For comparing the two on validation.
    #[arg(long)]
    pub(crate) no_dual_bank: bool,
    /// Describe the caption neighbours' gallery of training images by the features images are
    /// scored with (--views) instead of the mean of their single --train-views (the default,
    /// chosen on the pooled validation captions; docs/results.md). For comparing the two on
    /// validation.
    #[arg(long)]
    pub(crate) no_neighbour_views: bool,
    /// Train the dual-encoder members without each training image's most probable ImageNet
    /// class sentence as one more positive (the default trains with it, chosen on the pooled
    /// validation captions; docs/results.md). For comparing the two on validation.
    #[arg(long)]
    pub(crate) no_class_positives: bool,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let metrics = evaluate(args)?;
    let path = args.pipeline.embed.workdir().join("metrics.json");
    paths::write_atomic(&path, serde_json::to_string_pretty(&metrics)?.as_bytes())?;
    print_table(&metrics);
    println!("\nbest on validation: {}", metrics.best);
    println!("engine: {}", metrics.engine);
    println!("wrote {}", path.display());
    Ok(())
}

fn evaluate(args: &Args) -> Result<Metrics> {
    let pipeline = &args.pipeline;
    let ds = pipeline.dataset()?;
    let emb = embed::embed_all(&ds, &pipeline.models.store()?, &pipeline.embed)?;
    let config = EvalConfig {
        checkpoints: pipeline.checkpoints(args.retrain),
        tfidf: !args.no_tfidf,
        members: !args.no_members,
        validation_splits: args.validation_splits,
        dual_encoder_views: pipeline.embed.train_view_names(),
        dual_bank_normalised: !args.no_dual_bank,
        neighbour_views: match args.no_neighbour_views {
            true => Vec::new(),
            false => pipeline.embed.train_view_names(),
        },
        class_positives: !args.no_class_positives,
    };
    let heads = engine::heads(pipeline)?;
    let dir = engine::engine_dir(pipeline);
    let emb = train::caches(&emb);
    Ok(imsearch_train::evaluate(&ds, &emb, &heads, &config, &dir, &mut train::printer())?)
}

fn print_table(m: &Metrics) {
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
    println!(
        "\n{:<58} | {:>6} {:>6} {:>6} {:>6} {:>6} | {:>6} {:>6} {:>6} {:>6} {:>6} | {:>6} {:>6}",
        "model", "MAE", "AUC", "tau-b", "tau-c", "MRR", "R@1", "R@5", "R@10", "MRR", "medR", "R@1*", "MRR*"
    );
    println!("{:<58} | {:^34} | {:^34} | {:^13}", "", "validation", "test (500 queries x 100 images)", "allowed*");
    for (name, x) in &m.models {
        let v = &x.validation;
        println!(
            "{name:<58} | {:>6} {:>6} {:>6} {:>6} {:>6.3} | {:>6.3} {:>6.3} {:>6.3} {:>6.3} {:>6.1} | {:>6.3} {:>6.3}",
            f(v.mae),
            f(v.roc_auc),
            f(v.kendall_tau_b),
            f(v.kendall_tau_c_expert),
            v.mrr,
            x.test.recall_at_1,
            x.test.recall_at_5,
            x.test.recall_at_10,
            x.test.mrr,
            x.test.median_rank,
            x.test_allowed.recall_at_1,
            x.test_allowed.mrr
        );
    }
    println!(
        "* test queries the compliance text policy lets through: {} of {}; scoring all test pairs with the best model took {:.1} ms \
         (after {:.1} ms of work on the test images alone, as indexing does)",
        m.test_queries_allowed, m.test_queries, m.test_scoring_ms, m.test_image_preparation_ms
    );
}
