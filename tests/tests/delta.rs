//! Deltas end to end: a changed large file crosses as pieces of the version the receiver holds
//! plus what is new (counted on the wire), and a delta that does not rebuild the file falls
//! back to a whole transfer.
#![allow(clippy::unwrap_used)]

use mirror_protocol::{Entry, Kind, Message, RelPath, Timestamp, VersionVector};
use mirror_tests::peer::Peer;
use mirror_tests::*;
use std::time::Duration;

fn noise(seed: u64, n: usize) -> Vec<u8> {
    mirror_protocol::fuzz::Rng(seed).bytes(n)
}

/// Waits until the proxy carried nothing more for a moment; what it carried by then.
fn carried_when_quiet(proxy: &FaultProxy) -> (u64, u64) {
    let mut last = proxy.carried();
    wait_until("the link to go quiet", || {
        std::thread::sleep(Duration::from_millis(300));
        let now = proxy.carried();
        let quiet = now == last;
        last = now;
        quiet.then_some(now)
    })
}

#[test]
fn a_changed_large_file_crosses_as_a_delta_both_ways() {
    let area = Area::new();
    let (c, s) = (area.path("client"), area.path("server/p"));
    let server = Server::start(&area.server_root(), &[]);
    let proxy = FaultProxy::start(server.port);
    let state = area.path("state-client");
    let client = spawn_client_to(proxy.port, "client", &c, "p", &state, &["--insecure"]);
    client.wait_log("connected to");
    let size = 16 << 20;
    let old = noise(1, size);
    write(&c.join("db.bin"), &old);
    wait_content(&s.join("db.bin"), &old);
    let before = carried_when_quiet(&proxy);
    assert!(before.0 >= size as u64, "the first version crossed in {} bytes", before.0);

    // 64 KiB changed in the middle, in place: a database's pages.
    let mut new = old.clone();
    new[8 << 20..(8 << 20) + 65536].copy_from_slice(&noise(2, 65536));
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(c.join("db.bin")).unwrap();
        f.seek(SeekFrom::Start(8 << 20)).unwrap();
        f.write_all(&new[8 << 20..(8 << 20) + 65536]).unwrap();
    }
    wait_content(&s.join("db.bin"), &new);
    let after = carried_when_quiet(&proxy);
    let (up, down) = (after.0 - before.0, after.1 - before.1);
    assert!(up < 1 << 20, "{up} bytes went to the server for 64 KiB changed in 16 MiB");

    // The other way: a line appended on the server.
    let mut longer = new.clone();
    longer.extend_from_slice(b"a line appended on the server\n");
    write(&s.join("db.bin"), &longer);
    wait_content(&c.join("db.bin"), &longer);
    let last = carried_when_quiet(&proxy);
    let (up2, down2) = (last.0 - after.0, last.1 - after.1);
    assert!(down2 < 512 << 10, "{down2} bytes came to the client for one line appended to 16 MiB");
    eprintln!("on the wire: change {up} up / {down} down; append {up2} up / {down2} down");
    wait_same(&c, &s);
}

fn entry(path: &str, bytes: &[u8], n: u64) -> Entry {
    Entry {
        path: RelPath::new(path).unwrap(),
        kind: Kind::File { size: bytes.len() as u64, hash: *blake3::hash(bytes).as_bytes(), mode: 0o644 },
        mtime: Timestamp { secs: 1_700_000_000, nanos: 0 },
        version: VersionVector::new().with(9, n),
        origin: "scripted-9".into(),
    }
}

/// A peer whose delta does not rebuild its file (pieces of the wrong part of the base) is not
/// believed: nothing wrong is installed, the connection stays, and the file is asked for again
/// whole, which then lands.
#[test]
fn a_delta_that_does_not_rebuild_the_file_falls_back_to_a_whole_transfer() {
    let area = Area::new();
    let s = area.path("server/p");
    let server = Server::start(&area.server_root(), &[]);
    let v1 = noise(3, 600_000);
    let mut v2 = v1.clone();
    v2[..4096].copy_from_slice(&noise(4, 4096));
    let mut peer = Peer::connect(server.port, 9, "p");
    peer.asked_since();
    peer.send(&Message::IndexFrom { since: 0 });
    peer.index(vec![entry("f.bin", &v1, 1)], 1);
    let id = peer.requested("f.bin", Duration::from_secs(10));
    peer.serve(id, &v1);
    wait_content(&s.join("f.bin"), &v1);

    peer.send(&Message::Update { entries: vec![entry("f.bin", &v2, 2)], seq: 2 });
    let (id, base) = peer.expect("a request with a base", Duration::from_secs(10), |m| match m {
        Message::Request { id, base: Some(b), .. } => Some((*id, b.clone())),
        _ => None,
    });
    assert_eq!((base.size, base.hash), (v1.len() as u64, *blake3::hash(&v1).as_bytes()));
    // The whole base as the new version: the result is v1, not v2.
    peer.send(&Message::Copy { id, offset: 0, len: 300_000 });
    peer.send(&Message::Copy { id, offset: 300_000, len: 300_000 });
    peer.send(&Message::DataEnd { id, size: v2.len() as u64, hash: *blake3::hash(&v2).as_bytes() });
    let again = peer.expect("the request again", Duration::from_secs(10), |m| match m {
        Message::Request { id, base, .. } => Some((*id, base.is_none())),
        _ => None,
    });
    assert!(again.1, "asked with a base again after its delta failed");
    assert_eq!(std::fs::read(s.join("f.bin")).unwrap(), v1, "a wrong rebuild was installed");
    peer.serve(again.0, &v2);
    wait_content(&s.join("f.bin"), &v2);
    assert!(!peer.closed_within(Duration::from_millis(200)), "the connection was closed");
    server.agent.wait_log("the delta did not rebuild the peer's version");
}
