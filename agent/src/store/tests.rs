//! The store's tests: crash safety, torn journals, generations, halts.

use super::*;
use mirror_protocol::{Kind, RelPath, Timestamp, VersionVector};

const SNAP_MAGIC_V1: &[u8; 8] = b"MIRBASE1";
const LOG_MAGIC_V1: &[u8; 8] = b"MIRJRNL1";

fn entry(p: &str, n: u64) -> LocalEntry {
    LocalEntry {
        entry: Entry {
            path: RelPath::new(p).unwrap(),
            kind: Kind::File { size: n, hash: [n as u8; 32], mode: 0o644 },
            mtime: Timestamp { secs: n as i64, nanos: 0 },
            version: VersionVector::new().incremented(1),
            origin: "h".into(),
        },
        stat: Some(Stat { mode: 0o100644, size: n, mtime: Timestamp { secs: n as i64, nanos: 0 }, ino: n }),
        seq: n,
    }
}

/// Reopens the store of `root` with its journal cut at every length (and its snapshot as it
/// was), calling `check(cut, whole, store, loaded)` each time.
fn for_each_cut(state: &Path, root: &Path, mut check: impl FnMut(usize, bool, &Store, &Loaded)) {
    let dir = pair_dir(state, root);
    let log = fs::read(dir.join("base.log")).unwrap();
    let snap = fs::read(dir.join("base.snap")).unwrap();
    for cut in 0..=log.len() {
        fs::write(dir.join("base.log"), &log[..cut]).unwrap();
        fs::write(dir.join("base.snap"), &snap).unwrap();
        let (s, l) = Store::open(state, root).unwrap();
        check(cut, cut == log.len(), &s, &l);
    }
}

#[test]
fn journal_survives_reopen_and_keeps_the_replica() {
    let d = tempfile::tempdir().unwrap();
    let root = Path::new("/some/root");
    let replica;
    {
        let (mut s, l) = Store::open(d.path(), root).unwrap();
        assert!(!l.existed);
        replica = l.replica;
        s.append([entry("a", 1), entry("b", 2)].iter()).unwrap();
        s.append([entry("a", 3)].iter()).unwrap();
    }
    let (_s, l) = Store::open(d.path(), root).unwrap();
    assert!(l.existed);
    assert_eq!(l.replica, replica);
    assert_eq!(l.index.len(), 2);
    assert_eq!(l.index[&RelPath::new("a").unwrap()].entry.mtime.secs, 3);
}

#[test]
fn an_intent_without_its_outcome_is_kept_for_the_start_up_scan_only() {
    let d = tempfile::tempdir().unwrap();
    let root = Path::new("/r");
    {
        let (mut s, _) = Store::open(d.path(), root).unwrap();
        s.append_intent(&entry("done", 1).entry).unwrap();
        s.append_now(&entry("done", 1)).unwrap();
        s.append_intent(&entry("failed", 2).entry).unwrap();
        s.append_void(&RelPath::new("failed").unwrap()).unwrap();
        s.append_intent(&entry("begun", 3).entry).unwrap();
        // killed here: `begun` was being applied
    }
    let (s, l) = Store::open(d.path(), root).unwrap();
    drop(s);
    let intents: Vec<String> = l.intents.keys().map(|p| p.to_string()).collect();
    assert_eq!(intents, ["begun"], "an intent followed by its entry or its failure is over");
    assert!(l.index.contains_key(&RelPath::new("done").unwrap()));
    assert!(!l.index.contains_key(&RelPath::new("begun").unwrap()), "an intent is not an entry");
    // The start-up scan has it; the next start does not.
    let (_s, l) = Store::open(d.path(), root).unwrap();
    assert!(l.intents.is_empty());
}

#[test]
fn a_torn_journal_tail_is_dropped_and_the_rest_kept() {
    let d = tempfile::tempdir().unwrap();
    let root = Path::new("/r");
    {
        let (mut s, _) = Store::open(d.path(), root).unwrap();
        s.append([entry("a", 1)].iter()).unwrap();
        s.append([entry("b", 2)].iter()).unwrap();
    }
    // Cut the journal at every length: each must load, keeping the whole records before the cut.
    for_each_cut(d.path(), root, |cut, whole, _, l| {
        let n = l.index.len();
        assert!(n <= 2, "cut {cut}");
        if whole {
            assert_eq!(n, 2);
        }
    });
}

