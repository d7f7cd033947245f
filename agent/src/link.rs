//! The messages between the network thread and the engine threads, and the handle engines use
//! to reach the network thread.
//!
//! Deadlock freedom rests on one rule: the network thread never blocks on an engine (it uses
//! `try_send` and stops reading a connection whose engine is busy), while an engine may block on
//! the network thread's channel, which that thread drains on every turn of its loop.

use crossbeam_channel::Sender;
use mirror_protocol::Message;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Identifies one connection for as long as the process runs.
pub type ConnId = u64;

#[derive(Debug)]
pub enum ToEngine {
    /// A peer finished the handshake.
    Connected {
        conn: ConnId,
        peer_host: String,
        peer_replica: u64,
    },
    Message {
        conn: ConnId,
        msg: Message,
    },
    Disconnected {
        conn: ConnId,
        reason: String,
    },
    /// What was sent on `conn` up to a [`ToNet::WhenDrained`] has mostly left.
    Drained {
        conn: ConnId,
    },
    Shutdown,
}

#[derive(Debug)]
pub enum ToNet {
    Send {
        conn: ConnId,
        msg: Message,
    },
    /// Stream `file` as the answer to request `id`: at most `size` bytes, then `DataEnd`. The
    /// network thread hands the reads to the upload readers and sends chunks as the socket drains.
    Upload {
        conn: ConnId,
        id: u64,
        file: File,
        size: u64,
        /// The request's base: the file goes as a delta against it.
        base: Option<Box<mirror_protocol::delta::Base>>,
    },
    /// Say [`ToEngine::Drained`] once what waits to be sent on `conn` is down to a little.
    WhenDrained {
        conn: ConnId,
    },
    /// Say goodbye with `reason` and close.
    Close {
        conn: ConnId,
        reason: String,
    },
    /// An upload reader read the next chunk of a file being sent.
    Chunk(crate::reader::Chunk),
    /// A client's dialer connected to its server, or could not.
    Dialed {
        result: std::io::Result<std::net::TcpStream>,
    },
    /// A server's opener thread answers the `Hello` of connection `conn`.
    Opened {
        conn: ConnId,
        hello: mirror_protocol::Hello,
        result: crate::net::Opened,
    },
}

/// How an engine reaches the network thread.
#[derive(Clone, Debug)]
pub struct NetHandle {
    pub tx: Sender<ToNet>,
    pub waker: Arc<mio::Waker>,
    /// Set by the network thread when it holds a message an engine's full channel could not
    /// take; the engine wakes it once it has made room.
    pub parked: Arc<AtomicBool>,
}

impl NetHandle {
    pub fn send(&self, m: ToNet) {
        self.send_checked(m);
    }

    /// [`send`](Self::send), saying whether the network thread is still there to take it.
    pub fn send_checked(&self, m: ToNet) -> bool {
        let sent = self.tx.send(m).is_ok();
        if sent {
            let _ = self.waker.wake();
        }
        sent
    }

    /// Called by an engine after it took messages off its channel.
    pub fn made_room(&self) {
        if self.parked.swap(false, Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }
}
