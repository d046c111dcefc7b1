//! The embedded default: a private PostgreSQL cluster started from the local PostgreSQL binaries,
//! with its data under `.moat/` next to the manifest, listening on loopback and on a socket in
//! that folder, reused by the next run and stopped with `moat dev stop`.
//!
//! Two moat processes that start it at once serialize on an exclusive lock on `.moat/pg/lock`:
//! the second finds the cluster initialized and running. PostgreSQL refuses to run as root; when
//! moat runs as root it runs the cluster as the unprivileged `postgres` system user.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::error::AdminError;
use crate::target::DatabaseUrl;

/// The folder next to the manifest that holds moat's local state.
pub const STATE_DIR: &str = ".moat";

/// Options of an embedded cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// The cluster's folder (`<manifest dir>/.moat/pg` for `moat dev`).
    pub dir: PathBuf,
    /// Skip fsync (test clusters only: faster, not crash-safe).
    pub durable: bool,
    /// `wal_level = logical` with replication slots and senders, for `moat extract --mode
    /// replicate` (the default; `false` only for tests of a server without it).
    pub logical: bool,
}

impl EmbeddedOptions {
    /// The default cluster of a project: `<root>/.moat/pg`, durable.
    pub fn for_project(root: &Path) -> Self {
        Self { dir: root.join(STATE_DIR).join("pg"), durable: true, logical: true }
    }
}

/// A running embedded cluster.
#[derive(Debug, Clone)]
pub struct RunningCluster {
    /// Its folder.
    pub dir: PathBuf,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// Whether this call started it (false: it was already running).
    pub started: bool,
}

impl RunningCluster {
    /// The superuser URL of a database in this cluster (trust authentication on loopback only).
    pub fn url(&self, database: &str) -> DatabaseUrl {
        // The URL is built from a port number and a validated database name; parsing cannot fail.
        DatabaseUrl::parse(&format!("postgres://postgres@127.0.0.1:{}/{database}", self.port))
            .unwrap_or_else(|_| unreachable_url())
    }
}

#[allow(clippy::panic)]
fn unreachable_url() -> DatabaseUrl {
    panic!("BUG: an embedded cluster URL failed to parse")
}

/// Where the PostgreSQL server binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The folder holding `initdb`, `pg_ctl` and `postgres`.
    pub bindir: PathBuf,
}

