//! Renames move data on the peer's disk instead of sending it again.
#![allow(clippy::unwrap_used)]

use mirror_tests::*;
use std::fs;

/// Bytes the process has read through read(2)-like calls: files and sockets alike.
fn rchar(pid: u32) -> u64 {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).unwrap().trim().parse().unwrap()
}

#[test]
fn renaming_a_directory_of_big_files_sends_no_file_data() {
    const SIZE: usize = 32 * 1024 * 1024;
    let area = Area::new();
    let (c, s) = (area.path("client"), area.path("server/p"));
    let big: Vec<u8> = (0..SIZE).map(|i| (i * 13 % 251) as u8).collect();
    write(&c.join("data/big1.bin"), &big);
    write(&c.join("data/sub/big2.bin"), &big[..SIZE / 2]);
    write(&c.join("data/small.txt"), "small");
    let server = Server::start(&area.server_root(), &[]);
    let client = server.client("client", &c, "p", &[]);
    wait_same(&c, &s);
    let (client_before, server_before) = (rchar(client.pid()), rchar(server.agent.pid()));

    fs::rename(c.join("data"), c.join("renamed")).unwrap();
    wait_content(&s.join("renamed/sub/big2.bin"), &big[..SIZE / 2]);
    wait_content(&s.join("renamed/big1.bin"), &big);
    wait_gone(&s.join("data"));
    wait_same(&c, &s);

    // Neither side read the 48 MiB again: the client did not re-hash or upload it, the server
    // did not receive it.
    let (client_read, server_read) = (rchar(client.pid()) - client_before, rchar(server.agent.pid()) - server_before);
    assert!(client_read < 4 << 20, "client read {client_read} bytes for a rename");
    assert!(server_read < 4 << 20, "server read {server_read} bytes for a rename");
    let stash: Vec<_> = snapshot(&s).into_keys().filter(|p| p.to_string_lossy().contains(".mirror-tmp-")).collect();
    assert!(stash.is_empty(), "{stash:?}");
}

#[test]
fn a_file_renamed_on_the_server_moves_on_the_client() {
    let area = Area::new();
    let (c, s) = (area.path("client"), area.path("server/p"));
    let content = vec![42u8; 8 << 20];
    write(&s.join("old-name.bin"), &content);
    let server = Server::start(&area.server_root(), &[]);
    let client = server.client("client", &c, "p", &[]);
    wait_content(&c.join("old-name.bin"), &content);
    let before = rchar(client.pid());
    fs::rename(s.join("old-name.bin"), s.join("new-name.bin")).unwrap();
    wait_content(&c.join("new-name.bin"), &content);
    wait_gone(&c.join("old-name.bin"));
    let read = rchar(client.pid()) - before;
    assert!(read < 1 << 20, "client received {read} bytes for a rename");
}
