//! `mirror-agent`: keeps a directory tree identical on several machines, both ways, in real time.
//!
//! The binary wires the parts together: a network thread (mio) for all sockets, one engine
//! thread per sync root, one watcher per root. See `DESIGN` notes in each module.
#![forbid(unsafe_code)]

mod cli;
mod config;
mod control;
mod daemon;
mod disk;
mod engine;
mod error;
mod executor;
mod fold;
mod hasher;
mod identity;
mod index;
mod link;
mod logsafe;
mod net;
mod notify;
mod paths;
mod reader;
mod rules;
mod scan;
mod status;
mod store;
mod tls;
mod worker;
mod writer;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command, Common};
use mirror_backends::Backend;
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    let cli = Cli::parse();
    init_logging(&cli.common);
    if let Err(e) = run(cli) {
        // Once: both the logger and stderr go to the terminal (or both to the journal).
        if std::env::var_os("JOURNAL_STREAM").is_some() {
            log::error!("{e:#}");
        } else {
            eprintln!("mirror-agent: {e:#}");
        }
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
    let mut b = env_logger::Builder::new();
    b.filter_level(level).filter_module("ignore", log::LevelFilter::Warn).parse_env("MIRROR_LOG");
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        // Under systemd: the journal stamps the time itself; `<N>` gives it the priority.
        b.format(|f, r| {
            use std::io::Write;
            let prio = match r.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(f, "<{prio}>{}", r.args())
        });
    } else {
        b.format_target(false).format_timestamp_micros();
    }
    b.init();
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
    // The identity and control commands need neither a network nor a watcher.
    match &cli.command {
        Command::Id | Command::Trust { .. } => return identity_command(&cli.command, &state_dir),
        Command::Status { .. }
        | Command::List
        | Command::Pause { .. }
        | Command::Resume { .. }
        | Command::Add { .. }
        | Command::Remove { .. }
        | Command::Export
        | Command::Import { .. } => {
            return control_command(
                &cli.command,
                &control::socket_path(c.state_dir.as_deref(), &state_dir),
                c.insecure,
            );
        }
        _ => {}
    }
    let backend = match &c.watcher {
        Some(name) => Backend::from_name(name)?,
        None => Backend::native(),
    };
    let shared = worker::Shared {
        state_dir: state_dir.clone(),
        backend,
        poll_interval: Duration::from_millis(c.poll_interval_ms),
        debug_prefix: c.debug_prefix.as_ref().map(|p| p.trim_end_matches('/').as_bytes().to_vec()),
        hooks: c.hooks.clone(),
    };
    if let Command::Run { config, check } = &cli.command {
        return run_daemon(c, config.as_deref(), *check, shared);
    }
    let tls = foreground_tls(&cli, &state_dir)?;
    let stop = worker::Stopper::default();
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.stop()).context("installing the signal handler")?;
    }
    match cli.command {
        Command::Client { pair: cli::PairArgs { host, port, local, remote, include, exclude } } => {
            let spec = worker::ClientSpec { local, host, port, remote, include, exclude };
            let status = status::Status::new("client", &spec.local.display().to_string(), &spec.host);
            Ok(worker::run_client(&shared, tls, &spec, c.resume, &stop, &status)?)
        }
        Command::Server { listen, root } => {
            let root = match root {
                Some(r) => r,
                None => std::env::var_os("HOME").map(PathBuf::from).context("no --root and no $HOME")?,
            };
            let spec = worker::ServerSpec { listen, root };
            let status = status::Status::new("server", &spec.root.display().to_string(), &spec.listen);
            Ok(worker::run_server(&shared, tls, &spec, c.resume, &stop, &status)?)
        }
        _ => Ok(()),
    }
}

