//! `cargo xtask web-check`: the search server under a bounded load test, then in a real browser.
//!
//! The server runs in process on a free loopback port with the real models (trained first when
//! missing). The load test sends the test queries, "more like this" requests, image and thumbnail
//! fetches by id and malformed requests from many threads at once and checks every status; the
//! browser test types a query into the page in headless Chromium and checks it shows what the API
//! answered (lazily loaded thumbnails named by their file names, disclaimer tiles), then that a
//! query naming a child shows the disclaimer and no image, that a shared link's `k` is honoured,
//! that the "next" control shows other results, that "similar" shows the photos most like one,
//! and that a strict threshold shows only what passes it or says no photo matches well enough.
//! The machinery is `imsearch_web::check`; this job chooses the queries and the statuses, prints
//! and writes files.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use imsearch_compliance::{Decision, TextPolicy};
use imsearch_data::Dataset;
use imsearch_engine::Searcher;
use imsearch_web::{
    check::{self, image_path, search_path, similar_path, thumb_path, LoadRequest, Page},
    Backend, DISCLAIMER,
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
    let app = imsearch_web::router(backend.clone(), serve::config(&backend));
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
        browser_test(addr, &backend, &queries, &query, args, &out)
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
    // Images by id, shown or blocked; one in five asks for an id that does not exist.
    let id = (i / 10) % (images + images / 4 + 1);
    match i % 10 {
        // More like an image: a blocked example gets the disclaimer (200), no image a 404.
        6 => LoadRequest::new("similar", similar_path(id as u64, 10), if id < images { 200 } else { 404 }),
        7 | 8 => {
            let status = match blocked(id) {
                Some(false) => 200,
                Some(true) => 451,
                None => 404,
            };
            match i % 10 {
                7 => LoadRequest::new("image", image_path(id as u64), status),
                _ => LoadRequest::new("thumb", thumb_path(id as u64), status),
            }
        }
        // A malformed request: k, page or min_score out of range.
        9 => {
            let path = search_path(&queries[i % queries.len()], 10);
            let path = match (i / 10) % 3 {
                0 => path.replace("&k=10", "&k=0"),
                1 => format!("{path}&page=0"),
                _ => format!("{path}&min_score=2"),
            };
            LoadRequest::new("bad_request", path, 400)
        }
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

fn browser_test(
    addr: SocketAddr,
    backend: &Searcher,
    queries: &[String],
    query: &str,
    args: &Args,
    out: &Path,
) -> Result<()> {
    let images = backend.indexed();
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
        "web-check: the page shows {shown} thumbnails (lazy, all loaded, at most {} px, captioned and alt-texted with \
         their file names, e.g. {:?}) and {hidden} disclaimer tile(s); url {:?}",
        imsearch_web::THUMB_SIDE,
        results.names.first().map(String::as_str).unwrap_or_default(),
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

    // More like the first shown result of the link's page.
    let (example, alike) = page.similar(0)?;
    screenshot(&out.join("similar.png"), &alike.screenshot)?;
    let expected = check::api_get(addr, &alike.api_path())?;
    ensure!(expected.like == Some(example), "the page's address after \"similar\" is {:?}", alike.url);
    ensure!(!expected.results.is_empty(), "nothing is like image {example}");
    alike.verify(&expected)?;
    ensure!(!alike.thumbs.contains(&thumb_path(u64::from(example))), "the photos like image {example} include itself");
    println!(
        "web-check: \"similar\" on image {example} shows the {} most alike ({} shown, {} blocked); {:?}",
        expected.results.len(),
        alike.images,
        alike.tiles,
        alike.heading
    );
    if alike.images == 0 {
        // Every photo like it is blocked: also open a shared link to the photos like a shown
        // image whose likes include shown ones, to see their thumbnails.
        let mut found = None;
        for id in (0..images).filter(|&id| backend.is_blocked(id) == Some(false)) {
            let answer = check::api_get(addr, &similar_path(id as u64, LINK_K))?;
            if answer.results.iter().any(|h| !h.blocked) {
                found = Some((id as u32, answer));
                break;
            }
        }
        let Some((id, expected)) = found else {
            bail!("no shown image has a shown image among its {LINK_K} most alike")
        };
        let alike = page.open_like_link(id, LINK_K)?;
        screenshot(&out.join("similar-link.png"), &alike.screenshot)?;
        alike.verify(&expected)?;
        println!(
            "web-check: a link to the photos like image {id} shows {} thumbnails and {} disclaimer tile(s); {:?}",
            alike.images, alike.tiles, alike.heading
        );
    }

    // The next page of the link: the results after the first LINK_K, none of them on page 1.
    page.open_link(query, LINK_K)?;
    let second = page.next_page()?;
    screenshot(&out.join("page-2.png"), &second.screenshot)?;
    let expected = check::api_get(addr, &second.api_path())?;
    ensure!(expected.page == 2 && expected.k == LINK_K, "the page's address after \"next\" is {:?}", second.url);
    ensure!(!expected.results.is_empty(), "page 2 of {query:?} is empty over {images} images");
    second.verify(&expected)?;
    let first: HashSet<&String> = linked.thumbs.iter().collect();
    ensure!(
        second.thumbs.iter().all(|t| !first.contains(t)),
        "page 2 shows images of page 1: {:?} and {:?}",
        second.thumbs,
        linked.thumbs
    );
    println!(
        "web-check: \"next\" shows page 2 (results {}-{}, none of page 1's); url {:?}",
        expected.results[0].rank,
        expected.results[expected.results.len() - 1].rank,
        second.url
    );

    // A blocked example: the disclaimer and no results, and no thumbnail of it either.
    if let Some(id) = (0..images).find(|&id| backend.is_blocked(id) == Some(true)) {
        let answer = check::api_get(addr, &similar_path(id as u64, 10))?;
        ensure!(
            answer.blocked && answer.results.is_empty() && answer.message.as_deref() == Some(DISCLAIMER),
            "more like blocked image {id} answered {answer:?}"
        );
        let thumb = check::http_get(addr, &thumb_path(id as u64))?;
        ensure!(thumb.status == 451, "the thumbnail of blocked image {id} answered {}", thumb.status);
        println!("web-check: more like a blocked image (id {id}) is the disclaimer, its thumbnail a 451");
    }

    // Thresholds from the menu, over a query with a likely match (when a test query has one,
    // else the one above): only results at or above them, possibly none.
    let mut threshold_query = query;
    for q in queries.iter().take(200) {
        let answer = check::api_get(addr, &format!("{}&min_score={}", search_path(q, LINK_K), THRESHOLDS[0]))?;
        if !answer.blocked && !answer.results.is_empty() {
            threshold_query = q;
            break;
        }
    }
    if threshold_query != query {
        let all = page.search(threshold_query)?;
        all.verify(&check::api_get(addr, &all.api_path())?)?;
    }
    let mut said_no_match = false;
    for threshold in THRESHOLDS {
        let view = page.choose_threshold(threshold)?;
        screenshot(&out.join(format!("threshold-{threshold}.png")), &view.screenshot)?;
        let expected = check::api_get(addr, &view.api_path())?;
        let min =
            expected.min_score.with_context(|| format!("the page's address is {:?}, with no threshold", view.url))?;
        ensure!(min.to_string() == threshold, "the page asked for threshold {min}, not {threshold}");
        view.verify(&expected)?;
        ensure!(expected.results.iter().all(|h| h.score >= min), "a result under {min}: {:?}", expected.results);
        println!(
            "web-check: threshold {threshold} shows {} result(s) for {threshold_query:?}, every one scoring at least it{}",
            expected.results.len(),
            if view.notice.is_some() { " (the page says no photo matches well enough)" } else { "" }
        );
        said_no_match |= view.notice.is_some();
    }
    if !said_no_match {
        // A query that nothing passes: the page must say so rather than show an empty grid.
        let mut none_pass = None;
        for q in queries.iter().take(200) {
            let answer = check::api_get(addr, &format!("{}&min_score={STRICT}", search_path(q, LINK_K)))?;
            if !answer.blocked && answer.results.is_empty() {
                none_pass = Some((q, answer));
                break;
            }
        }
        let Some((q, answer)) = none_pass else {
            bail!("every test query tried has a photo scoring at least {STRICT}: the \"no photo matches\" notice is untested")
        };
        let nothing = page.search(q)?;
        screenshot(&out.join("no-match.png"), &nothing.screenshot)?;
        nothing.verify(&answer)?;
        println!("web-check: {q:?} at threshold {STRICT} says {:?}", nothing.notice.unwrap_or_default());
    }
    page.close();
    println!("web-check: browser test passed");
    Ok(())
}

/// The thresholds the browser test chooses on the page's menu, the strictest last.
const THRESHOLDS: [&str; 2] = ["0.3", "0.9"];
/// The strictest of them.
const STRICT: &str = THRESHOLDS[1];

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
        assert_eq!(
            [get(9), get(19), get(29)],
            [
                ("bad_request", "/api/search?q=a%20boy%20on%20a%20bike&k=0", 400),
                ("bad_request", "/api/search?q=a%20boy%20on%20a%20bike&k=10&page=0", 400),
                ("bad_request", "/api/search?q=a%20boy%20on%20a%20bike&k=10&min_score=2", 400),
            ]
        );
        assert_eq!(
            [get(7), get(17), get(27)],
            [("image", "/images/0", 200), ("image", "/images/1", 451), ("image", "/images/2", 404)]
        );
        assert_eq!(
            [get(8), get(18), get(28)],
            [("thumb", "/thumbs/0", 200), ("thumb", "/thumbs/1", 451), ("thumb", "/thumbs/2", 404)]
        );
        assert_eq!(
            [get(6), get(16), get(26)],
            [
                ("similar", "/api/similar?id=0&k=10", 200),
                ("similar", "/api/similar?id=1&k=10", 200),
                ("similar", "/api/similar?id=2&k=10", 404)
            ]
        );
    }
}
