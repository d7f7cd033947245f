//! One client pair or one server, with its own event loop, engines and watchers: what
//! `mirror-agent client` and `server` run in the foreground, and what `mirror-agent run` runs once
//! per configured pair under supervision.

use crate::engine::{self, EngineConfig, EngineHandle};
use crate::error::Error;
use crate::link::{NetHandle, ToEngine};
use crate::net;
use crate::status::{State, Status};
use crate::tls::Tls;
use crossbeam_channel::{Receiver, Sender, bounded};
use mio::{Poll, Waker};
use mirror_backends::Backend;
use mirror_protocol::Hello;
use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
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
    /// The end-to-end tests' hidden flags.
    pub hooks: crate::cli::TestHooks,
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

/// The one way to stop something from another thread (a signal, the daemon, an engine that
/// ended), waking whoever sleeps on it at once: a flag the mio loop checks after its `Waker`
/// woke it, and a channel that disconnects, for threads that sleep in `select!` or `recv`.
/// Stopping twice is stopping once.
#[derive(Clone, Debug)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    waker: Arc<Mutex<Option<Arc<Waker>>>>,
    /// Dropped by [`Stopper::stop`]: every clone of `stopped` then disconnects.
    tx: Arc<Mutex<Option<Sender<Infallible>>>>,
    stopped: Receiver<Infallible>,
}

impl Default for Stopper {
    fn default() -> Self {
        let (tx, stopped) = bounded(0);
        Stopper { flag: Arc::default(), waker: Arc::default(), tx: Arc::new(Mutex::new(Some(tx))), stopped }
    }
}

impl Stopper {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        drop(self.tx.lock().unwrap_or_else(PoisonError::into_inner).take());
        if let Some(w) = self.waker.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            let _ = w.wake();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Ready (disconnected) once stopped: `recv(stop.stopped()) -> _ => ...` in a `select!`.
    pub fn stopped(&self) -> &Receiver<Infallible> {
        &self.stopped
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
}

fn new_loop(stop: &Stopper) -> Result<Loop, Error> {
    let poll = Poll::new().map_err(Error::io("creating the event loop"))?;
    let waker = Arc::new(Waker::new(poll.registry(), net::WAKER).map_err(Error::io("creating the waker"))?);
    let (net_tx, net_rx) = bounded(1024);
    let parked = Arc::new(AtomicBool::new(false));
    let handle = NetHandle { tx: net_tx, waker: waker.clone(), parked: parked.clone() };
    stop.attach(waker);
    Ok(Loop { poll, net_rx, parked, handle })
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
        hooks: shared.hooks.clone(),
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
) -> Result<(), Error> {
    let l = new_loop(stop)?;
    std::fs::create_dir_all(&spec.local).map_err(Error::io(format!("creating {}", spec.local.display())))?;
    let local = spec.local.canonicalize().map_err(Error::io(format!("resolving {}", spec.local.display())))?;
    let mut cfg = engine_cfg(shared, local, spec.include.clone(), spec.exclude.clone(), resume);
    cfg.status = Some(status.clone());
    let engine = engine::spawn(cfg, l.handle.clone())?;
    let (engine_tx, replica) = (engine.tx.clone(), engine.replica);
    let done = watch_engine(engine, stop.clone());
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
    let result =
        net::Net::new(l.poll, l.net_rx, l.handle, l.parked, stop.flag.clone(), role, tls, Some(status.clone()))
            .map_err(Error::io("starting the network loop"))?
            .run();
    let _ = engine_tx.send(ToEngine::Shutdown);
    let engine_result = done.join().unwrap_or(Err(EngineEnd::Panicked));
    result?;
    engine_result.map_err(|e| match e {
        EngineEnd::Halted(h) => Error::Halted(h),
        EngineEnd::Panicked => Error::Panicked("the engine thread panicked".into()),
    })
}

/// Serves directories under `spec.root` to any number of clients until stopped.
pub fn run_server(
    shared: &Shared,
    tls: Option<Tls>,
    spec: &ServerSpec,
    resume: bool,
    stop: &Stopper,
    status: &Status,
) -> Result<(), Error> {
    let l = new_loop(stop)?;
    let root = spec.root.canonicalize().map_err(Error::io(format!("server root {}", spec.root.display())))?;
    let addr = net_addr(&spec.listen)?;
    let listener = mio::net::TcpListener::bind(addr).map_err(Error::io(format!("listening on {}", spec.listen)))?;
    let bound = listener.local_addr().map_err(Error::io("reading the listening address"))?;
    log::info!("listening on {bound} (serving {})", root.display());
    status.set_scanned();
    status.set_state(State::Listening);
    // One engine per served directory, shared by every client of that directory, with the
    // patterns of the client that opened it. A client asking for the same directory with other
    // patterns is refused with the reason while another client uses it (its patterns would
    // silently not apply: issue 11, item 15); when nobody does, the engine is restarted with
    // the new patterns (a user who changed their -e).
    let engines: Engines = Arc::default();
    let factory: net::EngineFactory = {
        let engines = engines.clone();
        let handle = l.handle.clone();
        let shared = shared.clone();
        Arc::new(move |root: &Path, hello: &Hello| open_engine(&engines, &shared, &handle, resume, root, hello))
    };
    let role = net::Role::Server { listener, root, engines: factory };
    let result =
        net::Net::new(l.poll, l.net_rx, l.handle, l.parked, stop.flag.clone(), role, tls, Some(status.clone()))
            .map_err(Error::io("starting the network loop"))?
            .run();
    // The network loop has joined its openers: nothing starts an engine any more.
    let slots: Vec<Slot> = engines.lock().unwrap_or_else(PoisonError::into_inner).drain().map(|(_, s)| s).collect();
    let all: Vec<EngineHandle> =
        slots.iter().filter_map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).take()).map(|s| s.0).collect();
    for h in &all {
        let _ = h.tx.send(ToEngine::Shutdown);
    }
    for h in all {
        let _ = h.thread.join();
    }
    Ok(result?)
}

