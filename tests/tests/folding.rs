//! A client on a file system that folds names (macOS: case-insensitive, normalization-
//! insensitive), played on Linux by injecting the behaviour (the hidden `--test-folding`): a Linux
//! server's `Readme.md` and `README.md` are one name there. The client takes one, reports the
//! other as a collision, never overwrites or deletes the one it has because of the other, and
//! nothing ping-pongs.
#![allow(clippy::unwrap_used)]

use mirror_tests::*;
use std::fs;
use std::path::Path;
use std::process::Command;

fn folding_client(server: &Server, area: &Area, folding: &str) -> Agent {
    let local = area.path("client");
    let port = server.port.to_string();
    let a = Agent::spawn_cmd(
        "client",
        Command::new(bin())
            .args(["client", "-h", "127.0.0.1", "-p", &port, "-r", "p", "--insecure", "--test-folding", folding, "-l"])
            .arg(&local)
            .arg("--state-dir")
            .arg(area.path("state-client")),
    );
    a.wait_log("connected to");
    a
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != AGENT_DIR)
        .collect();
    v.sort();
    v
}

#[test]
fn two_spellings_of_one_name_are_a_collision_not_an_overwrite() {
    let area = Area::new();
    let (c, s) = (area.path("client"), area.path("server/p"));
    write(&s.join("docs/README.md"), "upper");
    write(&s.join("docs/Readme.md"), "lower");
    write(&s.join("docs/caf\u{e9}.txt"), "composed");
    write(&s.join("docs/cafe\u{301}.txt"), "decomposed");
    write(&s.join("Notes/a.txt"), "in Notes");
    write(&s.join("notes/b.txt"), "in notes: the same directory there");
    write(&s.join("plain.txt"), "plain");
    let server = Server::start(&area.server_root(), &[]);
    let client = folding_client(&server, &area, "case,unicode");
    wait_content(&c.join("plain.txt"), b"plain");
    // One spelling each (the first in path order, bytewise), the others reported.
    wait_content(&c.join("docs/README.md"), b"upper");
    wait_content(&c.join("docs/cafe\u{301}.txt"), b"decomposed");
    wait_content(&c.join("Notes/a.txt"), b"in Notes");
    let log = wait_until("three collisions reported", || {
        let log = client.log();
        ["docs/Readme.md", "docs/caf\u{e9}.txt", "notes"]
            .iter()
            .all(|o| log.contains(&format!("the peer's {o} ")))
            .then_some(log)
    });
    assert!(log.contains("same name as our Notes"), "{log}");
    assert_eq!(names(&c), ["Notes", "docs", "plain.txt"]);
    assert_eq!(names(&c.join("docs")), ["README.md", "cafe\u{301}.txt"]);
    assert_eq!(names(&c.join("Notes")), ["a.txt"]);
    // The server keeps every spelling, untouched: nothing was deleted or overwritten.
    write(&c.join("from-client.txt"), "marker");
    wait_content(&s.join("from-client.txt"), b"marker");
    assert_eq!(fs::read(s.join("docs/Readme.md")).unwrap(), b"lower");
    assert_eq!(fs::read(s.join("docs/caf\u{e9}.txt")).unwrap(), b"composed");
    assert_eq!(fs::read(s.join("notes/b.txt")).unwrap(), b"in notes: the same directory there");

    // The user settles it on the server: the spelling the client has goes away, and the other
    // one, offered again, takes its place.
    fs::remove_file(s.join("docs/README.md")).unwrap();
    wait_content(&c.join("docs/Readme.md"), b"lower");
    assert!(!c.join("docs/README.md").exists());
}

#[test]
fn a_restart_offers_a_collided_name_again() {
    let area = Area::new();
    let (c, s) = (area.path("client"), area.path("server/p"));
    write(&s.join("A.txt"), "upper");
    write(&s.join("a.txt"), "lower");
    let server = Server::start(&area.server_root(), &[]);
    let mut client = folding_client(&server, &area, "case");
    wait_content(&c.join("A.txt"), b"upper");
    client.wait_log("name collision");
    assert_eq!(client.terminate(), Some(0));
    // While the client is away the server drops the spelling the client has.
    fs::remove_file(s.join("A.txt")).unwrap();
    let _client = folding_client(&server, &area, "case");
    wait_content(&c.join("a.txt"), b"lower");
    wait_gone(&c.join("A.txt"));
}
