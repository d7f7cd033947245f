//! Faults on the receiving and sending disks: full disks and unreadable files.
//!
//! These need root (to mount a small tmpfs, and to run an agent as another user, since root
//! reads any file). Where the machine refuses, the test says so and skips.
#![allow(clippy::unwrap_used)]

use mirror_tests::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted for the length of a test.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).status();
        if ok.is_ok_and(|s| s.success()) {
            Some(Tmpfs(at.to_path_buf()))
        } else {
            eprintln!("SKIP: cannot mount a tmpfs here (needs root)");
            None
        }
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).status().unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Temp files of ours, in the agent's directory or (wrongly) anywhere else.
fn temp_files(root: &Path) -> Vec<PathBuf> {
    let mut out = stray_temp_files(root);
    out.extend(agent_files(root).into_iter().map(|p| Path::new(AGENT_DIR).join(p)));
    out
}

#[test]
fn a_full_disk_leaves_no_partial_file_and_the_transfer_is_retried() {
    let area = Area::new();
    let Some(disk) = Tmpfs::mount(&area.server_root(), "3m") else { return };
    let (c, s) = (area.path("client"), area.path("server/p"));
    let server = Server::start(&area.server_root(), &[]);
    let client = server.client("client", &c, "p", &[]);
    write(&c.join("small.txt"), "fits");
    wait_content(&s.join("small.txt"), b"fits");
    let big: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    write(&c.join("big.bin"), &big);
    server.agent.wait_log("(disk full)");
    wait_until("no temp file left on the full disk", || temp_files(&s).is_empty().then_some(()));
    // An earlier, partly written version may have fit and synced; the full one cannot have.
    assert_ne!(fs::read(s.join("big.bin")).ok().map(|b| b.len()), Some(big.len()));
    // Other changes still flow while the big one waits.
    write(&c.join("after.txt"), "still syncing");
    wait_content(&s.join("after.txt"), b"still syncing");
    // Room again: the retry lands the file.
    disk.resize("16m");
    wait_content(&s.join("big.bin"), &big);
    assert!(temp_files(&s).is_empty());
    drop(client);
    drop(server);
}

#[test]
fn an_unreadable_file_or_directory_is_logged_and_skipped_while_the_rest_syncs() {
    let area = Area::new();
    fs::set_permissions(area.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let c = area.path("client");
    fs::create_dir(&c).unwrap();
    write(&c.join("readable.txt"), "ok");
    write(&c.join("secret.txt"), "no");
    fs::set_permissions(c.join("secret.txt"), fs::Permissions::from_mode(0o000)).unwrap();
    // A directory it may not even list (it cannot be watched either).
    write(&c.join("locked/inner.txt"), "no");
    fs::set_permissions(c.join("locked"), fs::Permissions::from_mode(0o700)).unwrap();
    // The client runs as nobody, owning its tree except the secret.
    let chown = Command::new("chown").args(["65534:65534"]).arg(&c).arg(c.join("readable.txt")).status();
    let setpriv = Command::new("setpriv").arg("--version").output();
    if !chown.is_ok_and(|s| s.success()) || setpriv.is_err() {
        eprintln!("SKIP: needs root and setpriv to run an agent as another user");
        return;
    }
    let s = area.path("server/p");
    let server = Server::start(&area.server_root(), &[]);
    let port = server.port.to_string();
    let state = area.path("state");
    fs::create_dir(&state).unwrap();
    let _ = Command::new("chown").args(["65534:65534"]).arg(&state).status();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin())
        .args(["client", "-h", "127.0.0.1", "-p", &port, "-l"])
        .arg(&c)
        .args(["-r", "p", "--insecure", "--state-dir"])
        .arg(&state)
        .env("HOME", area.dir.path());
    let client = Agent::spawn_cmd("client", &mut cmd);
    client.wait_log("cannot read secret.txt");
    client.wait_log("cannot watch");
    wait_content(&s.join("readable.txt"), b"ok");
    write(&c.join("later.txt"), "later");
    let _ = Command::new("chown").args(["65534:65534"]).arg(c.join("later.txt")).status();
    wait_content(&s.join("later.txt"), b"later");
    assert!(!s.join("secret.txt").exists());
    assert!(!s.join("locked/inner.txt").exists());
}

/// A client in a private user namespace, which has its own inotify limits (set there, not
/// system-wide), to `limit` watches; `None` if this machine cannot make one.
fn client_with_inotify_limit(limit: u32, server_port: u16, local: &Path) -> Option<Agent> {
    let set = format!("echo {limit} > /proc/sys/user/max_inotify_watches");
    let probe = Command::new("unshare").args(["-U", "-r", "sh", "-c", &set]).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIP: cannot set inotify limits in a user namespace here");
        return None;
    }
    let mut cmd = Command::new("unshare");
    cmd.args(["-U", "-r", "sh", "-c", &format!("{set} && exec \"$0\" \"$@\"")])
        .arg(bin())
        .args(["client", "-h", "127.0.0.1", "-p", &server_port.to_string(), "-l"])
        .arg(local)
        .args(["-r", "p", "--insecure", "--poll-interval-ms", "100"]);
    Some(Agent::spawn_cmd("client", &mut cmd))
}

