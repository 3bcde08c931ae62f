//! A bounded load test: a fixed list of requests sent from many threads at once, each answer's
//! status checked, latency percentiles per kind of request.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use serde::{Deserialize, Serialize};

use super::http::{http_get, HttpResponse};

/// One request of a load test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadRequest {
    /// What the report groups it under (`"search"`, `"image"`, ...).
    pub kind: String,
    /// The path and query string, already percent-encoded (see [`super::search_path`]).
    pub path: String,
    /// The status the server must answer.
    pub expected: u16,
}

impl LoadRequest {
    pub fn new(kind: impl Into<String>, path: impl Into<String>, expected: u16) -> LoadRequest {
        LoadRequest { kind: kind.into(), path: path.into(), expected }
    }
}

/// What a load test measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Requests sent (every one, answered or not).
    pub requests: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    pub wall_s: f64,
    pub requests_per_s: f64,
    /// Requests per kind, with their latency percentiles in milliseconds.
    pub kinds: BTreeMap<String, KindReport>,
    /// All requests.
    pub all: KindReport,
    /// Answers with a status other than the expected one, or no answer.
    pub errors: usize,
    /// The first ten of those, in request order.
    pub first_errors: Vec<String>,
}

/// The figures as text: a summary line, then a table of the latencies per kind and overall.
impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} requests, {} at once, in {:.1} s ({:.0}/s); {} errors",
            self.requests, self.concurrency, self.wall_s, self.requests_per_s, self.errors
        )?;
        write!(f, "{:<22} {:>6} {:>9} {:>9} {:>9} {:>9}", "kind", "count", "p50 ms", "p90 ms", "p99 ms", "max ms")?;
        for (kind, k) in self.kinds.iter().map(|(k, v)| (k.as_str(), v)).chain([("all", &self.all)]) {
            write!(
                f,
                "\n{kind:<22} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                k.count, k.p50_ms, k.p90_ms, k.p99_ms, k.max_ms
            )?;
        }
        Ok(())
    }
}

/// Latencies of a group of requests, in milliseconds (nearest-rank percentiles).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KindReport {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl KindReport {
    /// The count and percentiles of `ms`; all zero when it is empty.
    pub fn of(mut ms: Vec<f64>) -> KindReport {
        if ms.is_empty() {
            return KindReport::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        KindReport { count: ms.len(), p50_ms: at(0.50), p90_ms: at(0.90), p99_ms: at(0.99), max_ms: ms[ms.len() - 1] }
    }
}

/// Sends every request in `requests` to `addr` (each on a fresh connection), `concurrency` at
/// once, and measures each one from connecting to the last byte of the answer. `progress` is
/// called once per finished request (from the client threads). A wrong status or a failed
/// request is counted in [`LoadReport::errors`], not returned as an error: the test always runs
/// to the end.
pub fn load_test(
    addr: SocketAddr,
    requests: &[LoadRequest],
    concurrency: usize,
    progress: impl Fn() + Sync,
) -> LoadReport {
    let total = requests.len();
    let threads = concurrency.clamp(1, total.max(1));
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    // Per request: its index, its latency and what was wrong with its answer.
    let per_thread: Vec<Vec<(usize, f64, Option<String>)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(LoadRequest { path, expected, .. }) = requests.get(i) else { break };
                        let t = Instant::now();
                        let outcome = http_get(addr, path);
                        let ms = t.elapsed().as_secs_f64() * 1e3;
                        let error = match outcome {
                            Ok(HttpResponse { status, .. }) if status == *expected => None,
                            Ok(HttpResponse { status, body }) => Some(format!(
                                "GET {path}: status {status}, expected {expected}: {}",
                                String::from_utf8_lossy(&body[..body.len().min(200)])
                            )),
                            Err(e) => Some(super::chain(&e)),
                        };
                        mine.push((i, ms, error));
                        progress();
                    }
                    mine
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    let wall_s = started.elapsed().as_secs_f64();
    let mut samples: Vec<_> = per_thread.into_iter().flatten().collect();
    samples.sort_by_key(|s| s.0);

    let mut by_kind: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for &(i, ms, _) in &samples {
        by_kind.entry(requests[i].kind.clone()).or_default().push(ms);
    }
    let errors: Vec<String> = samples.iter().filter_map(|s| s.2.clone()).collect();
    let report = LoadReport {
        requests: samples.len(),
        concurrency: threads,
        wall_s,
        requests_per_s: samples.len() as f64 / wall_s,
        kinds: by_kind.into_iter().map(|(k, v)| (k, KindReport::of(v))).collect(),
        all: KindReport::of(samples.iter().map(|s| s.1).collect()),
        errors: errors.len(),
        first_errors: errors.into_iter().take(10).collect(),
    };
    tracing::info!(
        requests = report.requests,
        errors = report.errors,
        p99_ms = report.all.p99_ms,
        "load test on {addr} finished in {wall_s:.1} s"
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let r = KindReport::of((1..=100).rev().map(f64::from).collect());
        assert_eq!((r.count, r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms), (100, 50.0, 90.0, 99.0, 100.0));
        let one = KindReport::of(vec![3.0]);
        assert_eq!((one.count, one.p50_ms, one.p99_ms, one.max_ms), (1, 3.0, 3.0, 3.0));
        let ten = KindReport::of(vec![5.0, 1.0, 9.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0, 10.0]);
        assert_eq!((ten.p50_ms, ten.p90_ms, ten.p99_ms), (5.0, 9.0, 10.0));
        assert_eq!(KindReport::of(Vec::new()), KindReport::default());
    }

    #[test]
    fn the_report_reads_as_a_table() {
        let report = LoadReport {
            requests: 3,
            concurrency: 2,
            wall_s: 0.26,
            requests_per_s: 12.0,
            kinds: [
                ("image".to_owned(), KindReport::of(vec![1.0])),
                ("search".to_owned(), KindReport::of(vec![2.0, 4.0])),
            ]
            .into(),
            all: KindReport::of(vec![1.0, 2.0, 4.0]),
            errors: 0,
            first_errors: Vec::new(),
        };
        let expected = "\
3 requests, 2 at once, in 0.3 s (12/s); 0 errors
kind                    count    p50 ms    p90 ms    p99 ms    max ms
image                       1       1.0       1.0       1.0       1.0
search                      2       2.0       4.0       4.0       4.0
all                         3       2.0       4.0       4.0       4.0";
        assert_eq!(report.to_string(), expected);
    }

    #[test]
    fn nothing_to_send_is_an_empty_report() {
        let addr = "127.0.0.1:9".parse().unwrap();
        let r = load_test(addr, &[], 8, || panic!("no request, no progress"));
        assert_eq!((r.requests, r.errors, r.concurrency, r.all.count), (0, 0, 1, 0));
    }
}
