//! mirror-core: what a replica decides, as values and pure functions.
//!
//! No file system, threads, sockets, clocks or randomness here: every input (what is on disk,
//! what a peer said, what time it is) is an argument, so every decision can be tested as a
//! table and, later, stepped by a simulator over millions of histories (issue 12). The agent
//! carries the decisions out.
//!
//! - [`clock`]: the replica clock, each value handed out once across crashes.
//! - [`debounce`]: when to read a path the watcher named (settled, hot, never too late).
//! - [`disk`]: what a replica asks of its file system (the real one, or a simulated one).
//! - [`reconcile`]: ours against a peer's entry for one path: nothing, adopt, apply or conflict.
//! - [`conflict`]: the name a losing version is kept under, the same on every replica.
//! - [`fold`], [`paths`], [`logsafe`]: names as this file system compares them; the agent's own
//!   names; peer text made safe to log.
//! - [`journal`], [`ignore`]: what a replica asks of its persistent base and its ignore rules.
//! - [`replica`]: one replica as a value: inputs in, commands out, every decision in between.
//! - [`tree`]: what a replica knows of each path (entry plus the disk stat it was seen with),
//!   and the subtree and apply orders over it.
#![forbid(unsafe_code)]

pub mod clock;
pub mod conflict;
pub mod debounce;
pub mod delta;
pub mod disk;
pub mod fold;
pub mod ignore;
pub mod journal;
pub mod logsafe;
pub mod paths;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod reconcile;
pub mod replica;
pub mod tree;
