//! Paths that cannot be synced are reported once and the rest syncs on (issue 11, item 12).
#![allow(clippy::unwrap_used)]

use mirror_tests::*;
use std::process::Command;

/// A 4,200-byte path (21 directories of 199 bytes) used to be skipped without a word. It is
/// reported once, by name and why, while everything else syncs; a rescan does not repeat it.
#[test]
fn a_path_too_long_to_sync_is_reported_once_and_the_rest_syncs() {
    let area = Area::new();
    let (c, s) = (area.path("client"), area.path("server/p"));
    std::fs::create_dir_all(&c).unwrap();
    // Made step by step from inside (an absolute path this long is refused by the kernel).
    let script = "import os, sys\nos.chdir(sys.argv[1])\nfor _ in range(21):\n    os.mkdir('d' * 199)\n    os.chdir('d' * 199)\nopen('f.txt', 'w').write('deep')\n";
    assert!(Command::new("python3").args(["-c", script]).arg(&c).status().unwrap().success());
    write(&c.join("short.txt"), "syncs");
    let server = Server::start(&area.server_root(), &[]);
    let client = server.client("client", &c, "p", &[]);
    wait_content(&s.join("short.txt"), b"syncs");
    client.wait_log("more than the 4096 a peer takes");
    // A rescan of the directory (a new file beside it) does not report it again.
    write(&c.join("again.txt"), "again");
    wait_content(&s.join("again.txt"), b"again");
    let told = client.log().matches("more than the 4096 a peer takes").count();
    assert_eq!(told, 1, "{}", client.log());
}
