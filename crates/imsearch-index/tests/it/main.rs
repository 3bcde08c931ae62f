//! A process killed (SIGKILL) part-way through a refresh loses at most the work since its last
//! checkpoint: the test runs the refresh in a child process (this test binary again, told by an
//! environment variable to be the child), kills it once a checkpoint is on disk, and checks that
//! a rerun reuses every saved row and encodes only the rest.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use imsearch_index::{Checkpoint, Content, EmbeddingCache, Item};

const CHILD: &str = "IMSEARCH_INDEX_KILLED_CHILD";
const FILES: usize = 400;

fn items(dir: &Path) -> Vec<Item> {
    (0..FILES).map(|i| Item::file(format!("f{i:03}"), dir.join(format!("f{i:03}")))).collect()
}

/// A slow fake encoder: the file's length and first byte.
fn encode(batch: &[Item], delay: Duration) -> Vec<Result<Vec<f32>, String>> {
    std::thread::sleep(delay * batch.len() as u32);
    batch
        .iter()
        .map(|i| match &i.content {
            Content::File(p) => {
                let b = std::fs::read(p).map_err(|e| e.to_string())?;
                Ok(vec![b.len() as f32, f32::from(b[0])])
            }
            Content::Text(_) => Err("files only".into()),
        })
        .collect()
}

#[test]
fn killed_refresh_resumes_from_its_last_checkpoint() {
    if let Ok(dir) = std::env::var(CHILD) {
        // The child: index slowly, checkpointing every 25 items; the parent kills it.
        let dir = Path::new(&dir);
        let path = dir.join("cache.safetensors");
        let checkpoint = Checkpoint { path: path.clone(), every_items: 25, every: Duration::from_secs(3600) };
        let mut cache = EmbeddingCache::load_or_new(&path, "m", 2).unwrap();
        let photos = items(&dir.join("photos"));
        cache.refresh_saving(&photos, 5, Some(&checkpoint), |b| encode(b, Duration::from_millis(5)), |_| {}).unwrap();
        cache.save(&path).unwrap();
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    for i in 0..FILES {
        std::fs::write(photos.join(format!("f{i:03}")), format!("{i}-{}", "x".repeat(i % 7))).unwrap();
    }
    let path = dir.path().join("cache.safetensors");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "killed_refresh_resumes_from_its_last_checkpoint", "--test-threads", "1"])
        .env(CHILD, dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for a checkpoint with at least 50 rows, then kill -9.
    let start = Instant::now();
    let saved = loop {
        assert!(start.elapsed() < Duration::from_secs(60), "no checkpoint within 60 s");
        assert!(child.try_wait().unwrap().is_none(), "the child finished before it was killed");
        if let Ok(Some(c)) = EmbeddingCache::load(&path) {
            if c.len() >= 50 {
                break c.len();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();

    // The file on disk is a whole checkpoint (atomic writes), holding at least what was seen.
    let mut cache = EmbeddingCache::load(&path).unwrap().expect("a checkpoint survives the kill");
    let on_disk = cache.len();
    assert!(on_disk >= saved && on_disk < FILES, "{on_disk} rows saved");
    assert_eq!(on_disk % 25, 0, "only whole checkpoints are on disk");
    let mut encoded = 0;
    let stats = cache
        .refresh(
            &items(&photos),
            50,
            |b| {
                encoded += b.len();
                encode(b, Duration::ZERO)
            },
            |_| {},
        )
        .unwrap();
    assert_eq!((stats.reused, stats.unread), (on_disk, on_disk));
    assert_eq!((encoded, stats.encoded), (FILES - on_disk, FILES - on_disk));
    assert_eq!(cache.len(), FILES);
    // "8-x": written by the killed child or by the rerun, the same row.
    assert_eq!(cache.get("f008"), Some(&[3.0, f32::from(b'8')][..]));
}