/// A served directory's engine, with the patterns of the client that opened it.
type ServedEngine = (EngineHandle, Vec<String>, Vec<String>);
/// One directory's engine, if started: locked while it is started, so two clients of one
/// directory never start two, while clients of other directories do not wait.
type Slot = Arc<Mutex<Option<ServedEngine>>>;
type Engines = Arc<Mutex<HashMap<PathBuf, Slot>>>;

/// Serves a client's `Hello` (on an opener thread): resolves its directory inside the root and
/// finds or starts the directory's engine.
///
/// One engine per served directory, shared by every client of that directory, with the patterns
/// of the client that opened it. A client asking for the same directory with other patterns is
/// refused with the reason while another client uses it (its patterns would silently not apply:
/// issue 11, item 15); when nobody does, the engine is restarted with the new patterns (a user
/// who changed their -e).
fn open_engine(
    engines: &Engines,
    shared: &Shared,
    handle: &NetHandle,
    resume: bool,
    root: &Path,
    hello: &Hello,
) -> net::Opened {
    let path = crate::paths::resolve_remote(root, &hello.remote)
        .map_err(|reason| net::Refusal { log: reason.clone(), told: reason })?;
    let slot = engines.lock().unwrap_or_else(PoisonError::into_inner).entry(path.clone()).or_default().clone();
    let mut served = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((h, inc, exc)) = served.as_ref()
        && !h.thread.is_finished()
    {
        if *inc == hello.includes && *exc == hello.excludes {
            return Ok(net::Served { engine: h.tx.clone(), replica: h.replica, dir: path });
        }
        if h.attached.load(Ordering::SeqCst) > 0 {
            let reason = format!(
                "another client syncs this directory with other patterns ({}); every client of one \
                 directory must use the same -i/-e patterns (yours: {})",
                show_patterns(inc, exc),
                show_patterns(&hello.includes, &hello.excludes)
            );
            let reason = crate::logsafe::clean(&format!("cannot sync {}: {reason}", path.display()));
            return Err(net::Refusal { log: reason.clone(), told: reason });
        }
        log::info!("{}: restarting its engine with the patterns of {}", path.display(), hello.host);
    }
    if let Some((old, _, _)) = served.take() {
        let _ = old.tx.send(ToEngine::Shutdown);
        let _ = old.thread.join();
    }
    let cfg = engine_cfg(shared, path.clone(), hello.includes.clone(), hello.excludes.clone(), resume);
    match engine::spawn(cfg, handle.clone()) {
        Ok(h) => {
            let answer = net::Served { engine: h.tx.clone(), replica: h.replica, dir: path };
            *served = Some((h, hello.includes.clone(), hello.excludes.clone()));
            Ok(answer)
        }
        Err(e) => Err(net::Refusal {
            log: crate::logsafe::clean(&format!("cannot sync {}: {e:#}", path.display())),
            told: crate::logsafe::clean(&e.told_to_client(&path)),
        }),
    }
}

pub fn net_addr(s: &str) -> Result<std::net::SocketAddr, Error> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .map_err(Error::io(format!("bad listen address {s:?}")))?
        .next()
        .ok_or_else(|| Error::Refused(format!("no address for {s:?}")))
}

/// How an engine ended other than by being told to.
#[derive(Debug)]
enum EngineEnd {
    Halted(mirror_core::replica::Halt),
    Panicked,
}

impl std::fmt::Display for EngineEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineEnd::Halted(h) => h.fmt(f),
            EngineEnd::Panicked => f.write_str("the engine thread panicked"),
        }
    }
}

impl std::error::Error for EngineEnd {}

/// Ends the worker's loop when its engine ends (a halted pair, a crash), and hands back how it
/// ended.
fn watch_engine(engine: EngineHandle, stop: Stopper) -> std::thread::JoinHandle<Result<(), EngineEnd>> {
    std::thread::spawn(move || {
        let r = match engine.thread.join() {
            Ok(r) => r.map_err(EngineEnd::Halted),
            Err(_) => Err(EngineEnd::Panicked),
        };
        stop.stop();
        r
    })
}

/// `-i`/`-e` patterns as a user would type them.
fn show_patterns(includes: &[String], excludes: &[String]) -> String {
    let all: Vec<String> =
        includes.iter().map(|p| format!("-i {p:?}")).chain(excludes.iter().map(|p| format!("-e {p:?}"))).collect();
    if all.is_empty() { "no patterns".into() } else { all.join(" ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::select;

    #[test]
    fn a_stop_wakes_every_sleeper_at_once_and_stays_stopped() {
        let stop = Stopper::default();
        let sleepers: Vec<_> = (0..3)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    select! {
                        recv(stop.stopped()) -> _ => true,
                        default(Duration::from_secs(30)) => false,
                    }
                })
            })
            .collect();
        assert!(!stop.is_stopped());
        stop.stop();
        stop.stop();
        for s in sleepers {
            assert!(s.join().unwrap(), "a sleeper waited for its timeout instead of the stop");
        }
        assert!(stop.is_stopped());
        // A clone made afterwards, and a sleeper that comes late, see it too.
        assert!(stop.clone().stopped().recv_timeout(Duration::from_secs(30)).is_err());
    }
}
