//! The simulator as CI runs it: ten thousand seeded histories must pass, a seed must replay
//! byte for byte, and (with `--features planted-bugs`) every planted bug must be found: within a
//! thousand seeds and shrunk to a handful of steps, or (the rarer `state-error-ignored`) in the
//! shrunk history of a seed that found it.

use mirror_protocol::RelPath;
use mirror_sim::plan::{Action, Op, Plan, Step};
use mirror_sim::{run_plan, run_seed};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Runs seeds `from..to` on every core; the failures, by seed.
fn run_range(from: u64, to: u64, planted: mirror_sim::Planted) -> Vec<(u64, String)> {
    let next = AtomicU64::new(from);
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= to {
                        break;
                    }
                    if let Some(f) = run_seed(seed, planted).failure {
                        let mut v = failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        v.push((seed, format!("round {}: {}", f.round, f.what)));
                    }
                }
            });
        }
    });
    let mut v = failures.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    v.sort();
    v
}

#[test]
#[cfg_attr(feature = "planted-bugs", ignore = "the build without planted bugs runs it")]
fn ten_thousand_seeded_histories_keep_every_invariant() {
    let started = std::time::Instant::now();
    let failures = run_range(0, 10_000, None);
    eprintln!("10000 seeds in {:.1?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "{} of 10000 seeds failed; the first: seed {} {}\nreplay: cargo run --release -p mirror-sim -- --seeds {} --shrink --trace",
        failures.len(),
        failures[0].0,
        failures[0].1,
        failures[0].0
    );
}

#[test]
fn a_seed_replays_byte_for_byte() {
    for seed in [3, 77, 4242] {
        let plan = Plan::of(seed);
        let (a, ta) = run_plan(&plan, seed, None, true);
        let (b, tb) = run_plan(&plan, seed, None, true);
        assert_eq!(a.digest, b.digest, "seed {seed} ran differently twice");
        assert_eq!(ta, tb);
        assert!(ta.len() > 20, "seed {seed} did almost nothing: {ta:?}");
    }
    assert_ne!(run_seed(3, None).digest, run_seed(4, None).digest, "two seeds, one history");
}

fn p(s: &str) -> RelPath {
    RelPath::new(s).expect("a valid path")
}

/// Two machines with no fault at all: what each writes arrives at the other, in order.
#[test]
fn two_replicas_converge_in_memory() {
    let step = |at_ms, machine, op| Step { at_ms, action: Action::User { machine, op } };
    let plan = Plan {
        clients: 1,
        delay_us: vec![5_000],
        bytes_per_ms: vec![125_000],
        skew_secs: vec![0, 3600],
        rounds: vec![vec![
            step(0, 0, Op::Write { path: p("d0/a.txt"), len: 10 }),
            step(1, 1, Op::Write { path: p("d1/b.txt"), len: 200_000 }),
            step(5, 1, Op::Rename { from: p("d1"), to: p("d2") }),
            step(9, 0, Op::Symlink { path: p("d0/l"), target: b"x".to_vec() }),
        ]],
    };
    let mut w = mirror_sim::World::new(&plan, 1, true);
    let r = w.run(&plan);
    assert_eq!(r, Ok(()), "{}", w.trace().join("\n"));
    let trace = w.trace().join("\n");
    assert!(trace.contains("Request"), "the large file was never requested:\n{trace}");
}

#[cfg(feature = "planted-bugs")]
#[test]
fn every_planted_bug_is_found_within_a_thousand_seeds_and_shrunk() {
    // The full state directory's bug is rarer; its history is below.
    for bug in mirror_sim::Bug::ALL.into_iter().filter(|b| *b != mirror_sim::Bug::StateErrorIgnored) {
        let failures = run_range(0, 1000, Some(bug));
        assert!(!failures.is_empty(), "the simulator missed the planted bug {}", bug.name());
        let seed = failures[0].0;
        let plan = Plan::of(seed);
        let small = mirror_sim::shrink(&plan, seed, Some(bug));
        assert!(run_plan(&small, seed, Some(bug), false).0.failure.is_some());
        assert!(small.len() <= plan.len());
        eprintln!(
            "{}: {} of 1000 seeds fail; seed {seed} shrinks from {} to {} steps",
            bug.name(),
            failures.len(),
            plan.len(),
            small.len()
        );
        // Without the bug the same plan passes: it is the bug that was found.
        assert!(run_plan(&plan, seed, None, false).0.failure.is_none(), "seed {seed} fails without {}", bug.name());
    }
}

