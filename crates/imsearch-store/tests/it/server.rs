//! The pinned Milvus server: installed once per machine, started in a data directory on a free
//! port beside any other server, found again, measured, stopped, and started warm.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use imsearch_store::server::{self, Server, ServerGuard, ServerOptions};

use crate::{cache_dir, free_port};

fn accepts(address: &str) -> bool {
    let address: SocketAddr = address.parse().expect("a socket address");
    TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok()
}

#[test]
fn a_server_is_installed_started_found_again_measured_stopped_and_started_warm() {
    let started = Instant::now();
    let install = server::install(&cache_dir()).expect("install milvus");
    eprintln!("install: {:.1?} in {}", started.elapsed(), install.dir.display());
    assert!(install.executable.is_file());

    let data = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    assert_ne!(port, server::DEFAULT_PORT);
    let options = ServerOptions { port, ..ServerOptions::new(data.path()) };

    let started = Instant::now();
    let guard = ServerGuard::new(server::start(&install, &options).expect("start milvus"));
    eprintln!("first start: {:.1?}, pid {}, health port {}", started.elapsed(), guard.pid, guard.health_port);
    assert_eq!(guard.address, format!("127.0.0.1:{port}"));
    assert_ne!(guard.health_port, port);
    assert!(guard.healthy(Duration::from_secs(5)));
    assert!(accepts(&guard.address));
    assert!(data.path().join("server.json").is_file());

    let again = server::start(&install, &options).expect("start milvus again");
    assert_eq!(again.pid, guard.pid);
    assert_eq!(again.health_port, guard.health_port);
    let found = Server::running(data.path()).expect("the server is found running");
    assert_eq!(found.pid, guard.pid);

    // Idle, just started.
    let rss = guard.memory_rss_bytes().expect("the server's memory");
    eprintln!("idle rss: {:.0} MB", rss as f64 / 1e6);
    assert!(rss > 10_000_000, "rss {rss}");

    let pid = guard.pid;
    let started = Instant::now();
    guard.stop().expect("stop milvus");
    eprintln!("stop: {:.1?}", started.elapsed());
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "process {pid} is still there");
    assert!(!accepts(&again.address), "{} still accepts connections", again.address);
    assert!(!data.path().join("server.json").exists());
    assert!(Server::running(data.path()).is_none());
    assert_eq!(again.memory_rss_bytes(), None);
    // Health on the now closed port is false within its timeout.
    let asked = Instant::now();
    assert!(!again.healthy(Duration::from_millis(500)));
    assert!(asked.elapsed() < Duration::from_secs(1), "health took {:?}", asked.elapsed());

    let started = Instant::now();
    let warm = ServerGuard::new(server::start(&install, &options).expect("start milvus warm"));
    eprintln!("warm start: {:.1?}, pid {}", started.elapsed(), warm.pid);
    assert_ne!(warm.pid, pid);
    assert_eq!(warm.health_port, again.health_port, "a restart keeps the data directory's ports");
    assert!(warm.healthy(Duration::from_secs(5)));
    warm.stop().expect("stop milvus warm");
}

#[test]
fn a_server_that_dies_while_starting_is_an_error_quoting_its_log() {
    let install = server::install(&cache_dir()).expect("install milvus");
    let data = tempfile::tempdir().expect("a temporary directory");
    // A file where the embedded etcd wants its directory.
    std::fs::create_dir_all(data.path().join("data")).expect("create data/");
    std::fs::write(data.path().join("data/etcd.data"), "not a directory").expect("write data/etcd.data");
    let options = ServerOptions { port: free_port(), ..ServerOptions::new(data.path()) };

    let error = server::start(&install, &options).expect_err("the server cannot start");
    let message = error.to_string();
    assert!(matches!(error, server::ServerError::Exited { .. }), "{message}");
    assert!(message.contains("etcd.data"), "{message}");
    assert!(!data.path().join("server.json").exists());
    assert!(Server::running(data.path()).is_none());
}