#[test]
fn a_flipped_bit_ends_the_journal_there() {
    let d = tempfile::tempdir().unwrap();
    let root = Path::new("/r");
    let dir;
    {
        let (mut s, _) = Store::open(d.path(), root).unwrap();
        s.append([entry("a", 1)].iter()).unwrap();
        s.append([entry("b", 2)].iter()).unwrap();
        dir = s.dir().to_path_buf();
    }
    let mut log = fs::read(dir.join("base.log")).unwrap();
    let last = log.len() - 3;
    log[last] ^= 0x40;
    fs::write(dir.join("base.log"), &log).unwrap();
    let (_s, l) = Store::open(d.path(), root).unwrap();
    assert!(l.index.contains_key(&RelPath::new("a").unwrap()));
    assert!(!l.index.contains_key(&RelPath::new("b").unwrap()));
}

#[test]
fn a_record_handed_to_the_kernel_survives_the_process() {
    let d = tempfile::tempdir().unwrap();
    {
        let (mut s, _) = Store::open(d.path(), Path::new("/r")).unwrap();
        s.append_now(&entry("applied", 9)).unwrap();
        // Dropped without sync, as a killed process would leave it.
    }
    let (_s, l) = Store::open(d.path(), Path::new("/r")).unwrap();
    assert_eq!(l.index[&RelPath::new("applied").unwrap()].entry.mtime.secs, 9);
}

#[test]
fn what_we_have_of_peers_persists_and_a_rules_change_forgets_it() {
    let d = tempfile::tempdir().unwrap();
    let root = Path::new("/r");
    {
        let (mut s, _) = Store::open(d.path(), root).unwrap();
        s.set_rules([1; 16]);
        s.set_have(7, 100);
        s.set_have(8, 5);
        assert!(s.has_pending());
        s.append([entry("a", 1)].iter()).unwrap();
        assert!(!s.has_pending());
        s.set_have(7, 120);
        s.append(std::iter::empty()).unwrap();
    }
    let (mut s, _) = Store::open(d.path(), root).unwrap();
    assert_eq!((s.have(7), s.have(8), s.have(9)), (120, 5, 0));
    // Through a snapshot too.
    s.snapshot(&Index::new()).unwrap();
    drop(s);
    let (mut s, _) = Store::open(d.path(), root).unwrap();
    assert_eq!(s.have(7), 120);
    // The same rules again change nothing; other rules forget every peer.
    s.set_rules([1; 16]);
    assert!(!s.has_pending());
    s.set_rules([2; 16]);
    s.append(std::iter::empty()).unwrap();
    drop(s);
    let (s, _) = Store::open(d.path(), root).unwrap();
    assert_eq!((s.have(7), s.have(8)), (0, 0));
}

#[test]
fn a_have_record_torn_off_with_its_entries_is_lost_with_them() {
    let d = tempfile::tempdir().unwrap();
    let root = Path::new("/r");
    {
        let (mut s, _) = Store::open(d.path(), root).unwrap();
        s.set_have(7, 100);
        s.append([entry("a", 1)].iter()).unwrap();
    }
    // The journal is `[header][entry a][have]`: every cut keeps the have only with the entry.
    for_each_cut(d.path(), root, |cut, whole, s, l| {
        if s.have(7) == 100 {
            assert!(l.index.contains_key(&RelPath::new("a").unwrap()), "cut {cut}");
        }
        if whole {
            assert_eq!(s.have(7), 100);
        }
    });
}

