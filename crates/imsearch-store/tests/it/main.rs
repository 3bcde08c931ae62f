//! Integration tests of imsearch-store against a real Milvus server: the pinned wheel is
//! installed once per machine under the work directory's `milvus/`, and each test that needs a
//! server starts its own in a temporary data directory on a free port (about 3 s).

mod collection;
mod server;

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;

use imsearch_store::server::{self as milvus, ServerGuard, ServerOptions};

/// Where the product keeps the install (`<IMSEARCH_WORKDIR or ~/.local/share/imsearch>/milvus`),
/// so that the download happens once per machine.
pub(crate) fn cache_dir() -> PathBuf {
    let workdir = match std::env::var_os("IMSEARCH_WORKDIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".local/share/imsearch"),
    };
    workdir.join("milvus")
}

pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind a free port");
    listener.local_addr().expect("a bound listener has an address").port()
}

/// A running server of its own, stopped (and its data directory removed) when dropped.
pub(crate) struct TestServer {
    pub(crate) guard: ServerGuard,
    _data: tempfile::TempDir,
}

impl std::ops::Deref for TestServer {
    type Target = milvus::Server;
    fn deref(&self) -> &milvus::Server {
        &self.guard
    }
}

pub(crate) fn server_for_tests() -> TestServer {
    let install = milvus::install(&cache_dir()).expect("install milvus");
    let data = tempfile::tempdir().expect("a temporary directory");
    let options = ServerOptions { port: free_port(), ..ServerOptions::new(data.path()) };
    let guard = ServerGuard::new(milvus::start(&install, &options).expect("start milvus"));
    TestServer { guard, _data: data }
}
