//! Safety halts: a root that vanishes, is emptied or is replaced halts its pair with a clear
//! message and propagates nothing, until the user resumes it deliberately with `--resume`.
#![allow(clippy::unwrap_used)]

use mirror_tests::*;
use std::fs;
use std::path::Path;
use std::process::Command;

fn synced(area: &Area) -> (Server, Agent) {
    synced_with(area, 5)
}

fn synced_with(area: &Area, files: usize) -> (Server, Agent) {
    for i in 0..files {
        write(&area.path(&format!("client/f{i}.txt")), format!("{i}"));
    }
    let server = Server::start(&area.server_root(), &[]);
    let client = server.client("client", &area.path("client"), "p", &[]);
    wait_same(&area.path("client"), &area.path("server/p"));
    (server, client)
}

fn server_files(area: &Area) -> usize {
    snapshot(&area.path("server/p")).len()
}

/// `rm -rf` of the root unlinks every file before the root: each unlink is read only once they
/// stop, when the root is gone too (CI saw two of five deletions sent when a delete was read at
/// once; with 300 files, two runs in three).
#[test]
fn a_vanished_root_halts_and_deletes_nothing_on_the_peer() {
    let area = Area::new();
    let (_server, mut client) = synced_with(&area, 300);
    fs::remove_dir_all(area.path("client")).unwrap();
    assert_eq!(client.wait_exit(), Some(1));
    assert!(client.log().contains("halting"), "{}", client.log());
    assert_eq!(server_files(&area), 300, "deletions propagated from a vanished root");
}

#[test]
fn a_root_emptied_while_stopped_halts_until_resumed() {
    let area = Area::new();
    let (server, mut client) = synced(&area);
    assert_eq!(client.terminate(), Some(0));
    for i in 0..5 {
        fs::remove_file(area.path(&format!("client/f{i}.txt"))).unwrap();
    }
    // An empty root looks like an unmounted disk: halt.
    let mut again = server.spawn_client("client", &area.path("client"), "p", &[]);
    assert_eq!(again.wait_exit(), Some(1));
    assert!(again.log().contains("is empty, but 5 paths were synced"), "{}", again.log());
    assert_eq!(server_files(&area), 5);
    // The halt is remembered: a plain restart refuses too, and says how to resume.
    let mut again = server.spawn_client("client", &area.path("client"), "p", &[]);
    assert_eq!(again.wait_exit(), Some(1));
    assert!(again.log().contains("--resume"), "{}", again.log());
    // Resuming is deliberate: now the deletions are the user's and propagate.
    let _resumed = server.client("client", &area.path("client"), "p", &["--resume"]);
    wait_until("deletions to reach the server", || (server_files(&area) == 0).then_some(()));
}

#[test]
fn a_root_replaced_by_another_file_system_halts() {
    let area = Area::new();
    let (_server, mut client) = synced(&area);
    let root = area.path("client");
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&root).status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("SKIP: cannot mount a tmpfs here (needs root)");
        return;
    }
    let exit = client.wait_exit();
    let _ = Command::new("umount").arg("-l").arg(&root).status();
    assert_eq!(exit, Some(1));
    assert!(client.log().contains("was replaced"), "{}", client.log());
    assert_eq!(server_files(&area), 5);
    assert!(Path::new(&area.path("client/f0.txt")).exists());
}

/// Regression (issue 11, item 17): a client refused by a halted server was told to restart
/// with --resume, which resumes nothing: the halt is the server's, and must be resumed there.
#[test]
fn a_client_of_a_halted_server_is_told_to_resume_the_server() {
    let area = Area::new();
    let (mut server, mut client) = synced(&area);
    assert_eq!(client.terminate(), Some(0));
    assert_eq!(server.agent.terminate(), Some(0));
    for i in 0..5 {
        fs::remove_file(area.path(&format!("server/p/f{i}.txt"))).unwrap();
    }
    let server = Server::start(&area.server_root(), &[]);
    let mut client = server.spawn_client("client", &area.path("client"), "p", &[]);
    assert_eq!(client.wait_exit(), Some(1));
    let log = client.log();
    assert!(log.contains("the server's directory") && log.contains("must be resumed on the server"), "{log}");
    assert!(log.contains("--resume on this client does not resume it"), "{log}");
    assert_eq!(snapshot(&area.path("client")).len(), 5, "the emptied server root propagated");
}
