//! Peer-controlled text, made safe to log: see [`mirror_core::logsafe`].

pub use mirror_core::logsafe::*;