impl Binaries {
    fn tool(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

/// Finds the PostgreSQL server binaries: `MOAT_PG_BINDIR`, `PATH`, `pg_config --bindir`, then the
/// usual distribution folders (newest version first).
pub fn find_binaries() -> Result<Binaries, AdminError> {
    for dir in candidate_dirs() {
        let dir =
            fs::canonicalize(dir.join("initdb")).ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or(dir);
        if ["initdb", "pg_ctl", "postgres"].iter().all(|tool| is_executable(&dir.join(tool))) {
            return Ok(Binaries { bindir: dir });
        }
    }
    Err(AdminError::Embedded {
        message: "no database URL was given and no PostgreSQL server binaries (initdb, pg_ctl, postgres) were found for the embedded default".into(),
        help: "install the PostgreSQL server: `sudo apt-get install postgresql` (Debian/Ubuntu), `sudo dnf install postgresql-server` (Fedora) or `brew install postgresql` (macOS); \
               or set MOAT_PG_BINDIR to the folder holding initdb; or point moat at a server with --database-url or DATABASE_URL"
            .into(),
    })
}

/// Finds a PostgreSQL client program (`pg_dump`, `pg_restore`) whose major version is at least
/// `min_major` (a dump taken by an older `pg_dump` than the server is refused by it), searching
/// where [`find_binaries`] does.
pub fn find_client_tool(name: &str, min_major: u32) -> Result<PathBuf, AdminError> {
    let mut seen: Vec<(PathBuf, String)> = Vec::new();
    for dir in candidate_dirs() {
        let tool = dir.join(name);
        if !is_executable(&tool) || seen.iter().any(|(p, _)| p == &tool) {
            continue;
        }
        let version = Command::new(&tool)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        // `pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)`
        let major = version
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.split('.').next())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        if major >= min_major {
            return Ok(tool);
        }
        seen.push((tool, version));
    }
    let found = if seen.is_empty() {
        "none was found".to_owned()
    } else {
        seen.iter().map(|(p, v)| format!("`{}` ({v})", p.display())).collect::<Vec<_>>().join(", ")
    };
    Err(AdminError::Embedded {
        message: format!("`moat extract` needs `{name}` of PostgreSQL {min_major} or newer: {found}"),
        help: format!(
            "install the PostgreSQL {min_major} client (`sudo apt-get install postgresql-client-{min_major}` on Debian/Ubuntu), \
             or set MOAT_PG_BINDIR to the folder holding its `{name}`"
        ),
    })
}

/// Where PostgreSQL programs may be: `MOAT_PG_BINDIR`, `PATH`, `pg_config --bindir`, then the
/// usual distribution folders (newest version first).
fn candidate_dirs() -> Vec<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("MOAT_PG_BINDIR") {
        candidates.push(PathBuf::from(dir));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    for pattern in ["/usr/lib/postgresql", "/usr/pgsql-", "/opt/homebrew/opt/postgresql@", "/usr/local/opt/postgresql@"]
    {
        candidates.extend(versioned_dirs(pattern));
    }
    candidates.push(PathBuf::from("/usr/local/pgsql/bin"));
    candidates
}

/// `<prefix><version>/bin` folders, newest version first (`/usr/lib/postgresql/16/bin`, ...).
fn versioned_dirs(prefix: &str) -> Vec<PathBuf> {
    let (parent, stem) = match prefix.rsplit_once('/') {
        Some((parent, stem)) => (PathBuf::from(parent), stem.to_owned()),
        None => return Vec::new(),
    };
    let Ok(entries) = fs::read_dir(&parent) else { return Vec::new() };
    let mut found: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix(&stem)?.split('.').next()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().map(|(_, p)| p).collect()
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// The OS user the cluster runs as: the current one, or `postgres` when moat runs as root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
    switch: bool,
}

fn run_as() -> Result<RunAs, AdminError> {
    let uid = nix::unistd::geteuid();
    if !uid.is_root() {
        return Ok(RunAs { uid: uid.as_raw(), gid: nix::unistd::getegid().as_raw(), switch: false });
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(user)) => Ok(RunAs { uid: user.uid.as_raw(), gid: user.gid.as_raw(), switch: true }),
        _ => Err(AdminError::Embedded {
            message: "PostgreSQL refuses to run as root, and there is no `postgres` system user to run the embedded cluster as".into(),
            help: "run moat as an unprivileged user, create a `postgres` user (`useradd --system postgres`), or pass --database-url".into(),
        }),
    }
}

impl RunAs {
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        if self.switch {
            command.uid(self.uid).gid(self.gid);
            // A child switched to another user must not inherit root's HOME or a cwd it cannot read.
            command.env("HOME", "/tmp").current_dir("/");
        }
        command
    }

    fn own(&self, path: &Path) -> Result<(), AdminError> {
        if self.switch {
            nix::unistd::chown(path, Some(self.uid.into()), Some(self.gid.into())).map_err(|e| AdminError::Io {
                action: "change the owner of",
                path: path.to_owned(),
                source: std::io::Error::from(e),
            })?;
        }
        Ok(())
    }
}

fn io<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> AdminError + 'p {
    move |source| AdminError::Io { action, path: path.to_owned(), source }
}

/// Starts the cluster if it is not running (initializing it first if needed) and returns it.
/// Blocking; call it from `spawn_blocking` in async code.
pub fn ensure_running(options: &EmbeddedOptions) -> Result<RunningCluster, AdminError> {
    let dir = absolute(&options.dir)?;
    fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    if let Some(state) = dir.parent() {
        // `.moat` itself must let the cluster's user through when that user is not us.
        let _ = fs::set_permissions(state, fs::Permissions::from_mode(0o755));
    }
    let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o755));
    let lock_path = dir.join("lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("open", &lock_path))?;
    lock.lock().map_err(io("lock", &lock_path))?;
    let result = ensure_running_locked(&dir, options);
    let _ = lock.unlock();
    result
}

fn absolute(path: &Path) -> Result<PathBuf, AdminError> {
    if path.is_absolute() {
        Ok(path.to_owned())
    } else {
        std::env::current_dir().map(|cwd| cwd.join(path)).map_err(io("resolve", path))
    }
}