#[test]
fn the_watcher_checkpoint_persists_after_the_entries_it_covers() {
    let d = tempfile::tempdir().unwrap();
    let root = Path::new("/r");
    {
        let (mut s, l) = Store::open(d.path(), root).unwrap();
        assert_eq!(l.checkpoint, None);
        s.set_checkpoint("fsevents U 10".into());
        s.append([entry("a", 1)].iter()).unwrap();
    }
    // `[header][entry a][checkpoint]`: no cut keeps the checkpoint without the entry.
    for_each_cut(d.path(), root, |cut, whole, _, l| {
        if l.checkpoint.is_some() {
            assert!(l.index.contains_key(&RelPath::new("a").unwrap()), "cut {cut}");
        }
        assert_eq!(l.checkpoint.is_some(), whole, "cut {cut}");
    });
    // Kept through the snapshot written at open, and replaced by a newer one.
    let (mut s, l) = Store::open(d.path(), root).unwrap();
    assert_eq!(l.checkpoint.as_deref(), Some("fsevents U 10"));
    s.set_checkpoint("fsevents U 10".into());
    assert!(!s.has_pending(), "the same checkpoint is not written twice");
    s.set_checkpoint("fsevents U 11".into());
    s.append(std::iter::empty()).unwrap();
    s.snapshot(&Index::new()).unwrap();
    drop(s);
    let (_s, l) = Store::open(d.path(), root).unwrap();
    assert_eq!(l.checkpoint.as_deref(), Some("fsevents U 11"));
}

#[test]
fn a_format_2_state_is_read_and_a_newer_format_refused() {
    let d = tempfile::tempdir().unwrap();
    let root = Path::new("/r");
    let dir;
    {
        let (mut s, _) = Store::open(d.path(), root).unwrap();
        s.set_have(7, 100);
        s.append([entry("a", 1)].iter()).unwrap();
        dir = s.dir().to_path_buf();
    }
    // Format 2 is format 3 without checkpoints; both are format 4 with only an executable
    // bit for a file's mode. Written by hand here, as an older agent wrote them.
    let header = postcard::to_stdvec(&Header { replica: 77, generation: 3 }).unwrap();
    let old = entry("a", 1);
    let legacy_entry = |exec| legacy::Entry {
        path: old.entry.path.clone(),
        kind: legacy::Kind::File { size: 1, hash: [1; 32], executable: exec },
        mtime: old.entry.mtime,
        version: old.entry.version.clone(),
        origin: old.entry.origin.to_string(),
    };
    let mut snap = b"MIRBASE2".to_vec();
    encode_record_raw(&mut snap, &header);
    let rec = legacy::Record::Entry { entry: legacy_entry(true), stat: None, seq: 3 };
    encode_record_raw(&mut snap, &postcard::to_stdvec(&rec).unwrap());
    encode_record_raw(&mut snap, &postcard::to_stdvec(&legacy::Record::Have { peer: 7, seq: 100 }).unwrap());
    fs::write(dir.join("base.snap"), &snap).unwrap();
    let mut log = b"MIRJRNL2".to_vec();
    encode_record_raw(&mut log, &header);
    fs::write(dir.join("base.log"), &log).unwrap();
    let (s, l) = Store::open(d.path(), root).unwrap();
    assert_eq!((s.have(7), l.index.len()), (100, 1));
    // No stat recorded: the mode its executable bit implied.
    let got = &l.index[&RelPath::new("a").unwrap()];
    assert_eq!(got.entry.kind, Kind::File { size: 1, hash: [1; 32], mode: 0o755 });
    drop(s);
    assert_eq!(&fs::read(dir.join("base.snap")).unwrap()[..8], SNAP_MAGIC);
    // A state written by a later version is refused, not half read.
    let mut b = fs::read(dir.join("base.snap")).unwrap();
    b[7] = b'9';
    fs::write(dir.join("base.snap"), b).unwrap();
    let e = Store::open(d.path(), root).unwrap_err();
    assert!(e.what.contains("newer mirror-agent (state format 9"), "{e}");
}

