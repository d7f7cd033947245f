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

fn temp_files(root: &Path) -> Vec<PathBuf> {
    snapshot(root).into_keys().filter(|p| p.to_string_lossy().contains(".mirror-tmp-")).collect()
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
fn an_unreadable_file_is_logged_and_skipped_while_the_rest_syncs() {
    let area = Area::new();
    fs::set_permissions(area.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let c = area.path("client");
    fs::create_dir(&c).unwrap();
    write(&c.join("readable.txt"), "ok");
    write(&c.join("secret.txt"), "no");
    fs::set_permissions(c.join("secret.txt"), fs::Permissions::from_mode(0o000)).unwrap();
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
    wait_content(&s.join("readable.txt"), b"ok");
    write(&c.join("later.txt"), "later");
    let _ = Command::new("chown").args(["65534:65534"]).arg(c.join("later.txt")).status();
    wait_content(&s.join("later.txt"), b"later");
    assert!(!s.join("secret.txt").exists());
}

#[test]
fn running_out_of_inotify_watches_is_a_clear_error() {
    // A private user namespace has its own inotify limits: lower them there, not system-wide.
    let probe =
        Command::new("unshare").args(["-U", "-r", "sh", "-c", "echo 8 > /proc/sys/user/max_inotify_watches"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIP: cannot set inotify limits in a user namespace here");
        return;
    }
    let area = Area::new();
    fs::set_permissions(area.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let c = area.path("client");
    for i in 0..20 {
        fs::create_dir_all(c.join(format!("d{i}"))).unwrap();
    }
    let mut cmd = Command::new("unshare");
    cmd.args(["-U", "-r", "sh", "-c", "echo 8 > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\""])
        .arg(bin())
        .args(["client", "-h", "127.0.0.1", "-p", "9", "-l"])
        .arg(&c)
        .args(["-r", "p", "--insecure"]);
    let mut client = Agent::spawn_cmd("client", &mut cmd);
    assert_eq!(client.wait_exit(), Some(1));
    let log = client.log();
    assert!(log.contains("fs.inotify.max_user_watches") && log.contains("--watcher poll"), "{log}");
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