/// The full state directory's teeth: the planted bug lets a failed journal write pass (no
/// halt; what it held dropped). The random search finds it rarely (5 of seeds 0-29,999, the
/// first 22297), too rarely for the thousand seeds above, so seed 22601, shrunk, is kept here
/// (shrunk again once small files came pushed with their entries, which changed its history):
/// a client takes the hub's new file in while its state directory is full, renames it, and is
/// killed; the `Have` written after the room came back says it holds that file's update, its
/// journal does not, and after the restart neither side sends the other that path again (the
/// hub keeps the old name for ever). Without the bug the client halts at the failed write and
/// its user resumes it once there is room: the trees converge.
#[cfg(feature = "planted-bugs")]
#[test]
fn a_journal_write_that_failed_and_was_let_pass_is_found() {
    use mirror_sim::plan::Fault;
    let bug = Some(mirror_sim::Bug::StateErrorIgnored);
    let plan = shrunk(
        22601,
        vec![
            (0, 617, Action::Fault(Fault::StateFull { machine: 1, ms: 758 })),
            (0, 635, user(0, Op::Write { path: p("d0/e1/f0.txt"), len: 204 })),
            (1, 51, user(0, Op::Write { path: p("d0/e2/f0.txt"), len: 2867 })),
            (1, 251, Action::Fault(Fault::Corrupt { client: 1 })),
            (1, 271, user(1, Op::Rename { from: p("d0/e1/f0.txt"), to: p("d0/e2/e1/f0.txt") })),
            (1, 311, Action::Fault(Fault::Crash { machine: 1 })),
        ],
    );
    let (out, trace) = run_plan(&plan, 22601, bug, false);
    let failure = out.failure.map(|f| f.what).unwrap_or_default();
    assert!(failure.contains("the trees differ"), "the planted bug went unseen: {failure:?}\n{}", trace.join("\n"));
    let (out, trace) = run_plan(&plan, 22601, None, true);
    assert_eq!(out.failure, None, "{}", trace.join("\n"));
}

/// `seed`'s links and machines with only `steps` (round, milliseconds, action).
fn shrunk(seed: u64, steps: Vec<(usize, u64, Action)>) -> Plan {
    let mut plan = Plan::of(seed);
    let rounds = steps.iter().map(|s| s.0).max().map_or(0, |r| r + 1);
    plan.rounds = vec![Vec::new(); rounds];
    for (r, at_ms, action) in steps {
        plan.rounds[r].push(Step { at_ms, action });
    }
    plan
}

fn user(machine: usize, op: Op) -> Action {
    Action::User { machine, op }
}

/// Simulator seed 1521, shrunk: a client renames a directory while a peer's new entry inside
/// it arrives; applying that entry makes the directory again (as a missing parent) before the
/// rename is seen, and the scan of the new directory took it for the old one: the old one's
/// contents were never deleted there, and the trees differed for ever.
#[test]
fn a_directory_moved_away_and_made_again_for_a_peer_is_read_again_whole() {
    let plan = shrunk(
        1521,
        vec![
            (0, 23, user(3, Op::Write { path: p("d2/e1/e0/f2.txt"), len: 1504 })),
            (0, 63, Action::Fault(mirror_sim::plan::Fault::Overflow { machine: 3 })),
            (0, 75, user(1, Op::Rename { from: p("d2/e1"), to: p("d1/e0") })),
            (0, 75, user(3, Op::Save { path: p("d2/e1/e1/f3.txt"), len: 162 })),
        ],
    );
    let (out, trace) = run_plan(&plan, 1521, None, true);
    assert_eq!(out.failure, None, "{}", trace.join("\n"));
}

/// Simulator seed 8435, shrunk: a file being received is refused (its directory became a
/// symlink here), and offered again while its data still flowed; the failed transfer still
/// stood for it, so the offer was dropped as "already under way", and the file never came.
#[test]
fn a_refused_transfer_offered_again_while_its_data_flows_is_not_forgotten() {
    let plan = shrunk(
        8435,
        vec![
            (0, 1, user(2, Op::Write { path: p("d1/f2.txt"), len: 1370 })),
            (0, 1, Action::Fault(mirror_sim::plan::Fault::Cut { client: 2 })),
            (1, 0, user(1, Op::Write { path: p("d1/e1/e0/f0.txt"), len: 202_040 })),
            (1, 40, user(2, Op::Write { path: p("d2/e1/f2.txt"), len: 1366 })),
            (1, 40, user(1, Op::Write { path: p("d2/e2/e2/f0.txt"), len: 367 })),
            (1, 240, user(2, Op::DirToSymlink { path: p("d1/e1") })),
        ],
    );
    let (out, trace) = run_plan(&plan, 8435, None, true);
    assert_eq!(out.failure, None, "{}", trace.join("\n"));
}

