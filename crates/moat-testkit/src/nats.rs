//! A `nats-server` of a test's own: JetStream enabled, on a free port of 127.0.0.1, its store in a
//! temporary folder; killed when dropped.
//!
//! A test never skips when `nats-server` is missing: [`NatsServer::start`] fails with a message
//! that says how to install it (`scripts/setup` does it).

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long [`NatsServer::start`] and [`NatsServer::restart`] wait for the server to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`NatsServer::stop`] waits for a graceful exit before it kills the server.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `nats-server` with JetStream, for one test. Dropping it kills the server.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    /// The JetStream store (`-sd`): the server keeps its streams in `<dir>/jetstream`. The log
    /// (`nats.log`) lives here too.
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server on a free port of 127.0.0.1 with a fresh JetStream store, and waits (up to
    /// 10 s) until it accepts clients. Blocks the calling thread; fine in async tests too.
    ///
    /// Panics when `nats-server` is not installed (saying how to install it), or when the server
    /// does not become ready (with the tail of its log).
    pub fn start() -> Self {
        let binary = find_binary();
        let port = free_port();
        let dir = tempfile::Builder::new().prefix("moat-test-nats-").tempdir().unwrap();
        let mut server = Self { binary, port, dir, child: None };
        server.spawn_until_ready();
        server
    }

    /// The client URL: `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port on 127.0.0.1 (the same across [`NatsServer::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder given to the server as its store (`-sd`); JetStream keeps its data in the
    /// `jetstream` folder inside it. The same across [`NatsServer::restart`].
    pub fn store_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// The process id of the running server, or `None` after [`NatsServer::kill`] or
    /// [`NatsServer::stop`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process is running (it has not been killed, stopped, or exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server (SIGKILL, as a crash would) and waits for it to exit. Does nothing when it
    /// is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server gracefully (SIGTERM) and waits for it to exit; kills it if it has not
    /// exited after 10 s. Does nothing when it is not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the server if it runs, then starts it again on the same port with the same store,
    /// and waits until it is ready. JetStream data written before survives (as far as the server
    /// had written it to disk).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn_until_ready();
    }

    /// Starts the process and waits until it is ready. The port may still be held briefly by the
    /// previous process (or its connections): when the server exits before it is ready, start it
    /// again until the deadline.
    fn spawn_until_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let log_offset = std::fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0);
            self.spawn();
            match self.wait_ready(log_offset, deadline) {
                Ok(()) => return,
                Err(exited) => {
                    self.kill();
                    if !exited || Instant::now() >= deadline {
                        panic!(
                            "nats-server ({} on port {}) did not become ready within {READY_TIMEOUT:?}; \
                             the end of its log `{}`:\n{}",
                            self.binary.display(),
                            self.port,
                            self.log_path().display(),
                            log_tail(&self.log_path())
                        );
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn spawn(&mut self) {
        let dir = self.dir.path();
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("stderr.log")).unwrap();
        let child = Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(dir)
            .arg("-l")
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// Waits until the server's log (past `log_offset`, where this start's lines begin) says it is
    /// ready and its port accepts a connection. `Err(true)` when the process exited first,
    /// `Err(false)` at the deadline.
    fn wait_ready(&mut self, log_offset: u64, deadline: Instant) -> Result<(), bool> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if !self.is_running() {
                return Err(true);
            }
            if log_since(&self.log_path(), log_offset).contains("Server is ready")
                && TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `nats-server` binary: `MOAT_NATS_SERVER`, else the one on `PATH`, else the usual places.
fn find_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MOAT_NATS_SERVER").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !is_executable(&path) {
            panic!("MOAT_NATS_SERVER is `{}`, which is not an executable file", path.display());
        }
        return path;
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("nats-server")).collect::<Vec<_>>())
        .unwrap_or_default();
    let usual = ["/usr/sbin/nats-server", "/usr/local/bin/nats-server"].map(PathBuf::from);
    on_path.into_iter().chain(usual).find(|path| is_executable(path)).unwrap_or_else(|| {
        panic!(
            "the NATS tests need `nats-server` (with JetStream), which is not installed: it is not on PATH, \
             in /usr/sbin or /usr/local/bin, and MOAT_NATS_SERVER is not set. Run `scripts/setup` \
             (or `apt-get install nats-server`), or set MOAT_NATS_SERVER to the binary."
        )
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// A port of 127.0.0.1 that nothing listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// The log from byte `offset` on (empty when there is none).
fn log_since(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path)
        && file.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = file.read_to_string(&mut text);
    }
    text
}

/// The last lines of the log, and of the server's stderr if it wrote any.
fn log_tail(path: &Path) -> String {
    let mut lines: Vec<String> = std::fs::File::open(path)
        .map(|file| BufReader::new(file).lines().map_while(Result::ok).collect())
        .unwrap_or_default();
    if let Some(dir) = path.parent()
        && let Ok(stderr) = std::fs::read_to_string(dir.join("stderr.log"))
    {
        lines.extend(stderr.lines().map(|line| format!("stderr: {line}")));
    }
    if lines.is_empty() {
        return "(empty)".to_owned();
    }
    let skip = lines.len().saturating_sub(30);
    lines[skip..].join("\n")
}
