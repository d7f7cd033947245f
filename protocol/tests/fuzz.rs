//! A mutation fuzzer for the decoder that runs on stable Rust, in CI, with a bounded number of
//! cases. Longer: `MIRROR_FUZZ_CASES=5000000 cargo test --release -p mirror-protocol --test fuzz`.
//! A failing case prints its seed; `MIRROR_FUZZ_SEED=N` starts there.
#![allow(clippy::unwrap_used)]

use mirror_protocol::delta::{Base, ChunkSig};
use mirror_protocol::*;

use mirror_protocol::fuzz::Rng;

fn entry(r: &mut Rng) -> Entry {
    let kind = match r.below(4) {
        0 => Kind::File { size: r.next_u64() % 5000, hash: [r.next_u64() as u8; 32], mode: r.below(0o1000) as u32 },
        1 => Kind::Directory,
        2 => Kind::Symlink { target: vec![b'x'; r.below(20)] },
        _ => Kind::Deleted,
    };
    let mut version = VersionVector::new();
    for _ in 0..r.below(4) {
        version = version.with(r.next_u64() % 8, r.next_u64() % 1000 + 1);
    }
    Entry {
        path: RelPath::new(format!("d{}/f{}", r.below(5), r.below(50))).unwrap(),
        kind,
        mtime: Timestamp { secs: r.next_u64() as i64, nanos: (r.next_u64() % 1_000_000_000) as u32 },
        version,
        origin: "host".repeat(r.below(3)).into(),
    }
}

/// A valid message of every kind, at random.
fn message(r: &mut Rng) -> Message {
    let id = r.next_u64() % 100;
    match r.below(14) {
        0 => Message::Hello(Hello {
            replica: r.next_u64(),
            host: "h".into(),
            remote: b"p".to_vec(),
            includes: vec!["*.jar".into(); r.below(3)],
            excludes: vec![],
        }),
        1 => Message::Welcome(Welcome { replica: r.next_u64(), host: "s".into() }),
        2 => Message::IndexBatch {
            entries: (0..r.below(5)).map(|_| entry(r)).collect(),
            last: r.below(2) == 0,
            seq: r.next_u64(),
        },
        3 => Message::Update { entries: (0..r.below(5)).map(|_| entry(r)).collect(), seq: r.next_u64() },
        4 => Message::Request {
            id,
            path: RelPath::new("a/b").unwrap(),
            size: r.next_u64() % 100,
            hash: [3; 32],
            base: None,
        },
        5 => Message::Data { id, bytes: vec![r.next_u64() as u8; r.below(300)] },
        6 => Message::DataEnd { id, size: r.next_u64() % 300, hash: [4; 32] },
        7 => Message::DataAbort { id, reason: "x".into() },
        8 => Message::Ping,
        9 => Message::Pong,
        10 => Message::IndexFrom { since: r.next_u64() },
        11 => {
            let chunks = (0..r.below(4)).map(|_| ChunkSig { len: 1 + r.below(5000) as u32, hash: [5; 16] }).collect();
            let base = Base { size: r.next_u64() % 20_000, hash: [6; 32], avg: 1024 << r.below(3), chunks };
            Message::Request {
                id,
                path: RelPath::new("a/b").unwrap(),
                size: r.next_u64() % 100,
                hash: [3; 32],
                base: Some(Box::new(base)),
            }
        }
        12 => Message::Copy { id, offset: r.next_u64() % 20_000, len: r.next_u64() % 5000 },
        _ => Message::Goodbye { reason: "bye".into() },
    }
}

/// Valid frames, then mutated: bit flips, byte changes, truncation, insertion, length lies,
/// splices of two streams.
fn case(r: &mut Rng) -> Vec<u8> {
    let mut bytes = if r.below(10) == 0 { Preamble::ours().encode().to_vec() } else { Vec::new() };
    for _ in 0..r.below(4) + 1 {
        encode_into(&message(r), &mut bytes);
    }
    if r.below(20) == 0 {
        return (0..r.below(200)).map(|_| r.next_u64() as u8).collect();
    }
    for _ in 0..r.below(4) {
        if bytes.is_empty() {
            break;
        }
        let at = r.below(bytes.len());
        match r.below(6) {
            0 => bytes[at] ^= 1 << r.below(8),
            1 => bytes[at] = r.next_u64() as u8,
            2 => bytes.truncate(at),
            3 => bytes.insert(at, r.next_u64() as u8),
            4 if at + 4 <= bytes.len() => bytes[at..at + 4].copy_from_slice(&(r.next_u64() as u32).to_be_bytes()),
            _ => {
                let mut other = Vec::new();
                encode_into(&message(r), &mut other);
                let cut = r.below(other.len());
                bytes.splice(at..at, other[cut..].iter().copied());
            }
        }
    }
    bytes
}

#[test]
fn the_decoder_survives_mutated_and_random_input() {
    let cases: u64 = std::env::var("MIRROR_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(500_000);
    let start: u64 = std::env::var("MIRROR_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let mut decoded = 0u64;
    for seed in start..start + cases {
        let mut r = Rng(seed);
        let bytes = case(&mut r);
        let result = std::panic::catch_unwind(|| mirror_protocol::fuzz::decode_stream(&bytes));
        assert!(result.is_ok(), "decoder panicked on case {seed} ({} bytes): {bytes:02x?}", bytes.len());
        let mut d = Decoder::new();
        d.extend(&bytes);
        if matches!(d.decode(), Ok(Some(_))) {
            decoded += 1;
        }
    }
    // The mutations must leave enough valid frames that decoding paths are exercised too.
    assert!(decoded > cases / 10, "only {decoded} of {cases} cases decoded a message");
}
