//! One conformance suite for every watcher backend this host has.
//!
//! Each test runs against every backend in `Backend::available()`. A path counts as reported when
//! a hint covers it: `Dirty` of the path itself, `RescanSubtree` of it or an ancestor, or
//! `Overflow`. The suite uses only portable file operations so it runs unchanged on macOS/BSD.
#![allow(clippy::unwrap_used)]

use crossbeam_channel::{Receiver, bounded};
use mirror_backends::{Backend, DirRules, WatchConfig, WatchEvent, Watcher, start};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(10);

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    rx: Receiver<WatchEvent>,
    watcher: Box<dyn Watcher>,
}

fn fixture(backend: Backend, setup: impl FnOnce(&Path), cap: usize) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    fs::create_dir(&root).expect("mkdir root");
    setup(&root);
    let (tx, rx) = bounded(cap);
    let mut cfg = WatchConfig::new(&root);
    cfg.poll_interval = Duration::from_millis(30);
    let watcher = start(backend, cfg, tx).expect("start watcher");
    Fixture { _dir: dir, root, rx, watcher }
}

fn covers(ev: &WatchEvent, p: &Path) -> bool {
    match ev {
        WatchEvent::Dirty(d) | WatchEvent::Settled(d) | WatchEvent::Writing(d) | WatchEvent::Unlinked(d) => d == p,
        WatchEvent::RescanSubtree(d) => p.starts_with(d),
        WatchEvent::Overflow => true,
        WatchEvent::RootGone | WatchEvent::Checkpoint(_) | WatchEvent::Replayed => false,
    }
}

/// Waits until every path in `want` is covered by some hint, or fails at the deadline.
fn expect_covered(f: &Fixture, backend: Backend, want: &[&str]) {
    let mut missing: Vec<PathBuf> = want.iter().map(PathBuf::from).collect();
    let end = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    while !missing.is_empty() {
        let left = end.saturating_duration_since(Instant::now());
        match f.rx.recv_timeout(left) {
            Ok(ev) => {
                missing.retain(|p| !covers(&ev, p));
                seen.push(ev);
            }
            Err(_) => panic!("{backend:?}: no hint for {missing:?} within {DEADLINE:?}; saw {seen:?}"),
        }
    }
}

fn drain(f: &Fixture) {
    while f.rx.recv_timeout(Duration::from_millis(150)).is_ok() {}
}

fn each_backend(test: impl Fn(Backend)) {
    for b in Backend::available() {
        test(b);
    }
}

#[test]
fn create_modify_delete_file() {
    each_backend(|b| {
        let f = fixture(b, |_| {}, 1024);
        fs::write(f.root.join("a.txt"), "1").unwrap();
        expect_covered(&f, b, &["a.txt"]);
        drain(&f);
        fs::write(f.root.join("a.txt"), "22").unwrap();
        expect_covered(&f, b, &["a.txt"]);
        drain(&f);
        fs::remove_file(f.root.join("a.txt")).unwrap();
        expect_covered(&f, b, &["a.txt"]);
    });
}

#[test]
fn chmod_is_reported() {
    use std::os::unix::fs::PermissionsExt;
    each_backend(|b| {
        let f = fixture(b, |r| fs::write(r.join("x"), "x").unwrap(), 1024);
        fs::set_permissions(f.root.join("x"), fs::Permissions::from_mode(0o755)).unwrap();
        expect_covered(&f, b, &["x"]);
    });
}

#[test]
fn rename_file_reports_both_names() {
    each_backend(|b| {
        let f = fixture(b, |r| fs::write(r.join("old"), "x").unwrap(), 1024);
        fs::rename(f.root.join("old"), f.root.join("new")).unwrap();
        expect_covered(&f, b, &["old", "new"]);
    });
}