fn ensure_running_locked(dir: &Path, options: &EmbeddedOptions) -> Result<RunningCluster, AdminError> {
    let binaries = find_binaries()?;
    let user = run_as()?;
    if user.switch {
        check_traversable(dir)?;
    }
    let data = dir.join("data");
    let run = dir.join("run");
    let log = dir.join("postgres.log");

    if !data.join("PG_VERSION").is_file() {
        initdb(&binaries, user, dir, &data)?;
    }
    {
        let path = &run;
        fs::create_dir_all(path).map_err(io("create", path))?;
        user.own(path)?;
    }
    if let Some(port) = running_port(&binaries, user, &data) {
        // A cluster an older moat started runs without logical replication; a throwaway one (the
        // tests') is restarted with today's settings, a durable one (`moat dev`) is left running
        // (`moat extract` says to restart it when it needs replication).
        let current = fs::read_to_string(data.join("postmaster.opts"))
            .is_ok_and(|o| o.contains("wal_level=logical") == options.logical);
        if current || options.durable {
            return Ok(RunningCluster { dir: dir.to_owned(), port, started: false });
        }
        let output = pg_ctl_stop(&binaries, user, &data)?;
        if !output.status.success() {
            return Err(AdminError::Embedded {
                message: format!(
                    "restarting the embedded PostgreSQL in `{}` with logical replication failed: {}",
                    dir.display(),
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
                help: format!("stop it (`pg_ctl stop -D {}`) and run moat again", data.display()),
            });
        }
    }

    let port_file = dir.join("port");
    let mut port =
        fs::read_to_string(&port_file).ok().and_then(|p| p.trim().parse::<u16>().ok()).filter(|p| port_is_free(*p));
    for _attempt in 0..3 {
        let chosen = match port {
            Some(p) => p,
            None => free_port()?,
        };
        fs::write(&port_file, format!("{chosen}\n")).map_err(io("write", &port_file))?;
        if !log.exists() {
            fs::write(&log, "").map_err(io("create", &log))?;
        }
        user.own(&log)?;
        let server_options = format!(
            "-c listen_addresses=127.0.0.1 -c port={chosen} -c unix_socket_directories='{}' -c fsync={} -c synchronous_commit={} -c full_page_writes={} -c max_connections=300{}",
            run.display(),
            on_off(options.durable),
            on_off(options.durable),
            on_off(options.durable),
            if options.logical {
                " -c wal_level=logical -c max_replication_slots=16 -c max_wal_senders=16 \
                 -c max_logical_replication_workers=16 -c max_worker_processes=32"
            } else {
                ""
            },
        );
        let output = output_of(
            user.command(&binaries.tool("pg_ctl"))
                .args(["start", "--wait", "--timeout=60", "--silent", "-D"])
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .arg("-o")
                .arg(&server_options),
            "pg_ctl start",
        )?;
        if output.status.success() {
            return Ok(RunningCluster { dir: dir.to_owned(), port: chosen, started: true });
        }
        let tail = log_tail(&log);
        if tail.contains("could not bind") || tail.contains("Address already in use") {
            port = None;
            continue;
        }
        return Err(AdminError::Embedded {
            message: format!(
                "the embedded PostgreSQL in `{}` did not start:\n{}{}",
                dir.display(),
                String::from_utf8_lossy(&output.stderr),
                tail
            ),
            help: format!("read `{}`; `moat dev stop` stops a half-started cluster", log.display()),
        });
    }
    Err(AdminError::Embedded {
        message: "the embedded PostgreSQL could not find a free port on 127.0.0.1".into(),
        help: "free a port, or pass --database-url".into(),
    })
}

/// When the cluster runs as the `postgres` user, every folder above its own must let others in.
fn check_traversable(dir: &Path) -> Result<(), AdminError> {
    let mut current = dir.parent();
    while let Some(folder) = current {
        if let Ok(meta) = fs::metadata(folder)
            && meta.permissions().mode() & 0o001 == 0
        {
            return Err(AdminError::Embedded {
                message: format!(
                    "moat runs as root, so the embedded PostgreSQL runs as the `postgres` user, which cannot enter `{}`",
                    folder.display()
                ),
                help: format!(
                    "allow it (`chmod o+x {}`), run moat as an unprivileged user, or pass --database-url",
                    folder.display()
                ),
            });
        }
        current = folder.parent();
    }
    Ok(())
}

fn on_off(value: bool) -> &'static str {
    if value { "on" } else { "off" }
}

