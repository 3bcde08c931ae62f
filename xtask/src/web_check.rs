//! `cargo xtask web-check`: the search server under a bounded load test, then in a real browser.
//!
//! The server runs in process on a free loopback port with the real models (trained first when
//! missing). The load test sends the test queries, image fetches by id and malformed requests from
//! many threads at once and checks every status; the browser test types a query into the page in
//! headless Chromium and checks it shows as many images and disclaimer tiles as the API answered,
//! then that a query naming a child shows the disclaimer and no image. The machinery is
//! `imsearch_web::check`; this job chooses the queries and the statuses, prints and writes files.

use std::{
    collections::HashMap,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use imsearch_compliance::{Decision, TextPolicy};
use imsearch_data::Dataset;
use imsearch_engine::Searcher;
use imsearch_web::{
    check::{self, image_path, search_path, LoadRequest, Page},
    Backend, Limits,
};

use crate::{embed, paths, search::Setup, serve, train};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Requests the load test sends in all.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    requests: u32,
    /// Requests in flight at once (one client thread each).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=512))]
    concurrency: u32,
    /// The query the browser types; it must rank both shown and blocked images in its top 10.
    /// Default: the first test query (in file order) that does.
    #[arg(long)]
    query: Option<String>,
    /// A query naming a child, which must get the disclaimer and no images.
    #[arg(long, default_value = "a little girl plays on a swing")]
    blocked_query: String,
    /// The Chromium binary (default: chromium, then chromium-browser, on PATH).
    #[arg(long, value_name = "PATH")]
    browser: Option<PathBuf>,
    /// Skip the browser test (the load test still runs). Not allowed when CI is set.
    #[arg(long)]
    no_browser: bool,
    /// Where the screenshots and load.json go.
    #[arg(long, value_name = "DIR", default_value = "target/web-check")]
    out: PathBuf,
    #[command(flatten)]
    setup: Setup,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    if args.no_browser && std::env::var_os("CI").is_some() {
        bail!("--no-browser is not allowed in CI: the browser test must run there");
    }
    let out = paths::resolve(&args.out);
    fs::create_dir_all(&out).with_context(|| format!("failed to create {}", out.display()))?;
    let data = paths::data_dir(args.setup.pipeline.data.as_deref())?;
    let dataset = Dataset::load(&data, Default::default())
        .with_context(|| format!("failed to load the dataset at {}", data.display()))?;
    let queries: Vec<String> = dataset.test_queries.iter().map(|q| q.text.clone()).collect();
    ensure!(!queries.is_empty(), "the dataset has no test queries to send");

    let backend = serve::backend(&args.setup)?;
    let runtime = serve::runtime()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)))
        .context("failed to listen on a loopback port")?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = imsearch_web::router(backend.clone(), Limits::default());
    let server = runtime.spawn(imsearch_web::serve(listener, app, async {
        let _ = stopped.await;
    }));
    let images = backend.indexed();
    println!("web-check: server on http://{addr}/ over {images} images");

    let result = (|| -> Result<()> {
        // Every request and the status it must get are decided before the clock starts.
        let policy = TextPolicy::default();
        let requests: Vec<LoadRequest> = (0..args.requests as usize)
            .map(|i| nth_request(i, &queries, images, |id| backend.is_blocked(id), &policy))
            .collect();
        let bar = crate::progress::bar(requests.len() as u64, "load test", "requests");
        let load = check::load_test(addr, &requests, args.concurrency as usize, || bar.inc(1));
        bar.finish_and_clear();
        println!("web-check: load test: {load}");
        ensure!(load.requests == requests.len(), "the load test sent {} of {} requests", load.requests, requests.len());
        if load.errors > 0 {
            bail!("the load test had {} errors; the first: {}", load.errors, load.first_errors.join("; "));
        }
        let path = out.join("load.json");
        paths::write_atomic(&path, serde_json::to_string_pretty(&load)?.as_bytes())?;
        println!("web-check: load figures in {}", path.display());
        ranks_agree(addr, &dataset, &backend, &args.setup)?;

        if args.no_browser {
            println!("web-check: browser test skipped (--no-browser)");
            return Ok(());
        }
        let query = match &args.query {
            Some(q) => q.clone(),
            None => mixed_query(addr, &queries)?,
        };
        browser_test(addr, images, &query, args, &out)
    })();
    let _ = stop.send(());
    runtime.block_on(server).context("the server task failed")?.context("the server failed")?;
    result
}

