//! The errors of the agent's supervisor: running a pair or a server, the daemon and its control
//! socket. Each says what was being done; `main` prints it and exits.

use crate::config::ConfigError;
use crate::engine::StartError;
use crate::net::NetError;
use std::fmt;
use std::io;

#[derive(Debug)]
pub enum Error {
    /// A system call failed while `doing` something ("creating /x", "binding ...").
    Io { doing: String, source: io::Error },
    /// What we will not do, and why, in words for the user: a request of the control socket
    /// that does not apply, a configuration that is unsafe, another agent already running.
    Refused(String),
    /// The configuration file.
    Config(ConfigError),
    /// A pair's engine did not start.
    Start(StartError),
    /// The network loop ended.
    Net(NetError),
    /// A pair's engine halted for safety.
    Halted(mirror_core::replica::Halt),
    /// A thread panicked (the engine's, or a pair's supervisor).
    Panicked(String),
    /// The agent's answer on the control socket does not parse.
    BadAnswer { answer: String, reason: String },
}

impl Error {
    /// An I/O error while doing `doing`.
    pub fn io(doing: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let doing = doing.into();
        move |source| Error::Io { doing, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { doing, source } => write!(f, "{doing}: {source}"),
            Error::Refused(why) => f.write_str(why),
            Error::Config(e) => e.fmt(f),
            Error::Start(e) => e.fmt(f),
            Error::Net(e) => e.fmt(f),
            Error::Halted(h) => h.fmt(f),
            Error::Panicked(what) => write!(f, "crashed: {what}"),
            Error::BadAnswer { answer, reason } => write!(f, "bad answer from the agent: {answer:?}: {reason}"),
        }
    }
}

/// Its text says everything, the cause included (so a chain printed with `{:#}` says it once).
impl std::error::Error for Error {}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

impl From<StartError> for Error {
    fn from(e: StartError) -> Self {
        Error::Start(e)
    }
}

impl From<NetError> for Error {
    fn from(e: NetError) -> Self {
        Error::Net(e)
    }
}
