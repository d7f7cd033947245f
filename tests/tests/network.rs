//! Networks that fail: cuts mid-transfer, silent peers, and many clients at once.
#![allow(clippy::unwrap_used)]

use mirror_tests::*;
use std::fs;

fn insecure_client(server_port: u16, area: &Area, name: &str, remote: &str) -> Agent {
    let state = area.path(&format!("state-{name}"));
    let a = spawn_client_to(server_port, name, &area.path(name), remote, &state, &["--insecure"]);
    a.wait_log("connected to");
    a
}

#[test]
fn five_clients_converge_through_one_server() {
    let area = Area::new();
    let server = Server::start(&area.server_root(), &[]);
    let names = ["c1", "c2", "c3", "c4", "c5"];
    let clients: Vec<Agent> = names.iter().map(|n| insecure_client(server.port, &area, n, "shared")).collect();
    for (i, n) in names.iter().enumerate() {
        write(&area.path(n).join(format!("from-{n}/file.txt")), format!("written by {i}"));
        write(&area.path(n).join("everyone.txt"), format!("last writer {i}"));
    }
    for n in names {
        wait_same(&area.path(n), &area.path("server/shared"));
    }
    let snap = snapshot(&area.path("server/shared"));
    for n in names {
        assert!(snap.contains_key(std::path::Path::new(&format!("from-{n}/file.txt"))), "{n} missing");
    }
    // Five writes to one name in quick succession: whichever came last causally (or won a
    // conflict) is the same file everywhere.
    let last = fs::read_to_string(area.path("server/shared/everyone.txt")).unwrap();
    assert!((0..5).any(|i| last == format!("last writer {i}")), "{last}");
    drop(clients);
}

#[test]
fn a_connection_cut_mid_transfer_resumes_and_leaves_no_torn_file() {
    let area = Area::new();
    let (c, s) = (area.path("client"), area.path("server/p"));
    let server = Server::start(&area.server_root(), &[]);
    let proxy = FaultProxy::start(server.port);
    let client = insecure_client(proxy.port, &area, "client", "p");
    let big: Vec<u8> = (0..96 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    write(&c.join("big.bin"), &big);
    wait_until("the transfer to be under way", || {
        snapshot(&s).keys().any(|p| p.to_string_lossy().contains(".mirror-tmp-")).then_some(())
    });
    proxy.cut();
    client.wait_log("disconnected");
    // The client reconnects by itself; the transfer starts over and completes.
    wait_content(&s.join("big.bin"), &big);
    wait_same(&c, &s);
    assert!(snapshot(&s).keys().all(|p| !p.to_string_lossy().contains(".mirror-tmp-")));
}

#[test]
fn a_silent_peer_is_detected_by_heartbeats_and_the_client_reconnects() {
    let area = Area::new();
    let (c, s) = (area.path("client"), area.path("server/p"));
    let server = Server::start(&area.server_root(), &[]);
    let proxy = FaultProxy::start(server.port);
    let client = insecure_client(proxy.port, &area, "client", "p");
    write(&c.join("before.txt"), "before");
    wait_content(&s.join("before.txt"), b"before");
    // The link goes silent: no reset, no FIN, nothing (a laptop asleep, a dead NAT entry).
    proxy.freeze(true);
    let started = std::time::Instant::now();
    client.wait_log("nothing heard for");
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(15), "dead peer noticed only after {took:?}");
    proxy.cut();
    proxy.freeze(false);
    write(&c.join("after.txt"), "after");
    wait_content(&s.join("after.txt"), b"after");
}