/// Simulator seed 9986, shrunk: the hub's bytes for a file arrive with one changed; the client
/// drops the session (a broken peer), as it should, but counted the session as taken in up to
/// the file's update, so its next session never asked for the file again.
#[test]
fn a_file_whose_bytes_arrived_broken_is_asked_for_again_by_the_next_session() {
    let plan = shrunk(
        9986,
        vec![
            (0, 349, Action::Fault(mirror_sim::plan::Fault::Corrupt { client: 1 })),
            (1, 200, user(0, Op::Save { path: p("d0/f0.txt"), len: 110 })),
        ],
    );
    let (out, trace) = run_plan(&plan, 9986, None, true);
    assert_eq!(out.failure, None, "{}", trace.join("\n"));
    assert!(trace.iter().any(|l| l.contains("closes")), "the broken bytes were not noticed:\n{}", trace.join("\n"));
}

/// Simulator seed 190890, shrunk: the hub replaced a directory by a symlink; one client renamed
/// that symlink away (a deletion of it), another deleted the directory, not yet knowing of the
/// symlink. The second client's symlink beat its own concurrent deletion by a merge alone, and
/// the hub merged the two deletions into the very same vector: a symlink there, nothing here,
/// under one version, for ever.
#[test]
fn a_live_entry_that_beats_a_concurrent_deletion_makes_a_version_of_its_own() {
    let plan = shrunk(
        190890,
        vec![
            (0, 493, user(2, Op::Write { path: p("d2/e1/e1/f1.txt"), len: 1437 })),
            (1, 1, user(0, Op::DirToSymlink { path: p("d2/e1") })),
            (1, 11, user(2, Op::Rename { from: p("d2/e1"), to: p("d2/e0") })),
            (1, 14, user(1, Op::RemoveAll { path: p("d2/e1") })),
        ],
    );
    let (out, trace) = run_plan(&plan, 190890, None, true);
    assert_eq!(out.failure, None, "{}", trace.join("\n"));
}

/// Simulator seed 448180, shrunk: every machine writes one file at once, and the hub replaces
/// its directory by a symlink meanwhile. A client's old entry for the file, waiting to be
/// looked at again, came due after that client's newer entry had been refused (the symlink in
/// the way), and was refused in its place; when the directory came back, only the old entry
/// was offered again, the client answered that it no longer has that version, and the hub
/// asked again for ever, its newer entry forgotten.
#[test]
fn an_old_entry_of_a_peer_never_takes_the_place_of_its_newer_one() {
    let plan = shrunk(
        448180,
        vec![
            (0, 40, Action::Race { path: p("d0/e0/e1/f0.txt"), len: 2198 }),
            (0, 43, user(0, Op::DirToSymlink { path: p("d0/e0") })),
        ],
    );
    let (out, trace) = run_plan(&plan, 448180, None, true);
    assert_eq!(out.failure, None, "{}", trace.join("\n"));
}

/// Seed 542173 of the 1,000,000-seed run: a client's user deleted a subtree, the client crashed
/// and came back, and its root was unmounted while the hub asked for its index. The index it
/// sent still carried the user's deletions from before the unmount (old news, not something
/// the unmount did), and the check counted them as deletions sent after it. The check now
/// counts only deletions the index did not hold at the unmount; the planted `root-unchecked`
/// bug shows it still catches the ones the unmount makes.
#[test]
fn deletions_a_user_made_before_an_unmount_may_still_be_sent() {
    let out = run_seed(542173, None);
    assert_eq!(out.failure.map(|f| f.what), None);
}

/// Seed 1364882 of the second 1,000,000-seed run: every machine saved `d0/e1/f2.txt` at once
/// (conflict copies went round), then the hub's user renamed `d0/e1` away while another save
/// at once made `d0/e1/e1/f3.txt` again there. A peer's entry for `d0/e1` reached the hub
/// before its watcher's report; the hub read the new directory's stat then, and the report's
/// read found nothing new, so what the old directory held stayed in the hub's index: the
/// clients asked for the conflict copy at its old place for ever.
#[test]
fn a_directory_made_again_under_a_peer_s_entry_is_read_whole() {
    let plan = shrunk(
        1364882,
        vec![
            (0, 734, Action::Race { path: p("d0/e1/f2.txt"), len: 94 }),
            (0, 774, user(0, Op::Rename { from: p("d0/e1"), to: p("d0/e2") })),
            (0, 774, Action::Race { path: p("d0/e1/e1/f3.txt"), len: 2935 }),
        ],
    );
    let (out, trace) = run_plan(&plan, 1364882, None, true);
    assert_eq!(out.failure, None, "{}", trace.join("\n"));
}
