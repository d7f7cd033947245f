//! One client pair or one server, with its own event loop, engines and watchers: what
//! `mirror-agent client` and `server` run in the foreground, and what `mirror-agent run` runs once
//! per configured pair under supervision.

use crate::engine::{self, EngineConfig, EngineHandle};
use crate::link::{NetHandle, ToEngine};
use crate::net;
use crate::status::{State, Status};
use crate::tls::Tls;
use anyhow::Context;
use crossbeam_channel::bounded;
use mio::{Poll, Waker};
use mirror_backends::Backend;
use mirror_protocol::Hello;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Settings every pair of a process shares.
#[derive(Clone, Debug)]
pub struct Shared {
    pub state_dir: PathBuf,
    pub backend: Backend,
    pub poll_interval: Duration,
    pub debug_prefix: Option<Vec<u8>>,
}

/// What one client pair syncs, and with whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSpec {
    pub local: PathBuf,
    pub host: String,
    pub port: u16,
    pub remote: String,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// Where a server listens and what it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    pub listen: String,
    pub root: PathBuf,
}

/// Stops a worker from another thread: sets its flag and wakes its event loop.
#[derive(Clone, Debug, Default)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    waker: Arc<Mutex<Option<Arc<Waker>>>>,
}

impl Stopper {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Some(w) = self.waker.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            let _ = w.wake();
        }
    }

    fn attach(&self, waker: Arc<Waker>) {
        // A stop that came before the loop had a waker: the flag is seen at the loop's first turn.
        *self.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(waker);
    }
}

/// The event loop and the handle engines use to reach it.
struct Loop {
    poll: Poll,
    net_rx: crossbeam_channel::Receiver<crate::link::ToNet>,
    parked: Arc<AtomicBool>,
    handle: NetHandle,
    waker: Arc<Waker>,
}

fn new_loop(stop: &Stopper) -> anyhow::Result<Loop> {
    let poll = Poll::new().context("creating the event loop")?;
    let waker = Arc::new(Waker::new(poll.registry(), net::WAKER).context("creating the waker")?);
    let (net_tx, net_rx) = bounded(1024);
    let parked = Arc::new(AtomicBool::new(false));
    let handle = NetHandle { tx: net_tx, waker: waker.clone(), parked: parked.clone() };
    stop.attach(waker.clone());
    Ok(Loop { poll, net_rx, parked, handle, waker })
}

fn engine_cfg(
    shared: &Shared,
    root: PathBuf,
    include: Vec<String>,
    exclude: Vec<String>,
    resume: bool,
) -> EngineConfig {
    EngineConfig {
        root,
        host: crate::hostname(),
        includes: include,
        excludes: exclude,
        backend: shared.backend,
        poll_interval: shared.poll_interval,
        debug_prefix: shared.debug_prefix.clone(),
        state_dir: shared.state_dir.clone(),
        resume,
        status: None,
    }
}

/// Syncs one local directory with a server until stopped; an error ends it (a halt, a refusal
/// by the server, a directory that cannot be watched).
pub fn run_client(
    shared: &Shared,
    tls: Option<Tls>,
    spec: &ClientSpec,
    resume: bool,
    stop: &Stopper,
    status: &Status,
) -> anyhow::Result<()> {
    let l = new_loop(stop)?;
    std::fs::create_dir_all(&spec.local).with_context(|| format!("creating {}", spec.local.display()))?;
    let local = spec.local.canonicalize().with_context(|| format!("resolving {}", spec.local.display()))?;
    let mut cfg = engine_cfg(shared, local, spec.include.clone(), spec.exclude.clone(), resume);
    cfg.status = Some(status.clone());
    let engine = engine::spawn(cfg, l.handle.clone())?;
    let (engine_tx, replica) = (engine.tx.clone(), engine.replica);
    let done = watch_engine(engine, stop.clone(), l.waker.clone());
    let host = &spec.host;
    let addr = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", spec.port)
    } else {
        format!("{host}:{}", spec.port)
    };
    let hello = Hello {
        replica,
        host: crate::hostname(),
        remote: spec.remote.as_bytes().to_vec(),
        includes: spec.include.clone(),
        excludes: spec.exclude.clone(),
    };
    let role = net::Role::Client { addr, hello, engine: engine_tx.clone() };
    let result = net::Net::new(l.poll, l.net_rx, l.parked, stop.flag.clone(), role, tls, Some(status.clone()))?.run();
    let _ = engine_tx.send(ToEngine::Shutdown);
    let engine_result = done.join().unwrap_or_else(|_| Err("engine thread panicked".into()));
    result?;
    engine_result.map_err(anyhow::Error::msg)
}

