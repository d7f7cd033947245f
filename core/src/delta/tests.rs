#![allow(clippy::unwrap_used)]

use super::*;

fn noise(seed: u64, n: usize) -> Vec<u8> {
    mirror_protocol::fuzz::Rng(seed).bytes(n)
}

/// What the receiver rebuilds from `base` and the pieces, with the bytes that were sent new.
fn apply(base: &[u8], pieces: &[Piece]) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut new = 0;
    for p in pieces {
        match p {
            Piece::Copy { offset, len } => out.extend_from_slice(&base[*offset as usize..(*offset + *len) as usize]),
            Piece::Literal(v) => {
                assert!(!v.is_empty() && v.len() <= LITERAL_MAX, "a literal of {} bytes", v.len());
                new += v.len();
                out.extend_from_slice(v);
            }
        }
    }
    (out, new)
}

/// Encodes `new` against `old` cut at `avg`: the pieces, checked to rebuild `new` with its hash.
fn delta(old: &[u8], new: &[u8], avg: u32) -> (Vec<Piece>, usize) {
    let base = sign(old, avg).unwrap();
    base.check().unwrap();
    assert_eq!(base.hash, *blake3::hash(old).as_bytes());
    let mut e = Encoder::new(new, new.len() as u64, &base).ok().unwrap();
    let mut pieces = Vec::new();
    while let Some(p) = e.next_piece().unwrap() {
        if let Piece::Copy { len, .. } = &p {
            assert!(*len > 0 && *len <= MAX_COPY_LEN);
        }
        pieces.push(p);
    }
    assert_eq!(e.sent(), new.len() as u64);
    assert_eq!(e.hash(), *blake3::hash(new).as_bytes());
    let (rebuilt, sent_new) = apply(old, &pieces);
    assert!(rebuilt == new, "the pieces do not rebuild the file");
    (pieces, sent_new)
}

#[test]
fn a_base_is_cut_the_same_however_its_bytes_come() {
    let bytes = noise(1, 3 << 20);
    let whole = sign(&bytes, 65536).unwrap();
    let mut s = Signer::new(65536).unwrap();
    for piece in bytes.chunks(7777) {
        s.update(piece);
    }
    assert_eq!(s.finish(whole.hash), whole);
    let lens: Vec<u32> = whole.chunks.iter().map(|c| c.len).collect();
    assert!(lens.len() > 20 && lens.len() < 100, "{} chunks of 3 MiB at 64 KiB", lens.len());
    assert!(lens[..lens.len() - 1].iter().all(|&l| (16384..=262144).contains(&l)), "{lens:?}");
    assert_eq!(sign(&[], 65536).unwrap().chunks, vec![]);
    assert!(Signer::new(65535).is_none() && Signer::new(512).is_none());
}

#[test]
fn an_append_sends_only_what_was_appended() {
    let old = noise(2, 5 << 20);
    let mut new = old.clone();
    new.extend_from_slice(b"one more line of the log\n");
    let (pieces, sent) = delta(&old, &new, 65536);
    assert_eq!(sent, 25);
    // Adjacent copies merge, up to 4 MiB a piece: 5 MiB in two, then the new line.
    assert_eq!(pieces.len(), 3, "{pieces:?}");
    assert!(matches!(&pieces[2], Piece::Literal(v) if v.len() == 25));
}

#[test]
fn a_change_in_the_middle_sends_about_the_change() {
    let old = noise(3, 16 << 20);
    let mut new = old.clone();
    new[8 << 20..9 << 20].copy_from_slice(&noise(4, 1 << 20));
    let (_, sent) = delta(&old, &new, 65536);
    assert!((1 << 20..(1 << 20) + 2 * 262144).contains(&sent), "{sent} new bytes for 1 MiB changed");
}

#[test]
fn bytes_inserted_or_removed_shift_the_rest_and_it_is_still_found() {
    let old = noise(5, 8 << 20);
    let mut inserted = old.clone();
    inserted.splice(1000..1000, b"a few new bytes".iter().copied());
    let (_, sent) = delta(&old, &inserted, 65536);
    assert!(sent < 2 * 262144, "{sent} new bytes for 15 inserted");
    let mut removed = old.clone();
    removed.drain(3 << 20..(3 << 20) + 4096);
    let (_, sent) = delta(&old, &removed, 65536);
    assert!(sent < 2 * 262144, "{sent} new bytes for 4 KiB removed");
}

#[test]
fn unrelated_bytes_are_all_sent_and_an_empty_base_is_no_help() {
    let old = noise(6, 1 << 20);
    let new = noise(7, 1 << 20);
    assert_eq!(delta(&old, &new, 65536).1, 1 << 20);
    assert_eq!(delta(&[], &new, 65536).1, 1 << 20);
    assert_eq!(delta(&old, &[], 65536).1, 0);
    // A file of zeros cuts at the longest chunk: every one is the same, found once.
    let zeros = vec![0; 4 << 20];
    let mut longer = zeros.clone();
    longer.extend_from_slice(&[0; 100_000]);
    assert!(delta(&zeros, &longer, 4096).1 < 16384);
}

#[test]
fn a_file_that_grew_past_its_size_is_not_sent_as_it() {
    let old = noise(8, 1 << 20);
    let new = noise(9, 2 << 20);
    let base = sign(&old, 65536).unwrap();
    let mut e = Encoder::new(&new[..], (1 << 20) as u64, &base).ok().unwrap();
    let err = loop {
        match e.next_piece() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("sent a file that grew"),
            Err(err) => break err,
        }
    };
    assert!(err.to_string().contains("grew"), "{err}");
}

#[test]
fn a_large_file_is_described_in_larger_chunks() {
    assert_eq!(avg_for(0, DEFAULT_AVG), DEFAULT_AVG);
    assert_eq!(avg_for(1 << 30, DEFAULT_AVG), DEFAULT_AVG);
    assert_eq!(avg_for(4 << 30, DEFAULT_AVG), 262144);
    assert_eq!(avg_for(u64::MAX, DEFAULT_AVG), MAX_AVG);
    assert_eq!(avg_for(100_000, 1024), 1024);
    assert_eq!(avg_for(0, 3000), 4096);
    assert!((1u64 << 40) / u64::from(avg_for(1 << 40, DEFAULT_AVG)) <= 65536 * 4);
}
