//! The collection against a real Milvus server: rows written whole, read back exactly, by
//! shard, replaced, deleted and searched.

use std::time::Duration;

use imsearch_store::{CollectionSpec, MilvusStore, Stamp, StoreUrl, StoredRow, VectorIndex};

fn row(i: usize, dim: usize) -> StoredRow {
    let mut like = vec![0.0f32; dim];
    like[i % dim] = 1.0;
    like[(i + 1) % dim] = (i % 7) as f32 / 10.0;
    StoredRow {
        // Some keys carry quotes and backslashes, which filters must escape.
        key: match i % 50 {
            3 => format!("album \"{}\"/it's photo-{i:05}.jpg", i % 13),
            4 => format!("album\\{}/photo-{i:05}.jpg", i % 13),
            _ => format!("album {}/photo-{i:05}.jpg", i % 13),
        },
        hash: format!("{i:064x}"),
        bucket: (i as u32).wrapping_mul(2_654_435_761) >> 1,
        stamp: Stamp { size: 1000 + i as u64, mtime_ns: 1_700_000_000_000_000_000 + i as i64 },
        blocked: i.is_multiple_of(5).then(|| format!("reason {i}")),
        state: (0..(i % 300)).map(|b| (b * 7 + i) as u8).collect(),
        like,
    }
}

#[test]
fn rows_are_written_whole_read_back_exactly_by_shard_replaced_deleted_and_searched() {
    let server = crate::server_for_tests();
    let url: StoreUrl = format!("milvus://{}/it_rows_{}", server.address, std::process::id()).parse().unwrap();
    let store = MilvusStore::connect(&url, Duration::from_secs(60)).unwrap();
    store.drop_collection().unwrap();
    let dim = 16;
    let spec = CollectionSpec { like_dim: dim, made_by: "test rows".into() };
    assert_eq!(store.spec().unwrap(), None);
    store.create_or_open(&spec).unwrap();
    assert_eq!(store.spec().unwrap(), Some(spec.clone()));

    // More rows than one request and one page.
    let mut rows: Vec<StoredRow> = (0..1300).map(|i| row(i, dim)).collect();
    store.upsert(&rows, &spec).unwrap();
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    let back = store.rows().unwrap();
    assert_eq!(back.len(), rows.len());
    if let Some((a, b)) = back.iter().zip(&rows).find(|(a, b)| a != b) {
        panic!("rows read back differ: {a:?}\nagainst {b:?}");
    }

    // A shard sees its rows only; the two shards together see them all.
    let even = store.stamps(Some((0, 2))).unwrap();
    let odd = store.stamps(Some((1, 2))).unwrap();
    assert_eq!(even.len() + odd.len(), rows.len());
    let bucket_of = |key: &str| rows.iter().find(|r| r.key == key).unwrap().bucket;
    assert!(even.iter().all(|(k, _, _)| bucket_of(k).is_multiple_of(2)));
    assert!(odd.iter().all(|(k, _, _)| bucket_of(k) % 2 == 1));
    let (k, h, s) = &odd[0];
    let original = rows.iter().find(|r| &r.key == k).unwrap();
    assert_eq!((h, *s), (&original.hash, original.stamp));

    // A row written again replaces the old one; deleted rows are gone.
    let mut changed = rows[3].clone();
    changed.hash = "f".repeat(64);
    changed.blocked = None;
    store.upsert(&[changed.clone()], &spec).unwrap();
    let mut gone: Vec<String> = rows[10..18].iter().map(|r| r.key.clone()).collect();
    gone.extend([row(53, dim).key, row(54, dim).key]);
    assert!(gone[8].contains('"') && gone[9].contains('\\'), "{gone:?}");
    store.delete(&gone).unwrap();
    let back = store.rows().unwrap();
    assert_eq!(back.len(), rows.len() - 10);
    assert_eq!(back.iter().find(|r| r.key == changed.key), Some(&changed));
    assert!(back.iter().all(|r| !gone.contains(&r.key)));

    // The best inner product first, exact with the flat index.
    let mut query = vec![0.0f32; dim];
    query[5] = 1.0;
    let hits = store.search_like(&query, 5).unwrap();
    assert_eq!(hits.len(), 5);
    assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1), "{hits:?}");
    let best = back.iter().map(|r| r.like[5]).fold(f32::MIN, f32::max);
    assert!((hits[0].1 - best).abs() < 1e-5, "{hits:?} against {best}");

    // The same search through an approximate index finds the same best row here.
    store.set_index(VectorIndex::Hnsw { m: 16, ef_construction: 64, ef: 64 }).unwrap();
    let approx = store.search_like(&query, 5).unwrap();
    assert!((approx[0].1 - best).abs() < 1e-5, "{approx:?}");

    // A collection made by something else is an error naming both.
    let other = CollectionSpec { like_dim: dim, made_by: "another engine".into() };
    let err = store.create_or_open(&other).unwrap_err().to_string();
    assert!(err.contains("test rows") && err.contains("another engine"), "{err}");
    // A row of the wrong length is refused before anything is sent.
    let mut short = row(5000, dim);
    short.like.pop();
    let err = store.upsert(&[short], &spec).unwrap_err().to_string();
    assert!(err.contains("photo-05000"), "{err}");
    store.drop_collection().unwrap();
}

