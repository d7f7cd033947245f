//! What a connection owed when it dies or is replaced (PROTOCOL.md, "Pending transfers"), driven
//! by a scripted peer speaking the protocol by hand: every race is played in a fixed order, so
//! each test fails the same way every time on code that loses the owed work.
#![allow(clippy::unwrap_used)]

use mirror_protocol::{Entry, Kind, Message, RelPath, Timestamp, VersionVector};
use mirror_tests::peer::Peer;
use mirror_tests::*;
use std::time::Duration;

fn entry(path: &str, content: &[u8], version: VersionVector, origin: &str) -> Entry {
    Entry {
        path: RelPath::new(path).unwrap(),
        kind: Kind::File { size: content.len() as u64, hash: *blake3::hash(content).as_bytes(), mode: 0o644 },
        mtime: Timestamp { secs: 1_700_000_000, nanos: 0 },
        version,
        origin: origin.into(),
    }
}

/// Issue 11, item 1: the same replica reconnects while its old connection, with a request
/// pending on it, still looks alive to the server. The new session's entry must be fetched (not
/// dropped as "already being fetched"), the old connection closed, and the high-water mark
/// must only move once the entry is in.
#[test]
fn a_reconnect_while_the_old_connection_lingers_fetches_what_the_old_one_owed() {
    let area = Area::new();
    let server = Server::start(&area.server_root(), &[]);
    let content = b"written while the link was dying";
    let e = entry("owed.txt", content, VersionVector::new().incremented(7), "scripted-7");

    let mut old = Peer::connect(server.port, 7, "p");
    assert_eq!(old.asked_since(), 0);
    old.index(vec![e.clone()], 5);
    old.requested("owed.txt", Duration::from_secs(10)); // and never answered: the link died

    let mut new = Peer::connect(server.port, 7, "p");
    assert_eq!(new.asked_since(), 0, "the server claims our changes although none was applied");
    new.index(vec![e], 5);
    let id = new.requested("owed.txt", Duration::from_secs(10));
    new.serve(id, content);
    wait_content(&area.path("server/p/owed.txt"), content);
    assert!(old.closed_within(Duration::from_secs(10)), "the replaced connection was left open");
    server.agent.wait_log("replaced");

    // Everything is in now: the next session asks only for what came after.
    drop(new);
    let mut third = Peer::connect(server.port, 7, "p");
    let since = third.asked_since();
    assert_eq!(since, 5, "{}", server.agent.log());
}

/// Issue 11, item 1: an entry another peer offered while the same version was being fetched
/// from a first one is fetched from the second when the first connection dies with it owed.
#[test]
fn an_entry_offered_by_two_peers_is_fetched_from_the_second_when_the_first_dies() {
    let area = Area::new();
    let server = Server::start(&area.server_root(), &[]);
    let content = b"the same version, from two peers";
    let e = entry("twice.txt", content, VersionVector::new().incremented(7), "scripted-7");

    let mut first = Peer::connect(server.port, 7, "p");
    first.asked_since();
    first.index(vec![e.clone()], 3);
    first.requested("twice.txt", Duration::from_secs(10));

    let mut second = Peer::connect(server.port, 8, "p");
    second.asked_since();
    second.index(vec![e], 9);
    // Nothing is asked of the second peer while the first one has it under way...
    assert!(
        second.next(Duration::from_millis(300)).is_none_or(|m| !matches!(m, Message::Request { .. })),
        "fetched twice at once"
    );
    drop(first);
    // ...and once the first is gone, the second one is asked.
    let id = second.requested("twice.txt", Duration::from_secs(10));
    second.serve(id, content);
    wait_content(&area.path("server/p/twice.txt"), content);
}

/// Issue 11, item 7 (the receiving side): a peer that cannot read a file for a moment answers
/// with `DataAbort`; the request is made again later instead of being forgotten, and the
/// peer's high-water mark does not move past the entry meanwhile.
#[test]
fn a_transfer_the_peer_could_not_send_is_requested_again() {
    let area = Area::new();
    let server = Server::start(&area.server_root(), &[]);
    let content = b"unreadable for a moment";
    let e = entry("locked.txt", content, VersionVector::new().incremented(7), "scripted-7");

    let mut peer = Peer::connect(server.port, 7, "p");
    peer.asked_since();
    peer.index(vec![e], 4);
    let id = peer.requested("locked.txt", Duration::from_secs(10));
    peer.send(&Message::DataAbort { id, reason: "read failed: Permission denied (os error 13)".into() });
    let id = peer.requested("locked.txt", Duration::from_secs(20));
    peer.serve(id, content);
    wait_content(&area.path("server/p/locked.txt"), content);
}