/// Request `i` of the load test: its kind, path and the status it must get.
fn nth_request(
    i: usize,
    queries: &[String],
    images: usize,
    blocked: impl Fn(usize) -> Option<bool>,
    policy: &TextPolicy,
) -> LoadRequest {
    match i % 10 {
        // Images by id, shown or blocked; one in five asks for an id that does not exist.
        7 | 8 => {
            let id = (i / 10) % (images + images / 4 + 1);
            let status = match blocked(id) {
                Some(false) => 200,
                Some(true) => 451,
                None => 404,
            };
            LoadRequest::new("image", image_path(id as u64), status)
        }
        // A malformed request.
        9 => LoadRequest::new("bad_request", search_path(&queries[i % queries.len()], 0), 400),
        _ => {
            let q = &queries[(i * 7) % queries.len()];
            let kind = if matches!(policy.decide(q), Decision::Block(_)) { "search_blocked_query" } else { "search" };
            LoadRequest::new(kind, search_path(q, 10), 200)
        }
    }
}

/// The page's API ranks each allowed test query's own image where the engine ranks it over the
/// dataset's cached test embeddings (what `cargo xtask eval` measures): checked for every query
/// whose image is shown in the top 50. Only when the server searches the dataset's test images.
fn ranks_agree(addr: SocketAddr, ds: &Dataset, searcher: &Searcher, setup: &Setup) -> Result<()> {
    let folder = ds.root.join("test_images").canonicalize().ok();
    if folder.as_ref() != Some(&searcher.summary().images_dir) {
        println!("web-check: ranks not compared (the server does not search the dataset's test images)");
        return Ok(());
    }
    let row: HashMap<String, usize> =
        (0..searcher.len()).filter_map(|r| Some((searcher.path(r)?.file_name()?.to_str()?.to_owned(), r))).collect();
    let emb = embed::embed_all(ds, &setup.pipeline.models.store()?, &setup.pipeline.embed)?;
    let ids: Vec<&str> = ds.test_images.iter().map(|r| r.image.as_str()).collect();
    let scorer = searcher.engine().scorer();
    let prepared = scorer.prepare(&train::test_image_matrix(&emb, &ids)?)?;
    let policy = TextPolicy::default();
    let (mut same, mut hidden, mut below) = (0, 0, 0);
    for q in ds.test_queries.iter().filter(|q| policy.matched(&q.text).is_none()) {
        let column = ids.iter().position(|i| *i == q.image.as_str()).context("a test query's image is not listed")?;
        let text = embed::rows(&emb.texts, &[q.query.to_string().as_str()])?;
        let want = imsearch_eval::rank_of(&scorer.matrix(&prepared, &text)?[0], column);
        let url = image_path(row[q.image.as_str()] as u64);
        let answer = check::api_search(addr, &q.text, 50)?;
        let got = answer.results.iter().find(|h| h.image.as_deref() == Some(url.as_str())).map(|h| h.rank);
        match (got, answer.results.get(want - 1)) {
            (Some(rank), _) if rank == want => same += 1,
            (None, Some(slot)) if slot.blocked => hidden += 1,
            (None, None) => below += 1,
            _ => bail!("test query {} ranks its image {got:?} in the page's API, {want} in the engine", q.query),
        }
    }
    println!(
        "web-check: the API ranks every allowed test query's image as the engine does ({same} shown at the same rank, \
         {hidden} blocked by the image policy, {below} below the top 50)"
    );
    Ok(())
}

/// The first of `queries` whose top 10 holds both shown and blocked images.
fn mixed_query(addr: SocketAddr, queries: &[String]) -> Result<String> {
    for q in queries {
        let r = check::api_search(addr, q, 10)?;
        if !r.blocked && r.results.iter().any(|h| h.blocked) && r.results.iter().any(|h| !h.blocked) {
            return Ok(q.clone());
        }
    }
    bail!("no test query ranks both shown and blocked images in its top 10; pass --query")
}

