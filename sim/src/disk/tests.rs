use super::*;

fn rp(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

fn t(secs: i64) -> Timestamp {
    Timestamp { secs, nanos: 0 }
}

fn st(d: &MemDisk, s: &str) -> Option<Stat> {
    d.lstat(&rp(s)).unwrap()
}

/// A root holding a file `f`, a file `s` (to stash), an empty directory `d`, at time 10.
fn fixture() -> MemDisk {
    let mut d = MemDisk::new();
    d.set_time(t(10));
    d.write(&rp("f"), b"ours").unwrap();
    d.write(&rp("s"), b"stashed").unwrap();
    d.mkdir_p(&rp("d")).unwrap();
    d.set_time(t(20));
    d
}

/// One mutation of the trait against `expected` at its path.
type Mutate = fn(&mut MemDisk, Option<Stat>) -> Result<(), ExecError>;

fn install_at(d: &mut MemDisk, path: &str, expected: Option<Stat>) -> Result<(), ExecError> {
    let mut tmp = d.create_temp(&rp(path))?;
    d.write_temp(&mut tmp, b"theirs".to_vec())?;
    d.install(tmp, &rp(path), expected, t(5), 0o600).map(drop)
}

fn unstash_at(d: &mut MemDisk, path: &str, expected: Option<Stat>) -> Result<(), ExecError> {
    let s = st(d, "s");
    let stashed = d.stash(&rp("s"), s)?;
    d.unstash(&stashed, &rp(path), expected, t(5), 0o600).map(drop)
}

/// Each row: a mutation, the path it acts on. It must succeed given the path's current stat and
/// fail with `Changed`, touching nothing, given any other.
const MUTATIONS: &[(&str, &str, Mutate)] = &[
    ("set_meta", "f", |d, e| d.set_meta(&rp("f"), e, t(5), 0o600).map(drop)),
    ("remove", "f", |d, e| d.remove(&rp("f"), e)),
    ("remove dir", "d", |d, e| d.remove(&rp("d"), e)),
    ("make_dir over a file", "f", |d, e| d.make_dir(&rp("f"), e).map(drop)),
    ("make_dir, nothing there", "new", |d, e| d.make_dir(&rp("new"), e).map(drop)),
    ("make_dir, the directory there", "d", |d, e| d.make_dir(&rp("d"), e).map(drop)),
    ("make_symlink over a file", "f", |d, e| d.make_symlink(&rp("f"), e, b"/etc").map(drop)),
    ("make_symlink over a directory", "d", |d, e| d.make_symlink(&rp("d"), e, b"x").map(drop)),
    ("make_symlink, nothing there", "new", |d, e| d.make_symlink(&rp("new"), e, b"x").map(drop)),
    ("move_aside", "f", |d, e| d.move_aside(&rp("f"), e, &rp("f.conflict"))),
    ("stash", "f", |d, e| d.stash(&rp("f"), e).map(drop)),
    ("unstash over a file", "f", |d, e| unstash_at(d, "f", e)),
    ("unstash, nothing there", "new", |d, e| unstash_at(d, "new", e)),
    ("copy_to_temp", "f", |d, e| {
        let hash = *blake3::hash(b"ours").as_bytes();
        d.copy_to_temp(&rp("f"), e, &rp("g"), &hash).map(|t| assert!(t.is_some()))
    }),
    ("install over a file", "f", |d, e| install_at(d, "f", e)),
    ("install over a directory", "d", |d, e| install_at(d, "d", e)),
    ("install, nothing there", "new", |d, e| install_at(d, "new", e)),
];

/// Stats the disk does not hold at `path` (`right`): none, another kind, another inode, another
/// size, another mtime, another mode.
fn wrong_stats(right: Option<Stat>) -> Vec<Option<Stat>> {
    let base = right.unwrap_or(Stat::new(S_IFREG | 0o644, 4, t(10), 2));
    let mut out = vec![
        Some(Stat { mode: S_IFDIR | 0o755, size: 0, mtime: Timestamp::default(), ..base }),
        Some(Stat { ino: base.ino + 100, ..base }),
        Some(Stat { size: base.size + 1, ..base }),
        Some(Stat { mtime: t(base.mtime.secs + 1), ..base }),
        Some(Stat { mode: base.mode ^ 0o100, ..base }),
    ];
    if right.is_some() {
        out.push(None);
    }
    out.retain(|w| *w != right);
    out
}

#[test]
fn every_mutation_acts_on_the_expected_stat_and_refuses_any_other() {
    for (name, path, mutate) in MUTATIONS {
        for wrong in wrong_stats(st(&fixture(), path)) {
            let mut d = fixture();
            let before = d.snapshot();
            match mutate(&mut d, wrong) {
                Err(ExecError::Changed) => {}
                other => panic!("{name} with {wrong:?}: {other:?}, not Changed"),
            }
            // A stash of `s` made by the row itself is the fixture's, not the refused mutation's.
            let touched: Vec<_> = d.log().iter().filter(|m| !matches!(m.op, Op::Stash { .. })).collect();
            assert!(
                touched.iter().all(|m| matches!(m.op, Op::CreateTemp { .. })),
                "{name} with {wrong:?} touched {touched:?}"
            );
            if !name.starts_with("unstash") {
                assert_eq!(d.snapshot(), before, "{name} with {wrong:?} changed the tree");
            }
            assert_eq!(d.live_temps(), 0, "{name}: temp file left");
        }
        let mut d = fixture();
        let right = st(&d, path);
        if let Err(e) = mutate(&mut d, right) {
            panic!("{name} with the right stat {right:?}: {e:?}");
        }
        assert_eq!(d.live_temps(), 0, "{name}: temp file left");
    }
}

#[test]
fn mutations_make_what_they_say_with_the_given_mode_and_mtime() {
    let mut d = fixture();
    let f = st(&d, "f");
    let s = d.set_meta(&rp("f"), f, t(7), 0o4755).unwrap();
    assert_eq!((s.mode, s.mtime, s.ino), (S_IFREG | 0o755, t(7), f.unwrap().ino), "never a set-id bit");
    install_at(&mut d, "f", Some(s)).unwrap();
    let installed = st(&d, "f").unwrap();
    assert_ne!(installed.ino, s.ino, "an install is a new file renamed over the old one");
    assert_eq!(d.read(&rp("f")).unwrap(), b"theirs");
    assert_eq!((installed.mode, installed.mtime, installed.size), (S_IFREG | 0o600, t(5), 6));
    let l = d.make_symlink(&rp("f"), Some(installed), b"../out").unwrap();
    assert_eq!(l.mode & S_IFMT, S_IFLNK);
    assert_eq!(d.snapshot()[&rp("f")], Shape::Symlink { target: b"../out".to_vec() });
    let dir = d.make_dir(&rp("f"), Some(l)).unwrap();
    assert_eq!(dir.mode & S_IFMT, S_IFDIR);
    let ops: Vec<_> = d.log().iter().map(|m| (m.path.to_string(), m.op.clone())).collect();
    assert_eq!(
        ops,
        [
            ("f".into(), Op::SetMeta),
            ("f".into(), Op::CreateTemp { id: 1 }),
            ("f".into(), Op::Install { id: 1 }),
            ("f".into(), Op::MakeSymlink),
            ("f".into(), Op::Remove),
            ("f".into(), Op::MakeDir),
        ]
    );
}

#[test]
fn make_dir_on_the_expected_directory_does_nothing_and_returns_its_stat() {
    let mut d = fixture();
    let dir = st(&d, "d");
    assert_eq!(d.make_dir(&rp("d"), dir).unwrap(), dir.unwrap());
    assert!(d.log().is_empty(), "{:?}", d.log());
}

#[test]
fn removing_a_non_empty_directory_fails_not_empty_and_so_does_replacing_it() {
    let mut d = fixture();
    d.write(&rp("d/x"), b"x").unwrap();
    let dir = st(&d, "d");
    assert!(matches!(d.remove(&rp("d"), dir), Err(ExecError::NotEmpty)));
    assert!(matches!(d.make_symlink(&rp("d"), dir, b"t"), Err(ExecError::NotEmpty)));
    assert!(matches!(install_at(&mut d, "d", dir), Err(ExecError::NotEmpty)));
    assert_eq!(d.read(&rp("d/x")).unwrap(), b"x");
    assert_eq!(d.live_temps(), 0);
    let x = st(&d, "d/x");
    d.remove(&rp("d/x"), x).unwrap();
    d.remove(&rp("d"), dir).unwrap();
    assert_eq!(st(&d, "d"), None);
    // Removing what is expected to be absent, and is, does nothing.
    d.remove(&rp("d"), None).unwrap();
}

#[test]
fn missing_parents_are_made_as_directories() {
    let mut d = MemDisk::new();
    d.make_dir(&rp("a/b/c"), None).unwrap();
    d.make_symlink(&rp("l1/l2/link"), None, b"t").unwrap();
    install_at(&mut d, "i1/i2/file", None).unwrap();
    let s = d.stash(&rp("i1/i2/file"), st(&d, "i1/i2/file")).unwrap();
    d.unstash(&s, &rp("u1/u2/file"), None, t(1), 0o644).unwrap();
    let dirs: Vec<_> = d.snapshot().into_iter().filter(|(_, s)| *s == Shape::Dir).map(|(p, _)| p.to_string()).collect();
    assert_eq!(dirs, ["a", "a/b", "a/b/c", "i1", "i1/i2", "l1", "l1/l2", "u1", "u1/u2"]);
    let made: Vec<_> = d.log().iter().filter(|m| m.op == Op::MakeDir).map(|m| m.path.to_string()).collect();
    assert_eq!(made, ["a", "a/b", "a/b/c", "l1", "l1/l2", "i1", "i1/i2", "u1", "u1/u2"]);
    // A parent the user removed after the temp file was made is not made again by the install,
    // as a rename into a missing directory fails.
    let tmp = d.create_temp(&rp("gone/f")).unwrap();
    d.remove_all(&rp("gone")).unwrap();
    match d.install(tmp, &rp("gone/f"), None, t(1), 0o644) {
        Err(ExecError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_symlinked_or_file_parent_refuses_every_mutation_below_it() {
    for (blocker, jail) in [("link", "symlink"), ("file", "file")] {
        let mut d = MemDisk::new();
        d.write(&rp("real/x"), b"x").unwrap();
        d.write(&rp("real/sub/y"), b"y").unwrap();
        d.write(&rp("here"), b"here").unwrap();
        if jail == "symlink" {
            d.symlink(&rp(blocker), b"real").unwrap();
        } else {
            d.write(&rp(blocker), b"not a directory").unwrap();
        }
        let before = d.snapshot();
        let x = st(&d, "real/x");
        let sub = st(&d, "real/sub");
        let here = st(&d, "here");
        let hash = *blake3::hash(b"here").as_bytes();
        let below = |s: &str| rp(&format!("{blocker}/{s}"));
        let results: Vec<(&str, Result<(), ExecError>)> = vec![
            ("set_meta", d.set_meta(&below("x"), x, t(1), 0o600).map(drop)),
            ("remove", d.remove(&below("x"), x)),
            ("remove absent", d.remove(&below("x"), None)),
            ("make_dir", d.make_dir(&below("new"), None).map(drop)),
            ("make_dir deep", d.make_dir(&below("n/e/w"), None).map(drop)),
            ("make_dir existing", d.make_dir(&below("sub"), sub).map(drop)),
            ("make_symlink", d.make_symlink(&below("x"), x, b"/etc/passwd").map(drop)),
            ("move_aside from", d.move_aside(&below("x"), x, &rp("moved")).map(drop)),
            ("move_aside to", d.move_aside(&rp("here"), here, &below("moved")).map(drop)),
            ("stash", d.stash(&below("x"), x).map(drop)),
            ("copy_to_temp from", d.copy_to_temp(&below("x"), x, &rp("c"), &hash).map(drop)),
            ("copy_to_temp to", d.copy_to_temp(&rp("here"), here, &below("c"), &hash).map(drop)),
            ("create_temp", d.create_temp(&below("new")).map(drop)),
            ("create_temp deep", d.create_temp(&below("n/e/w")).map(drop)),
            ("open_upload", d.open_upload(&below("x")).map(drop)),
        ];
        let stashed = d.stash(&rp("here"), here).unwrap();
        let unstash = d.unstash(&stashed, &below("x"), x, t(1), 0o644).map(drop);
        d.unstash(&stashed, &rp("here"), None, t(1), 0o644).unwrap();
        for (name, r) in results.into_iter().chain([("unstash", unstash)]) {
            match (jail, r) {
                ("symlink", Err(ExecError::Jail(JailError::ThroughSymlink { link, .. }))) if link == rp("link") => {}
                ("file", Err(ExecError::Jail(JailError::NotADirectory { at, .. }))) if at == rp("file") => {}
                (_, other) => panic!("{name} below a {jail}: {other:?}"),
            }
        }
        assert!(d.check_parents(&below("x")).is_err());
        let mut after = d.snapshot();
        let mut expected = before;
        for s in [&mut after, &mut expected] {
            s.remove(&rp("here"));
        }
        assert_eq!(after, expected, "below a {jail}");
        let touched: Vec<_> = d.log().iter().filter(|m| m.path != rp("here")).collect();
        assert!(touched.is_empty(), "below a {jail}: {touched:?}");
        assert_eq!(d.live_temps(), 0);
        // Nothing is seen through it either.
        assert_eq!(st(&d, &format!("{blocker}/x")), None);
        assert_eq!(d.observe(&below("x"), &|_| None).unwrap(), None);
    }
}

#[test]
fn observe_reuses_the_known_hash_only_when_size_mtime_and_inode_match() {
    let mut d = fixture();
    let real = *blake3::hash(b"ours").as_bytes();
    let stale = [7u8; 32];
    let f = st(&d, "f").unwrap();
    let seen = |d: &MemDisk, known: Option<Stat>| {
        let k = move |ino: u64| known.filter(|s| s.ino == ino).map(|s| (s, stale));
        match d.observe(&rp("f"), &k).unwrap().unwrap().kind {
            Kind::File { hash, size, mode } => {
                assert_eq!((size, mode), (4, 0o644));
                hash
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(seen(&d, None), real);
    assert_eq!(seen(&d, Some(f)), stale, "an unchanged stat is not hashed again");
    assert_eq!(seen(&d, Some(Stat { mtime: t(11), ..f })), real);
    assert_eq!(seen(&d, Some(Stat { size: 5, ..f })), real);
    // Same size, same mtime, another inode: an editor's save within one tick.
    d.set_time(t(10));
    d.save(&rp("f"), b"OURS").unwrap();
    let saved = st(&d, "f").unwrap();
    assert_eq!((saved.size, saved.mtime), (f.size, f.mtime));
    assert_eq!(seen(&d, Some(Stat { ino: saved.ino, ..f })), stale);
    assert_eq!(seen(&d, Some(f)), *blake3::hash(b"OURS").as_bytes());
    // A `known` that answers for any inode: the inode is still compared.
    let other_inode = move |_: u64| Some((Stat { ino: saved.ino + 1, ..saved }, stale));
    match d.observe(&rp("f"), &other_inode).unwrap().unwrap().kind {
        Kind::File { hash, .. } => assert_eq!(hash, *blake3::hash(b"OURS").as_bytes()),
        other => panic!("{other:?}"),
    }
    // The other kinds, and nothing.
    d.symlink(&rp("l"), b"target/x").unwrap();
    let l = d.observe(&rp("l"), &|_| None).unwrap().unwrap();
    assert_eq!(l.kind, Kind::Symlink { target: b"target/x".to_vec() });
    assert_eq!(d.observe(&rp("d"), &|_| None).unwrap().unwrap().kind, Kind::Directory);
    assert_eq!(d.observe(&rp("missing"), &|_| None).unwrap(), None);
    assert_eq!(d.observe(&rp("f/below"), &|_| None).unwrap(), None);
}

#[test]
fn with_folding_a_second_spelling_is_the_same_node() {
    let mut d = fixture();
    d.write(&rp("Dir/Readme"), b"one").unwrap();
    assert_eq!(st(&d, "DIR/README"), None, "no folding yet");
    d.set_folding(true);
    let one = st(&d, "Dir/Readme");
    assert_eq!(st(&d, "dir/README"), one);
    assert_eq!(d.read(&rp("DIR/readme")).unwrap(), b"one");
    // The user writes the other spelling: the same file.
    d.write(&rp("dir/README"), b"two").unwrap();
    assert_eq!(d.read(&rp("Dir/Readme")).unwrap(), b"two");
    // The engine must expect that file to install over the other spelling.
    assert!(matches!(install_at(&mut d, "dir/README", None), Err(ExecError::Changed)));
    let two = st(&d, "DIR/README");
    install_at(&mut d, "DIR/README", two).unwrap();
    let shown: Vec<_> = d.snapshot().into_keys().map(|p| p.to_string()).collect();
    assert_eq!(shown, ["Dir", "Dir/README", "d", "f", "s"], "one node, the new spelling");
    assert_eq!(d.list(Some(&rp("dIR"))).unwrap().len(), 1);
    // A hook and a denial match every spelling too.
    d.deny(&rp("dir"));
    assert_eq!(d.observe(&rp("DIR/readme"), &|_| None).unwrap_err().kind(), io::ErrorKind::PermissionDenied);
    d.allow(&rp("DIR"));
    assert!(d.observe(&rp("DIR/readme"), &|_| None).is_ok());
    // Without folding the spellings are two names again.
    d.set_folding(false);
    d.write(&rp("Dir/readme"), b"three").unwrap();
    assert_eq!(d.list(Some(&rp("Dir"))).unwrap().len(), 2);
}

#[test]
fn a_full_disk_fails_temp_writes_and_installs_with_storage_full() {
    let mut d = fixture();
    let f = st(&d, "f");
    d.set_storage_full(true);
    assert_eq!(d.free_space(), Some(0));
    let mut tmp = d.create_temp(&rp("f")).unwrap();
    assert_eq!(d.write_temp(&mut tmp, b"x".to_vec()).unwrap_err().kind(), io::ErrorKind::StorageFull);
    d.write_temp(&mut tmp, b"".to_vec()).unwrap();
    match d.install(tmp, &rp("f"), f, t(1), 0o644) {
        Err(ExecError::Io(e)) if e.kind() == io::ErrorKind::StorageFull => {}
        other => panic!("{other:?}"),
    }
    let hash = *blake3::hash(b"ours").as_bytes();
    match d.copy_to_temp(&rp("f"), f, &rp("g"), &hash) {
        Err(ExecError::Io(e)) if e.kind() == io::ErrorKind::StorageFull => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(d.read(&rp("f")).unwrap(), b"ours");
    assert_eq!(d.live_temps(), 0);
    d.set_storage_full(false);
    assert_eq!(d.free_space(), None);
    install_at(&mut d, "f", f).unwrap();
}

#[test]
fn a_denied_path_fails_reads_with_permission_denied() {
    let mut d = fixture();
    d.write(&rp("d/x"), b"x").unwrap();
    let f = st(&d, "f");
    d.deny(&rp("f"));
    d.deny(&rp("d"));
    let denied = |r: io::Result<()>| r.unwrap_err().kind() == io::ErrorKind::PermissionDenied;
    let exec_denied =
        |r: Result<(), ExecError>| matches!(r, Err(ExecError::Io(e)) if e.kind() == io::ErrorKind::PermissionDenied);
    assert!(denied(d.observe(&rp("f"), &|_| None).map(drop)));
    assert!(denied(d.observe(&rp("d/x"), &|_| None).map(drop)));
    assert!(denied(d.list(Some(&rp("d"))).map(drop)));
    assert!(exec_denied(d.open_upload(&rp("f")).map(drop)));
    let hash = *blake3::hash(b"ours").as_bytes();
    assert!(exec_denied(d.copy_to_temp(&rp("f"), f, &rp("g"), &hash).map(drop)));
    assert_eq!(d.live_temps(), 0);
    // Its stat is still there, and so is everything else.
    assert_eq!(st(&d, "f"), f);
    assert!(d.observe(&rp("s"), &|_| None).unwrap().is_some());
    d.allow(&rp("f"));
    assert_eq!(d.open_upload(&rp("f")).unwrap(), b"ours");
}

#[test]
fn a_save_right_before_the_mutation_makes_it_changed() {
    let mut d = fixture();
    let scanned = st(&d, "f");
    d.before_mutation(
        &rp("f"),
        Box::new(|d| {
            d.set_time(t(30));
            d.write(&rp("f"), b"the user's save").unwrap();
        }),
    );
    // Not a mutation of `f`: the hook waits.
    install_at(&mut d, "other", None).unwrap();
    assert_eq!(d.read(&rp("f")).unwrap(), b"ours");
    assert!(matches!(install_at(&mut d, "f", scanned), Err(ExecError::Changed)));
    assert_eq!(d.read(&rp("f")).unwrap(), b"the user's save");
    assert!(!d.log().iter().any(|m| m.path == rp("f") && matches!(m.op, Op::Install { .. })), "{:?}", d.log());
    assert_eq!(d.live_temps(), 0);
    // It ran once: against what is there now, the next try goes through.
    let now = st(&d, "f");
    install_at(&mut d, "f", now).unwrap();
    assert_eq!(d.read(&rp("f")).unwrap(), b"theirs");
}

#[test]
fn a_hook_runs_before_every_kind_of_mutation() {
    for (name, path, mutate) in MUTATIONS {
        let mut d = fixture();
        let right = st(&d, path);
        d.before_mutation(
            &rp(path),
            Box::new(|d| {
                d.set_time(t(40));
                d.remove_all(&rp("f")).ok();
                d.remove_all(&rp("d")).ok();
                d.write(&rp("f"), b"user").unwrap();
                d.write(&rp("d/user"), b"user").unwrap();
                d.write(&rp("new"), b"user").unwrap();
            }),
        );
        match mutate(&mut d, right) {
            Err(ExecError::Changed) => {}
            other => panic!("{name}: {other:?}, not Changed"),
        }
    }
}

#[test]
fn stash_keeps_the_inode_and_temp_files_are_counted_until_dropped() {
    let mut d = fixture();
    let s = st(&d, "s").unwrap();
    let stashed = d.stash(&rp("s"), Some(s)).unwrap();
    assert_eq!(st(&d, "s"), None);
    assert_eq!(d.stashed().get(&stashed.id), Some(&rp("s")));
    let back = d.unstash(&stashed, &rp("t"), None, t(3), 0o640).unwrap();
    assert_eq!((back.ino, back.mode, back.mtime), (s.ino, S_IFREG | 0o640, t(3)));
    assert!(d.stashed().is_empty());
    let again = d.stash(&rp("t"), Some(back)).unwrap();
    d.drop_stashed(&again);
    assert!(d.stashed().is_empty());
    assert_eq!(d.log().last().map(|m| &m.op), Some(&Op::DropStashed { id: s.ino }));
    let a = d.create_temp(&rp("a")).unwrap();
    let b = d.create_temp(&rp("b")).unwrap();
    assert_eq!(d.live_temps(), 2);
    drop(a);
    assert_eq!(d.live_temps(), 1);
    d.install(b, &rp("b"), None, t(1), 0o644).unwrap();
    assert_eq!(d.live_temps(), 0);
}

#[test]
fn user_operations_and_the_snapshot() {
    let mut d = MemDisk::new();
    assert!(d.root_is_empty());
    d.set_time(t(1));
    d.write(&rp("a/b/f"), b"f").unwrap();
    d.symlink(&rp("a/l"), b"b/f").unwrap();
    d.chmod(&rp("a/b/f"), 0o7755).unwrap();
    d.rename(&rp("a/b"), &rp("c/b2")).unwrap();
    assert_eq!(d.rename(&rp("c"), &rp("c/b2/inside")).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    d.set_mtime(&rp("c/b2/f"), t(9)).unwrap();
    let snap: Vec<_> = d.snapshot().into_iter().map(|(p, s)| (p.to_string(), s)).collect();
    assert_eq!(
        snap,
        [
            ("a".into(), Shape::Dir),
            ("a/l".into(), Shape::Symlink { target: b"b/f".to_vec() }),
            ("c".into(), Shape::Dir),
            ("c/b2".into(), Shape::Dir),
            ("c/b2/f".into(), Shape::File { content: b"f".to_vec(), mode: 0o755, mtime: t(9) }),
        ]
    );
    assert!(d.log().is_empty(), "the user's operations are not the engine's");
    let names: Vec<_> = d.list(None).unwrap().into_iter().map(|l| (l.name, l.is_dir)).collect();
    assert_eq!(names, [(b"a".to_vec(), true), (b"c".to_vec(), true)]);
    assert_eq!(d.list(Some(&rp("gone"))).unwrap_err().kind(), io::ErrorKind::NotFound);
    d.remove_all(&rp("c")).unwrap();
    assert_eq!(d.read(&rp("c/b2/f")), None);
    let id = d.root_identity().unwrap();
    d.replace_root();
    assert_ne!(d.root_identity().unwrap(), id);
    assert!(d.root_is_empty());
}