/// Serves directories under `spec.root` to any number of clients until stopped.
pub fn run_server(
    shared: &Shared,
    tls: Option<Tls>,
    spec: &ServerSpec,
    resume: bool,
    stop: &Stopper,
    status: &Status,
) -> anyhow::Result<()> {
    let l = new_loop(stop)?;
    let root = spec.root.canonicalize().with_context(|| format!("server root {}", spec.root.display()))?;
    let addr = net_addr(&spec.listen)?;
    let listener = mio::net::TcpListener::bind(addr).with_context(|| format!("listening on {}", spec.listen))?;
    log::info!("listening on {} (serving {})", listener.local_addr()?, root.display());
    status.set_scanned();
    status.set_state(State::Listening);
    // One engine per served directory, shared by every client of that directory, with the
    // patterns of the client that opened it. A client asking for the same directory with other
    // patterns is refused with the reason while another client uses it (its patterns would
    // silently not apply: issue 11, item 15); when nobody does, the engine is restarted with
    // the new patterns (a user who changed their -e).
    type Served = (EngineHandle, Vec<String>, Vec<String>);
    let engines: Arc<Mutex<HashMap<PathBuf, Served>>> = Arc::default();
    let factory = {
        let engines = engines.clone();
        let handle = l.handle.clone();
        let shared = shared.clone();
        Box::new(move |path: PathBuf, hello: &Hello| {
            let mut map = engines.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((h, inc, exc)) = map.get(&path)
                && !h.thread.is_finished()
            {
                if *inc == hello.includes && *exc == hello.excludes {
                    return Ok((h.tx.clone(), h.replica));
                }
                if h.attached.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                    anyhow::bail!(
                        "another client syncs this directory with other patterns ({}); every client of \
                         one directory must use the same -i/-e patterns (yours: {})",
                        show_patterns(inc, exc),
                        show_patterns(&hello.includes, &hello.excludes)
                    );
                }
                log::info!("{}: restarting its engine with the patterns of {}", path.display(), hello.host);
                if let Some((old, _, _)) = map.remove(&path) {
                    let _ = old.tx.send(ToEngine::Shutdown);
                    let _ = old.thread.join();
                }
            }
            let cfg = engine_cfg(&shared, path.clone(), hello.includes.clone(), hello.excludes.clone(), resume);
            let h = engine::spawn(cfg, handle.clone())?;
            let answer = (h.tx.clone(), h.replica);
            map.insert(path, (h, hello.includes.clone(), hello.excludes.clone()));
            Ok(answer)
        }) as net::EngineFactory
    };
    let role = net::Role::Server { listener, root, engines: factory };
    let result = net::Net::new(l.poll, l.net_rx, l.parked, stop.flag.clone(), role, tls, Some(status.clone()))?.run();
    let all: Vec<EngineHandle> =
        engines.lock().unwrap_or_else(PoisonError::into_inner).drain().map(|(_, (h, _, _))| h).collect();
    for h in &all {
        let _ = h.tx.send(ToEngine::Shutdown);
    }
    for h in all {
        let _ = h.thread.join();
    }
    result
}

pub fn net_addr(s: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .with_context(|| format!("bad listen address {s:?}"))?
        .next()
        .with_context(|| format!("no address for {s:?}"))
}

/// Ends the worker's loop when its engine ends (a halted pair, a crash), and hands back how it
/// ended.
fn watch_engine(engine: EngineHandle, stop: Stopper, waker: Arc<Waker>) -> std::thread::JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        let r = engine.thread.join().unwrap_or_else(|_| Err("engine thread panicked".into()));
        stop.flag.store(true, Ordering::SeqCst);
        let _ = waker.wake();
        r
    })
}

/// `-i`/`-e` patterns as a user would type them.
fn show_patterns(includes: &[String], excludes: &[String]) -> String {
    let all: Vec<String> =
        includes.iter().map(|p| format!("-i {p:?}")).chain(excludes.iter().map(|p| format!("-e {p:?}"))).collect();
    if all.is_empty() { "no patterns".into() } else { all.join(" ") }
}