/// The client reads answers of at most 4 MB: reading back rows with the largest engine state
/// (a page of them is about 10 MB) splits pages until each answer fits, and loses nothing.
#[test]
fn rows_larger_than_one_answer_holds_are_read_back_whole_by_smaller_pages() {
    let server = crate::server_for_tests();
    let url: StoreUrl = format!("milvus://{}/it_big_{}", server.address, std::process::id()).parse().unwrap();
    let store = MilvusStore::connect(&url, Duration::from_secs(60)).unwrap();
    let dim = 1408;
    let spec = CollectionSpec { like_dim: dim, made_by: "big rows".into() };
    store.create_or_open(&spec).unwrap();
    let mut rows: Vec<StoredRow> = (0..400)
        .map(|i| StoredRow {
            state: (0..imsearch_store::collection::MAX_STATE_BYTES).map(|b| (b * 31 + i) as u8).collect(),
            ..row(i, dim)
        })
        .collect();
    store.upsert(&rows, &spec).unwrap();
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    let back = store.rows().unwrap();
    assert_eq!(back.len(), rows.len());
    assert!(back == rows, "rows read back differ from those written");
    let keys: Vec<String> = rows.iter().map(|r| r.key.clone()).collect();
    let by_key = store.rows_by_key(&keys).unwrap();
    assert!(by_key == rows, "rows read back by key differ from those written");
    store.drop_collection().unwrap();
}

/// Workers that start at once all create or open the same new collection: the one that
/// creates it builds its index, the others wait for that index before loading (loading a
/// collection without an index fails), and every worker can then write and read. In the first
/// round all start together: Milvus then answers every worker's `create_collection` with
/// success (8 of 8 here), so they all build the same index and none may drop another's.
#[test]
fn workers_starting_at_once_share_one_new_collection() {
    let server = crate::server_for_tests();
    let spec = CollectionSpec { like_dim: 8, made_by: "racing workers".into() };
    for round in 0..4 {
        let url: StoreUrl =
            format!("milvus://{}/it_race_{}_{round}", server.address, std::process::id()).parse().unwrap();
        MilvusStore::connect(&url, Duration::from_secs(60)).unwrap().drop_collection().unwrap();
        let barrier = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..8)
                .map(|w| {
                    let (url, spec, barrier) = (&url, &spec, &barrier);
                    s.spawn(move || {
                        let store = MilvusStore::connect(url, Duration::from_secs(60)).unwrap();
                        barrier.wait();
                        // Staggered after the first round, so that later workers find the
                        // collection made but perhaps not yet indexed.
                        std::thread::sleep(Duration::from_millis((w * [0, 4, 10, 25][round]) as u64));
                        store.create_or_open(spec).map_err(|e| format!("worker {w}: {e}"))?;
                        store.upsert(&[row(w, 8)], spec).map_err(|e| format!("worker {w}: {e}"))
                    })
                })
                .collect();
            for worker in workers {
                worker.join().unwrap().unwrap();
            }
        });
        let store = MilvusStore::connect(&url, Duration::from_secs(60)).unwrap();
        store.flush().unwrap();
        assert_eq!(store.rows().unwrap().len(), 8, "round {round}");
        store.drop_collection().unwrap();
    }
}
