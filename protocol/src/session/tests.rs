//! Every violation from a table of `(state, message, violation)`, and whole sessions played
//! between a client and a server through real frames.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::{Decoder, Entry, Kind, RelPath, Timestamp, VersionVector, encode};

fn hello(patterns: usize, each: usize) -> Message {
    Message::Hello(Hello {
        replica: 1,
        host: "laptop".into(),
        remote: b"~/p".to_vec(),
        includes: vec![],
        excludes: vec!["x".repeat(each); patterns],
    })
}

fn welcome() -> Message {
    Message::Welcome(Welcome { replica: 2, host: "desktop".into() })
}

fn request(id: u64, size: u64) -> Message {
    Message::Request { id, path: RelPath::new("f.txt").unwrap(), size, hash: [0; 32], base: None }
}

fn data(id: u64, n: usize) -> Message {
    Message::Data { id, bytes: vec![b'x'; n] }
}

fn end(id: u64, size: u64) -> Message {
    Message::DataEnd { id, size, hash: [0; 32] }
}

fn abort(id: u64) -> Message {
    Message::DataAbort { id, reason: "gone".into() }
}

/// A request of `size` bytes naming a base of `base` bytes (one chunk).
fn request_delta(id: u64, size: u64, base: u64) -> Message {
    let chunks = vec![crate::delta::ChunkSig { len: base as u32, hash: [0; 16] }];
    let base = crate::delta::Base { size: base, hash: [0; 32], avg: 65536, chunks };
    Message::Request { id, path: RelPath::new("f.txt").unwrap(), size, hash: [0; 32], base: Some(Box::new(base)) }
}

fn copy(id: u64, offset: u64, len: u64) -> Message {
    Message::Copy { id, offset, len }
}

/// A client session with request 7 (of 10 bytes, from a base of 8) under way, nothing in yet.
fn client_fetching_delta() -> Connection {
    after_sending(client_open(), &[request_delta(7, 10, 8)])
}

fn push(n: usize) -> Message {
    Message::Push { hash: [0; 32], bytes: vec![b'p'; n] }
}

/// A session that took `n` pushes of the largest size.
fn pushed(c: Connection, n: usize) -> Connection {
    fed(c, &vec![push(crate::MAX_PUSH_LEN); n])
}

fn batch(last: bool) -> Message {
    Message::IndexBatch { entries: vec![], last, seq: 1 }
}

fn update() -> Message {
    let entry = Entry {
        path: RelPath::new("f.txt").unwrap(),
        kind: Kind::Deleted,
        mtime: Timestamp::default(),
        version: VersionVector::new().incremented(1),
        origin: "laptop".into(),
    };
    Message::Update { entries: vec![entry], seq: 2 }
}

/// Feeds messages from the peer; panics on a violation (building a state for a row).
fn fed(mut c: Connection, msgs: &[Message]) -> Connection {
    for m in msgs {
        c = c.receive(m.clone()).unwrap_or_else(|v| panic!("{m:?} refused while building a state: {v}")).0;
    }
    c
}

fn after_sending(mut c: Connection, msgs: &[Message]) -> Connection {
    for m in msgs {
        c.sent(m);
    }
    c
}

fn server_answering() -> Connection {
    fed(Connection::new(Side::Server), &[hello(1, 1)])
}

fn server_open() -> Connection {
    after_sending(server_answering(), &[welcome()])
}

fn client_open() -> Connection {
    fed(Connection::new(Side::Client), &[welcome()])
}

/// A client session with request 5 (of 4 bytes) under way, 3 bytes in.
fn client_fetching() -> Connection {
    fed(after_sending(client_open(), &[request(5, 4)]), &[data(5, 3)])
}

/// A server that owes answers to `n` requests of the peer.
fn server_owing(n: u64) -> Connection {
    let reqs: Vec<Message> = (0..n).map(|id| request(id, 1)).collect();
    fed(server_open(), &reqs)
}