/// `id` and `trust`: this agent's identity, and the peers it trusts.
fn identity_command(command: &Command, state_dir: &std::path::Path) -> anyhow::Result<()> {
    match command {
        Command::Id => {
            let identity = identity::Identity::load_or_create(state_dir)
                .with_context(|| format!("identity in {}", state_dir.display()))?;
            println!("{}", identity.id);
        }
        Command::Trust { id, name } => {
            let id = identity::DeviceId::parse(id).with_context(|| format!("{id:?} is not a device ID"))?;
            let trust = identity::Trust::new(state_dir);
            let comment = name.clone().unwrap_or_else(|| "added by `mirror-agent trust`".into());
            if trust.add(&id, &comment).with_context(|| format!("writing {}", trust.path().display()))? {
                eprintln!("trusted {id} (in {}); a running agent accepts it at once", trust.path().display());
            } else {
                eprintln!("{id} was already trusted");
            }
        }
        _ => {}
    }
    Ok(())
}

/// `run`: the pairs of a configuration file (`--check`: only say whether it reads).
fn run_daemon(c: &Common, config: Option<&std::path::Path>, check: bool, shared: worker::Shared) -> anyhow::Result<()> {
    let state_dir = shared.state_dir.clone();
    let explicit = config.is_some();
    let config = match config {
        Some(f) => f.to_path_buf(),
        None => default_config_file()?,
    };
    // Absolute from the start: control edits rewrite it, wherever the agent's cwd is.
    let config = std::path::absolute(&config).with_context(|| format!("resolving {}", config.display()))?;
    match config.try_exists() {
        Ok(true) => {}
        Ok(false) if explicit => anyhow::bail!(
            "there is no configuration file {}: write one (see \"Running in the background\" in the \
             README), or leave out --config to start with none and add pairs with `mirror-agent add`",
            config.display()
        ),
        Ok(false) => log::warn!(
            "there is no configuration file {} yet: running no pairs; `mirror-agent add NAME -h HOST \
             -l DIR -r DIR` adds one (and writes the file)",
            config.display()
        ),
        Err(e) => anyhow::bail!("cannot read {}: {e}", config.display()),
    }
    if check {
        let (cfg, _) = config::Config::load(&config)?;
        println!(
            "{}: {} pairs{}",
            config.display(),
            cfg.pairs.len(),
            if cfg.server.is_some() { " and a server" } else { "" }
        );
        return Ok(());
    }
    let tls = identity::Identity::load_or_create(&state_dir)
        .with_context(|| format!("identity in {}", state_dir.display()))
        .and_then(|id| {
            identity::warn_if_open(&state_dir);
            log::info!("this agent is {} (peers must trust it: mirror-agent trust {})", id.id, id.id);
            tls::Tls::new(&id, trust_of(c, &state_dir)).context("setting up TLS")
        })
        .map_err(|e| format!("{e:#}"));
    let control = control::socket_path(c.state_dir.as_deref(), &state_dir);
    Ok(daemon::run(config, control, shared, tls, c.resume)?)
}

/// The TLS of a foreground `client` or `server`: none with `--insecure` (on loopback only,
/// unless told otherwise), else this agent's identity and the peers it trusts.
fn foreground_tls(cli: &Cli, state_dir: &std::path::Path) -> anyhow::Result<Option<tls::Tls>> {
    let c = &cli.common;
    if c.insecure {
        let (what, addr) = match &cli.command {
            Command::Server { listen, .. } => ("--listen", listen.clone()),
            Command::Client { pair } if pair.host.contains(':') => ("-h", format!("[{}]:{}", pair.host, pair.port)),
            Command::Client { pair } => ("-h", format!("{}:{}", pair.host, pair.port)),
            _ => ("", String::new()),
        };
        if !what.is_empty() {
            cli::check_insecure(what, &addr, c.insecure_any_address).map_err(anyhow::Error::msg)?;
        }
        log::warn!(
            "--insecure: plaintext TCP without authentication; anyone on the network path can read \
             and change what is synced. Use it on loopback or through an SSH tunnel only"
        );
        return Ok(None);
    }
    let identity = identity::Identity::load_or_create(state_dir)
        .with_context(|| format!("identity in {}", state_dir.display()))?;
    let trust = trust_of(c, state_dir);
    identity::warn_if_open(state_dir);
    log::info!("this agent is {} (peers must trust it: mirror-agent trust {})", identity.id, identity.id);
    Ok(Some(tls::Tls::new(&identity, trust).context("setting up TLS")?))
}