fn browser_test(addr: SocketAddr, images: usize, query: &str, args: &Args, out: &Path) -> Result<()> {
    // What the page must show: the API's answer for the same queries.
    let expected = check::api_search(addr, query, 10)?;
    let shown = expected.results.iter().filter(|h| !h.blocked).count();
    let hidden = expected.results.len() - shown;
    ensure!(
        !expected.blocked && shown > 0 && hidden > 0,
        "the browser test's query {:?} must rank both shown and blocked images in its top 10 (got {shown} shown, \
         {hidden} blocked{}); pass another --query",
        query,
        if expected.blocked { ", and the query itself is blocked" } else { "" }
    );
    let refused = check::api_search(addr, &args.blocked_query, 10)?;
    ensure!(refused.blocked, "--blocked-query {:?} is not blocked by the text policy", args.blocked_query);
    println!(
        "web-check: browser test over {images} images: {query:?} (API: {shown} shown, {hidden} blocked), then {:?} \
         (blocked)",
        args.blocked_query
    );

    let binary = args.browser.clone().or_else(check::find_browser).ok_or_else(|| {
        anyhow!(
            "no Chromium found on PATH for the browser test; install it (Debian: `apt-get install chromium`), \
             pass --browser PATH, or --no-browser outside CI"
        )
    })?;
    let mut page = Page::open(&binary, addr)?;
    let results = page.search(query)?;
    screenshot(&out.join("results.png"), &results.screenshot)?;
    results.verify(&expected)?;
    println!(
        "web-check: the page shows {shown} images (all loaded) and {hidden} disclaimer tile(s); url {:?}",
        results.url
    );

    let refusal = page.search_blocked(&args.blocked_query)?;
    screenshot(&out.join("blocked-query.png"), &refusal.screenshot)?;
    refusal.verify()?;
    println!("web-check: a query naming a child shows the disclaimer and no image");

    // A shared link with a `k` the menu lacks.
    let linked = page.open_link(query, LINK_K)?;
    screenshot(&out.join("link.png"), &linked.screenshot)?;
    let expected = check::api_search(addr, query, LINK_K)?;
    ensure!(
        expected.results.len() == LINK_K.min(images),
        "the API answered {} results for k = {LINK_K}",
        expected.results.len()
    );
    linked.verify(&expected)?;
    println!("web-check: a link with k = {LINK_K} (not in the menu) shows its {} results", expected.results.len());
    page.close();
    println!("web-check: browser test passed");
    Ok(())
}

/// The `k` of the shared link the browser test opens: a valid one the page's menu (5, 10, 20)
/// lacks.
const LINK_K: usize = 12;

fn screenshot(path: &Path, png: &[u8]) -> Result<()> {
    paths::write_atomic(path, png)?;
    println!("web-check: screenshot {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_web_crate_shows_the_compliance_disclaimer() {
        assert_eq!(imsearch_web::DISCLAIMER, imsearch_compliance::DISCLAIMER);
    }

    #[test]
    fn the_mix_is_searches_images_and_bad_requests_with_their_statuses() {
        let queries = ["two dogs".to_owned(), "a boy on a bike".to_owned()];
        let policy = TextPolicy::default();
        let blocked = |id: usize| [Some(false), Some(true)].get(id).copied().flatten();
        let mix: Vec<_> = (0..30).map(|i| nth_request(i, &queries, 2, blocked, &policy)).collect();
        let get = |i: usize| (mix[i].kind.as_str(), mix[i].path.as_str(), mix[i].expected);
        assert_eq!(get(0), ("search", "/api/search?q=two%20dogs&k=10", 200));
        assert_eq!(get(1), ("search_blocked_query", "/api/search?q=a%20boy%20on%20a%20bike&k=10", 200));
        assert_eq!(get(9), ("bad_request", "/api/search?q=a%20boy%20on%20a%20bike&k=0", 400));
        assert_eq!(
            [get(7), get(17), get(27)],
            [("image", "/images/0", 200), ("image", "/images/1", 451), ("image", "/images/2", 404)]
        );
    }
}
