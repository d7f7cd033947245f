//! The sync state on disk, seen from outside: the journal is compacted however its entries
//! were written.
#![allow(clippy::unwrap_used)]

use mirror_tests::*;
use std::path::{Path, PathBuf};

fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
        if p.is_dir()
            && let Some(f) = find(&p, name)
        {
            return Some(f);
        }
    }
    None
}

/// Entries journaled before they are sent (so that no peer holds a version we could forget)
/// were never followed by a snapshot: a pair that only made changes of its own (a laptop
/// offline, a server without clients) grew its journal for ever and replayed all of it at each
/// start (review of f4c5f73: 27,000 files, an empty snapshot).
#[test]
fn many_local_changes_with_no_peer_are_compacted_into_a_snapshot() {
    let area = Area::new();
    let (local, state) = (area.path("laptop"), area.path("state"));
    std::fs::create_dir_all(&local).unwrap();
    // Nobody listens on this port: the laptop is offline.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let client = spawn_client_to(port, "laptop", &local, "p", &state, &["--insecure"]);
    client.wait_log("watching ");
    // Over the compaction threshold (10,000 records), made while the pair runs.
    for d in 0..11 {
        for f in 0..1000 {
            write(&local.join(format!("d{d}/f{f}")), "x");
        }
    }
    // The snapshot is renamed into place a moment before the journal is started again: both
    // are waited for.
    let compacted = || {
        let p = find(&state, "base.snap")?;
        let log = std::fs::metadata(p.with_file_name("base.log")).ok()?.len();
        (std::fs::metadata(&p).ok()?.len() > 100_000).then_some(log)
    };
    wait_until("a snapshot holding the new files, and a journal under 1 MB beside it", || {
        compacted().filter(|log| *log < 1_000_000)
    });
}

/// The records of a journal (after its 8-byte magic: a length, a check, a payload each), as
/// (offset, first payload byte: the record's kind as postcard numbers it).
fn records(log: &[u8]) -> Vec<(usize, u8)> {
    let mut out = Vec::new();
    let mut pos = 8;
    while log.len() >= pos + 8 {
        let len = u32::from_be_bytes([log[pos], log[pos + 1], log[pos + 2], log[pos + 3]]) as usize;
        if log.len() < pos + 8 + len || len == 0 {
            break;
        }
        out.push((pos, log[pos + 8]));
        pos += 8 + len;
    }
    out
}

const ENTRY: u8 = 0;
const INTENT: u8 = 4;

/// Model seed 20038: a directory applied for a peer just before a `kill -9`, its journal record
/// not yet written, came back after the restart as a new directory of ours, and that beat the
/// peer's later deletion of it. The intent journaled before the change makes the restart take
/// it as the peer's version, which the deletion supersedes. (The kill is played by cutting the
/// journal right before the entry that followed the intent.)
#[test]
fn a_change_for_a_peer_cut_off_from_its_journal_record_is_the_peers_after_a_restart() {
    use mirror_protocol::{Entry, Kind, Message, RelPath, Timestamp, VersionVector};
    use mirror_tests::peer::Peer;
    let area = Area::new();
    let (root, state, s) = (area.server_root(), area.path("state"), area.path("server/p"));
    std::fs::create_dir_all(&s).unwrap();
    let mut server = spawn_server(&root, "127.0.0.1:0", &state, &["--insecure"]);
    let port = server.port;
    let d = |kind: Kind, n: u64| Entry {
        path: RelPath::new("d").unwrap(),
        kind,
        mtime: Timestamp { secs: 1_700_000_000, nanos: 0 },
        version: VersionVector::new().with(9, n),
        origin: "scripted-9".into(),
    };
    let mut peer = Peer::connect(port, 9, "p");
    peer.asked_since();
    peer.send(&Message::IndexFrom { since: 0 });
    peer.index(vec![d(Kind::Directory, 1)], 1);
    wait_until("d made on the server", || s.join("d").is_dir().then_some(()));
    let log_path = wait_until("the intent and the entry journaled", || {
        let p = find(&state, "base.log")?;
        let recs = records(&std::fs::read(&p).ok()?);
        let i = recs.iter().rposition(|r| r.1 == INTENT)?;
        recs[i..].iter().any(|r| r.1 == ENTRY).then_some(p)
    });
    drop(peer);
    server.agent.kill();
    let log = std::fs::read(&log_path).unwrap();
    let recs = records(&log);
    let i = recs.iter().rposition(|r| r.1 == INTENT).unwrap();
    let cut = recs[i..].iter().find(|r| r.1 == ENTRY).unwrap().0;
    std::fs::write(&log_path, &log[..cut]).unwrap();

    let server = spawn_server(&root, &format!("127.0.0.1:{port}"), &state, &["--insecure"]);
    let mut peer = Peer::connect(port, 9, "p");
    peer.asked_since();
    peer.send(&Message::Update { entries: vec![d(Kind::Deleted, 2)], seq: 2 });
    wait_gone(&s.join("d"));
    assert!(server.agent.log().contains("d: applied for a peer just before the last stop"), "{}", server.agent.log());
}
