//! Bugs planted on purpose, so that the simulator shows it finds what it claims to
//! (`cargo test -p mirror-sim --features planted-bugs`). Only with the `planted-bugs` feature:
//! without it this module, and every place a bug is planted, is not compiled at all.
//!
//! A replica carries none until [`Replica::plant`](crate::replica::Replica::plant) is called.

/// One planted bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bug {
    /// A change applied for a peer is seen by the next scan as a change of ours and sent back
    /// (an echo, for ever).
    Echo,
    /// A peer's deletion beats our concurrent modification (a write lost).
    DeletionWins,
    /// What a peer sent is counted as taken in (its `Have` journaled) while transfers of it
    /// are still under way: after a crash they are never asked for again.
    HaveTooEarly,
    /// Our deletions go out without a look at the root first: an unmounted root's files are
    /// sent as deleted before the watcher says the root went.
    RootUnchecked,
    /// A journal write that fails (a full state directory) is let pass: no halt, and what it
    /// held is dropped, so a crash then forgets changes peers already hold.
    StateErrorIgnored,
    /// The bytes a peer pushes are taken without a look at their hash: a corrupted push is
    /// installed as the entry's content.
    PushUnchecked,
}

impl Bug {
    pub const ALL: [Bug; 6] = [
        Bug::Echo,
        Bug::DeletionWins,
        Bug::HaveTooEarly,
        Bug::RootUnchecked,
        Bug::StateErrorIgnored,
        Bug::PushUnchecked,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::Echo => "echo",
            Bug::DeletionWins => "deletion-wins",
            Bug::HaveTooEarly => "have-too-early",
            Bug::RootUnchecked => "root-unchecked",
            Bug::StateErrorIgnored => "state-error-ignored",
            Bug::PushUnchecked => "push-unchecked",
        }
    }

    pub fn parse(s: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == s)
    }
}
