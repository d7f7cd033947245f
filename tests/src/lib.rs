//! Helpers for end-to-end tests: start real `mirror-agent` processes on loopback, wait for
//! conditions with deadlines, compare trees. Every process started here is killed by its pid
//! when its handle drops.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

pub mod netns;
pub mod peer;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The default deadline for convergence in tests: generous, since CI machines are shared.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The `mirror-agent` binary built alongside the tests.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MIRROR_AGENT_BIN") {
        return PathBuf::from(p);
    }
    // Tests run from target/<profile>/deps/, benchmark binaries from target/<profile>/.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let p = d.join("mirror-agent");
        if p.exists() {
            return p;
        }
    }
    // Not built yet (a test run of this package alone): build it with the cargo running us.
    let profile_dir = dir.parent().filter(|_| dir.ends_with("deps")).unwrap_or(dir);
    let release = profile_dir.ends_with("release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "mirror-agent"]);
    if release {
        cmd.arg("--release");
    }
    let st = cmd.status().unwrap();
    let p = profile_dir.join("mirror-agent");
    assert!(st.success() && p.exists(), "could not build mirror-agent next to {}", exe.display());
    p
}

/// A running agent process. Killed (by pid) on drop.
#[derive(Debug)]
pub struct Agent {
    pub child: Child,
    log: Arc<Mutex<String>>,
    pub name: String,
    /// The default state dir (`XDG_STATE_HOME`) of an agent not given `--state-dir`.
    _state: tempfile::TempDir,
}

impl Agent {
    pub fn spawn(name: &str, args: &[&str]) -> Agent {
        Self::spawn_cmd(name, Command::new(bin()).args(args))
    }

