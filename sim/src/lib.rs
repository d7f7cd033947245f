//! mirror-sim: replicas of `mirror-core` run on simulated parts that fail on purpose, in
//! simulated time, so that one seed replays a whole history byte for byte (issue 12).
//!
//! - [`disk`]: [`disk::MemDisk`], a file system in memory behind `mirror_core::disk::Disk`, with
//!   folding names, a full disk, unreadable paths and the user's save right before a mutation.
//! - [`journal`]: [`journal::MemJournal`], a replica's base in memory that a crash tears.
//! - [`plan`]: what happens in a history (machines, links, rounds of operations and faults),
//!   drawn from its seed.
//! - [`world`]: the hub, its clients, their links and watchers, and the agenda that runs them.
//! - `ops`, `check`: the user's operations; the invariants checked whenever a round settles.
//! - [`run_seed`], [`shrink`]: one seed run and checked; a failing plan cut down to the fewest
//!   steps that still fail.
#![forbid(unsafe_code)]

mod check;
pub mod disk;
pub mod journal;
pub mod logs;
mod ops;
pub mod plan;
pub mod world;

pub use plan::Plan;
pub use world::{Failure, World};

#[cfg(feature = "planted-bugs")]
pub use mirror_core::planted::Bug;

/// What one seed's run came to.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub digest: [u8; 32],
    pub failure: Option<Failure>,
}

/// What to plant (nothing without the `planted-bugs` feature).
#[cfg(feature = "planted-bugs")]
pub type Planted = Option<Bug>;
#[cfg(not(feature = "planted-bugs"))]
pub type Planted = Option<std::convert::Infallible>;

/// Runs `plan` under `seed`'s randomness.
pub fn run_plan(plan: &Plan, seed: u64, planted: Planted, trace: bool) -> (Outcome, Vec<String>) {
    let mut w = World::new(plan, seed, trace);
    #[cfg(feature = "planted-bugs")]
    w.plant(planted);
    #[cfg(not(feature = "planted-bugs"))]
    let _ = planted;
    let failure = w.run(plan).err();
    (Outcome { digest: w.digest(), failure }, w.trace().to_vec())
}

/// Runs seed `seed`: its plan, its randomness.
pub fn run_seed(seed: u64, planted: Planted) -> Outcome {
    run_plan(&Plan::of(seed), seed, planted, false).0
}

/// The fewest steps of `plan` (a failing one) that still fail, found by dropping chunks of
/// steps, then single steps, while the run still fails.
pub fn shrink(plan: &Plan, seed: u64, planted: Planted) -> Plan {
    let fails = |p: &Plan| run_plan(p, seed, planted, false).0.failure.is_some();
    let mut keep: Vec<bool> = vec![true; plan.len()];
    let mut chunk = plan.len().div_ceil(2).max(1);
    loop {
        let mut changed = false;
        let mut start = 0;
        while start < keep.len() {
            let end = (start + chunk).min(keep.len());
            if keep[start..end].iter().any(|k| *k) {
                let mut trial = keep.clone();
                trial[start..end].iter_mut().for_each(|k| *k = false);
                if fails(&plan.only(&|i| trial[i])) {
                    keep = trial;
                    changed = true;
                }
            }
            start = end;
        }
        if chunk == 1 && !changed {
            break;
        }
        chunk = (chunk / 2).max(1);
    }
    plan.only(&|i| keep[i])
}
