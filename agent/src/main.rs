//! `mirror-agent`: keeps a directory tree identical on several machines, both ways, in real time.
//!
//! The binary wires the parts together: a network thread (mio) for all sockets, one engine
//! thread per sync root, one watcher per root. See `DESIGN` notes in each module.
#![forbid(unsafe_code)]

mod cli;
mod conflict;
mod engine;
mod executor;
mod identity;
mod index;
mod link;
mod net;
mod paths;
mod reconcile;
mod rules;
mod scan;
mod store;
mod tls;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command, Common};
use crossbeam_channel::bounded;
use engine::{EngineConfig, EngineHandle};
use link::{NetHandle, ToEngine};
use mio::{Poll, Waker};
use mirror_backends::Backend;
use mirror_protocol::Hello;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

fn main() {
    let cli = Cli::parse();
    init_logging(&cli.common);
    if let Err(e) = run(cli) {
        log::error!("{e:#}");
        eprintln!("mirror-agent: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(c: &Common) {
    let level = match i16::from(c.verbose) - i16::from(c.quiet) {
        i16::MIN..=-2 => log::LevelFilter::Error,
        -1 => log::LevelFilter::Warn,
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .filter_module("ignore", log::LevelFilter::Warn)
        .format_target(false)
        .format_timestamp_micros()
        .parse_env("MIRROR_LOG")
        .init();
}

pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let c = &cli.common;
    let state_dir = match &c.state_dir {
        Some(d) => d.clone(),
        None => default_state_dir()?,
    };
    // The identity commands need neither a network nor a watcher.
    match &cli.command {
        Command::Id => {
            let identity = identity::Identity::load_or_create(&state_dir)
                .with_context(|| format!("identity in {}", state_dir.display()))?;
            println!("{}", identity.id);
            return Ok(());
        }
        Command::Trust { id, name } => {
            let id = identity::DeviceId::parse(id).with_context(|| format!("{id:?} is not a device ID"))?;
            let trust = identity::Trust::new(&state_dir);
            let comment = name.clone().unwrap_or_else(|| "added by `mirror-agent trust`".into());
            if trust.add(&id, &comment).with_context(|| format!("writing {}", trust.path().display()))? {
                eprintln!("trusted {id} (in {}); a running agent accepts it at once", trust.path().display());
            } else {
                eprintln!("{id} was already trusted");
            }
            return Ok(());
        }
        _ => {}
    }
    let tls = if c.insecure {
        log::warn!(
            "--insecure: plaintext TCP without authentication; anyone on the network path can read \
             and change what is synced. Use it on loopback or through an SSH tunnel only"
        );
        None
    } else {
        let identity = identity::Identity::load_or_create(&state_dir)
            .with_context(|| format!("identity in {}", state_dir.display()))?;
        let trust = identity::Trust::new(&state_dir);
        log::info!("this agent is {} (peers must trust it: mirror-agent trust {})", identity.id, identity.id);
        Some(tls::Tls::new(&identity, trust).context("setting up TLS")?)
    };
    let backend = match &c.watcher {
        Some(name) => Backend::from_name(name)?,
        None => Backend::native(),
    };
    let poll = Poll::new().context("creating the event loop")?;
    let waker = Arc::new(Waker::new(poll.registry(), net::WAKER).context("creating the waker")?);
    let (net_tx, net_rx) = bounded(1024);
    let parked = Arc::new(AtomicBool::new(false));
    let handle = NetHandle { tx: net_tx, waker: waker.clone(), parked: parked.clone() };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (stop, waker) = (stop.clone(), waker.clone());
        ctrlc::set_handler(move || {
            stop.store(true, Ordering::SeqCst);
            let _ = waker.wake();
        })
        .context("installing the signal handler")?;
    }
    let poll_interval = Duration::from_millis(c.poll_interval_ms);
    let resume = c.resume;
    let debug_prefix = c.debug_prefix.as_ref().map(|p| p.trim_end_matches('/').as_bytes().to_vec());
    let engine_cfg = move |root: PathBuf, includes: Vec<String>, excludes: Vec<String>| EngineConfig {
        root,
        host: hostname(),
        includes,
        excludes,
        backend,
        poll_interval,
        debug_prefix: debug_prefix.clone(),
        state_dir: state_dir.clone(),
        resume,
    };
    match cli.command {
        Command::Client { host, port, local, remote, include, exclude } => {
            std::fs::create_dir_all(&local).with_context(|| format!("creating {}", local.display()))?;
            let local = local.canonicalize().with_context(|| format!("resolving {}", local.display()))?;
            let engine = engine::spawn(engine_cfg(local, include.clone(), exclude.clone()), handle)?;
            let (engine_tx, replica) = (engine.tx.clone(), engine.replica);
            let done = watch_engine(engine, stop.clone(), waker.clone());
            let addr = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let hello = Hello {
                replica,
                host: hostname(),
                remote: remote.as_bytes().to_vec(),
                includes: include,
                excludes: exclude,
            };
            let role = net::Role::Client { addr, hello, engine: engine_tx.clone() };
            let result = net::Net::new(poll, net_rx, parked, stop, role, tls)?.run();
            let _ = engine_tx.send(ToEngine::Shutdown);
            let engine_result = done.join().unwrap_or_else(|_| Err("engine thread panicked".into()));
            result?;
            engine_result.map_err(anyhow::Error::msg)
        }
        Command::Id | Command::Trust { .. } => Ok(()),
        Command::Server { listen, root } => {
            let root = match root {
                Some(r) => r,
                None => std::env::var_os("HOME").map(PathBuf::from).context("no --root and no $HOME")?,
            };
            let root = root.canonicalize().with_context(|| format!("server root {}", root.display()))?;
            let addr = net_addr(&listen)?;
            let listener = mio::net::TcpListener::bind(addr).with_context(|| format!("listening on {listen}"))?;
            log::info!("listening on {} (serving {})", listener.local_addr()?, root.display());
            // One engine per served directory, shared by every client of that directory. It
            // takes the patterns of the client that opened it; a later client with other
            // patterns is warned (its own side still filters what it applies).
            type Served = (EngineHandle, Vec<String>, Vec<String>);
            let engines: Arc<Mutex<HashMap<PathBuf, Served>>> = Arc::default();
            let factory = {
                let engines = engines.clone();
                let handle = handle.clone();
                Box::new(move |path: PathBuf, hello: &Hello| {
                    let mut map = engines.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some((h, inc, exc)) = map.get(&path)
                        && !h.thread.is_finished()
                    {
                        if *inc != hello.includes || *exc != hello.excludes {
                            log::warn!(
                                "{} asks for {} with other -i/-e patterns than the client that opened it; \
                                 keeping the first client's patterns ({inc:?} / {exc:?})",
                                hello.host,
                                path.display()
                            );
                        }
                        return Ok((h.tx.clone(), h.replica));
                    }
                    let cfg = engine_cfg(path.clone(), hello.includes.clone(), hello.excludes.clone());
                    let h = engine::spawn(cfg, handle.clone())?;
                    let answer = (h.tx.clone(), h.replica);
                    map.insert(path, (h, hello.includes.clone(), hello.excludes.clone()));
                    Ok(answer)
                }) as net::EngineFactory
            };
            let role = net::Role::Server { listener, root, engines: factory };
            let result = net::Net::new(poll, net_rx, parked, stop, role, tls)?.run();
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
    }
}

/// `$XDG_STATE_HOME/mirror-agent`, or `~/.local/state/mirror-agent`.
fn default_state_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("mirror-agent"));
    }
    let home = std::env::var_os("HOME").context("neither --state-dir, $XDG_STATE_HOME nor $HOME is set")?;
    Ok(PathBuf::from(home).join(".local/state/mirror-agent"))
}

fn net_addr(s: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .with_context(|| format!("bad listen address {s:?}"))?
        .next()
        .with_context(|| format!("no address for {s:?}"))
}

/// Ends the process's loops when the engine ends (a halted pair, a crash), and hands back how
/// it ended.
fn watch_engine(
    engine: EngineHandle,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
) -> std::thread::JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        let r = engine.thread.join().unwrap_or_else(|_| Err("engine thread panicked".into()));
        stop.store(true, Ordering::SeqCst);
        let _ = waker.wake();
        r
    })
}