#[test]
fn every_violation_from_its_state() {
    let limit = MAX_REQUESTS_IN_FLIGHT as u64;
    let rows: Vec<(&str, Connection, Message, Violation)> = vec![
        // The handshake.
        (
            "a session message before Hello",
            Connection::new(Side::Server),
            Message::IndexFrom { since: 0 },
            Violation::Unexpected { message: "IndexFrom", expected: "Hello" },
        ),
        (
            "data before Hello",
            Connection::new(Side::Server),
            data(1, 1),
            Violation::Unexpected { message: "Data", expected: "Hello" },
        ),
        (
            "a session message before Welcome",
            Connection::new(Side::Client),
            batch(true),
            Violation::Unexpected { message: "IndexBatch", expected: "Welcome" },
        ),
        (
            "a client that does not wait for Welcome",
            server_answering(),
            Message::IndexFrom { since: 0 },
            Violation::Unexpected { message: "IndexFrom", expected: "nothing before our Welcome" },
        ),
        ("a second Hello before our answer", server_answering(), hello(0, 0), Violation::SecondHello),
        ("a second Hello in the session", server_open(), hello(0, 0), Violation::SecondHello),
        ("Hello from a server", Connection::new(Side::Client), hello(0, 0), Violation::HelloFromServer),
        ("Hello from a server, in the session", client_open(), hello(0, 0), Violation::HelloFromServer),
        ("Welcome from a client", Connection::new(Side::Server), welcome(), Violation::WelcomeFromClient),
        ("Welcome from a client after Hello", server_answering(), welcome(), Violation::WelcomeFromClient),
        ("Welcome from a client, in the session", server_open(), welcome(), Violation::WelcomeFromClient),
        ("a second Welcome", client_open(), welcome(), Violation::SecondWelcome),
        (
            "too many patterns",
            Connection::new(Side::Server),
            hello(crate::MAX_PATTERNS + 1, 1),
            Violation::TooManyPatterns { count: crate::MAX_PATTERNS + 1, bytes: crate::MAX_PATTERNS + 1 },
        ),
        (
            "patterns too long in all",
            Connection::new(Side::Server),
            hello(2, crate::MAX_PATTERN_BYTES / 2 + 1),
            Violation::TooManyPatterns { count: 2, bytes: crate::MAX_PATTERN_BYTES + 2 },
        ),
        // The index, each way.
        (
            "IndexFrom twice",
            fed(server_open(), &[Message::IndexFrom { since: 0 }]),
            Message::IndexFrom { since: 3 },
            Violation::IndexFromTwice,
        ),
        ("a batch after the last one", fed(client_open(), &[batch(true)]), batch(false), Violation::IndexTwice),
        ("a second last batch", fed(client_open(), &[batch(false), batch(true)]), batch(true), Violation::IndexTwice),
        // The peer's requests.
        ("a request id reused while answered", server_owing(1), request(0, 1), Violation::DuplicateRequest { id: 0 }),
        ("requests beyond the limit", server_owing(limit), request(limit, 1), Violation::TooManyRequests),
        // Our requests, and the answers.
        ("data never requested", client_open(), data(9, 1), Violation::DataForUnknownRequest { id: 9 }),
        ("data for another id", client_fetching(), data(6, 1), Violation::DataForUnknownRequest { id: 6 }),
        (
            "data after the end",
            fed(client_fetching(), &[data(5, 1), end(5, 4)]),
            data(5, 1),
            Violation::DataForUnknownRequest { id: 5 },
        ),
        (
            "data after an abort",
            fed(client_fetching(), &[abort(5)]),
            data(5, 1),
            Violation::DataForUnknownRequest { id: 5 },
        ),
        ("more bytes than requested", client_fetching(), data(5, 2), Violation::MoreThanRequested { id: 5, size: 4 }),
        (
            "bytes for an empty file",
            after_sending(client_open(), &[request(1, 0)]),
            data(1, 1),
            Violation::MoreThanRequested { id: 1, size: 0 },
        ),
        ("an end never requested", client_open(), end(3, 0), Violation::EndOfUnknownRequest { id: 3 }),
        (
            "an end twice",
            fed(client_fetching(), &[data(5, 1), end(5, 4)]),
            end(5, 4),
            Violation::EndOfUnknownRequest { id: 5 },
        ),
        (
            "an end claiming fewer bytes",
            client_fetching(),
            end(5, 2),
            Violation::SizeMismatch { id: 5, claimed: 2, sent: 3 },
        ),
        (
            "an end claiming more bytes",
            client_fetching(),
            end(5, 4),
            Violation::SizeMismatch { id: 5, claimed: 4, sent: 3 },
        ),
        // Deltas.
        (
            "a base whose chunks are not its size",
            server_open(),
            {
                let mut r = request_delta(3, 10, 1);
                if let Message::Request { base: Some(b), .. } = &mut r {
                    b.chunks.clear();
                    b.size = 5;
                }
                r
            },
            Violation::BadBase { id: 3, why: crate::delta::BadBase::Size { size: 5, sum: 0 } },
        ),
        ("a copy for a request with no base", client_fetching(), copy(5, 0, 1), Violation::CopyWithoutBase { id: 5 }),
        ("a copy never requested", client_open(), copy(9, 0, 1), Violation::DataForUnknownRequest { id: 9 }),
        (
            "an empty copy",
            client_fetching_delta(),
            copy(7, 0, 0),
            Violation::CopyOutOfRange { id: 7, offset: 0, len: 0 },
        ),
        (
            "a copy past the end of the base",
            client_fetching_delta(),
            copy(7, 5, 4),
            Violation::CopyOutOfRange { id: 7, offset: 5, len: 4 },
        ),
        (
            "a copy whose end overflows",
            client_fetching_delta(),
            copy(7, u64::MAX, 2),
            Violation::CopyOutOfRange { id: 7, offset: u64::MAX, len: 2 },
        ),
        (
            "copies beyond the size requested",
            fed(client_fetching_delta(), &[copy(7, 0, 8)]),
            copy(7, 0, 3),
            Violation::MoreThanRequested { id: 7, size: 10 },
        ),
        (
            "data and copies beyond the size requested",
            fed(client_fetching_delta(), &[copy(7, 0, 8), data(7, 2)]),
            data(7, 1),
            Violation::MoreThanRequested { id: 7, size: 10 },
        ),
        // What the peer pushes ahead of its entries.
        (
            "a push larger than a pushed file may be",
            client_open(),
            push(crate::MAX_PUSH_LEN + 1),
            Violation::PushTooLarge { len: crate::MAX_PUSH_LEN + 1 },
        ),
        (
            "more pushed than is held before an update",
            pushed(client_open(), crate::MAX_PUSHED / crate::MAX_PUSH_LEN),
            push(1),
            Violation::TooMuchPushed,
        ),
        (
            "an update frees room for pushes, only until the next ones",
            pushed(fed(pushed(server_open(), 3), &[update()]), crate::MAX_PUSHED / crate::MAX_PUSH_LEN),
            push(1),
            Violation::TooMuchPushed,
        ),
    ];
    for (what, state, msg, want) in rows {
        let name = msg.name();
        match state.clone().receive(msg) {
            Err(got) => assert_eq!(got, want, "{what}: {name} in {state:?}"),
            Ok((next, event)) => panic!("{what}: {name} was accepted in {state:?}: {event:?}, now {next:?}"),
        }
    }
}

