//! `cargo xtask serve`: the search page on http://127.0.0.1:PORT, with the saved engine and the
//! compliance policies behind imsearch-web's API (imsearch-engine's `Searcher` is the backend).

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use anyhow::{Context, Result};
use imsearch_engine::Searcher;
use imsearch_web::{Backend, Config, Limits};

use crate::search::Setup;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The port on 127.0.0.1 (the server never listens on other interfaces); 0 picks a free one.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[command(flatten)]
    setup: Setup,
}

/// Opens the searcher (building what is missing) for the web API.
pub(crate) fn backend(setup: &Setup) -> Result<Arc<Searcher>> {
    let searcher = crate::search::open(setup, true)?;
    let summary = searcher.summary();
    for s in &summary.skipped {
        eprintln!("skipped {}: {}", s.file, s.reason);
    }
    eprintln!("index: {summary}");
    Ok(Arc::new(searcher))
}

/// The web crate's configuration for `searcher`: the default limits, thumbnails cached in
/// `thumbs/` beside the folder index's caches.
pub(crate) fn config(searcher: &Searcher) -> Config {
    Config { limits: Limits::default(), thumbnail_dir: Some(searcher.summary().cache_dir.join("thumbs")) }
}

/// A multi-threaded tokio runtime for the server.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("failed to start the async runtime")
}

/// Logs of the web crate (a failed or panicked search) to stderr; `RUST_LOG` chooses, info by
/// default.
pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second call (web-check after serve in one process) keeps the first subscriber.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

pub(crate) fn run(args: &Args) -> Result<()> {
    init_logging();
    let backend = backend(&args.setup)?;
    let runtime = runtime()?;
    runtime.block_on(async {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("failed to listen on {addr} (is another server on that port? try --port)"))?;
        let addr = listener.local_addr()?;
        println!(
            "serving {} images on http://{addr}/, ranked by the engine ({}) (Ctrl-C stops)",
            backend.indexed(),
            backend.engine().name()
        );
        println!("API: http://{addr}/api/search?q=two+dogs+play+in+the+snow&k=10 (&page=2, &min_score=0.5)");
        println!("     http://{addr}/api/similar?id=0&k=10 (more like image 0)");
        let config = config(&backend);
        if let Some(dir) = &config.thumbnail_dir {
            println!("thumbnails cached in {}", dir.display());
        }
        let app = imsearch_web::router(backend, config);
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("stopping");
        };
        imsearch_web::serve(listener, app, shutdown).await.context("the server failed")
    })
}
