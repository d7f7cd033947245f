//! The command line. Names follow stephenh/mirror where they overlap (`-h HOST`, `-l`, `-r`,
//! `-i`, `-e`), so `--help` is long-only.

use crate::fold::Folding;
use clap::{ArgAction, Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_PORT: u16 = 49172;

#[derive(Debug, Parser)]
#[command(name = "mirror-agent", version, about = "Real-time two-way file sync", disable_help_flag = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct Common {
    /// More log output (-v debug, -vv trace).
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short = 'q', long = "quiet", action = ArgAction::Count, global = true)]
    pub quiet: u8,
    /// Log every decision about paths starting with this prefix (relative to the sync root).
    #[arg(long = "debug-prefix", value_name = "PATH", global = true)]
    pub debug_prefix: Option<String>,
    /// File watching backend: inotify (Linux), fsevents (macOS), kqueue (the BSDs; macOS on
    /// request) or poll (anywhere, network mounts too). Default: the first this platform has.
    #[arg(long = "watcher", value_name = "BACKEND", global = true)]
    pub watcher: Option<String>,
    /// Scan interval of the poll watcher, in milliseconds.
    #[arg(long = "poll-interval-ms", value_name = "MS", default_value_t = 500, global = true)]
    pub poll_interval_ms: u64,
    /// Where identity and sync state live (default: $XDG_STATE_HOME/mirror-agent).
    #[arg(long = "state-dir", value_name = "DIR", env = "MIRROR_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Resume pairs that halted for safety (root vanished, replaced or emptied), accepting
    /// their directories as they are now.
    #[arg(long = "resume", global = true)]
    pub resume: bool,
    /// Use plaintext TCP without authentication instead of TLS (loopback demos, SSH tunnels).
    #[arg(long = "insecure", global = true)]
    pub insecure: bool,
    /// Allow --insecure on an address other than loopback (a private network you trust
    /// entirely). Without it, --insecure with a non-loopback address is refused.
    #[arg(long = "insecure-any-address", global = true)]
    pub insecure_any_address: bool,
    /// Print help.
    #[arg(long = "help", action = ArgAction::Help, global = true)]
    pub help: Option<bool>,
    #[command(flatten)]
    pub hooks: TestHooks,
}

/// What the end-to-end tests change in the agent, as hidden flags: parsed once here and handed
/// down in the configuration of whatever they change (the daemon's [`Env`](crate::daemon),
/// [`EngineConfig`](crate::engine::EngineConfig), the watcher's `WatchConfig`). Nothing reads
/// the environment for them. Never needed in use; `--help` does not show them.
#[derive(Debug, Clone, Default, Args)]
pub struct TestHooks {
    /// The first restart of a failed pair waits this long instead of a second (then twice as
    /// long each time, as ever).
    #[arg(long = "test-restart-ms", value_name = "MS", value_parser = millis, hide = true, global = true)]
    pub restart_delay: Option<Duration>,
    /// Behave as if the file system folded names: `case`, `unicode`, `case,unicode` or `none`,
    /// instead of finding out by experiment (the folding logic is tested on Linux this way).
    #[arg(long = "test-folding", value_name = "HOW", value_parser = Folding::parse, hide = true, global = true)]
    pub folding: Option<Folding>,
    /// Hold every local change this long before it is read, so that a peer's message arrives
    /// while a rescan is pending.
    #[arg(long = "test-scan-delay-ms", value_name = "MS", value_parser = millis, hide = true, global = true)]
    pub scan_delay: Option<Duration>,
    /// The poll backend plays an event history from this file, as FSEvents keeps one per
    /// volume (see `WatchConfig::history`), so the resume path runs on Linux.
    #[arg(long = "test-history", value_name = "FILE", hide = true, global = true)]
    pub history: Option<PathBuf>,
}