#[test]
fn a_request_answered_frees_its_slot_and_its_id() {
    let limit = MAX_REQUESTS_IN_FLIGHT as u64;
    let full = server_owing(limit);
    let freed = after_sending(full.clone(), &[end(0, 1), abort(1)]);
    let again = fed(freed, &[request(0, 1), request(limit, 1)]);
    assert!(matches!(again.receive(request(limit + 1, 1)), Err(Violation::TooManyRequests)));
    // Data we send does not answer a request.
    let still = after_sending(full, &[data(0, 1)]);
    assert_eq!(still.receive(request(limit, 1)).unwrap_err(), Violation::TooManyRequests);
}

#[test]
fn what_is_allowed_around_the_handshake() {
    // Heartbeats in every state; a Goodbye before the handshake is a refusal.
    for state in [Connection::new(Side::Client), Connection::new(Side::Server), server_answering(), client_open()] {
        assert_eq!(state.clone().receive(Message::Ping).unwrap(), (state.clone(), Event::Ping));
        assert_eq!(state.clone().receive(Message::Pong).unwrap(), (state, Event::Nothing));
    }
    for state in [Connection::new(Side::Client), Connection::new(Side::Server), server_answering()] {
        let (next, event) = state.receive(Message::Goodbye { reason: "no".into() }).unwrap();
        assert_eq!((next, event), (Connection::Closed, Event::Refused { reason: "no".into() }));
    }
    // A server that refuses the Hello is closed; one that welcomes it is open.
    assert_eq!(after_sending(server_answering(), &[Message::Goodbye { reason: "no".into() }]), Connection::Closed);
    assert!(server_open().is_open());
    // Updates may come before the index is complete; a DataAbort that answers nothing is ignored.
    let (c, _) = client_open().receive(update()).unwrap();
    let (c, _) = c.receive(abort(77)).unwrap();
    assert!(c.receive(batch(true)).is_ok());
    // After a Goodbye, nothing more is taken from the peer (and nothing is a violation).
    let (c, event) = client_open().receive(Message::Goodbye { reason: "bye".into() }).unwrap();
    assert_eq!(event, Event::Session(Message::Goodbye { reason: "bye".into() }));
    assert_eq!(c.receive(welcome()).unwrap(), (Connection::Closed, Event::Nothing));
}

#[test]
fn pushes_are_taken_up_to_the_limit_and_an_entry_message_makes_room() {
    let full = crate::MAX_PUSHED / crate::MAX_PUSH_LEN;
    let c = pushed(client_open(), full);
    let c = fed(c, &[batch(false)]);
    let c = pushed(c, full);
    let c = fed(c, &[batch(true)]);
    let c = pushed(c, full);
    let c = fed(c, &[update(), push(0)]);
    assert!(pushed(c, full - 1).receive(push(crate::MAX_PUSH_LEN)).is_ok());
}