    pub fn spawn_cmd(name: &str, cmd: &mut Command) -> Agent {
        let state = tempfile::tempdir().unwrap();
        let mut child = cmd
            .env("XDG_STATE_HOME", state.path())
            .env("MIRROR_LOG", std::env::var("MIRROR_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        {
            let log = log.clone();
            let name = name.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if std::env::var_os("MIRROR_TEST_ECHO").is_some() {
                        eprintln!("[{name}] {line}");
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        Agent { child, log, name: name.to_string(), _state: state }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`; returns the log.
    pub fn wait_log(&self, needle: &str) -> String {
        wait_until(&format!("{} to log {needle:?}", self.name), || self.log().contains(needle).then(|| self.log()))
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let end = Instant::now() + DEADLINE;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the log reader catch up with the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not exit within {DEADLINE:?}; log:\n{}", self.name, self.log());
    }

    /// Peak resident memory of the process, from /proc, in bytes.
    pub fn peak_rss(&self) -> u64 {
        self.proc_status("VmHWM:")
    }

    /// Resident memory of the process now, from /proc, in bytes.
    pub fn rss(&self) -> u64 {
        self.proc_status("VmRSS:")
    }

    fn proc_status(&self, field: &str) -> u64 {
        let s = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        self.wait_exit()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("----- log of {} -----\n{}", self.name, self.log());
        }
    }
}

/// A server on an ephemeral loopback port.
#[derive(Debug)]
pub struct Server {
    pub agent: Agent,
    pub port: u16,
}

impl Server {
    /// Starts a server for `root`, keeping its state beside it (`../state-server`), so that a
    /// restarted server finds its base again.
    pub fn start(root: &Path, extra: &[&str]) -> Server {
        Self::start_at(root, "127.0.0.1:0", extra)
    }

    /// [`Server::start`] on a given address (a restart on the same port).
    pub fn start_at(root: &Path, listen: &str, extra: &[&str]) -> Server {
        Self::start_env(root, listen, extra, &[])
    }

    /// [`Server::start_at`] with extra environment variables (`JOURNAL_STREAM`, ...).
    pub fn start_env(root: &Path, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let state = root.parent().unwrap().join("state-server");
        let mut args = vec!["--insecure"];
        args.extend_from_slice(extra);
        spawn_server_env(root, listen, &state, &args, env)
    }

    /// Starts a client of this server syncing `local` with `remote`, and waits until it has
    /// connected.
    pub fn client(&self, name: &str, local: &Path, remote: &str, extra: &[&str]) -> Agent {
        let a = self.spawn_client(name, local, remote, extra);
        a.wait_log("connected to");
        a
    }

    /// Starts a client without waiting for it to connect. Its state is kept beside `local`
    /// (`../state-NAME`), so that a restarted client finds its base again.
    pub fn spawn_client(&self, name: &str, local: &Path, remote: &str, extra: &[&str]) -> Agent {
        let state = local.parent().unwrap().join(format!("state-{name}"));
        let mut args = vec!["--insecure"];
        args.extend_from_slice(extra);
        spawn_client_to(self.port, name, local, remote, &state, &args)
    }
}

/// Starts a server on `listen` for `root` with its state in `state`; waits until it listens.
pub fn spawn_server(root: &Path, listen: &str, state: &Path, extra: &[&str]) -> Server {
    spawn_server_env(root, listen, state, extra, &[])
}

fn spawn_server_env(root: &Path, listen: &str, state: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut args =
        vec!["server", "--listen", listen, "--root", root.to_str().unwrap(), "--state-dir", state.to_str().unwrap()];
    args.extend_from_slice(extra);
    let agent = Agent::spawn_cmd("server", Command::new(bin()).args(&args).envs(env.iter().copied()));
    let log = agent.wait_log("listening on ");
    let port = log
        .lines()
        .find_map(|l| l.split("listening on 127.0.0.1:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    Server { agent, port }
}

/// Starts a client `name` of the server on loopback `port` syncing `local` with `remote`, its
/// state in `state`, without waiting for it to connect.
pub fn spawn_client_to(port: u16, name: &str, local: &Path, remote: &str, state: &Path, extra: &[&str]) -> Agent {
    let port = port.to_string();
    let mut args =
        vec!["client", "-h", "127.0.0.1", "-p", &port, "-l", local.to_str().unwrap(), "-r", remote, "--state-dir"];
    args.push(state.to_str().unwrap());
    args.extend_from_slice(extra);
    Agent::spawn(name, &args)
}

/// Runs a `mirror-agent` command to completion; returns its stdout.
pub fn run_agent(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(out.status.success(), "mirror-agent {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The device ID of the agent whose state is in `state`.
pub fn device_id(state: &Path) -> String {
    run_agent(&["id", "--state-dir", state.to_str().unwrap()]).trim().to_string()
}

/// Makes the agents with state in `a` and `b` trust each other.
pub fn pair(a: &Path, b: &Path) {
    let (ida, idb) = (device_id(a), device_id(b));
    run_agent(&["trust", &idb, "--state-dir", a.to_str().unwrap()]);
    run_agent(&["trust", &ida, "--state-dir", b.to_str().unwrap()]);
}

/// A TLS server (no `--insecure`) and the state dir of a client `name` it is paired with.
pub fn secure_server(area: &Area, clients: &[&str]) -> Server {
    let server_state = area.path("state-server");
    for name in clients {
        pair(&server_state, &area.path(&format!("state-{name}")));
    }
    spawn_server(&area.server_root(), "127.0.0.1:0", &server_state, &[])
}

/// Starts a TLS client `name` (state in `area/state-NAME`) of `port`, without waiting.
pub fn secure_client(area: &Area, name: &str, port: u16, local: &Path, remote: &str) -> Agent {
    spawn_client_to(port, name, local, remote, &area.path(&format!("state-{name}")), &[])
}

/// A well-behaved client of `server` (directory `good-TAG`) that must still sync, whatever a
/// hostile peer did before.
pub fn assert_still_serving(server: &Server, area: &Area, tag: &str) {
    let c = area.path(&format!("good-{tag}"));
    let client = server.client(&format!("good-{tag}"), &c, &format!("good-{tag}"), &[]);
    write(&c.join("ok.txt"), tag);
    wait_content(&area.path(&format!("server/good-{tag}/ok.txt")), tag.as_bytes());
    drop(client);
}

/// Polls `f` until it returns `Some`, or panics after [`DEADLINE`] naming `what`.
pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {DEADLINE:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One node of a tree as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File { hash: [u8; 32], exec: bool, mode: u32 },
    Dir,
    Link(PathBuf),
}

/// The agent's own directory at the top of every root: its temp and stash files, never synced.
pub const AGENT_DIR: &str = ".mirror-agent.tmp";

/// The synced view of a tree: everything but the agent's own directory ([`AGENT_DIR`], see
/// [`agent_files`]); temp files anywhere else are reported (there must be none).
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = fs::read_dir(root.join(&rel)) else { continue };
        for e in rd.flatten() {
            let p = rel.join(e.file_name());
            if p == Path::new(AGENT_DIR) {
                continue;
            }
            let Ok(m) = fs::symlink_metadata(root.join(&p)) else { continue };
            let node = if m.file_type().is_symlink() {
                // The agents work while we look: a link may go between lstat and readlink.
                let Ok(target) = fs::read_link(root.join(&p)) else { continue };
                Node::Link(target)
            } else if m.is_dir() {
                stack.push(p.clone());
                Node::Dir
            } else {
                let Ok(bytes) = fs::read(root.join(&p)) else { continue };
                let mode = m.permissions().mode() & 0o777;
                Node::File { hash: *blake3::hash(&bytes).as_bytes(), exec: mode & 0o100 != 0, mode }
            };
            out.insert(p, node);
        }
    }
    out
}

/// What is in the agent's directory of `root` (temp files of transfers under way, stash files).
pub fn agent_files(root: &Path) -> Vec<PathBuf> {
    let dir = root.join(AGENT_DIR);
    let mut out = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if d == dir && e.file_name() == ".gitignore" {
                continue; // the directory ignoring itself, for git
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
            out.push(e.path().strip_prefix(&dir).unwrap_or(&e.path()).to_path_buf());
        }
    }
    out
}

/// Paths outside the agent's directory that have a temp file's name, ours (`.mirror-agent.tmp-`,
/// beside a destination on another file system) or the old scheme's (`.mirror-tmp-`): where a
/// temp or stash file would stand in the user's view.
pub fn stray_temp_files(root: &Path) -> Vec<PathBuf> {
    snapshot(root)
        .into_keys()
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            n.starts_with(".mirror-agent.tmp") || n.starts_with(".mirror-tmp-")
        })
        .collect()
}

/// Waits until the two trees are identical; returns the common snapshot.
pub fn wait_same(a: &Path, b: &Path) -> BTreeMap<PathBuf, Node> {
    let end = Instant::now() + DEADLINE;
    loop {
        let (sa, sb) = (snapshot(a), snapshot(b));
        if sa == sb {
            return sa;
        }
        if Instant::now() > end {
            let only_a: Vec<_> = sa.iter().filter(|(k, v)| sb.get(*k) != Some(v)).map(|(k, _)| k).collect();
            let only_b: Vec<_> = sb.iter().filter(|(k, v)| sa.get(*k) != Some(v)).map(|(k, _)| k).collect();
            panic!(
                "trees {} and {} still differ after {DEADLINE:?}:\n  differ in a: {only_a:?}\n  differ in b: {only_b:?}",
                a.display(),
                b.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `path` holds exactly `content`.
pub fn wait_content(path: &Path, content: &[u8]) {
    wait_until(
        &format!("{} to hold {:?}", path.display(), String::from_utf8_lossy(&content[..content.len().min(40)])),
        || (fs::read(path).ok().as_deref() == Some(content)).then_some(()),
    );
}

/// Waits until nothing is at `path`.
pub fn wait_gone(path: &Path) {
    wait_until(&format!("{} to disappear", path.display()), || fs::symlink_metadata(path).is_err().then_some(()));
}

/// Files whose name contains `.conflict-` under `root`.
pub fn conflict_copies(root: &Path) -> Vec<PathBuf> {
    snapshot(root).into_keys().filter(|p| p.to_string_lossy().contains(".conflict-")).collect()
}

/// A fresh temp area with `server/` (the server root) and `client/` directories.
#[derive(Debug)]
pub struct Area {
    pub dir: tempfile::TempDir,
}

impl Area {
    pub fn new() -> Area {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("server")).unwrap();
        Area { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn server_root(&self) -> PathBuf {
        self.path("server")
    }
}

impl Default for Area {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes a file, creating parents.
pub fn write(path: &Path, content: impl AsRef<[u8]>) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, content).unwrap();
}

pub fn inode(path: &Path) -> u64 {
    fs::metadata(path).unwrap().ino()
}

/// A TCP proxy on loopback that can cut or freeze the connections passing through it, to play a
/// network that fails. New connections are accepted (and forwarded) until the proxy drops.
#[derive(Debug)]
pub struct FaultProxy {
    pub port: u16,
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// One-way latency added to every byte, in milliseconds.
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Bytes per second each direction carries at most (0: unlimited).
    rate: Arc<std::sync::atomic::AtomicU64>,
    /// Connections up to this generation are black holes (see [`FaultProxy::blackhole`]).
    dead_before: Arc<std::sync::atomic::AtomicU64>,
    /// Connections accepted so far (each one's generation).
    accepted: Arc<std::sync::atomic::AtomicU64>,
    /// Bytes delivered so far, towards the server and towards the client.
    carried: Arc<[std::sync::atomic::AtomicU64; 2]>,
}

impl FaultProxy {
    pub fn start(to: u16) -> FaultProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let frozen = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let rate = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let dead_before = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (c2, f2, s2, d2, r2) = (conns.clone(), frozen.clone(), stop.clone(), delay_ms.clone(), rate.clone());
        let db2 = dead_before.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let a2 = accepted.clone();
        let carried: Arc<[std::sync::atomic::AtomicU64; 2]> = Arc::default();
        let k2 = carried.clone();
        std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                let Ok((inbound, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = inbound.set_nonblocking(false);
                let Ok(outbound) = std::net::TcpStream::connect(("127.0.0.1", to)) else { continue };
                // The link itself must not hold small writes back (Nagle's algorithm waiting
                // for an ACK the other end delays): it delays by its own rules only.
                let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                let this = a2.fetch_add(1, Ordering::SeqCst) + 1;
                c2.lock().unwrap().extend([inbound.try_clone().unwrap(), outbound.try_clone().unwrap()]);
                for (dir, (mut from, to)) in
                    [(inbound.try_clone().unwrap(), outbound.try_clone().unwrap()), (outbound, inbound)]
                        .into_iter()
                        .enumerate()
                {
                    let carried = k2.clone();
                    let (frozen, stop, delay_ms, dead_before) = (f2.clone(), s2.clone(), d2.clone(), db2.clone());
                    // Bytes read are delivered by a second thread at read time + delay: latency
                    // without a cap on throughput, unless a rate is set. The queue between the
                    // two holds at most 256 reads (4 MiB): a slow link pushes back, as a real
                    // one does once its buffers are full.
                    let (tx, rx) = std::sync::mpsc::sync_channel::<(Instant, Vec<u8>)>(256);
                    let mut writer = to.try_clone().unwrap();
                    let rate = r2.clone();
                    std::thread::spawn(move || {
                        let mut budget_at = Instant::now();
                        while let Ok((at, bytes)) = rx.recv() {
                            let wait = at.saturating_duration_since(Instant::now());
                            std::thread::sleep(wait.min(Duration::from_secs(5)));
                            let r = rate.load(Ordering::SeqCst);
                            for piece in bytes.chunks(if r == 0 { usize::MAX } else { 1460 }) {
                                if r > 0 {
                                    // Paced: each piece leaves when the link has carried the last.
                                    budget_at = budget_at.max(Instant::now());
                                    std::thread::sleep(budget_at.saturating_duration_since(Instant::now()));
                                    budget_at += Duration::from_secs_f64(piece.len() as f64 / r as f64);
                                }
                                if std::io::Write::write_all(&mut writer, piece).is_err() {
                                    let _ = writer.shutdown(std::net::Shutdown::Both);
                                    return;
                                }
                                carried[dir].fetch_add(piece.len() as u64, Ordering::SeqCst);
                            }
                        }
                        let _ = writer.shutdown(std::net::Shutdown::Both);
                    });
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        from.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                        while !stop.load(Ordering::SeqCst) {
                            if frozen.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                            match std::io::Read::read(&mut from, &mut buf) {
                                Ok(0) => break,
                                Ok(_) if this <= dead_before.load(Ordering::SeqCst) => {} // swallowed
                                Ok(n) => {
                                    let at = Instant::now() + Duration::from_millis(delay_ms.load(Ordering::SeqCst));
                                    if tx.send((at, buf[..n].to_vec())).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        drop(tx); // the writer delivers what is in flight, then shuts down
                        let _ = to.shutdown(std::net::Shutdown::Read);
                    });
                }
            }
        });
        FaultProxy { port, conns, frozen, stop, delay_ms, rate, dead_before, accepted, carried }
    }

    /// Turns every connection open now into a black hole, both ways: bytes are read and
    /// dropped, nothing is closed, so each end sees a peer gone silent (a dead NAT entry, a
    /// laptop carried off). Later connections pass normally: a client that reconnects reaches
    /// a server still holding its old, silent connection.
    pub fn blackhole(&self) {
        // Connections are numbered from 1 as they are accepted; a later accept gets a higher one.
        let now = self.accepted.load(std::sync::atomic::Ordering::SeqCst);
        self.dead_before.store(now, std::sync::atomic::Ordering::SeqCst);
    }

    /// Caps each direction of every connection at `bytes_per_sec` (0: no cap): a slow link.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, std::sync::atomic::Ordering::SeqCst);
    }

    /// Adds `ms` milliseconds of latency each way to every connection.
    pub fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Bytes delivered so far through every connection: (towards the server, towards the client).
    pub fn carried(&self) -> (u64, u64) {
        let at = |i: usize| self.carried[i].load(std::sync::atomic::Ordering::SeqCst);
        (at(0), at(1))
    }

    /// Cuts every connection now open (both ends see a reset or EOF); later ones go through.
    pub fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Stops (or resumes) forwarding without closing anything: a peer gone silent.
    pub fn freeze(&self, on: bool) {
        self.frozen.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.cut();
    }
}