#[test]
fn a_format_1_state_is_still_read() {
    let d = tempfile::tempdir().unwrap();
    let root = Path::new("/r");
    let dir = pair_dir(d.path(), root);
    fs::create_dir_all(&dir).unwrap();
    let header = postcard::to_stdvec(&Header { replica: 77, generation: 3 }).unwrap();
    let mut snap = SNAP_MAGIC_V1.to_vec();
    encode_record_raw(&mut snap, &header);
    let v1 = |l: &LocalEntry| {
        let legacy = legacy::Entry {
            path: l.entry.path.clone(),
            kind: legacy::Kind::File { size: 4, hash: [4; 32], executable: false },
            mtime: l.entry.mtime,
            version: l.entry.version.clone(),
            origin: l.entry.origin.to_string(),
        };
        postcard::to_stdvec(&legacy::RecordV1 { entry: legacy, stat: l.stat }).unwrap()
    };
    let old = entry("old", 4);
    encode_record_raw(&mut snap, &v1(&old));
    fs::write(dir.join("base.snap"), &snap).unwrap();
    let mut log = LOG_MAGIC_V1.to_vec();
    encode_record_raw(&mut log, &header);
    let newer = entry("newer", 5);
    encode_record_raw(&mut log, &v1(&newer));
    fs::write(dir.join("base.log"), &log).unwrap();
    let (_s, l) = Store::open(d.path(), root).unwrap();
    assert_eq!(l.replica, 77);
    assert_eq!(l.index.len(), 2);
    let got = &l.index[&RelPath::new("newer").unwrap()];
    assert_eq!((got.seq, got.entry.mtime.secs), (0, 5));
    // Written back in the current format.
    assert_eq!(&fs::read(dir.join("base.snap")).unwrap()[..8], SNAP_MAGIC);
}

#[test]
fn a_second_agent_cannot_open_the_same_pair() {
    let d = tempfile::tempdir().unwrap();
    let (_s, _) = Store::open(d.path(), Path::new("/r")).unwrap();
    let e = Store::open(d.path(), Path::new("/r")).unwrap_err();
    assert!(e.to_string().contains("already syncing"), "{e}");
}

#[test]
fn halt_and_clock_persist() {
    let d = tempfile::tempdir().unwrap();
    {
        let (mut s, _) = Store::open(d.path(), Path::new("/r")).unwrap();
        s.reserve_clock(20_000).unwrap();
        s.set_root_id((1, 2)).unwrap();
        s.set_halted(Some("root vanished")).unwrap();
    }
    let (mut s, l) = Store::open(d.path(), Path::new("/r")).unwrap();
    assert_eq!(l.clock_start, 20_000);
    assert_eq!(l.root_id, Some((1, 2)));
    assert_eq!(l.halted.as_deref(), Some("root vanished"));
    s.set_halted(None).unwrap();
    drop(s);
    let (_s, l) = Store::open(d.path(), Path::new("/r")).unwrap();
    assert_eq!(l.halted, None);
}

/// A batch larger than one write (a start-up scan journals every path at once) is written a
/// chunk at a time: every entry comes back, and the `Have` set before it is still written after
/// all of them (a torn journal never keeps the `Have` without its entries).
#[test]
fn a_batch_of_many_chunks_comes_back_whole_with_its_have_after_it() {
    let d = tempfile::tempdir().unwrap();
    let root = Path::new("/big");
    let many: Vec<LocalEntry> = (0..5000).map(|i| entry(&format!("dir/file-{i:05}.txt"), i + 1)).collect();
    {
        let (mut s, _) = Store::open(d.path(), root).unwrap();
        s.set_have(7, 42);
        s.append(many.iter()).unwrap();
    }
    let dir = pair_dir(d.path(), root);
    let log = fs::read(dir.join("base.log")).unwrap();
    let snap = fs::read(dir.join("base.snap")).unwrap();
    assert!(log.len() > 256 * 1024, "not more than one chunk: {} bytes", log.len());
    for cut in [100_000, 256 * 1024 + 7, log.len() - 1, log.len()] {
        fs::write(dir.join("base.log"), &log[..cut]).unwrap();
        fs::write(dir.join("base.snap"), &snap).unwrap();
        let (s, l) = Store::open(d.path(), root).unwrap();
        // The `Have` is the last record: cut anywhere, it is there only with every entry.
        let whole = cut == log.len();
        assert_eq!(s.have(7), if whole { 42 } else { 0 }, "cut at {cut}");
        assert_eq!(l.index.len() == 5000, cut >= log.len() - 1, "cut at {cut}: {} entries", l.index.len());
        if whole {
            assert_eq!(l.index[&RelPath::new("dir/file-04999.txt").unwrap()].seq, 5000);
        }
    }
}