#[test]
fn no_inotify_watch_for_the_root_is_a_clear_error() {
    let area = Area::new();
    fs::set_permissions(area.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let c = area.path("client");
    fs::create_dir_all(&c).unwrap();
    let Some(mut client) = client_with_inotify_limit(0, 9, &c) else { return };
    assert_eq!(client.wait_exit(), Some(1));
    let log = client.log();
    assert!(log.contains("fs.inotify.max_user_watches") && log.contains("--watcher poll"), "{log}");
}

#[test]
fn past_the_inotify_watch_limit_the_rest_is_polled_and_syncs() {
    let area = Area::new();
    fs::set_permissions(area.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (c, s) = (area.path("client"), area.path("server/p"));
    for i in 0..20 {
        write(&c.join(format!("d{i}/sub/f.txt")), format!("{i}"));
    }
    let server = Server::start(&area.server_root(), &[]);
    let Some(client) = client_with_inotify_limit(8, server.port, &c) else { return };
    let log = client.wait_log("what cannot be watched is polled");
    assert!(log.contains("fs.inotify.max_user_watches") && log.contains("--watcher poll"), "{log}");
    wait_same(&c, &s);
    // Every directory, watched or not, still syncs both ways: live edits deep in all of them.
    for i in 0..20 {
        write(&c.join(format!("d{i}/sub/new.txt")), format!("new {i}"));
        write(&s.join(format!("d{i}/from-server.txt")), format!("s {i}"));
    }
    wait_same(&c, &s);
    assert_eq!(fs::read(c.join("d19/from-server.txt")).unwrap(), b"s 19");
    assert_eq!(fs::read(s.join("d19/sub/new.txt")).unwrap(), b"new 19");
    // A directory made past the limit: seen when it appears, and polled for what follows.
    write(&c.join("late/deep/x.txt"), "x");
    wait_content(&s.join("late/deep/x.txt"), b"x");
    write(&c.join("late/deep/y.txt"), "y");
    wait_content(&s.join("late/deep/y.txt"), b"y");
}

#[test]
fn a_watcher_queue_overflow_is_followed_by_a_rescan_that_converges() {
    let area = Area::new();
    let (c, s) = (area.path("client"), area.path("server/p"));
    let server = Server::start(&area.server_root(), &[]);
    let client = server.client("client", &c, "p", &[]);
    let limit: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(16384);
    // Freeze the client so its inotify queue fills, then write more events than it holds:
    // each file below makes four (create, modify, close, chmod).
    // The directory must be watched before the freeze, or its events are never queued at all.
    fs::create_dir(c.join("flood")).unwrap();
    wait_until("flood/ on the server", || s.join("flood").is_dir().then_some(()));
    let pid = client.pid().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let files = limit / 4 + 500;
    for i in 0..files {
        let p = c.join(format!("flood/{i}"));
        fs::write(&p, i.to_string()).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    client.wait_log("overflowed; rescanning everything");
    wait_content(&s.join(format!("flood/{}", files - 1)), (files - 1).to_string().as_bytes());
    wait_same(&c, &s);
}

/// A file system mounted inside the root: a rename from the agent's directory cannot reach it,
/// so its files are received into a temp file beside them (recorded in the agent's directory),
/// a rename there cannot stash (the file is deleted and sent again), and what a crash left there
/// is removed at the next start because it was recorded, not because of its name.
#[test]
fn a_mount_inside_the_root_receives_through_temp_files_beside_and_start_up_removes_recorded_ones() {
    let area = Area::new();
    let (c, s) = (area.path("client"), area.path("server/p"));
    let Some(_disk) = Tmpfs::mount(&s.join("mnt"), "16m") else { return };
    let mut server = Server::start(&area.server_root(), &[]);
    let client = server.client("client", &c, "p", &[]);
    write(&c.join("top.txt"), "on the root's file system");
    write(&c.join("mnt/a.txt"), "on the mount");
    write(&c.join("mnt/deep/b.txt"), "deeper on the mount");
    wait_content(&s.join("mnt/deep/b.txt"), b"deeper on the mount");
    wait_content(&s.join("mnt/a.txt"), b"on the mount");
    wait_content(&s.join("top.txt"), b"on the root's file system");
    fs::rename(c.join("mnt/a.txt"), c.join("mnt/renamed.txt")).unwrap();
    wait_content(&s.join("mnt/renamed.txt"), b"on the mount");
    wait_gone(&s.join("mnt/a.txt"));
    wait_same(&c, &s);
    wait_until("nothing of ours left", || temp_files(&s).is_empty().then_some(()));

    // A crash mid-transfer into the mount: the temp file beside and its record stay behind.
    // Another file with such a name but no record is not provably ours: it stays too.
    let listen = format!("127.0.0.1:{}", server.port);
    server.agent.kill();
    let leftover = "mnt/deep/.mirror-agent.tmp-00000000000000aa";
    write(&s.join(leftover), "half a transfer");
    write(&s.join(AGENT_DIR).join("beside-00000000000000aa"), leftover);
    write(&s.join("mnt/.mirror-agent.tmp-00000000000000bb"), "not recorded");
    let server = Server::start_at(&area.server_root(), &listen, &[]);
    client.wait_log("connected to");
    write(&c.join("after.txt"), "after the restart");
    wait_content(&s.join("after.txt"), b"after the restart");
    assert!(!s.join(leftover).exists(), "the recorded temp file survived the start");
    assert!(s.join("mnt/.mirror-agent.tmp-00000000000000bb").exists(), "an unrecorded file was removed");
    assert!(agent_files(&s).is_empty(), "{:?}", agent_files(&s));
    assert!(!c.join("mnt/.mirror-agent.tmp-00000000000000bb").exists(), "a temp-file name was synced");
    drop(client);
    drop(server);
}
