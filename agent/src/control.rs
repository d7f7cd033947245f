//! The control socket of a running `mirror-agent run`: one JSON request per line, one JSON
//! response per line, over a UNIX socket only its user can open (mode 0600 in a 0700 directory).

use crate::config::NewPair;
use crate::error::Error;
use crate::status::Report;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Pause { name: String },
    Resume { name: String },
    Add { pair: NewPair },
    Remove { name: String },
    Export,
    Import { text: String },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub reports: Vec<Report>,
    #[serde(default)]
    pub text: Option<String>,
}

impl Response {
    pub fn done() -> Response {
        Response { ok: true, ..Response::default() }
    }

    pub fn fail(e: impl std::fmt::Display) -> Response {
        Response { ok: false, error: Some(e.to_string()), ..Response::default() }
    }
}

/// Where the control socket of an agent with this `--state-dir` (if given) lives.
pub fn socket_path(explicit_state_dir: Option<&Path>, default_state_dir: &Path) -> PathBuf {
    if let Some(d) = explicit_state_dir {
        return d.join("control.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("mirror-agent").join("control.sock"),
        None => default_state_dir.join("control.sock"),
    }
}

/// Sends `req` to the agent listening at `path` and returns its answer.
pub fn call(path: &Path, req: &Request) -> Result<Response, Error> {
    let mut s = UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => Error::Refused(format!(
            "no mirror-agent is running with control socket {} (start one with `mirror-agent run`)",
            path.display()
        )),
        // The truth, not "no agent": another user's agent, or a state dir we may not enter.
        std::io::ErrorKind::PermissionDenied => Error::Refused(format!(
            "permission denied opening the control socket {}: the agent there belongs to another user \
             (run the command as that user), or this user may not enter that directory",
            path.display()
        )),
        _ => Error::Io { doing: format!("reaching the agent at control socket {}", path.display()), source: e },
    })?;
    let talk = Error::io(format!("talking to the agent at control socket {}", path.display()));
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(Error::io("setting a read timeout"))?;
    // A request is plain data: it always serialises.
    let mut line = serde_json::to_string(req).unwrap_or_default();
    line.push('\n');
    if let Err(e) = s.write_all(line.as_bytes()) {
        return Err(talk(e));
    }
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(Error::io("reading the agent's answer"))?;
    serde_json::from_str(&answer).map_err(|e| Error::BadAnswer { answer, reason: e.to_string() })
}

/// "3s ago", "2h ago", "never".
pub fn ago(t: Option<u64>, now: u64) -> String {
    match t {
        None => "never".into(),
        Some(t) => {
            let d = now.saturating_sub(t);
            match d {
                0..60 => format!("{d}s ago"),
                60..3600 => format!("{}m ago", d / 60),
                3600..86400 => format!("{}h ago", d / 3600),
                _ => format!("{}d ago", d / 86400),
            }
        }
    }
}

/// The human-readable `status` table.
pub fn table(reports: &[Report], now: u64) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "STATE".into(),
        "PEER".into(),
        "LAST SYNC".into(),
        "PENDING".into(),
        "CONFLICTS".into(),
        "ERROR".into(),
    ]];
    for r in reports {
        rows.push([
            r.name.clone(),
            r.state.name().into(),
            r.peer.clone(),
            ago(r.last_sync, now),
            r.pending.to_string(),
            r.conflicts.to_string(),
            r.last_error.clone().unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..7).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
