//! Writers racing on one name (issue 11, item 3): every content that was the newest on some
//! replica ends at the path or in exactly one conflict copy, on every replica.
#![allow(clippy::unwrap_used)]

use mirror_tests::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How many files under `root` hold exactly `content`: `name` itself or its conflict copies.
fn copies_of(root: &Path, name: &str, content: &[u8]) -> Vec<PathBuf> {
    let stem = name.split('.').next().unwrap();
    snapshot(root)
        .into_keys()
        .filter(|p| p.to_string_lossy().starts_with(stem))
        .filter(|p| fs::read(root.join(p)).ok().as_deref() == Some(content))
        .collect()
}

/// The laptop saves `f.txt` 150 ms after the server did, with 100 ms of latency each way: the
/// server's update has arrived, its content is still on the way (another 200 ms), and the
/// laptop's save is scanned meanwhile. Installing the content over that save lost 19 of 20 of
/// them (in the issue, with 25 ms and 50 ms), with no conflict copy anywhere.
#[test]
fn a_save_scanned_while_the_peers_version_travels_is_never_written_over() {
    let area = Area::new();
    let (c, s) = (area.path("client"), area.path("server/p"));
    let server = Server::start(&area.server_root(), &[]);
    let proxy = FaultProxy::start(server.port);
    proxy.set_delay(100);
    let _client = {
        let state = area.path("state-client");
        let a = spawn_client_to(proxy.port, "client", &c, "p", &state, &["--insecure"]);
        a.wait_log("connected to");
        a
    };
    write(&c.join("f.txt"), "start");
    wait_content(&s.join("f.txt"), b"start");
    for round in 0..8 {
        let (theirs, ours) = (format!("server save {round}"), format!("laptop save {round}"));
        write(&s.join("f.txt"), &theirs);
        std::thread::sleep(Duration::from_millis(150)); // the scenario's schedule, not a wait
        write(&c.join("f.txt"), &ours);
        wait_same(&c, &s);
        for side in [&c, &s] {
            let found = copies_of(side, "f.txt", ours.as_bytes());
            assert_eq!(found.len(), 1, "round {round}: the laptop's save is at {found:?} on {}", side.display());
            let found = copies_of(side, "f.txt", theirs.as_bytes());
            assert!(found.len() <= 1, "round {round}: the server's save is kept twice: {found:?}");
        }
    }
}

/// Ten clients save one name at the same instant, five times over: each save is at the path or
/// in exactly one conflict copy, on the server and on every client.
#[test]
fn many_clients_saving_one_name_at_once_lose_no_version() {
    const CLIENTS: usize = 10;
    const ROUNDS: usize = 5;
    let area = Area::new();
    let s = area.path("server/shared");
    let server = Server::start(&area.server_root(), &[]);
    let roots: Vec<PathBuf> = (0..CLIENTS).map(|i| area.path(&format!("c{i}"))).collect();
    let clients: Vec<Agent> =
        roots.iter().enumerate().map(|(i, r)| server.client(&format!("c{i}"), r, "shared", &[])).collect();
    let signal = |sig: &str| {
        for c in &clients {
            let ok = std::process::Command::new("kill").args([sig, &c.pid().to_string()]).status().unwrap();
            assert!(ok.success());
        }
    };
    for round in 0..ROUNDS {
        // Every client frozen while all of them save: no save can have seen another, so they
        // are all concurrent and all must survive. The saves are seen when the clients thaw.
        signal("-STOP");
        for (i, r) in roots.iter().enumerate() {
            write(&r.join("same.txt"), format!("round {round} by client {i}"));
        }
        signal("-CONT");
        for r in &roots {
            wait_same(r, &s);
        }
        for i in 0..CLIENTS {
            let content = format!("round {round} by client {i}");
            for side in roots.iter().chain([&s]) {
                let found = copies_of(side, "same.txt", content.as_bytes());
                assert_eq!(found.len(), 1, "round {round}: client {i}'s save is at {found:?} on {}", side.display());
            }
        }
    }
}