/// The trust file of `state_dir`; suggested `trust` commands name the state dir the user gave.
fn trust_of(c: &Common, state_dir: &std::path::Path) -> identity::Trust {
    if c.state_dir.is_some() { identity::Trust::named(state_dir) } else { identity::Trust::new(state_dir) }
}

/// `$XDG_CONFIG_HOME/mirror-agent/config.toml`, or `~/.config/mirror-agent/config.toml`.
fn default_config_file() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("mirror-agent/config.toml"));
    }
    let home = std::env::var_os("HOME").context("neither --config, $XDG_CONFIG_HOME nor $HOME is set")?;
    Ok(PathBuf::from(home).join(".config/mirror-agent/config.toml"))
}

/// Runs one of the commands that talk to a running agent. Exit status: 0 done, 1 error (no
/// agent, refused); `status` also exits 1 when a pair (or the server) failed or halted, which
/// makes it a health check.
fn control_command(cmd: &Command, socket: &std::path::Path, insecure: bool) -> anyhow::Result<()> {
    use control::Request;
    let req = match cmd {
        Command::Status { .. } | Command::List => Request::Status,
        Command::Pause { name } => Request::Pause { name: name.clone() },
        Command::Resume { name } => Request::Resume { name: name.clone() },
        Command::Remove { name } => Request::Remove { name: name.clone() },
        Command::Export => Request::Export,
        Command::Import { file } => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            config::Config::parse(&text, file)?; // errors name this file, not the agent's
            Request::Import { text }
        }
        Command::Add { name, pair: cli::PairArgs { host, port, local, remote, include, exclude } } => {
            // Relative to where the command runs, not to where the agent does.
            let local = std::path::absolute(local).with_context(|| format!("resolving {}", local.display()))?;
            Request::Add {
                pair: config::NewPair {
                    name: name.clone(),
                    local: local.to_string_lossy().into_owned(),
                    host: host.clone(),
                    port: Some(*port),
                    remote: remote.clone(),
                    include: include.clone(),
                    exclude: exclude.clone(),
                    insecure,
                },
            }
        }
        _ => return Ok(()),
    };
    let resp = control::call(socket, &req)?;
    if !resp.ok {
        anyhow::bail!("{}", resp.error.unwrap_or_else(|| "the agent refused".into()));
    }
    match cmd {
        Command::Status { json: true } => println!("{}", serde_json::to_string_pretty(&resp.reports)?),
        Command::Status { json: false } => print!("{}", control::table(&resp.reports, status::unix_now())),
        Command::List => {
            for r in &resp.reports {
                println!("{}\t{}\t{}\t{}", r.name, r.local, r.peer, r.state.name());
            }
        }
        Command::Export => print!("{}", resp.text.unwrap_or_default()),
        _ => {}
    }
    if let Command::Status { .. } = cmd
        && let Some(r) = resp.reports.iter().find(|r| matches!(r.state, status::State::Failed | status::State::Halted))
    {
        let what = match r.state {
            _ if r.name == "(server)" => "restarting the agent starts it again".to_string(),
            status::State::Halted => format!("`mirror-agent resume {}` accepts its directory as it is now", r.name),
            _ => format!("`mirror-agent resume {}` starts it again", r.name),
        };
        eprintln!("mirror-agent: {} is {}: {}; {what}", r.name, r.state.name(), r.last_error.as_deref().unwrap_or("?"));
        std::process::exit(1);
    }
    Ok(())
}

/// `$XDG_STATE_HOME/mirror-agent`, or `~/.local/state/mirror-agent`.
fn default_state_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("mirror-agent"));
    }
    let home = std::env::var_os("HOME").context("neither --state-dir, $XDG_STATE_HOME nor $HOME is set")?;
    Ok(PathBuf::from(home).join(".local/state/mirror-agent"))
}