/// Issue 11, item 1: the high-water mark is never advanced over an entry a dead connection
/// left unapplied, so the next session is asked for it again.
#[test]
fn a_connection_that_dies_with_a_transfer_owed_is_asked_for_it_again() {
    let area = Area::new();
    let server = Server::start(&area.server_root(), &[]);
    let content = b"owed by a dead connection";
    let e = entry("again.txt", content, VersionVector::new().incremented(7), "scripted-7");

    let mut a = Peer::connect(server.port, 7, "p");
    a.asked_since();
    a.index(vec![e.clone()], 6);
    a.requested("again.txt", Duration::from_secs(10));
    drop(a);
    server.agent.wait_log("disconnected");

    let mut b = Peer::connect(server.port, 7, "p");
    assert_eq!(b.asked_since(), 0);
    b.index(vec![e], 6);
    let id = b.requested("again.txt", Duration::from_secs(10));
    b.serve(id, content);
    wait_content(&area.path("server/p/again.txt"), content);
}

/// Issue 11, item 5: the server's user replaces `fill/` by a symlink while the laptop is still
/// filling it. The laptop's new file under `fill/` cannot be applied on the server (it would
/// pass through the symlink): that one path is refused and reported, the session goes on, and
/// an unrelated file still arrives. The refusal used to close the connection, and every
/// reconnect met it again (624 reconnects in 120 s).
#[test]
fn a_path_that_cannot_be_applied_is_refused_alone_and_the_session_goes_on() {
    let area = Area::new();
    let (c, s) = (area.path("client"), area.path("server/p"));
    let server = Server::start(&area.server_root(), &[]);
    let client = server.client("client", &c, "p", &[]);
    write(&c.join("fill/a.txt"), "a");
    wait_content(&s.join("fill/a.txt"), b"a");

    // The laptop is busy (stopped) while the server's user swaps the directory for a link;
    // it writes one more file into its `fill/` meanwhile.
    let kill = |sig: &str| {
        assert!(std::process::Command::new("kill").args([sig, &client.pid().to_string()]).status().unwrap().success())
    };
    kill("-STOP");
    std::fs::remove_dir_all(s.join("fill")).unwrap();
    std::fs::create_dir_all(s.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink("elsewhere", s.join("fill")).unwrap();
    write(&c.join("fill/b.txt"), "written while the server swapped fill for a link");
    kill("-CONT");

    write(&c.join("unrelated.txt"), "still syncing");
    wait_content(&s.join("unrelated.txt"), b"still syncing");
    // Two outcomes are right, by which the laptop takes in first when it wakes: its own save
    // (sent, and refused alone by the server) or the server's link (then its directory, which
    // holds a file the server does not have, wins over the link).
    wait_until("the refusal on the server or the directory kept on the laptop", || {
        (server.agent.log().contains("not syncing fill/b.txt here")
            || client.log().contains("fill: the peer replaced this directory"))
        .then_some(())
    });
    assert!(!s.join("elsewhere/b.txt").exists(), "written through the symlink");
    let sessions = server.agent.log().matches(" syncs ").count();
    assert_eq!(sessions, 1, "the client had to reconnect:\n{}", server.agent.log());
    // Nothing the laptop wrote is lost: it is still there, or kept as a conflict copy.
    let kept = snapshot(&c).into_keys().any(|p| {
        std::fs::read(c.join(&p)).ok().as_deref() == Some(&b"written while the server swapped fill for a link"[..])
    });
    assert!(kept, "the laptop's fill/b.txt is gone: {:?}\n{}", snapshot(&c), client.log());
}

/// Issue 11, item 15: a second client of one directory with other `-i`/`-e` patterns used to
/// get the first client's patterns silently (its `b.log` never synced). It is refused with the
/// reason now; once nobody else uses the directory, its patterns apply.
#[test]
fn a_client_with_other_patterns_for_a_served_directory_is_refused_with_the_reason() {
    let area = Area::new();
    let server = Server::start(&area.server_root(), &[]);
    let mut first = server.client("first", &area.path("first"), "p", &["-e", "*.log"]);
    let mut second = server.spawn_client("second", &area.path("second"), "p", &[]);
    assert_eq!(second.wait_exit(), Some(1), "{}", second.log());
    let log = second.log();
    assert!(log.contains("other patterns") && log.contains(r#"-e "*.log""#), "{log}");

    assert_eq!(first.terminate(), Some(0));
    server.agent.wait_log("peer said goodbye"); // logged by the engine as it lets go of the session
    let second = server.client("second", &area.path("second"), "p", &[]);
    write(&area.path("second/b.log"), "wanted here");
    wait_content(&area.path("server/p/b.log"), b"wanted here");
    drop(second);
}

/// Issue 11, item 4, played in the order that made it happen: the peer announces the new name
/// of a file before the delete of its old name (it saw the new directories first). The file is
/// moved on the receiving side when the delete follows: its bytes are not requested again.
#[test]
fn a_rename_announced_create_first_moves_the_file_without_fetching_it() {
    let area = Area::new();
    let server = Server::start(&area.server_root(), &[]);
    let content: Vec<u8> = (0..1024 * 1024).map(|i| (i % 253) as u8).collect();
    let v = |n: u64| VersionVector::new().with(9, n);
    let mut peer = Peer::connect(server.port, 9, "p");
    peer.asked_since();
    peer.index(vec![entry("old/a.bin", &content, v(1), "scripted-9")], 1);
    let id = peer.requested("old/a.bin", Duration::from_secs(10));
    peer.serve(id, &content);
    wait_content(&area.path("server/p/old/a.bin"), &content);

    peer.send(&Message::Update { entries: vec![entry("new/deeper/a.bin", &content, v(2), "scripted-9")], seq: 2 });
    std::thread::sleep(Duration::from_millis(100)); // the delete comes a moment later: the scenario
    let mut gone = entry("old/a.bin", &content, v(3), "scripted-9");
    gone.kind = Kind::Deleted;
    peer.send(&Message::Update { entries: vec![gone], seq: 3 });
    wait_content(&area.path("server/p/new/deeper/a.bin"), &content);
    wait_gone(&area.path("server/p/old/a.bin"));
    let asked = peer.next(Duration::from_millis(300));
    assert!(!matches!(asked, Some(Message::Request { .. })), "fetched again: {asked:?}");
}

/// A conflict copy made independently by two replicas is one entry, not two concurrent ones: a
/// peer that kept the same loser (same name, same content) and then deleted its copy deletes
/// ours too. With a fresh version for each copy, the deletion lost to our copy as a
/// concurrent modification and the copy came back (model soak, seed 8046).
#[test]
fn a_conflict_copy_deleted_by_a_peer_that_made_it_too_stays_deleted() {
    let area = Area::new();
    write(&area.path("server/p/f.txt"), "the server's version");
    let server = Server::start(&area.server_root(), &[]);
    let mut peer = Peer::connect(server.port, 9, "p");
    peer.asked_since();
    peer.send(&Message::IndexFrom { since: 0 });
    let ours = peer.expect("the server's f.txt", Duration::from_secs(10), |m| match m {
        Message::IndexBatch { entries, .. } => entries.iter().find(|e| e.path.as_bytes() == b"f.txt").cloned(),
        _ => None,
    });
    // Our concurrent edit, later: it wins, and the server moves its version aside.
    let mut theirs = entry("f.txt", b"the peer's version", VersionVector::new().with(9, 1), "scripted-9");
    theirs.mtime = Timestamp { secs: ours.mtime.secs + 1000, nanos: 0 };
    peer.index(vec![theirs], 1);
    let id = peer.requested("f.txt", Duration::from_secs(10));
    peer.serve(id, b"the peer's version");
    let copy = peer.expect("the server's conflict copy", Duration::from_secs(10), |m| match m {
        Message::Update { entries, .. } => {
            entries.iter().find(|e| e.path.as_bytes().windows(10).any(|w| w == b".conflict-")).cloned()
        }
        _ => None,
    });
    let at = area.path("server/p").join(std::str::from_utf8(copy.path.as_bytes()).unwrap());
    wait_content(&at, b"the server's version");
    // We kept the same loser under the same name (its version: the loser's), then deleted it.
    let mut gone = copy.clone();
    gone.kind = Kind::Deleted;
    gone.version = ours.version.merged(&VersionVector::new().with(9, 3));
    peer.send(&Message::Update { entries: vec![gone], seq: 3 });
    wait_gone(&at);
}

/// Model seed 3 (shape operations): a peer's deletion of `d`, which still held a file of ours,
/// waits (PROTOCOL.md, "Directories"); meanwhile the peer makes `d` again with a newer version.
/// When the wait ended, the superseded deletion still counted: `d` got a new version of ours
/// that was concurrent with everything the peer did next, and a later `rm -r d` on the peer was
/// undone by it. A waiting deletion that a newer entry supersedes is dropped.
#[test]
fn a_waiting_directory_deletion_that_a_newer_entry_supersedes_makes_no_new_version() {
    let area = Area::new();
    let s = area.path("server/p");
    write(&s.join("d/ours.txt"), "the server's, unknown to the peer");
    let server = Server::start(&area.server_root(), &[]);
    let mut peer = Peer::connect(server.port, 9, "p");
    peer.asked_since();
    peer.send(&Message::IndexFrom { since: 0 });
    let d = peer.expect("the server's d", Duration::from_secs(10), |m| match m {
        Message::IndexBatch { entries, .. } => entries.iter().find(|e| e.path.as_bytes() == b"d").cloned(),
        _ => None,
    });
    peer.index(vec![], 0);
    // The peer deletes d without knowing ours.txt (the server keeps d while it waits), then
    // makes d again: a version that supersedes its deletion.
    let mut gone = d.clone();
    gone.kind = Kind::Deleted;
    gone.version = d.version.merged(&VersionVector::new().with(9, 1));
    peer.send(&Message::Update { entries: vec![gone.clone()], seq: 1 });
    let mut again = d.clone();
    again.version = gone.version.merged(&VersionVector::new().with(9, 2));
    peer.send(&Message::Update { entries: vec![again.clone()], seq: 2 });

    // The wait (2 s) ends one way or the other; then a change of the server's own is the
    // marker: whatever the server says of d before it, it says because of the wait.
    wait_until("the end of the wait", || {
        let log = server.agent.log();
        (log.contains("d: the deletion that waited is superseded") || log.contains("not deleting directory d"))
            .then_some(())
    });
    write(&s.join("marker.txt"), "after the wait");
    let mut said_of_d = vec![];
    peer.expect("the server's marker.txt", Duration::from_secs(10), |m| match m {
        Message::Update { entries, .. } => {
            said_of_d.extend(entries.iter().filter(|e| e.path.as_bytes() == b"d").cloned());
            entries.iter().any(|e| e.path.as_bytes() == b"marker.txt").then_some(())
        }
        _ => None,
    });
    assert!(said_of_d.is_empty(), "a new version of d: {said_of_d:?}\n{}", server.agent.log());
    assert!(s.join("d/ours.txt").exists());
}

/// Model seed 20038: two sides that each won a different conflict over one path (ours: our
/// directory over the peer's symlink; the peer's: its symlink over our older one) made the same
/// merged version for different contents, and held a directory and a symlink under one version
/// for ever. The winner of a conflict makes a new version of its own.
#[test]
fn the_winner_of_a_conflict_makes_a_version_no_merge_elsewhere_can_equal() {
    let area = Area::new();
    let s = area.path("server/p");
    std::fs::create_dir_all(&s).unwrap();
    std::os::unix::fs::symlink("target-1", s.join("e")).unwrap();
    let server = Server::start(&area.server_root(), &[]);
    let mut peer = Peer::connect(server.port, 9, "p");
    peer.asked_since();
    peer.send(&Message::IndexFrom { since: 0 });
    let ours = peer.expect("the server's e", Duration::from_secs(10), |m| match m {
        Message::IndexBatch { entries, .. } => entries.iter().find(|e| e.path.as_bytes() == b"e").cloned(),
        _ => None,
    });
    let at = |kind: Kind, version: VersionVector| Entry {
        path: RelPath::new("e").unwrap(),
        kind,
        mtime: Timestamp { secs: ours.mtime.secs + 100, nanos: 0 },
        version,
        origin: "scripted-9".into(),
    };
    // The peer made e a directory without knowing our symlink: its directory wins here.
    peer.index(vec![at(Kind::Directory, VersionVector::new().with(9, 1))], 1);
    wait_until("e a directory on the server", || s.join("e").is_dir().then_some(()));
    // Then it replaced its directory by a symlink, still not knowing ours: our directory wins.
    let link = Kind::Symlink { target: b"target-4".to_vec() };
    peer.send(&Message::Update { entries: vec![at(link.clone(), VersionVector::new().with(9, 2))], seq: 2 });
    // Its own symlink won over our old one there, and it merged: the version it now holds.
    let theirs = VersionVector::new().with(9, 2).merged(&ours.version);
    let mine = peer.expect("the server's winning directory", Duration::from_secs(10), |m| match m {
        Message::Update { entries, .. } => entries
            .iter()
            .find(|e| e.path.as_bytes() == b"e" && e.kind == Kind::Directory && e.version.get(9) == 2)
            .cloned(),
        _ => None,
    });
    assert_eq!(
        mine.version.compare(&theirs),
        mirror_protocol::VersionOrdering::After,
        "the server's directory {:?} does not supersede the peer's symlink {theirs:?}",
        mine.version
    );
    assert!(s.join("e").is_dir());
}
