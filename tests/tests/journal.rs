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
    let snap = wait_until("a snapshot holding the new files", || {
        let p = find(&state, "base.snap")?;
        (std::fs::metadata(&p).ok()?.len() > 100_000).then_some(p)
    });
    let log = std::fs::metadata(snap.with_file_name("base.log")).unwrap().len();
    assert!(log < 1_000_000, "the journal is still {log} bytes after the snapshot");
}
