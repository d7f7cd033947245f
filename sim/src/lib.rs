//! mirror-sim: the simulator of issue 12 (step 11), where replicas of `mirror-core` run on
//! simulated parts that fail on purpose, so that one seed replays a whole history.
//!
//! - [`disk`]: [`disk::MemDisk`], a file system in memory behind `mirror_core::disk::Disk`, with
//!   folding names, a full disk, unreadable paths and the user's save right before a mutation.
//!
//! To come: a watcher that coalesces and overflows, a network with delay, reordering, cuts and
//! freezes, crashes that cut the journal, the scheduler, the invariants and the shrinker.
#![forbid(unsafe_code)]

pub mod disk;