fn initdb(binaries: &Binaries, user: RunAs, dir: &Path, data: &Path) -> Result<(), AdminError> {
    // A half-initialized folder from an interrupted run is started over.
    if data.exists() {
        fs::remove_dir_all(data).map_err(io("remove", data))?;
    }
    fs::create_dir_all(data).map_err(io("create", data))?;
    fs::set_permissions(data, fs::Permissions::from_mode(0o700)).map_err(io("set permissions of", data))?;
    user.own(dir)?;
    user.own(data)?;
    let output = output_of(
        user.command(&binaries.tool("initdb")).arg("-D").arg(data).args([
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]),
        "initdb",
    )?;
    if !output.status.success() {
        return Err(AdminError::Embedded {
            message: format!(
                "initdb failed for the embedded PostgreSQL in `{}`:\n{}",
                data.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            help: if user.switch {
                "moat runs the cluster as the `postgres` user because it runs as root; every folder above `.moat` must be readable by that user".into()
            } else {
                "check that the folder is writable".into()
            },
        });
    }
    let mut hba =
        fs::OpenOptions::new().write(true).truncate(true).open(data.join("pg_hba.conf")).map_err(io("write", data))?;
    // Trust on the private socket and loopback only: the cluster is for this machine's user.
    hba.write_all(b"# written by moat: the embedded cluster trusts local connections only\nlocal all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n")
        .map_err(io("write", data))?;
    Ok(())
}

fn output_of(command: &mut Command, what: &str) -> Result<Output, AdminError> {
    command.stdin(Stdio::null()).output().map_err(|e| AdminError::Embedded {
        message: format!("cannot run {what}: {e}"),
        help: "check the PostgreSQL installation (MOAT_PG_BINDIR selects the binaries)".into(),
    })
}

/// The port of the running postmaster, from `postmaster.pid`, if `pg_ctl status` says it runs.
fn running_port(binaries: &Binaries, user: RunAs, data: &Path) -> Option<u16> {
    let status = user
        .command(&binaries.tool("pg_ctl"))
        .arg("status")
        .arg("-D")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    let pid_file = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    pid_file.lines().nth(3)?.trim().parse().ok()
}

/// Stops the cluster if it runs; returns whether it was running.
pub fn stop(dir: &Path) -> Result<bool, AdminError> {
    let dir = absolute(dir)?;
    let data = dir.join("data");
    if !data.join("PG_VERSION").is_file() {
        return Ok(false);
    }
    let binaries = find_binaries()?;
    let user = run_as()?;
    if running_port(&binaries, user, &data).is_none() {
        return Ok(false);
    }
    let output = pg_ctl_stop(&binaries, user, &data)?;
    if !output.status.success() {
        return Err(AdminError::Embedded {
            message: format!("pg_ctl stop failed: {}", String::from_utf8_lossy(&output.stderr).trim()),
            help: format!("read `{}`", dir.join("postgres.log").display()),
        });
    }
    Ok(true)
}

/// `pg_ctl stop` (fast mode, waiting) of the cluster in `data`.
fn pg_ctl_stop(binaries: &Binaries, user: RunAs, data: &Path) -> Result<Output, AdminError> {
    output_of(
        user.command(&binaries.tool("pg_ctl")).args(["stop", "--wait", "-m", "fast", "-D"]).arg(data),
        "pg_ctl stop",
    )
}

fn free_port() -> Result<u16, AdminError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| AdminError::Embedded {
        message: format!("cannot find a free port on 127.0.0.1: {e}"),
        help: "check the loopback interface".into(),
    })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| AdminError::Embedded { message: e.to_string(), help: String::new() })
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Creates a database in the cluster if it does not exist (for the project database).
pub async fn ensure_database(server: &DatabaseUrl, database: &str) -> Result<(), AdminError> {
    use sqlx::Connection;
    let mut conn = crate::connect(&server.with_database("postgres")).await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(database)
        .fetch_one(&mut conn)
        .await
        .map_err(crate::error::db("looking up the database"))?;
    if !exists {
        let sql = format!("CREATE DATABASE {}", moat_core::quote::ident(database));
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await {
            Ok(_) => {}
            // Another process created it first.
            Err(e) if matches!(crate::error::sqlstate(&e).as_deref(), Some("42P04" | "23505")) => {}
            Err(e) => return Err(crate::error::db(format!("creating database `{database}`"))(e)),
        }
    }
    let _ = conn.close().await;
    Ok(())
}
