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
    assert!(stray_temp_files(&s).is_empty(), "{:?}", stray_temp_files(&s));
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

/// Issue 11 item 10: while a directory of many files is renamed (the receiving side stashes the
/// deleted files for the creates to take), no temp or stash file is ever in the user's view on
/// the receiving side, and the agent's directory is empty once the rename is done.
#[test]
fn a_directory_rename_never_shows_stash_files_and_leaves_none() {
    let area = Area::new();
    let (c, s) = (area.path("client"), area.path("server/p"));
    for i in 0..400 {
        write(&c.join(format!("src/m{}/f{i}.rs", i % 20)), format!("fn f{i}() {{}} // {}", "x".repeat(i)));
    }
    let server = Server::start(&area.server_root(), &[]);
    let _client = server.client("client", &c, "p", &[]);
    wait_same(&c, &s);
    fs::rename(c.join("src"), c.join("lib")).unwrap();
    let want = snapshot(&c);
    let mut polls = 0;
    let mut stashed_seen = false;
    wait_until("the rename to reach the server", || {
        polls += 1;
        let stray = stray_temp_files(&s);
        assert!(stray.is_empty(), "temp or stash files in the user's view: {stray:?}");
        if !agent_files(&s).is_empty() {
            stashed_seen = true;
            // The directory ignores itself for git (`git status` lists none of it); it may go
            // between the two looks, at the end.
            if let Ok(ignore) = fs::read_to_string(s.join(AGENT_DIR).join(".gitignore")) {
                assert!(ignore.lines().any(|l| l == "*"), "{ignore}");
            }
        }
        (snapshot(&s) == want).then_some(())
    });
    wait_until("the agent's directory to be empty", || {
        assert!(stray_temp_files(&s).is_empty());
        agent_files(&s).is_empty().then_some(())
    });
    assert!(polls > 0);
    // (Whether a poll caught the stash at work depends on timing; it is not required.)
    let _ = stashed_seen;
}

/// Issue 11, item 4: a directory moved into directories made for it a moment before
/// (`mkdir -p nested/deeper && mv m2 nested/deeper/`). The peer may see the new names before
/// the old one goes, so the creates come before the delete: 59-210 MB were sent again in 8 of
/// 14 runs. Now a create whose content is here under another name waits a moment for that
/// delete and moves the file; nothing is sent. Three times, since the order is the peer's.
#[test]
fn a_directory_moved_into_new_parents_moves_instead_of_sending_again() {
    const SIZE: usize = 8 * 1024 * 1024;
    let area = Area::new();
    let (c, s) = (area.path("client"), area.path("server/p"));
    let big: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
    for i in 0..3 {
        write(&c.join(format!("m{i}/assets/a.bin")), &big[..SIZE - i]);
        write(&c.join(format!("m{i}/assets/b.bin")), &big[i..]);
    }
    let server = Server::start(&area.server_root(), &[]);
    let client = server.client("client", &c, "p", &[]);
    wait_same(&c, &s);
    for i in 0..3 {
        let before = rchar(server.agent.pid());
        let deeper = c.join(format!("nested{i}/deeper"));
        fs::create_dir_all(&deeper).unwrap();
        fs::rename(c.join(format!("m{i}")), deeper.join(format!("m{i}"))).unwrap();
        wait_content(&s.join(format!("nested{i}/deeper/m{i}/assets/a.bin")), &big[..SIZE - i]);
        wait_content(&s.join(format!("nested{i}/deeper/m{i}/assets/b.bin")), &big[i..]);
        wait_gone(&s.join(format!("m{i}")));
        wait_same(&c, &s);
        let read = rchar(server.agent.pid()) - before;
        assert!(read < 4 << 20, "move {i}: the server read {read} bytes (received or copied them):\n{}", client.log());
    }
}
