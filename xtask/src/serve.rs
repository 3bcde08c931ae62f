//! `cargo xtask serve`: the search page on http://127.0.0.1:PORT, with the trained fusion model and
//! the compliance policies behind imsearch-web's API.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use anyhow::{Context, Result};
use imsearch_compliance::{Decision, TextPolicy};
use imsearch_web::{Answer, Backend, ImageLookup, Limits, Ranked};

use crate::search::{Searcher, Setup};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The port on 127.0.0.1 (the server never listens on other interfaces); 0 picks a free one.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[command(flatten)]
    setup: Setup,
}

/// A [`Searcher`] behind the web API: the text policy on the query, the image policy on every
/// result, images looked up by index row.
pub(crate) struct SearchBackend {
    searcher: Searcher,
    text_policy: TextPolicy,
}

impl SearchBackend {
    pub(crate) fn new(searcher: Searcher) -> Self {
        SearchBackend { searcher, text_policy: TextPolicy::default() }
    }

    pub(crate) fn searcher(&self) -> &Searcher {
        &self.searcher
    }
}

impl Backend for SearchBackend {
    fn search(&self, query: &str, k: usize) -> Result<Answer, String> {
        if let Decision::Block(reason) = self.text_policy.decide(query) {
            return Ok(Answer::Blocked { reason: reason.to_string() });
        }
        let ranked = self.searcher.rank(query, k).map_err(|e| format!("{e:#}"))?;
        Ok(Answer::Ranked(
            ranked.iter().map(|r| Ranked { id: row_id(r.row), score: r.score, blocked: r.blocked }).collect(),
        ))
    }

    fn image(&self, id: u32) -> ImageLookup {
        let row = id as usize;
        match (self.searcher.is_blocked(row), self.searcher.path(row)) {
            (Some(false), Some(path)) => {
                let content_type = match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase) {
                    Some(e) if e == "png" => "image/png",
                    _ => "image/jpeg",
                };
                match std::fs::read(&path) {
                    Ok(bytes) => ImageLookup::Found { bytes, content_type },
                    Err(e) => ImageLookup::Unreadable(format!("{}: {e}", path.display())),
                }
            }
            (Some(true), _) => ImageLookup::Blocked,
            _ => ImageLookup::Unknown,
        }
    }

    fn indexed(&self) -> usize {
        self.searcher.len()
    }
}

/// The public id of an index row. An index holds far fewer than 2^32 images (each is a file
/// encoded on this machine); saturating keeps an impossible overflow from aliasing a real id.
fn row_id(row: usize) -> u32 {
    u32::try_from(row).unwrap_or(u32::MAX)
}

/// Opens the searcher (training what is missing) and wraps it for the web API.
pub(crate) fn backend(setup: &Setup) -> Result<Arc<SearchBackend>> {
    let searcher = Searcher::open(setup, true)?;
    let summary = searcher.summary();
    for s in &summary.skipped {
        eprintln!("skipped {}: {}", s.file, s.reason);
    }
    eprintln!("index: {summary}");
    Ok(Arc::new(SearchBackend::new(searcher)))
}

/// A multi-threaded tokio runtime for the server.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("failed to start the async runtime")
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let backend = backend(&args.setup)?;
    let runtime = runtime()?;
    runtime.block_on(async {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("failed to listen on {addr} (is another server on that port? try --port)"))?;
        let addr = listener.local_addr()?;
        println!("serving {} images on http://{addr}/ (Ctrl-C stops)", backend.indexed());
        println!("API: http://{addr}/api/search?q=two+dogs+play+in+the+snow&k=10");
        let app = imsearch_web::router(backend, Limits::default());
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("stopping");
        };
        imsearch_web::serve(listener, app, shutdown).await.context("the server failed")
    })
}
