//! `mirror-agent run`: every pair of the configuration (and its optional server) in one process,
//! each under a supervisor that restarts it with backoff when it fails, a control socket for the
//! `status`/`pause`/`resume`/`add`/`remove`/`export`/`import` commands, and the systemd
//! notification protocol (readiness, watchdog, status text).
//!
//! A pair is a [`worker`](crate::worker) on its own threads: a failing or panicking pair never
//! takes the others down. Pausing a pair stops its worker; its persistent base makes the restart
//! on resume find (and send) everything that changed meanwhile.
//!
//! Nothing here polls. The main thread sleeps until a unit's state changes (its [`Status`]
//! tells it), the unit set changes, the watchdog is due or SIGINT/SIGTERM stops the daemon's
//! [`Stopper`]; each supervisor sleeps on its [`Ctl`] until steered or its restart is due; the
//! control thread sleeps in `accept`.

use crate::config::{self, Config, ConfigError, PairConfig, ServerConfig};
use crate::control::{Request, Response};
use crate::error::Error;
use crate::notify;
use crate::status::{State, Status};
use crate::store;
use crate::tls::Tls;
use crate::worker::{self, Shared, Stopper};
use crossbeam_channel::{Receiver, Sender, bounded, select};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Failures in a row (each within a minute of its start) before a pair is marked failed.
const MAX_FAILURES: u32 = 5;
/// The first restart waits this long, the next twice as long... (`--test-restart-ms` in tests).
const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct CtlState {
    paused: bool,
    quit: bool,
    /// `resume` on a halted or failed pair: start again (a halted one accepting its directory).
    retry: bool,
    stopper: Stopper,
}

/// How the daemon steers one supervisor.
#[derive(Debug, Default)]
struct Ctl {
    state: Mutex<CtlState>,
    cv: Condvar,
}

impl Ctl {
    fn with<T>(&self, f: impl FnOnce(&mut CtlState) -> T) -> T {
        let r = f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
        self.cv.notify_all();
        r
    }

    /// Ends the supervisor: its unit stops, and it does not start it again.
    fn quit(&self) {
        self.with(|c| {
            c.quit = true;
            c.stopper.stop();
        });
    }

    /// Waits until `f` holds, or `timeout` passes.
    fn wait_for(&self, timeout: Option<Duration>, f: impl Fn(&CtlState) -> bool) {
        let end = timeout.map(|t| Instant::now() + t);
        let mut g = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while !f(&g) {
            match end {
                None => g = self.cv.wait(g).unwrap_or_else(PoisonError::into_inner),
                Some(end) => {
                    let left = end.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return;
                    }
                    g = self.cv.wait_timeout(g, left).unwrap_or_else(PoisonError::into_inner).0;
                }
            }
        }
    }
}

/// What a supervisor runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Unit {
    Pair(PairConfig),
    Server(ServerConfig),
}

#[derive(Debug)]
struct Supervised {
    unit: Unit,
    status: Status,
    ctl: Arc<Ctl>,
    thread: JoinHandle<()>,
}

impl Supervised {
    fn stop(self) {
        self.ctl.quit();
        let _ = self.thread.join();
    }
}

/// Everything a supervisor needs to start its unit.
#[derive(Clone)]
struct Env {
    shared: Shared,
    tls: Result<Tls, String>,
    resume_all: bool,
}

