//! Length-prefixed frames: a big-endian `u32` payload length, then the postcard-encoded message.
//!
//! The [`Decoder`] takes bytes as they arrive and yields messages. It checks a frame's length
//! against [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN) before buffering it, so a hostile length prefix
//! costs nothing, and it tells "need more bytes" (`Ok(None)`) from "corrupt" (`Err`).

use crate::message::Message;
use crate::{MAX_CHUNK_LEN, MAX_FRAME_LEN};
use std::fmt;

/// Why the byte stream cannot be decoded. Every variant is fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A length prefix above the maximum frame size.
    FrameTooLarge { len: u64, max: usize },
    /// A zero-length frame.
    EmptyFrame,
    /// The payload is not a valid message (unknown type, bad path, trailing bytes, ...).
    BadMessage(String),
    /// A well-formed message that breaks a limit (an oversized data chunk).
    Limit(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FrameTooLarge { len, max } => write!(f, "frame of {len} bytes exceeds the {max}-byte limit"),
            Self::EmptyFrame => f.write_str("empty frame"),
            Self::BadMessage(e) => write!(f, "malformed message: {e}"),
            Self::Limit(what) => write!(f, "message breaks a limit: {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Encodes `msg` as one frame appended to `out`.
pub fn encode_into(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    // Writing into a Vec cannot fail for our types: postcard only fails on a full buffer or on
    // types that cannot be serialized (maps with non-string keys and the like), which we have none of.
    let out_vec = std::mem::take(out);
    let mut out_vec = postcard::to_extend(msg, out_vec).unwrap_or_else(|e| panic!("postcard: {e}"));
    let len = u32::try_from(out_vec.len() - start - 4).unwrap_or(u32::MAX);
    out_vec[start..start + 4].copy_from_slice(&len.to_be_bytes());
    *out = out_vec;
}

/// Encodes `msg` as one frame.
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut v = Vec::new();
    encode_into(msg, &mut v);
    v
}

/// What an emptied [`Decoder`] keeps of its room.
const KEEP_BUF: usize = 128 * 1024;

/// Incremental frame decoder.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    pos: usize,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            // The room of the largest frame seen is not kept for ever: one per connection.
            self.buf.shrink_to(KEEP_BUF.max(bytes.len()));
            self.pos = 0;
        } else if self.pos > 64 * 1024 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// How many undecoded bytes the frame at the front needs in all (its header says; 4 for a
    /// header still to come). A reader that buffers no more than this, or a little read-ahead,
    /// holds one frame per connection at most, not a whole burst of them.
    pub fn wanted(&self) -> usize {
        match self.buf.get(self.pos..self.pos + 4) {
            Some(h) => 4 + u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize,
            None => 4,
        }
    }

    /// Takes `n` raw bytes off the front, for the preamble that precedes the frames.
    pub fn take_raw(&mut self, n: usize) -> Option<Vec<u8>> {
        if self.buffered() < n {
            return None;
        }
        let out = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Some(out)
    }

    /// The undecoded bytes, for a preamble check that needs to look before taking.
    pub fn peek(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn decode(&mut self) -> Result<Option<Message>, DecodeError> {
        let avail = &self.buf[self.pos..];
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len > MAX_FRAME_LEN {
            return Err(DecodeError::FrameTooLarge { len: len as u64, max: MAX_FRAME_LEN });
        }
        if len == 0 {
            return Err(DecodeError::EmptyFrame);
        }
        if avail.len() < 4 + len {
            return Ok(None);
        }
        let payload = &avail[4..4 + len];
        crate::path::take_refusal();
        let (msg, rest) = postcard::take_from_bytes::<Message>(payload).map_err(|e| bad_message(payload, &e))?;
        if !rest.is_empty() {
            return Err(DecodeError::BadMessage(format!("{} trailing bytes after the message", rest.len())));
        }
        if let Message::Data { bytes, .. } = &msg
            && bytes.len() > MAX_CHUNK_LEN
        {
            return Err(DecodeError::Limit("data chunk larger than 1 MiB"));
        }
        self.pos += 4 + len;
        Ok(Some(msg))
    }
}

/// The names of the message types, by their tag on the wire (the variant index of [`Message`]).
const MESSAGE_NAMES: [&str; 14] = [
    "Hello",
    "Welcome",
    "IndexBatch",
    "Update",
    "Request",
    "Data",
    "DataEnd",
    "DataAbort",
    "Ping",
    "Pong",
    "Goodbye",
    "IndexFrom",
    "Push",
    "Copy",
];

