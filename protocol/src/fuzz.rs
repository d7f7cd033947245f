//! Entry points for fuzzing (hidden from the docs): each takes arbitrary bytes and must never
//! panic. The in-repo harness (`protocol/tests/fuzz.rs`) drives them with mutated frames; a
//! coverage-guided fuzzer can call them the same way.

use crate::{Decoder, Message, Preamble, encode};

/// Feeds `data` to a decoder in chunks whose sizes come from `data` itself, decoding as it goes.
/// Every message that decodes must encode back to bytes that decode to the same message.
pub fn decode_stream(data: &[u8]) {
    let _ = Preamble::decode(data);
    let mut d = Decoder::new();
    let mut rest = data;
    let mut step = 1usize;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        d.extend(&rest[..n]);
        rest = &rest[n..];
        step = step * 3 % 97 + 1;
        loop {
            match d.decode() {
                Ok(Some(m)) => round_trip(&m),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn round_trip(m: &Message) {
    let bytes = encode(m);
    let mut d = Decoder::new();
    d.extend(&bytes);
    match d.decode() {
        Ok(Some(again)) => assert_eq!(&again, m, "re-encoding changed the message"),
        other => panic!("a decoded message did not decode again after encoding: {other:?}"),
    }
}
