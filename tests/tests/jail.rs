//! The server root is a jail for a client's `-r` too: a refused remote path creates nothing,
//! inside the root or out, and a path that stays inside is accepted however it is spelled.
#![allow(clippy::unwrap_used)]

use mirror_tests::*;
use std::fs;

/// Regression (issue 11, item 13): `resolve_remote` ran `create_dir_all` before its symlink
/// check, so `planted/deep/dirs` with `planted -> outside` made `outside/deep/dirs`.
#[test]
fn a_remote_through_a_planted_symlink_is_refused_and_creates_nothing_outside() {
    let area = Area::new();
    let outside = area.path("outside");
    fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, area.path("server/planted")).unwrap();
    let server = Server::start(&area.server_root(), &[]);
    let local = area.path("c");
    let mut client = server.spawn_client("c", &local, "planted/deep/dirs", &[]);
    assert_eq!(client.wait_exit(), Some(1));
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "created through the symlink");
    let log = client.log();
    assert!(log.contains("passes through the symlink planted"), "{log}");
    // A file in the way is named as what it is.
    write(&area.path("server/file"), "x");
    let mut client = server.spawn_client("c2", &area.path("c2"), "file/sub", &[]);
    assert_eq!(client.wait_exit(), Some(1));
    assert!(client.log().contains("file is not a directory"), "{}", client.log());
}

/// Regression (issue 11, item 17): `..` that stays inside the root was refused as an escape.
#[test]
fn a_remote_with_dot_dot_inside_the_root_is_accepted() {
    let area = Area::new();
    let server = Server::start(&area.server_root(), &[]);
    let local = area.path("c");
    let _client = server.client("c", &local, "src/app/../app2", &[]);
    write(&local.join("a.txt"), "a");
    wait_content(&area.path("server/src/app2/a.txt"), b"a");
    assert!(!area.path("server/src/app").exists());
}

/// Regression (issue 11, item 17): `-r ''` synced the whole server root.
#[test]
fn an_empty_remote_is_refused_by_client_and_server() {
    let area = Area::new();
    let server = Server::start(&area.server_root(), &[]);
    let local = area.path("c");
    let mut client = server.spawn_client("c", &local, "", &[]);
    assert_eq!(client.wait_exit(), Some(2));
    assert!(client.log().contains("the remote directory is empty"), "{}", client.log());
    // A peer that sends it anyway is refused by the server.
    use mirror_protocol::{Hello, Message, Preamble, encode};
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut v = Preamble::ours().encode().to_vec();
    let hello = Hello { replica: 7, host: "h".into(), remote: vec![], includes: vec![], excludes: vec![] };
    v.extend(encode(&Message::Hello(hello)));
    s.write_all(&v).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert!(String::from_utf8_lossy(&reply).contains("the remote path is empty"));
}
