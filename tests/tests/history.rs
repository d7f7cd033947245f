//! Start-up from a watcher's event history (FSEvents keeps one per volume) instead of a full
//! scan: the agent saves the watcher's checkpoint with its base, a restarted agent replays only
//! what the history names, and a history that was reset since means a full scan.
//!
//! Linux has no such history, so the test plays the volume: the poll backend's test hook
//! (the hidden `--test-history FILE`, see `backends/src/poll.rs`) replays a file of `<id> <path>` lines
//! under a history UUID. Everything else is the real agent: base, checkpoint, sync.
#![allow(clippy::unwrap_used)]

use mirror_tests::*;
use std::fs;

#[test]
fn a_restart_replays_the_event_history_and_a_reset_history_means_a_full_scan() {
    let area = Area::new();
    let s = area.path("server/p");
    for f in ["a.txt", "b.txt", "c.txt"] {
        write(&s.join(f), "before");
    }
    let history = area.path("history");
    write(&history, "uuid A\n1 a.txt\n");
    let hist = history.to_str().unwrap();
    let opts = ["--watcher", "poll", "--poll-interval-ms", "50", "--test-history", hist];
    let mut server = Server::start_at(&area.server_root(), "127.0.0.1:0", &opts);
    let listen = format!("127.0.0.1:{}", server.port);
    let c = area.path("client");
    let _client = server.client("client", &c, "p", &[]);
    wait_same(&c, &s);
    assert!(server.agent.log().contains("scanned in"), "the first start scans");
    assert_eq!(server.agent.terminate(), Some(0));

    // While the server is down: three changes, two of them in its history; and a temp file of a
    // transfer and a stash file that a crash left in the agent's directory.
    write(&s.join("a.txt"), "changed while stopped, in the history");
    write(&s.join("b.txt"), "changed while stopped, not in the history");
    fs::remove_file(s.join("c.txt")).unwrap();
    write(&s.join(AGENT_DIR).join("recv-1"), "half a transfer");
    write(&s.join(AGENT_DIR).join("stash-2"), "a stashed file");
    // A user's file with the old scheme's temp name, in a directory the history names whole.
    write(&s.join("d/.mirror-tmp-2-x"), "the user's");
    write(&history, "uuid A\n1 a.txt\n2 a.txt\n3 c.txt\n4 .mirror-agent.tmp/recv-1\n6 d\n");
    let mut server = Server::start_at(&area.server_root(), &listen, &opts);
    server.agent.wait_log("caught up from its event history");
    wait_content(&c.join("a.txt"), b"changed while stopped, in the history");
    wait_gone(&c.join("c.txt"));
    assert!(agent_files(&s).is_empty(), "no temp file survives: {:?}", agent_files(&s));
    wait_content(&c.join("d/.mirror-tmp-2-x"), b"the user's");
    // A live change after the replay; once it is here, so would b.txt be, had the server scanned.
    write(&s.join("marker"), "live");
    wait_content(&c.join("marker"), b"live");
    assert_eq!(fs::read(c.join("b.txt")).unwrap(), b"before", "the history was replayed, not a full scan");
    assert_eq!(server.agent.terminate(), Some(0));

    // The volume's history was reset (another UUID): the saved checkpoint is void, so a full scan
    // (its ids go on past the saved one, so only the UUID tells).
    write(&history, "uuid B\n7 marker\n");
    let server = Server::start_at(&area.server_root(), &listen, &opts);
    server.agent.wait_log("scanned in");
    wait_content(&c.join("b.txt"), b"changed while stopped, not in the history");
    wait_same(&c, &s);
    assert!(!server.agent.log().contains("caught up from its event history"));
}