#[test]
fn mkdir_rmdir_and_rename_directory() {
    each_backend(|b| {
        let f = fixture(b, |_| {}, 1024);
        fs::create_dir(f.root.join("d")).unwrap();
        expect_covered(&f, b, &["d"]);
        drain(&f);
        fs::write(f.root.join("d/file"), "x").unwrap();
        expect_covered(&f, b, &["d/file"]);
        drain(&f);
        fs::rename(f.root.join("d"), f.root.join("e")).unwrap();
        expect_covered(&f, b, &["d/file", "e/file"]);
        drain(&f);
        // The renamed directory is still watched under its new name.
        fs::write(f.root.join("e/file"), "yy").unwrap();
        expect_covered(&f, b, &["e/file"]);
        drain(&f);
        fs::remove_file(f.root.join("e/file")).unwrap();
        fs::remove_dir(f.root.join("e")).unwrap();
        expect_covered(&f, b, &["e"]);
    });
}

#[test]
fn mkdir_p_then_immediate_writes_are_seen() {
    each_backend(|b| {
        let f = fixture(b, |_| {}, 1024);
        fs::create_dir_all(f.root.join("a/b/c")).unwrap();
        fs::write(f.root.join("a/b/c/f1"), "1").unwrap();
        fs::write(f.root.join("a/b/f2"), "2").unwrap();
        expect_covered(&f, b, &["a/b/c/f1", "a/b/f2"]);
        drain(&f);
        // And the deepest new directory got its own watch.
        fs::write(f.root.join("a/b/c/f1"), "changed").unwrap();
        expect_covered(&f, b, &["a/b/c/f1"]);
    });
}

#[test]
fn moves_into_and_out_of_the_tree() {
    each_backend(|b| {
        let f = fixture(b, |_| {}, 1024);
        let outside = f.root.parent().unwrap().join("outside");
        fs::create_dir_all(outside.join("sub")).unwrap();
        fs::write(outside.join("sub/x"), "x").unwrap();
        fs::rename(&outside, f.root.join("in")).unwrap();
        expect_covered(&f, b, &["in/sub/x"]);
        drain(&f);
        fs::write(f.root.join("in/sub/y"), "y").unwrap();
        expect_covered(&f, b, &["in/sub/y"]);
        drain(&f);
        let away = f.root.parent().unwrap().join("away");
        fs::rename(f.root.join("in"), &away).unwrap();
        expect_covered(&f, b, &["in/sub/x"]);
        drain(&f);
        // Writes in the moved-out directory are not reported as paths inside the root.
        fs::write(away.join("sub/z"), "z").unwrap();
        let end = Instant::now() + Duration::from_millis(300);
        while let Ok(ev) = f.rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            assert!(
                !matches!(&ev, WatchEvent::Dirty(p) | WatchEvent::Settled(p) | WatchEvent::Writing(p) if p.ends_with("z")),
                "{b:?}: write outside the root reported as {ev:?}"
            );
        }
    });
}

#[test]
fn overflow_is_reported_and_watching_goes_on() {
    each_backend(|b| {
        if !b.can_overflow() {
            return;
        }
        // A one-slot sink: the watcher blocks on it while the kernel queue floods.
        let f = fixture(b, |_| {}, 1);
        let limit: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(16384);
        // Distinct names: the kernel merges identical consecutive events, so one file would not do.
        fs::create_dir(f.root.join("flood")).unwrap();
        for i in 0..limit + 1000 {
            fs::File::create(f.root.join("flood").join(i.to_string())).unwrap();
        }
        let end = Instant::now() + DEADLINE;
        let mut got = false;
        while let Ok(ev) = f.rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            if ev == WatchEvent::Overflow {
                got = true;
                break;
            }
        }
        assert!(got, "{b:?}: no Overflow after {} events", limit + 1000);
        drain(&f);
        fs::write(f.root.join("after"), "1").unwrap();
        expect_covered(&f, b, &["after"]);
    });
}

#[test]
fn root_removal_is_reported() {
    each_backend(|b| {
        let f = fixture(b, |r| fs::write(r.join("x"), "x").unwrap(), 1024);
        fs::remove_dir_all(&f.root).unwrap();
        let end = Instant::now() + DEADLINE;
        let mut got = false;
        while let Ok(ev) = f.rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            if ev == WatchEvent::RootGone {
                got = true;
                break;
            }
        }
        assert!(got, "{b:?}: no RootGone");
    });
}