fn millis(s: &str) -> Result<Duration, String> {
    s.parse().map(Duration::from_millis).map_err(|e| format!("{s:?} is not a number of milliseconds: {e}"))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print this agent's device ID (generating its identity on first use).
    Id,
    /// Trust a peer's device ID: a server then serves it, a client then talks to it.
    Trust {
        /// The peer's device ID, as `mirror-agent id` prints it on the peer.
        id: String,
        /// A note kept beside the ID (for example the peer's host name).
        #[arg(long = "name")]
        name: Option<String>,
    },
    /// Serve directories under --root to any number of clients.
    Server {
        /// Address and port to listen on.
        #[arg(long = "listen", value_name = "ADDR:PORT", default_value = "0.0.0.0:49172")]
        listen: String,
        /// Clients' remote paths are resolved inside this directory (default: home directory).
        #[arg(long = "root", value_name = "DIR")]
        root: Option<PathBuf>,
    },
    /// Run every sync pair (and the server, if any) of the configuration file, in the
    /// background, with a control socket for the commands below.
    Run {
        /// The configuration (default: $XDG_CONFIG_HOME/mirror-agent/config.toml).
        #[arg(long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Only check the configuration and exit.
        #[arg(long = "check")]
        check: bool,
    },
    /// Show each pair of the running agent: state, last sync, pending changes, conflicts, errors.
    Status {
        /// Print JSON instead of a table.
        #[arg(long = "json")]
        json: bool,
    },
    /// List the pairs of the running agent.
    List,
    /// Stop syncing a pair for now; what changes meanwhile is sent on resume.
    Pause { name: String },
    /// Resume a paused pair; restart a failed one; accept the directory of a halted one.
    Resume { name: String },
    /// Add a pair to the running agent and its configuration (--insecure: plaintext).
    Add {
        name: String,
        #[command(flatten)]
        pair: PairArgs,
    },
    /// Remove a pair from the running agent and its configuration (files stay as they are).
    Remove { name: String },
    /// Print the running agent's configuration.
    Export,
    /// Replace the running agent's configuration with FILE (checked first).
    Import { file: PathBuf },
    /// Sync a local directory with a directory on a server.
    Client {
        #[command(flatten)]
        pair: PairArgs,
    },
}

/// One sync pair on the command line (`client`, `add`).
#[derive(Debug, Args)]
pub struct PairArgs {
    /// Server host name or address.
    #[arg(short = 'h', long = "host", value_name = "HOST")]
    pub host: String,
    /// Server port.
    #[arg(short = 'p', long = "port", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Local directory to sync.
    #[arg(short = 'l', long = "local", value_name = "LOCAL")]
    pub local: PathBuf,
    /// Directory on the server, inside the server's --root.
    #[arg(short = 'r', long = "remote", value_name = "REMOTE", value_parser = non_empty_remote)]
    pub remote: String,
    /// Sync paths matching this gitignore-syntax pattern even if ignored (repeatable).
    #[arg(short = 'i', long = "include", value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Do not sync paths matching this gitignore-syntax pattern (repeatable).
    #[arg(short = 'e', long = "exclude", value_name = "PATTERN")]
    pub exclude: Vec<String>,
}

/// `-r ''` would sync the whole server root: refused, as the configuration refuses it.
fn non_empty_remote(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("the remote directory is empty; name a directory inside the server's --root".into());
    }
    Ok(s.to_owned())
}

/// `--insecure` is for loopback (demos, SSH tunnels): plaintext anywhere else lets anyone on the
/// path read and change what is synced. `what` is `--listen ADDR:PORT` or `-h HOST`, `addr` the
/// address as given (`host:port`). Refused unless every address it names is a loopback one, or
/// the user said `--insecure-any-address`.
pub fn check_insecure(what: &str, addr: &str, any_address: bool) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    if any_address {
        return Ok(());
    }
    let addrs: Vec<std::net::SocketAddr> = match addr.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            return Err(format!(
                "--insecure: cannot resolve {what} {addr} to check that it is a loopback address ({e}); \
                 plaintext is for loopback only (add --insecure-any-address to allow any address)"
            ));
        }
    };
    match addrs.iter().find(|a| !a.ip().is_loopback()) {
        None if !addrs.is_empty() => Ok(()),
        found => Err(format!(
            "--insecure is for loopback addresses only, and {what} {addr}{} is not one: anyone on \
             the network path could read and change what is synced. Use TLS (drop --insecure and \
             pair the agents with `mirror-agent trust`), or add --insecure-any-address if this \
             network is entirely yours",
            found.map(|a| format!(" ({})", a.ip())).filter(|s| !s.contains(addr)).unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_is_for_loopback_unless_any_address_is_asked_for() {
        assert!(check_insecure("--listen", "127.0.0.1:0", false).is_ok());
        assert!(check_insecure("--listen", "[::1]:5", false).is_ok());
        assert!(check_insecure("-h", "localhost:5", false).is_ok());
        let e = check_insecure("--listen", "0.0.0.0:49172", false).unwrap_err();
        assert!(e.contains("--insecure-any-address"), "{e}");
        assert!(check_insecure("-h", "10.1.2.3:5", false).is_err());
        assert!(check_insecure("-h", "10.1.2.3:5", true).is_ok());
    }
}
