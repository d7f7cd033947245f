//! Secure by default: TLS 1.3 with identities each agent generates and pins.
#![allow(clippy::unwrap_used)]

use mirror_tests::*;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// A TCP proxy on loopback that records every byte passing through, both ways.
struct Recorder {
    port: u16,
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    fn start(to: u16) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let rec = bytes.clone();
        std::thread::spawn(move || {
            // Serves connections until the test ends (the listener dies with the process).
            for inbound in listener.incoming().flatten() {
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", to)) else { continue };
                for (mut from, mut to) in
                    [(inbound.try_clone().unwrap(), outbound.try_clone().unwrap()), (outbound, inbound)]
                {
                    let rec = rec.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 65536];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            rec.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Recorder { port, bytes }
    }

    fn seen(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn paired_agents_sync_over_tls_and_no_content_is_visible_on_the_wire() {
    let area = Area::new();
    let (c, s) = (area.path("client"), area.path("server/p"));
    let secret = b"THE-SECRET-CONTENT-0123456789-abcdefghijklmnopqrstuvwxyz";
    write(&c.join("secret-name.txt"), secret);
    let server = secure_server(&area, &["client"]);
    let proxy = Recorder::start(server.port);
    let client = secure_client(&area, "client", proxy.port, &c, "p");
    let log = client.wait_log("connected to");
    assert!(log.contains(&format!("ID {}", device_id(&area.path("state-server")))), "{log}");
    wait_content(&s.join("secret-name.txt"), secret);
    write(&s.join("back.txt"), b"ANOTHER-SECRET-FROM-THE-SERVER-SIDE-XYZ");
    wait_content(&c.join("back.txt"), b"ANOTHER-SECRET-FROM-THE-SERVER-SIDE-XYZ");
    let wire = proxy.seen();
    assert!(wire.len() > 1000, "the proxy saw only {} bytes", wire.len());
    for needle in [&secret[..], b"ANOTHER-SECRET", b"secret-name", b"MIRRAGNT"] {
        assert!(!contains(&wire, needle), "{:?} visible on the wire", String::from_utf8_lossy(needle));
    }
}

#[test]
fn an_untrusted_client_is_refused_until_trusted_while_the_server_runs() {
    let area = Area::new();
    let c = area.path("client");
    write(&c.join("a.txt"), "a");
    // The client trusts the server, but the server does not know the client yet.
    let server = secure_server(&area, &[]);
    let server_id = device_id(&area.path("state-server"));
    run_agent(&["trust", &server_id, "--state-dir", area.path("state-client").to_str().unwrap()]);
    let client_id = device_id(&area.path("state-client"));
    let client = secure_client(&area, "client", server.port, &c, "p");
    let slog = server.agent.wait_log(&format!("the client presented identity {client_id}, which is not trusted"));
    // Regression (issue 11, item 17): the suggestion omitted the --state-dir in use.
    let flag = format!("--state-dir {}", area.path("state-server").display());
    assert!(slog.contains(&format!("`mirror-agent trust {client_id} {flag}` on this machine")), "{slog}");
    client.wait_log(&format!("the peer refused our identity {client_id} (most likely it does not trust it)"));
    assert!(!area.path("server/p/a.txt").exists(), "an untrusted client got data through");
    // Trusting it on the running server is enough: the client's next attempt gets in.
    run_agent(&["trust", &client_id, "--state-dir", area.path("state-server").to_str().unwrap()]);
    wait_content(&area.path("server/p/a.txt"), b"a");
}

#[test]
fn a_client_refuses_an_unknown_server_and_names_it() {
    let area = Area::new();
    let c = area.path("client");
    write(&c.join("a.txt"), "never leaves");
    let server = secure_server(&area, &[]);
    let server_id = device_id(&area.path("state-server"));
    // The server trusts the client, the client has never heard of the server.
    run_agent(&[
        "trust",
        &device_id(&area.path("state-client")),
        "--state-dir",
        area.path("state-server").to_str().unwrap(),
    ]);
    let client = secure_client(&area, "client", server.port, &c, "p");
    let log = client.wait_log(&format!("the server presented identity {server_id}, which is not trusted here"));
    assert!(log.contains(&format!("mirror-agent trust {server_id}")), "{log}");
    assert!(!area.path("server/p/a.txt").exists());
}

#[test]
fn tls_and_plaintext_sides_tell_what_is_wrong() {
    let area = Area::new();
    let server = secure_server(&area, &["client"]);
    // A plaintext client against a TLS server.
    let state = area.path("state-client");
    let mut plain = spawn_client_to(server.port, "client", &area.path("c"), "p", &state, &["--insecure"]);
    server.agent.wait_log("is the other side started with --insecure");
    // Regression (issue 11, item 17): the client said "bad magic bytes".
    assert_eq!(plain.wait_exit(), Some(1));
    let log = plain.log();
    assert!(log.contains("the peer speaks TLS") && log.contains("drop --insecure"), "{log}");
    assert!(!log.contains("bad magic"), "{log}");
    // A TLS client against a plaintext server.
    let insecure = Server::start(&area.server_root(), &[]);
    let client = secure_client(&area, "client", insecure.port, &area.path("c2"), "p");
    insecure.agent.wait_log("the peer speaks TLS, and this side was started with --insecure");
    drop(client);
}

/// Regression (issue 11, item 17): a re-keyed server was reported like an unknown one.
#[test]
fn a_re_keyed_server_is_reported_as_changed_naming_the_old_identity() {
    let area = Area::new();
    let c = area.path("client");
    let mut server = secure_server(&area, &["client"]);
    let old_id = device_id(&area.path("state-server"));
    let mut client = secure_client(&area, "client", server.port, &c, "p");
    client.wait_log("connected to");
    client.kill();
    server.agent.kill();
    // The server is re-installed: a new identity, the same trusted clients.
    fs::remove_dir_all(area.path("state-server/identity")).unwrap();
    let new_id = device_id(&area.path("state-server"));
    assert_ne!(old_id, new_id);
    let server = spawn_server(&area.server_root(), "127.0.0.1:0", &area.path("state-server"), &[]);
    let client = secure_client(&area, "client", server.port, &c, "p");
    let log = client.wait_log("changed its identity");
    assert!(log.contains(&format!("it presents {new_id}")) && log.contains(&format!("it was {old_id}")), "{log}");
    assert!(log.contains(&format!("mirror-agent trust {new_id}")), "{log}");
}