#[test]
fn a_finished_write_is_eventually_reported_settled_where_supported() {
    each_backend(|b| {
        if b != Backend::Inotify {
            return;
        }
        let f = fixture(b, |_| {}, 1024);
        fs::write(f.root.join("done.txt"), "complete").unwrap();
        let end = Instant::now() + DEADLINE;
        loop {
            match f.rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(WatchEvent::Settled(p)) if p == Path::new("done.txt") => break,
                Ok(_) => {}
                Err(_) => panic!("{b:?}: no Settled after close"),
            }
        }
    });
}

/// A backend with an event history (FSEvents) hands out checkpoints, and a watcher started from
/// one replays what changed while none was running, then says the replay is done.
#[test]
fn a_start_from_a_checkpoint_replays_what_changed_where_supported() {
    each_backend(|b| {
        if !b.keeps_history() {
            return;
        }
        let mut f = fixture(b, |r| fs::write(r.join("old"), "o").unwrap(), 1024);
        fs::write(f.root.join("seen"), "1").unwrap();
        expect_covered(&f, b, &["seen"]);
        let end = Instant::now() + DEADLINE;
        let checkpoint = loop {
            match f.rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(WatchEvent::Checkpoint(c)) => break c,
                Ok(_) => {}
                Err(_) => panic!("{b:?}: no checkpoint after a change"),
            }
        };
        f.watcher.stop();
        fs::write(f.root.join("while-stopped"), "2").unwrap();
        fs::remove_file(f.root.join("old")).unwrap();
        let (tx, rx) = bounded(1024);
        let mut cfg = WatchConfig::new(&f.root);
        cfg.resume = Some(checkpoint);
        let watcher = start(b, cfg, tx).expect("restart watcher");
        assert!(watcher.replaying(), "{b:?}: a fresh checkpoint of the same volume is not replayed");
        let f = Fixture { rx, watcher, ..f };
        expect_covered(&f, b, &["while-stopped", "old"]);
        let end = Instant::now() + DEADLINE;
        loop {
            match f.rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(WatchEvent::Replayed) => break,
                Ok(_) => {}
                Err(_) => panic!("{b:?}: the replay never ended"),
            }
        }
    });
}

#[test]
fn stop_joins_promptly() {
    each_backend(|b| {
        let mut f = fixture(b, |_| {}, 4);
        let t = Instant::now();
        f.watcher.stop();
        assert!(t.elapsed() < Duration::from_secs(5), "{b:?}: stop took {:?}", t.elapsed());
    });
}

/// Random directory churn (mkdir, rename, rm -r, recreate) as fast as it goes; afterwards a write
/// in every directory that exists must still be reported: no watch may be lost or misnamed.
#[test]
fn directory_churn_leaves_every_directory_watched() {
    let seeds: u64 = std::env::var("MIRROR_CHURN_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    each_backend(|b| {
        for seed in 0..seeds {
            let f = fixture(b, |_| {}, 65536);
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut rnd = |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let mut dirs: Vec<PathBuf> = Vec::new();
            let mut log = Vec::new();
            for _ in 0..60 {
                let parent = if dirs.is_empty() || rnd(4) == 0 {
                    PathBuf::new()
                } else {
                    dirs[rnd(dirs.len() as u64) as usize].clone()
                };
                let name = parent.join(format!("d{}", rnd(4)));
                match rnd(3) {
                    0 if fs::create_dir(f.root.join(&name)).is_ok() => log.push(format!("mkdir {}", name.display())),
                    1 if !dirs.is_empty() => {
                        let from = dirs[rnd(dirs.len() as u64) as usize].clone();
                        if !name.starts_with(&from) && fs::rename(f.root.join(&from), f.root.join(&name)).is_ok() {
                            log.push(format!("mv {} {}", from.display(), name.display()));
                        }
                    }
                    _ if !dirs.is_empty() => {
                        let d = dirs[rnd(dirs.len() as u64) as usize].clone();
                        if fs::remove_dir_all(f.root.join(&d)).is_ok() {
                            log.push(format!("rm -r {}", d.display()));
                        }
                    }
                    _ => {}
                }
                dirs = subdirs(&f.root);
            }
            drain(&f);
            for d in &dirs {
                fs::write(f.root.join(d).join("probe"), "x").unwrap();
            }
            let want: Vec<String> = dirs.iter().map(|d| d.join("probe").to_string_lossy().into_owned()).collect();
            let want: Vec<&str> = want.iter().map(String::as_str).collect();
            let missing = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| expect_covered(&f, b, &want)));
            assert!(missing.is_ok(), "{b:?} seed {seed}: a directory lost its watch after:\n{}", log.join("\n"));
        }
    });
}