fn supervise(unit: Unit, env: Env, status: Status, ctl: Arc<Ctl>) {
    let mut failures = 0u32;
    loop {
        ctl.wait_for(None, |c| c.quit || !c.paused);
        let (stopper, retry) = ctl.with(|c| {
            c.stopper = Stopper::default();
            (c.stopper.clone(), std::mem::take(&mut c.retry))
        });
        if retry {
            // `resume`: the halt or the failures it answers are over; status must not show them.
            status.update(|r| r.last_error = None);
        }
        if ctl.with(|c| c.quit) {
            return;
        }
        status.set_state(State::Starting);
        let started = Instant::now();
        let resume = env.resume_all || retry;
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_unit(&unit, &env, resume, &stopper, &status)))
                .unwrap_or_else(|p| {
                    let what =
                        p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
                    Err(Error::Panicked(what.unwrap_or_default()))
                });
        let (quit, paused) = ctl.with(|c| (c.quit, c.paused));
        if quit {
            return;
        }
        if paused {
            status.set_state(State::Paused);
            continue;
        }
        let Err(e) = result else { continue };
        let msg = format!("{e:#}");
        let name = unit_name(&unit);
        status.update(|r| r.last_error = Some(msg.clone()));
        if let Unit::Pair(p) = &unit
            && let Some(reason) = store::halted_reason(&env.shared.state_dir, &p.spec.local)
        {
            log::error!(
                "pair {} halted: {reason}; `mirror-agent resume {}` accepts its directory as it is now",
                p.name,
                p.name
            );
            status.update(|r| {
                r.state = State::Halted;
                r.last_error = Some(reason.clone());
            });
            ctl.wait_for(None, |c| c.quit || c.retry || c.paused);
            failures = 0;
            continue;
        }
        if started.elapsed() > Duration::from_secs(60) {
            failures = 0;
        }
        failures += 1;
        if failures >= MAX_FAILURES {
            let until = match &unit {
                Unit::Pair(p) => format!("`mirror-agent resume {}`", p.name),
                Unit::Server(_) => "the agent is restarted".into(),
            };
            log::error!("{name} failed {failures} times in a row ({msg}); giving up until {until}");
            status.set_state(State::Failed);
            ctl.wait_for(None, |c| c.quit || c.retry || c.paused);
            failures = 0;
            continue;
        }
        let first = env.shared.hooks.restart_delay.unwrap_or(FIRST_RESTART_DELAY);
        let delay = (first * 2u32.pow(failures - 1)).min(MAX_RESTART_DELAY);
        // `{:?}` of whole seconds is `1s`, `2s`...; of the tests' delays `50ms`, `100ms`...
        log::warn!("{name} stopped: {msg}; restarting in {delay:?}");
        status.update(|r| {
            r.state = State::Restarting;
            r.restarts += 1;
        });
        ctl.wait_for(Some(delay), |c| c.quit || c.paused || c.retry);
    }
}

fn unit_name(u: &Unit) -> String {
    match u {
        Unit::Pair(p) => format!("pair {}", p.name),
        Unit::Server(_) => "the server".into(),
    }
}

fn run_unit(unit: &Unit, env: &Env, resume: bool, stop: &Stopper, status: &Status) -> Result<(), Error> {
    let insecure = match unit {
        Unit::Pair(p) => p.insecure,
        Unit::Server(s) => s.insecure,
    };
    if insecure {
        let (what, addr, any) = match unit {
            Unit::Pair(p) if p.spec.host.contains(':') => {
                ("-h", format!("[{}]:{}", p.spec.host, p.spec.port), p.insecure_any_address)
            }
            Unit::Pair(p) => ("-h", format!("{}:{}", p.spec.host, p.spec.port), p.insecure_any_address),
            Unit::Server(s) => ("--listen", s.spec.listen.clone(), s.insecure_any_address),
        };
        crate::cli::check_insecure(what, &addr, any)
            .map_err(|e| Error::Refused(format!("{e} (in the configuration: `insecure_any_address = true`)")))?;
    }
    let tls = if insecure {
        None
    } else {
        Some(env.tls.clone().map_err(|e| Error::Refused(format!("TLS is not available: {e}")))?)
    };
    match unit {
        Unit::Pair(p) => worker::run_client(&env.shared, tls, &p.spec, resume, stop, status),
        Unit::Server(s) => worker::run_server(&env.shared, tls, &s.spec, resume, stop, status),
    }
}