#[test]
fn copies_and_data_make_up_a_delta_answer() {
    let c = fed(client_fetching_delta(), &[copy(7, 0, 4), data(7, 2), copy(7, 4, 4)]);
    let (c, _) = c.receive(end(7, 10)).unwrap();
    // The request is over: a copy for it now is unknown.
    assert_eq!(c.receive(copy(7, 0, 1)).unwrap_err(), Violation::DataForUnknownRequest { id: 7 });
    // A well-formed base is taken by a server.
    assert!(server_open().receive(request_delta(1, 10, 8)).is_ok());
}

#[test]
fn violations_say_what_was_wrong() {
    let texts = [
        (Violation::TooManyRequests, "more than 256 requests in flight"),
        (Violation::MoreThanRequested { id: 1, size: 4 }, "peer sent more than the 4 bytes of request 1"),
        (Violation::SizeMismatch { id: 1, claimed: 3, sent: 4 }, "peer claimed 3 bytes for request 1 but sent 4"),
        (Violation::Unexpected { message: "Update", expected: "Hello" }, "unexpected Update during the handshake"),
        (Violation::TooManyPatterns { count: 1001, bytes: 5 }, "too many include/exclude patterns (1001 patterns"),
        (Violation::PushTooLarge { len: 262145 }, "pushed a file of 262145 bytes (at most 262144"),
        (Violation::TooMuchPushed, "pushed more than 4194304 bytes ahead of the entries"),
    ];
    for (v, text) in texts {
        assert!(v.to_string().contains(text), "{v:?}: {v}");
    }
}

/// Carries messages between the two sides through real frames, checking both state machines.
struct Wire {
    client: Connection,
    server: Connection,
}

impl Wire {
    /// `from_client` sends `msg`; the other side decodes and receives it.
    fn send(&mut self, from_client: bool, msg: Message) -> Event {
        let (sender, receiver) =
            if from_client { (&mut self.client, &mut self.server) } else { (&mut self.server, &mut self.client) };
        sender.sent(&msg);
        let mut d = Decoder::new();
        d.extend(&encode(&msg));
        let decoded = d.decode().unwrap().unwrap();
        let (next, event) = std::mem::replace(receiver, Connection::Closed).receive(decoded).unwrap();
        *receiver = next;
        event
    }
}

#[test]
fn a_whole_session_both_ways() {
    const CLIENT: bool = true;
    const SERVER: bool = false;
    let mut w = Wire { client: Connection::new(Side::Client), server: Connection::new(Side::Server) };
    assert!(matches!(w.send(CLIENT, hello(2, 3)), Event::Hello(_)));
    assert_eq!(w.server, Connection::ExpectAnswer);
    assert_eq!(w.send(SERVER, Message::Ping), Event::Ping);
    assert!(matches!(w.send(SERVER, welcome()), Event::Welcome(_)));
    assert!(w.client.is_open() && w.server.is_open());

    // Each side asks for the other's index, and answers.
    for side in [CLIENT, SERVER] {
        assert!(matches!(w.send(side, Message::IndexFrom { since: 0 }), Event::Session(_)));
    }
    w.send(SERVER, batch(false));
    w.send(SERVER, batch(true));
    w.send(CLIENT, batch(true));
    w.send(CLIENT, update());
    w.send(SERVER, update());

    // Transfers both ways, pipelined, with an abort; ids are per requester.
    for side in [CLIENT, SERVER] {
        w.send(side, request(1, 5));
        w.send(side, request(2, 0));
        w.send(side, request(3, 9));
        w.send(!side, data(1, 2));
        w.send(!side, data(1, 3));
        w.send(!side, end(1, 5));
        w.send(!side, end(2, 0));
        w.send(!side, data(3, 4));
        w.send(!side, abort(3));
        // The same ids again, now that they are answered.
        w.send(side, request(1, 1));
        w.send(!side, data(1, 1));
        w.send(!side, end(1, 1));
    }
    for c in [&w.client, &w.server] {
        let Connection::Open(s) = c else { panic!("closed: {c:?}") };
        assert!(s.inbound().fetches.is_empty() && s.outbound().owed.is_empty(), "{s:?}");
        assert_eq!((s.inbound().index, s.outbound().index), (InboundIndex::ExpectUpdate, OutboundIndex::Asked));
    }
    assert_eq!(w.send(CLIENT, Message::Pong), Event::Nothing);
    assert!(matches!(w.send(CLIENT, Message::Goodbye { reason: "done".into() }), Event::Session(_)));
    assert_eq!((&w.client, &w.server), (&Connection::Closed, &Connection::Closed));
}

#[test]
fn a_refused_hello_both_ways() {
    let mut w = Wire { client: Connection::new(Side::Client), server: Connection::new(Side::Server) };
    w.send(true, hello(0, 0));
    let event = w.send(false, Message::Goodbye { reason: "the remote path is empty".into() });
    assert_eq!(event, Event::Refused { reason: "the remote path is empty".into() });
    assert_eq!((&w.client, &w.server), (&Connection::Closed, &Connection::Closed));
}