fn subdirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(root.join(&d)).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                let p = d.join(e.file_name());
                out.push(p.clone());
                stack.push(p);
            }
        }
    }
    out
}

/// Issue 11 item 6: many directories moved in at once (one rename of a directory holding them),
/// `new/` made in many of them right after, and a file in each shortly after. Every directory must
/// be watched before it is listed, at every level: a backend that lists the whole moved-in subtree
/// before watching it never watches a `new/` made between the two, and never reports its file.
#[test]
fn files_in_directories_made_in_just_moved_in_directories_are_seen() {
    each_backend(|b| {
        for round in 0..3 {
            let f = fixture(b, |_| {}, 65536);
            let staging = f.root.parent().unwrap().join(format!("staging{round}"));
            let (dirs, with_new) = (3000, 300);
            for i in 0..dirs {
                fs::create_dir_all(staging.join(format!("d{i:04}"))).unwrap();
            }
            fs::rename(&staging, f.root.join("moved")).unwrap();
            let every = dirs / with_new;
            for i in (0..dirs).step_by(every) {
                fs::create_dir(f.root.join(format!("moved/d{i:04}/new"))).unwrap();
            }
            // Let the watcher take in the wave (an overflow, if any, is over), then write.
            std::thread::sleep(Duration::from_millis(300));
            drain(&f);
            let mut want = Vec::new();
            for i in (0..dirs).step_by(every) {
                let rel = format!("moved/d{i:04}/new/late.txt");
                fs::write(f.root.join(&rel), "late").unwrap();
                want.push(rel);
            }
            let want: Vec<&str> = want.iter().map(String::as_str).collect();
            expect_covered(&f, b, &want);
        }
    });
}

/// Rules that ignore the directories named in the root's `.rules` file, read when made and
/// again on each reload: how a consumer's `.gitignore` handling looks to a watcher.
struct FileRules {
    file: PathBuf,
    ignored: std::sync::Mutex<Vec<String>>,
}

impl FileRules {
    fn read(file: &Path) -> Vec<String> {
        fs::read_to_string(file).unwrap_or_default().lines().map(str::to_owned).collect()
    }
}

impl DirRules for FileRules {
    fn descend(&self, rel: &Path) -> bool {
        let ignored = self.ignored.lock().unwrap();
        !ignored.iter().any(|d| rel == Path::new(d))
    }
    fn reload(&self, _dir: &Path) {
        *self.ignored.lock().unwrap() = Self::read(&self.file);
    }
}

#[test]
fn a_refresh_has_the_rules_read_again_and_watches_what_they_now_want() {
    each_backend(|backend| {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("later")).unwrap();
        let file = root.join(".rules");
        fs::write(&file, "later\n").unwrap();
        let (tx, rx) = bounded(1024);
        let mut cfg = WatchConfig::new(&root);
        cfg.poll_interval = Duration::from_millis(30);
        cfg.descend = std::sync::Arc::new(FileRules { ignored: std::sync::Mutex::new(FileRules::read(&file)), file });
        let watcher = start(backend, cfg, tx).expect("start watcher");
        let f = Fixture { _dir: dir, root, rx, watcher };
        fs::write(f.root.join(".rules"), "").unwrap();
        f.watcher.refresh(Path::new(""));
        drain(&f);
        fs::write(f.root.join("later/new"), "x").unwrap();
        expect_covered(&f, backend, &["later/new"]);
    });
}