/// The running agent: its configuration file and what runs from it.
struct Daemon {
    config_path: PathBuf,
    env: Env,
    units: Mutex<BTreeMap<String, Supervised>>,
    /// Serialises configuration changes (file and units together).
    edit: Mutex<()>,
    /// SIGINT/SIGTERM: the daemon stops; requests after that are refused.
    stop: Stopper,
    /// Wakes the main loop: a unit's state changed, or units came or went.
    changed: Sender<()>,
}

/// The key of the server among the units (not a valid pair name).
const SERVER: &str = " server";

impl Daemon {
    fn start_unit(&self, key: &str, unit: Unit) -> Supervised {
        let (name, local, peer, paused) = match &unit {
            Unit::Pair(p) => (
                p.name.clone(),
                p.spec.local.display().to_string(),
                format!("{}:{}/{}", p.spec.host, p.spec.port, p.spec.remote),
                p.paused,
            ),
            Unit::Server(s) => ("(server)".into(), s.spec.root.display().to_string(), s.spec.listen.clone(), false),
        };
        let status = Status::watched(&name, &local, &peer, self.changed.clone());
        if paused {
            status.set_state(State::Paused);
        }
        let ctl = Arc::new(Ctl::default());
        ctl.with(|c| c.paused = paused);
        let thread = {
            let (unit, env, status, ctl) = (unit.clone(), self.env.clone(), status.clone(), ctl.clone());
            std::thread::Builder::new()
                .name(format!("supervise {key}").chars().take(15).collect())
                .spawn(move || supervise(unit, env, status, ctl))
        };
        let thread = thread.unwrap_or_else(|e| {
            log::error!("cannot start a thread for {key}: {e}");
            std::thread::spawn(|| {})
        });
        Supervised { unit, status, ctl, thread }
    }

    /// Makes what runs match `cfg`: new units start, removed ones stop, changed ones restart,
    /// and pause flags take effect.
    fn apply(&self, cfg: &Config) {
        let mut want: BTreeMap<String, Unit> =
            cfg.pairs.iter().map(|p| (p.name.clone(), Unit::Pair(p.clone()))).collect();
        if let Some(s) = &cfg.server {
            want.insert(SERVER.into(), Unit::Server(s.clone()));
        }
        let mut units = self.units.lock().unwrap_or_else(PoisonError::into_inner);
        let keys: Vec<String> = units.keys().cloned().collect();
        for key in keys {
            let same = |a: &Unit, b: &Unit| match (a, b) {
                (Unit::Pair(x), Unit::Pair(y)) => {
                    x.spec == y.spec && x.insecure == y.insecure && x.insecure_any_address == y.insecure_any_address
                }
                _ => a == b,
            };
            match (units.get(&key), want.get(&key)) {
                (Some(u), Some(w)) if same(&u.unit, w) => {
                    if let (Unit::Pair(p), Some(u)) = (w, units.get_mut(&key)) {
                        let paused = p.paused;
                        u.unit = w.clone();
                        u.ctl.with(|c| {
                            if c.paused != paused {
                                c.paused = paused;
                                if paused {
                                    c.stopper.stop();
                                }
                            }
                        });
                        if paused {
                            u.status.set_state(State::Paused);
                        }
                    }
                    want.remove(&key);
                }
                _ => {
                    if let Some(u) = units.remove(&key) {
                        log::info!("stopping {}", unit_name(&u.unit));
                        u.stop();
                    }
                }
            }
        }
        for (key, unit) in want {
            log::info!("starting {}", unit_name(&unit));
            let s = self.start_unit(&key, unit);
            units.insert(key, s);
        }
        let _ = self.changed.try_send(());
    }

    /// Stops every unit (after the last configuration change: none starts one again).
    fn stop_all(&self) {
        let _edit = self.edit.lock().unwrap_or_else(PoisonError::into_inner);
        let units = std::mem::take(&mut *self.units.lock().unwrap_or_else(PoisonError::into_inner));
        for u in units.values() {
            u.ctl.quit();
        }
        for (_, u) in units {
            let _ = u.thread.join();
        }
    }