/// What was wrong with a payload postcard refused, in words: which message, and what in it
/// (postcard's own text is "Serde Deserialization Error" for a refused path).
fn bad_message(payload: &[u8], e: &postcard::Error) -> DecodeError {
    use postcard::Error as E;
    let what = match payload.first() {
        Some(&tag) if tag < 0x80 => match MESSAGE_NAMES.get(usize::from(tag)) {
            Some(name) => *name,
            None => return DecodeError::BadMessage(format!("unknown message type {tag}")),
        },
        _ => return DecodeError::BadMessage("unknown message type".into()),
    };
    let why = match e {
        E::SerdeDeCustom => match crate::path::take_refusal() {
            Some(p) => format!("a path is refused: {p}"),
            None => "a field holds a value that is not allowed".into(),
        },
        E::DeserializeUnexpectedEnd => "it ends before its last field".into(),
        E::DeserializeBadVarint => "a number is badly encoded".into(),
        E::DeserializeBadBool => "a boolean is neither 0 nor 1".into(),
        E::DeserializeBadUtf8 | E::DeserializeBadChar => "a text field is not valid UTF-8".into(),
        E::DeserializeBadOption => "an optional field has a bad tag".into(),
        E::DeserializeBadEnum => "a field holds an unknown variant".into(),
        other => other.to_string(),
    };
    DecodeError::BadMessage(format!("{what}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;
    use crate::{RelPath, VersionVector};

    fn sample_entry() -> Entry {
        Entry {
            path: RelPath::new("src/main.rs").unwrap(),
            kind: Kind::File { size: 5, hash: [7; 32], mode: 0o755 },
            mtime: Timestamp { secs: 1_700_000_000, nanos: 5 },
            version: VersionVector::new().incremented(3),
            origin: "desk".into(),
        }
    }

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                replica: 42,
                host: "laptop".into(),
                remote: b"proj".to_vec(),
                includes: vec!["*.jar".into()],
                excludes: vec![],
            }),
            Message::Welcome(Welcome { replica: 43, host: "desk".into() }),
            Message::IndexBatch { entries: vec![sample_entry()], last: true, seq: 7 },
            Message::Update { entries: vec![sample_entry()], seq: 8 },
            Message::Request { id: 9, path: RelPath::new("a/b").unwrap(), size: 3, hash: [1; 32], base: None },
            Message::Data { id: 9, bytes: b"abc".to_vec() },
            Message::DataEnd { id: 9, size: 3, hash: [1; 32] },
            Message::DataAbort { id: 9, reason: "changed".into() },
            Message::Ping,
            Message::Pong,
            Message::Goodbye { reason: "bye".into() },
            Message::IndexFrom { since: 1 << 40 },
        ]
    }

    #[test]
    fn message_names_follow_the_wire_tags() {
        for m in samples() {
            let frame = encode(&m);
            assert_eq!(MESSAGE_NAMES[usize::from(frame[4])], m.name());
        }
    }

    #[test]
    fn decode_errors_say_which_message_and_what_was_wrong() {
        let bad = |payload: &[u8]| {
            let mut d = Decoder::new();
            let mut f = (payload.len() as u32).to_be_bytes().to_vec();
            f.extend_from_slice(payload);
            d.extend(&f);
            d.decode().unwrap_err().to_string()
        };
        // A Request (tag 4) for `..`: id 1, then the path bytes.
        let e = bad(&[4, 1, 2, b'.', b'.']);
        assert!(e.contains("Request") && e.contains("a path is refused") && e.contains(".."), "{e}");
        assert!(!e.contains("Serde"), "{e}");
        assert!(bad(&[4, 1]).contains("Request: it ends before its last field"));
        assert!(bad(&[2, 0, 7, 1]).contains("IndexBatch: a boolean is neither 0 nor 1"));
        assert_eq!(bad(&[99]), "malformed message: unknown message type 99");
    }

    #[test]
    fn round_trip_every_message_byte_by_byte() {
        let mut wire = Vec::new();
        for m in samples() {
            encode_into(&m, &mut wire);
        }
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &wire {
            d.extend(std::slice::from_ref(b));
            while let Some(m) = d.decode().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, samples());
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn the_decoder_says_how_much_the_frame_under_way_needs() {
        let frame = encode(&Message::Ping);
        let big = encode(&Message::Update { entries: Vec::new(), seq: u64::MAX });
        let mut d = Decoder::new();
        assert_eq!(d.wanted(), 4, "a header first");
        d.extend(&big[..3]);
        assert_eq!(d.wanted(), 4, "still the header");
        d.extend(&big[3..5]);
        assert_eq!(d.wanted(), big.len(), "the whole frame, once the header is in");
        d.extend(&big[5..]);
        d.extend(&frame);
        assert!(d.decode().unwrap().is_some());
        assert_eq!(d.wanted(), frame.len(), "then the next one");
        assert!(d.decode().unwrap().is_some());
        assert_eq!(d.wanted(), 4);
    }

    /// Golden frames: these bytes are the protocol. If this test fails, the wire format changed
    /// and PROTOCOL_VERSION must be bumped (and PROTOCOL.md updated).
    #[test]
    fn golden_frames_both_ways() {
        let push_frame: Vec<u8> = [&[0, 0, 0, 36, 12][..], &[7; 32], &[2, b'h', b'i']].concat();
        // Request (tag 4): id, path, size, hash, then the base: Some (1), its size, hash,
        // average (varint 1024 = 0x80 0x08), one chunk: len 2, 16 bytes of hash.
        let request_frame: Vec<u8> =
            [&[0, 0, 0, 91, 4, 1, 1, b'f', 2][..], &[1; 32], &[1, 2], &[2; 32], &[0x80, 0x08, 1, 2], &[3; 16]].concat();
        let golden: Vec<(Message, &[u8])> = vec![
            (Message::Ping, &[0, 0, 0, 1, 8]),
            (Message::Pong, &[0, 0, 0, 1, 9]),
            (Message::Data { id: 300, bytes: b"hi".to_vec() }, &[0, 0, 0, 6, 5, 0xac, 0x02, 2, b'h', b'i']),
            (Message::Push { hash: [7; 32], bytes: b"hi".to_vec() }, &push_frame),
            // Copy (tag 13): id 3, offset 300 (varint 0xac 0x02), len 5.
            (Message::Copy { id: 3, offset: 300, len: 5 }, &[0, 0, 0, 5, 13, 3, 0xac, 0x02, 5]),
            (
                Message::Request {
                    id: 1,
                    path: RelPath::new("f").unwrap(),
                    size: 2,
                    hash: [1; 32],
                    base: Some(Box::new(crate::delta::Base {
                        size: 2,
                        hash: [2; 32],
                        avg: 1024,
                        chunks: vec![crate::delta::ChunkSig { len: 2, hash: [3; 16] }],
                    })),
                },
                &request_frame,
            ),
            (
                Message::Hello(Hello {
                    replica: 1,
                    host: "h".into(),
                    remote: b"r".to_vec(),
                    includes: vec!["i".into()],
                    excludes: vec![],
                }),
                &[0, 0, 0, 10, 0, 1, 1, b'h', 1, b'r', 1, 1, b'i', 0],
            ),
            (
                Message::Update {
                    entries: vec![Entry {
                        path: RelPath::new("d").unwrap(),
                        kind: Kind::Directory,
                        mtime: Timestamp { secs: -1, nanos: 2 },
                        version: VersionVector::new().incremented(5),
                        origin: "o".into(),
                    }],
                    seq: 300,
                },
                &[0, 0, 0, 14, 3, 1, 1, b'd', 1, 1, 2, 1, 5, 1, 1, b'o', 0xac, 0x02],
            ),
            (Message::IndexFrom { since: 5 }, &[0, 0, 0, 2, 11, 5]),
        ];
        for (msg, bytes) in golden {
            assert_eq!(encode(&msg), bytes, "encoding {msg:?}");
            let mut d = Decoder::new();
            d.extend(bytes);
            assert_eq!(d.decode().unwrap(), Some(msg));
        }
    }

    #[test]
    fn truncated_frames_need_more() {
        let frame = encode(&Message::Update { entries: vec![sample_entry()], seq: 1 });
        for cut in 0..frame.len() {
            let mut d = Decoder::new();
            d.extend(&frame[..cut]);
            assert_eq!(d.decode(), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut d = Decoder::new();
        d.extend(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.decode(), Err(DecodeError::FrameTooLarge { .. })));
        let mut d = Decoder::new();
        d.extend(&[0, 0, 0, 0]);
        assert_eq!(d.decode(), Err(DecodeError::EmptyFrame));
    }

    #[test]
    fn garbage_and_unknown_messages_are_corrupt() {
        for payload in [&[200u8][..], &[3, 1, 3, b'.', b'.', b'/'], &[8, 0]] {
            let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(payload);
            let mut d = Decoder::new();
            d.extend(&frame);
            assert!(matches!(d.decode(), Err(DecodeError::BadMessage(_))), "{payload:?}");
        }
    }

    #[test]
    fn hostile_path_in_a_request_is_corrupt() {
        // A Request whose path is "../x", built by hand since RelPath cannot hold it.
        let mut payload = vec![4, 1, 4];
        payload.extend_from_slice(b"../x");
        payload.push(0);
        payload.extend_from_slice(&[0; 32]);
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        let mut d = Decoder::new();
        d.extend(&frame);
        assert!(matches!(d.decode(), Err(DecodeError::BadMessage(_))));
    }

    #[test]
    fn oversized_chunk_is_refused() {
        let frame = encode(&Message::Data { id: 1, bytes: vec![0; MAX_CHUNK_LEN + 1] });
        let mut d = Decoder::new();
        d.extend(&frame);
        assert!(matches!(d.decode(), Err(DecodeError::Limit(_))));
    }
}