    fn reports(&self) -> Vec<crate::status::Report> {
        let units = self.units.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = units.values().map(|u| u.status.get()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn read_config(&self) -> Result<(Config, String), ConfigError> {
        Config::load(&self.config_path)
    }

    /// Replaces the configuration file with `text` (checked first) and applies it.
    fn write_config(&self, text: &str) -> Result<(), Error> {
        let cfg = Config::parse(text, &self.config_path)?;
        if let Some(dir) = self.config_path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        }
        store::write_atomic(&self.config_path, text.as_bytes())
            .map_err(Error::io(format!("writing {}", self.config_path.display())))?;
        self.apply(&cfg);
        Ok(())
    }

    fn handle(&self, req: Request) -> Response {
        let _edit = self.edit.lock().unwrap_or_else(PoisonError::into_inner);
        if self.stop.is_stopped() {
            return Response::fail("the agent is stopping");
        }
        let r: Result<Response, Error> = (|| match req {
            Request::Status => Ok(Response { ok: true, reports: self.reports(), ..Response::default() }),
            Request::Export => {
                let (_, text) = self.read_config()?;
                Ok(Response { ok: true, text: Some(text), ..Response::default() })
            }
            Request::Import { text } => {
                self.write_config(&text)?;
                Ok(Response::done())
            }
            Request::Add { pair } => {
                config::check_name(&pair.name).map_err(Error::Refused)?;
                let (cfg, text) = self.read_config()?;
                if cfg.pairs.iter().any(|p| p.name == pair.name) {
                    return Err(Error::Refused(format!("a pair named {:?} exists already", pair.name)));
                }
                self.write_config(&config::with_pair(&text, &self.config_path, &pair)?)?;
                Ok(Response::done())
            }
            Request::Remove { name } => {
                let (_, text) = self.read_config()?;
                let new = config::without_pair(&text, &self.config_path, &name)?
                    .ok_or_else(|| Error::Refused(format!("no pair named {name:?}")))?;
                self.write_config(&new)?;
                Ok(Response::done())
            }
            Request::Pause { name } | Request::Resume { name } if !self.has_pair(&name) => {
                Err(Error::Refused(format!("no pair named {name:?}")))
            }
            Request::Pause { name } => {
                let (_, text) = self.read_config()?;
                if let Some(new) = config::with_paused(&text, &self.config_path, &name, true)? {
                    self.write_config(&new)?;
                }
                Ok(Response::done())
            }
            Request::Resume { name } => {
                let (_, text) = self.read_config()?;
                if let Some(new) = config::with_paused(&text, &self.config_path, &name, false)? {
                    self.write_config(&new)?;
                }
                // A halted or failed pair starts again (a halted one accepting its directory).
                if let Some(u) = self.units.lock().unwrap_or_else(PoisonError::into_inner).get(&name) {
                    u.ctl.with(|c| c.retry = true);
                }
                Ok(Response::done())
            }
        })();
        r.unwrap_or_else(|e| Response::fail(e.to_string()))
    }

    fn has_pair(&self, name: &str) -> bool {
        name != SERVER && self.units.lock().unwrap_or_else(PoisonError::into_inner).contains_key(name)
    }

    /// Whether every unit that should run has done its first scan (or is listening).
    fn ready(&self) -> bool {
        let units = self.units.lock().unwrap_or_else(PoisonError::into_inner);
        units.values().all(|u| {
            u.status.scanned() || matches!(u.status.get().state, State::Paused | State::Failed | State::Halted)
        })
    }

    fn summary(&self) -> String {
        let reports = self.reports();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &reports {
            *counts.entry(r.state.name()).or_default() += 1;
        }
        let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        format!("{} units: {}", reports.len(), parts.join(", "))
    }
}

/// Binds the control socket, refusing if another agent answers on it.
fn bind_control(path: &Path) -> Result<UnixListener, Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(Error::Refused(format!("another mirror-agent is running with control socket {}", path.display())));
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(Error::io(format!("binding the control socket {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(Error::io(format!("securing {}", path.display())))?;
    Ok(l)
}

/// Serves the control socket until the daemon stops (its stop connects once to wake `accept`).
fn serve_control(d: Arc<Daemon>, l: UnixListener) {
    for s in l.incoming() {
        if d.stop.is_stopped() {
            return;
        }
        let Ok(s) = s else { continue };
        let d = d.clone();
        std::thread::spawn(move || {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut line = String::new();
            let mut reader = BufReader::new(&s);
            if reader.read_line(&mut line).is_err() {
                return;
            }
            let resp = match serde_json::from_str::<Request>(&line) {
                Ok(req) => d.handle(req),
                Err(e) => Response::fail(format!("bad request: {e}")),
            };
            if let Ok(mut text) = serde_json::to_string(&resp) {
                text.push('\n');
                let _ = (&s).write_all(text.as_bytes());
            }
        });
    }
}

/// Runs every unit of `config_path` until SIGINT/SIGTERM.
pub fn run(
    config_path: PathBuf,
    control: PathBuf,
    shared: Shared,
    tls: Result<Tls, String>,
    resume: bool,
) -> Result<(), Error> {
    let (cfg, _) = Config::load(&config_path)?;
    let listener = bind_control(&control)?;
    let (changed, changes) = bounded(1);
    let d = Arc::new(Daemon {
        config_path: config_path.clone(),
        env: Env { shared, tls, resume_all: resume },
        units: Mutex::default(),
        edit: Mutex::default(),
        stop: Stopper::default(),
        changed,
    });
    {
        let stop = d.stop.clone();
        ctrlc::set_handler(move || stop.stop()).map_err(|e| Error::Io {
            doing: "installing the signal handler".into(),
            source: std::io::Error::other(e),
        })?;
    }
    log::info!(
        "running {} pairs{} from {}; control socket {}",
        cfg.pairs.len(),
        if cfg.server.is_some() { " and a server" } else { "" },
        config_path.display(),
        control.display()
    );
    d.apply(&cfg);
    let served = {
        let d = d.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || serve_control(d, listener))
            .map_err(Error::io("starting the control thread"))?
    };
    report_until_stopped(&d, &changes);
    notify::notify("STOPPING=1");
    log::info!("stopping");
    d.stop_all();
    // Wakes the control thread, which sees the stop; the socket goes once it is closed.
    if UnixStream::connect(&control).is_ok() {
        let _ = served.join();
    }
    let _ = std::fs::remove_file(&control);
    Ok(())
}

/// Tells the service manager about readiness and status as they change, and pings its watchdog
/// when due, until the daemon is stopped.
fn report_until_stopped(d: &Daemon, changes: &Receiver<()>) {
    let watchdog = notify::watchdog_interval();
    let mut next_watchdog = Instant::now();
    let mut ready = false;
    let mut last_status = String::new();
    loop {
        if !ready && d.ready() {
            ready = true;
            notify::notify("READY=1");
            log::info!("ready: every pair did its first scan");
        }
        let summary = d.summary();
        if summary != last_status {
            notify::notify(&format!("STATUS={summary}"));
            last_status = summary;
        }
        if let Some(every) = watchdog
            && Instant::now() >= next_watchdog
        {
            notify::notify("WATCHDOG=1");
            next_watchdog = Instant::now() + every;
        }
        let due = match watchdog {
            Some(_) => crossbeam_channel::at(next_watchdog),
            None => crossbeam_channel::never(),
        };
        select! {
            recv(d.stop.stopped()) -> _ => return,
            recv(changes) -> _ => {}
            recv(due) -> _ => {}
        }
    }
}
