//! Benchmarks of mirror-agent against real processes on loopback. Figures go to
//! `BENCHMARKS.md` with the command that produced them; nothing here is a pass/fail test of
//! speed (the smoke test only checks that each benchmark runs and converges).
#![allow(clippy::unwrap_used)] // a benchmark that cannot set up its files has nothing to report

use mirror_tests::{Agent, Area, FaultProxy, Server, secure_client, secure_server, wait_same, write};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Percentiles of a set of durations.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub n: usize,
}

pub fn summarize(mut v: Vec<Duration>) -> Summary {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Summary { p50: at(0.5), p99: at(0.99), max: at(1.0), n: v.len() }
}

/// Waits, polling tightly, until `path` holds `content`; returns when it did.
fn arrival(path: &Path, content: &[u8], deadline: Duration) -> Option<Instant> {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if fs::read(path).is_ok_and(|b| b == content) {
            return Some(Instant::now());
        }
        // Short, but long enough not to starve the agents of CPU on a small machine.
        std::thread::sleep(Duration::from_micros(100));
    }
    None
}

/// Save-to-visible latency of small files, client to server and server to client.
pub fn latency(samples: usize) -> (Summary, Summary) {
    let area = Area::new();
    let (c, s) = (area.path("client"), area.path("server/lat"));
    let server = Server::start(&area.server_root(), &["-q"]);
    let _client = server.client("client", &c, "lat", &[]);
    fs::create_dir_all(s.join("warm")).unwrap();
    new_files_both_ways(&c, &s, samples, Duration::from_millis(5))
}

/// Save-to-visible of `samples` new 1 KiB files each way between `c` and `s`, `pause` after each.
fn new_files_both_ways(c: &Path, s: &Path, samples: usize, pause: Duration) -> (Summary, Summary) {
    let mut up = Vec::new();
    let mut down = Vec::new();
    for i in 0..samples {
        for (from, to, out, dir) in [(c, s, &mut up, "up"), (s, c, &mut down, "down")] {
            // A new name and content each time, so nothing already there can pass for arrival.
            let content = format!("{dir} sample {i} {}", "x".repeat(1000));
            let name = format!("{dir}-{i}.txt");
            let t0 = Instant::now();
            fs::write(from.join(&name), &content).unwrap();
            let t1 = arrival(&to.join(&name), content.as_bytes(), Duration::from_secs(30)).expect("file never arrived");
            out.push(t1 - t0);
            std::thread::sleep(pause);
        }
    }
    (summarize(up), summarize(down))
}

/// Makes a source-code-like tree: `files` files of 1 to 8 KiB in directories of 100.
pub fn make_tree(root: &Path, files: usize) {
    for i in 0..files {
        let size = 1024 + (i * 7919) % (7 * 1024);
        let body: Vec<u8> = (0..size).map(|j| b"abcdefghijklmnopqrstuvwxyz\n"[(i + j) % 27]).collect();
        write(&root.join(format!("pkg{:03}/mod{:02}/file{i}.rs", i / 100, (i / 10) % 10)), body);
    }
}

/// Initial sync of a fresh tree to an empty server directory, and `rsync -a` of the same tree.
pub fn initial_sync(files: usize) -> (Duration, Option<Duration>) {
    let area = Area::new();
    let src = area.path("client");
    make_tree(&src, files);
    let rsync = Command::new("rsync").arg("--version").output().is_ok().then(|| {
        let t = Instant::now();
        let st = Command::new("rsync")
            .arg("-a")
            .arg(format!("{}/", src.display()))
            .arg(area.path("rsync-copy"))
            .status()
            .unwrap();
        assert!(st.success());
        t.elapsed()
    });
    let server = Server::start(&area.server_root(), &["-q"]);
    let t = Instant::now();
    let _client = server.client("client", &src, "tree", &["-q"]);
    let dst = area.path("server/tree");
    let want = files;
    loop {
        let n = count_files(&dst);
        if n >= want {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(600), "initial sync stalled at {n}/{want}");
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = t.elapsed();
    wait_same(&src, &dst);
    (took, rsync)
}

fn count_files(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.file_type() {
                // The agent's own directory (temp files of transfers under way) is not content.
                Ok(t) if t.is_dir() && e.path() == root.join(".mirror-agent.tmp") => {}
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// Time to move one file of `mib` MiB from a client to the server, from the moment it is fully
/// written until it is complete on the server: over plaintext TCP, then over TLS.
pub fn throughput(mib: usize) -> (Duration, Duration) {
    let content: Vec<u8> = (0..mib * 1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let mut out = [Duration::ZERO; 2];
    for (slot, secure) in [(0, false), (1, true)] {
        let area = Area::new();
        let c = area.path("client");
        fs::create_dir_all(&c).unwrap();
        let (server, client) = if secure {
            let server = secure_server(&area, &["client"]);
            let client = secure_client(&area, "client", server.port, &c, "big");
            (server, client)
        } else {
            let server = Server::start(&area.server_root(), &["-q"]);
            let client = server.client("client", &c, "big", &["-q"]);
            (server, client)
        };
        client.wait_log("connected to");
        let tmp = area.path("staging.bin");
        fs::write(&tmp, &content).unwrap();
        let t = Instant::now();
        // A rename makes the whole file appear at once, so the clock measures the transfer.
        fs::rename(&tmp, c.join("file.bin")).unwrap();
        let dst = area.path("server/big/file.bin");
        loop {
            if fs::metadata(&dst).is_ok_and(|m| m.len() == content.len() as u64) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(600), "transfer stalled");
            std::thread::sleep(Duration::from_millis(1));
        }
        out[slot] = t.elapsed();
        assert_eq!(fs::read(&dst).unwrap(), content);
        drop((client, server));
    }
    (out[0], out[1])
}

/// Time from a client's start until it watches a tree of `files` files it synced before, when it
/// catches up from its watcher's event history (one path changed while it was stopped) and when
/// it walks the whole tree (the history was reset). Linux has no event history: the poll
/// backend's test hook plays one (the hidden `--test-history`), as FSEvents keeps one on macOS.
pub fn startup(files: usize) -> (Duration, Duration) {
    let area = Area::new();
    let src = area.path("client");
    make_tree(&src, files);
    let history = area.path("history");
    write(&history, "uuid A\n1 pkg000/mod00/file0.rs\n");
    let server = Server::start(&area.server_root(), &["-q"]);
    let state = area.path("state-client");
    let start = || {
        let port = server.port.to_string();
        let args = [
            "client",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-l",
            src.to_str().unwrap_or_default(),
            "-r",
            "tree",
            "--state-dir",
            state.to_str().unwrap_or_default(),
            "--insecure",
            "--watcher",
            "poll",
            "--poll-interval-ms",
            "60000",
            "--test-history",
            history.to_str().unwrap_or_default(),
        ];
        let t = Instant::now();
        let agent = Agent::spawn_cmd("client", Command::new(mirror_tests::bin()).args(args));
        agent.wait_log("watching ");
        (agent, t.elapsed())
    };
    let (mut first, _) = start();
    wait_same(&src, &area.path("server/tree"));
    first.terminate();
    write(&src.join("pkg000/mod00/file0.rs"), "changed while stopped");
    write(&history, "uuid A\n1 pkg000/mod00/file0.rs\n2 pkg000/mod00/file0.rs\n");
    let (mut replay, replayed) = start();
    assert!(replay.log().contains("caught up from its event history"), "{}", replay.log());
    replay.terminate();
    write(&history, "uuid B\n3 pkg000/mod00/file0.rs\n");
    let (mut scan, scanned) = start();
    assert!(scan.log().contains("scanned in"), "{}", scan.log());
    wait_same(&src, &area.path("server/tree"));
    scan.terminate();
    (scanned, replayed)
}

/// Resident memory of a server and a client once they synced a tree of `files` small files
/// (the client's tree, sent to an empty server directory).
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub server: u64,
    pub client: u64,
    pub server_peak: u64,
    pub client_peak: u64,
    pub took: Duration,
}

/// Makes `files` files of 20 to 100 bytes, 100 to a directory, 100 directories to a parent: the
/// shape of a large source tree without its bytes.
pub fn make_small_tree(root: &Path, files: usize) {
    for i in 0..files {
        let body = format!("{i} {}\n", "x".repeat(i % 80));
        write(&root.join(format!("a{:03}/b{:03}/file{i}.txt", i / 10_000, (i / 100) % 100)), body);
    }
}

/// Syncs a tree of `files` small files from a fresh client to an empty server directory, and
/// reads both processes' memory once every file is there and the two are idle.
pub fn memory(files: usize) -> Memory {
    let area = Area::new();
    let src = area.path("client");
    make_small_tree(&src, files);
    let server = Server::start(&area.server_root(), &["-q"]);
    let t = Instant::now();
    let client = server.client("client", &src, "tree", &["-q"]);
    let dst = area.path("server/tree");
    loop {
        let walk = Instant::now();
        let n = count_files(&dst);
        if n >= files {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(3600), "sync stalled at {n}/{files}");
        // A walk of a large tree is work too: at most a fifth of one core goes to watching.
        std::thread::sleep(Duration::from_millis(20).max(walk.elapsed() * 4));
    }
    let took = t.elapsed();
    wait_same(&src, &dst);
    // What a settled pair holds: the last batches journaled, buffers returned.
    std::thread::sleep(Duration::from_secs(2));
    Memory {
        server: server.agent.rss(),
        client: client.rss(),
        server_peak: server.agent.peak_rss(),
        client_peak: client.peak_rss(),
        took,
    }
}

/// What [`hub`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Hub {
    /// The server's resident memory once every sample went round.
    pub server: u64,
    /// The clients' resident memory, on average.
    pub client: u64,
    /// From a save on the first client until every other client has the file.
    pub all: Summary,
    /// ...until the first of them has it.
    pub first: Summary,
    /// From the clients' start until every one of them had the whole tree.
    pub setup: Duration,
}

/// Polls every path of `paths` until each holds `content` (about once a millisecond: 99 files
/// polled tightly would take the CPU the agents need); each one's arrival.
fn arrivals(paths: &[std::path::PathBuf], content: &[u8], deadline: Duration) -> Vec<Instant> {
    let end = Instant::now() + deadline;
    let mut when: Vec<Option<Instant>> = vec![None; paths.len()];
    while when.iter().any(Option::is_none) {
        assert!(
            Instant::now() < end,
            "{} of {} clients never got the file",
            when.iter().filter(|w| w.is_none()).count(),
            paths.len()
        );
        for (p, w) in paths.iter().zip(when.iter_mut()).filter(|(_, w)| w.is_none()) {
            if fs::read(p).is_ok_and(|b| b == content) {
                *w = Some(Instant::now());
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    when.into_iter().flatten().collect()
}

/// A hub of `clients` clients of one tree of `files` files (1-8 KiB), all on loopback: the
/// server has the tree and every client starts empty and takes it whole (a client's own copy
/// of the same files would have versions of its own, which the hub then merges and sends to
/// every other client: a storm of updates that is not the hub at rest). Then `samples` times
/// a new file is saved on the first client and timed until the others all have it.
pub fn hub(clients: usize, files: usize, samples: usize) -> Hub {
    let area = Area::new();
    make_tree(&area.path("server/hub"), files);
    let locals: Vec<_> = (0..clients).map(|i| area.path(&format!("c{i}/tree"))).collect();
    let server = Server::start(&area.server_root(), &["-q"]);
    let t = Instant::now();
    let agents: Vec<Agent> =
        locals.iter().enumerate().map(|(i, l)| server.spawn_client(&format!("c{i}"), l, "hub", &["-q"])).collect();
    let mut behind: Vec<&std::path::PathBuf> = locals.iter().collect();
    while !behind.is_empty() {
        assert!(t.elapsed() < Duration::from_secs(3600), "{} clients still short of the tree", behind.len());
        std::thread::sleep(Duration::from_millis(500));
        behind.retain(|l| count_files(l) < files);
    }
    let setup = t.elapsed();
    let (mut all, mut first) = (Vec::new(), Vec::new());
    for s in 0..samples {
        let content = format!("sample {s} {}", "y".repeat(1000));
        let name = format!("fan-{s}.txt");
        let others: Vec<_> = locals[1..].iter().map(|l| l.join(&name)).collect();
        let t0 = Instant::now();
        fs::write(locals[0].join(&name), &content).unwrap();
        let got = arrivals(&others, content.as_bytes(), Duration::from_secs(60));
        all.push(got.iter().max().map_or(Duration::ZERO, |t| *t - t0));
        first.push(got.iter().min().map_or(Duration::ZERO, |t| *t - t0));
        std::thread::sleep(Duration::from_millis(20));
    }
    let client = agents.iter().map(Agent::rss).sum::<u64>() / agents.len().max(1) as u64;
    Hub { server: server.agent.rss(), client, all: summarize(all), first: summarize(first), setup }
}

/// A server and a client connected, syncing `client` with the server's `side`: the two roots,
/// the server, the client.
fn one_pair(area: &Area) -> (std::path::PathBuf, std::path::PathBuf, Server, Agent) {
    let (c, s) = (area.path("client"), area.path("server/side"));
    fs::create_dir_all(&c).unwrap();
    let server = Server::start(&area.server_root(), &["-q"]);
    let client = server.client("client", &c, "side", &["-q"]);
    client.wait_log("connected to");
    (c, s, server, client)
}

/// One file edited again and again: a line appended, written and closed, `samples` times, each
/// once the previous edit has arrived on the server; save-to-visible of each.
pub fn edited_again(samples: usize) -> Summary {
    let area = Area::new();
    let (c, s, server, client) = one_pair(&area);
    let mut content = Vec::new();
    let mut took = Vec::new();
    for i in 0..samples {
        content.extend_from_slice(format!("line {i} of a file edited again and again\n").as_bytes());
        let t0 = Instant::now();
        fs::write(c.join("notes.txt"), &content).unwrap();
        let t1 = arrival(&s.join("notes.txt"), &content, Duration::from_secs(60)).expect("edit never arrived");
        took.push(t1 - t0);
    }
    drop((client, server));
    summarize(took)
}

/// Save-to-visible of a 1 KiB file saved on the client just after a file of `mib` MiB appeared
/// on the server, `samples` times: the server hashes the large one meanwhile, and the small one
/// waits for that hash if the server's pair hashes on its engine's thread.
pub fn beside_a_large_file(mib: usize, samples: usize) -> Summary {
    let area = Area::new();
    let (c, s, server, client) = one_pair(&area);
    let mut big: Vec<u8> = (0..mib * 1024 * 1024).map(|i| (i * 13 % 253) as u8).collect();
    let mut took = Vec::new();
    for i in 0..samples {
        big[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let staged = area.path("staging.bin");
        fs::write(&staged, &big).unwrap();
        let name = format!("big{i}.bin");
        // Appears at once: the server reads it whole right away.
        fs::rename(&staged, s.join(&name)).unwrap();
        let content = format!("beside sample {i} {}", "y".repeat(1000));
        let small = format!("small-{i}.txt");
        let t0 = Instant::now();
        fs::write(c.join(&small), &content).unwrap();
        let t1 = arrival(&s.join(&small), content.as_bytes(), Duration::from_secs(60)).expect("file never arrived");
        took.push(t1 - t0);
        // The large one reaches the client, then goes, before the next sample.
        let t = Instant::now();
        while !fs::metadata(c.join(&name)).is_ok_and(|m| m.len() == big.len() as u64) {
            assert!(t.elapsed() < Duration::from_secs(300), "the large file never reached the client");
            std::thread::sleep(Duration::from_millis(5));
        }
        fs::remove_file(s.join(&name)).unwrap();
        while c.join(&name).exists() {
            assert!(t.elapsed() < Duration::from_secs(300), "the large file was never removed on the client");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    drop((client, server));
    summarize(took)
}

/// A shaped link of issue 13: `rtt_ms` of round trip (half each way) and `mbit` Mbit/s each way,
/// built from [`FaultProxy`] on loopback (the kernel here has no `netem`).
fn shaped(to: u16, rtt_ms: u64, mbit: f64) -> FaultProxy {
    let p = FaultProxy::start(to);
    p.set_delay(rtt_ms / 2);
    p.set_rate((mbit * 1e6 / 8.0) as u64);
    p
}

/// The link as a plain tool would measure it: the median round trip of one byte through it to
/// an echo server (ping), and the rate of 4 MiB sent one way (iperf).
pub fn calibrate(rtt_ms: u64, mbit: f64) -> (Duration, f64) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 65536];
        // Pings: echoed one byte at a time; then a bulk of 4 MiB, answered once all arrived.
        for _ in 0..20 {
            s.read_exact(&mut buf[..1]).unwrap();
            s.write_all(&buf[..1]).unwrap();
        }
        let mut left = 4 << 20;
        while left > 0 {
            let n = s.read(&mut buf[..left.min(65536)]).unwrap();
            assert!(n > 0, "the bulk was cut");
            left -= n;
        }
        s.write_all(b"!").unwrap();
    });
    let link = shaped(port, rtt_ms, mbit);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", link.port)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut rtts = Vec::new();
    let mut one = [0u8; 1];
    for _ in 0..20 {
        let t = Instant::now();
        s.write_all(b"p").unwrap();
        s.read_exact(&mut one).unwrap();
        rtts.push(t.elapsed());
    }
    let rtt = summarize(rtts).p50;
    let t = Instant::now();
    s.write_all(&vec![7u8; 4 << 20]).unwrap();
    s.read_exact(&mut one).unwrap();
    // The last byte's trip there and the answer's back are latency, not rate.
    let took = t.elapsed().saturating_sub(rtt);
    echo.join().unwrap();
    (rtt, (4 << 20) as f64 * 8.0 / 1e6 / took.as_secs_f64())
}

/// What one kind of change cost over a shaped link.
#[derive(Debug, Clone, Copy)]
pub struct OverLink {
    pub up: Summary,
    pub down: Summary,
    /// Bytes on the wire (both ways, TLS included) per change, the mean over the samples.
    pub wire_per_change: u64,
}

/// Save-to-visible of a new 1 KiB file over a link of `rtt_ms` and `mbit`, both directions,
/// TLS on (the default); bytes on the wire per file.
pub fn new_file_over_link(rtt_ms: u64, mbit: f64, samples: usize) -> OverLink {
    let area = Area::new();
    let (c, s) = (area.path("client"), area.path("server/lat"));
    fs::create_dir_all(&c).unwrap();
    let server = secure_server(&area, &["client"]);
    let link = shaped(server.port, rtt_ms, mbit);
    let client = secure_client(&area, "client", link.port, &c, "lat");
    client.wait_log("connected to");
    fs::create_dir_all(s.join("warm")).unwrap();
    wait_same(&c, &s);
    let before = link.carried();
    // After each file, what the other side sends back (its counter, any echo) settles first.
    let (up, down) = new_files_both_ways(&c, &s, samples, Duration::from_millis(rtt_ms * 2 + 20));
    let after = link.carried();
    let wire = (after.0 - before.0) + (after.1 - before.1);
    drop((client, server, link));
    OverLink { up, down, wire_per_change: wire / (2 * samples as u64) }
}

/// One change measured over a shaped link: ours (TLS, both ways counted) and `rsync -az`'s over
/// the same link (its daemon behind the same proxy).
#[derive(Debug, Clone)]
pub struct ChangeCost {
    pub what: String,
    pub size: u64,
    pub ours: (Duration, u64),
    pub rsync: Option<(Duration, u64)>,
}

/// Bytes that neither repeat nor compress.
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Lines of a log: a counter, a level, words from a small vocabulary (compressible as logs are).
fn log_lines(bytes: usize) -> Vec<u8> {
    let words = ["request", "served", "in", "ms", "user", "cache", "miss", "hit", "GET", "/api/v1/items", "200", "ok"];
    let mut out = Vec::with_capacity(bytes + 100);
    let mut i = 0u64;
    while out.len() < bytes {
        i += 1;
        let w = |k: u64| words[(i.wrapping_mul(k) % words.len() as u64) as usize];
        out.extend_from_slice(format!("{i:>10} INFO {} {} {} {}\n", w(7), w(13), w(31), i % 997).as_bytes());
    }
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
        *t = c;
    }
    !bytes.iter().fold(!0u32, |c, &b| table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

/// A jar as a reproducible build writes it: entries stored in order, every timestamp fixed
/// (1980-01-01), a central directory at the end.
fn stored_zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    let le16 = |v: &mut Vec<u8>, x: u16| v.extend_from_slice(&x.to_le_bytes());
    let le32 = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&x.to_le_bytes());
    for (name, data) in entries {
        let (offset, crc, len) = (out.len() as u32, crc32(data), data.len() as u32);
        le32(&mut out, 0x0403_4b50);
        for x in [20, 0, 0, 0, 0x21] {
            le16(&mut out, x);
        }
        for x in [crc, len, len] {
            le32(&mut out, x);
        }
        le16(&mut out, name.len() as u16);
        le16(&mut out, 0);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        le32(&mut central, 0x0201_4b50);
        for x in [20, 20, 0, 0, 0, 0x21] {
            le16(&mut central, x);
        }
        for x in [crc, len, len] {
            le32(&mut central, x);
        }
        for x in [name.len() as u16, 0, 0, 0, 0] {
            le16(&mut central, x);
        }
        le32(&mut central, 0);
        le32(&mut central, offset);
        central.extend_from_slice(name.as_bytes());
    }
    let (cd_offset, cd_len, n) = (out.len() as u32, central.len() as u32, entries.len() as u16);
    out.extend_from_slice(&central);
    le32(&mut out, 0x0605_4b50);
    for x in [0, 0, n, n] {
        le16(&mut out, x);
    }
    le32(&mut out, cd_len);
    le32(&mut out, cd_offset);
    le16(&mut out, 0);
    out
}

/// The classes of a jar of about `bytes`: class-file-like bodies (a constant pool of names
/// shared between classes, code bytes of their own).
fn classes(bytes: usize) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    let (mut total, mut i) = (0, 0usize);
    while total < bytes {
        let mut body = b"\xca\xfe\xba\xbe\0\0\0\x3d".to_vec();
        for k in 0..40 {
            body.extend_from_slice(format!("com/example/pkg{}/Type{}\0", (i + k) % 50, (i * 7 + k) % 400).as_bytes());
        }
        let len = 4000 + (i * 7919) % 12000;
        body.extend(random_bytes(i as u64 + 1, len));
        total += body.len();
        v.push((format!("com/example/pkg{}/Class{i}.class", i % 50), body));
        i += 1;
    }
    v
}

/// Waits (up to ten minutes: a slow link) until the file at `path` holds `content`.
fn wait_for(path: &Path, content: &[u8]) {
    let end = Instant::now() + Duration::from_secs(600);
    while fs::read(path).ok().as_deref() != Some(content) {
        assert!(Instant::now() < end, "{} never arrived", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What the link carried (both ways) once it has been quiet for a while.
fn quiet_carried(link: &FaultProxy, quiet: Duration) -> u64 {
    let end = Instant::now() + Duration::from_secs(600);
    let mut last = link.carried();
    loop {
        std::thread::sleep(quiet);
        let now = link.carried();
        if now == last || Instant::now() > end {
            return now.0 + now.1;
        }
        last = now;
    }
}

/// An rsync daemon serving `dir` as module `m` on a free port; stopped by its pid when dropped.
struct Rsyncd {
    child: std::process::Child,
    port: u16,
}

impl Rsyncd {
    fn start(area: &Area, dir: &Path) -> Option<Rsyncd> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        use std::os::unix::fs::MetadataExt;
        let conf = area.path("rsyncd.conf");
        // As the owner of the directory (a daemon started by root would otherwise be nobody).
        let m = fs::metadata(dir).ok()?;
        let (uid, gid, dir) = (m.uid(), m.gid(), dir.display());
        let text = format!(
            "use chroot = no\nport = {port}\naddress = 127.0.0.1\nuid = {uid}\ngid = {gid}\n[m]\npath = {dir}\nread only = no\n"
        );
        fs::write(&conf, text).ok()?;
        let child = Command::new("rsync")
            .args(["--daemon", "--no-detach", "--config"])
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Rsyncd { child, port })
    }
}

impl Drop for Rsyncd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issue 13's changes of a file: what it is, its file name, the old version and the new one (a
/// line appended to a log of `log_mib`, 1 MiB changed in the middle of `big_mib`, a jar of
/// `jar_mb` rebuilt with one class changed).
fn file_changes(log_mib: usize, big_mib: usize, jar_mb: usize) -> Vec<(String, &'static str, Vec<u8>, Vec<u8>)> {
    let log = log_lines(log_mib << 20);
    let mut log2 = log.clone();
    log2.extend_from_slice(b"1234567890 INFO one more line of the log 42\n");
    let big = random_bytes(7, big_mib << 20);
    let mut big2 = big.clone();
    let mid = big2.len() / 2;
    big2[mid..mid + (1 << 20)].copy_from_slice(&random_bytes(8, 1 << 20));
    let mut entries = classes(jar_mb * 1_000_000);
    let jar = stored_zip(&entries);
    let n = entries.len();
    entries[n / 2].1[600] ^= 1;
    entries[n / 2].1.extend_from_slice(b"one more method in the changed class");
    let jar2 = stored_zip(&entries);
    vec![
        (format!("one line appended to a {log_mib} MiB log"), "app.log", log, log2),
        (format!("1 MiB changed in the middle of a {big_mib} MiB file"), "disk.img", big, big2),
        (format!("a {jar_mb} MB jar rebuilt, one class changed"), "app-SNAPSHOT.jar", jar, jar2),
    ]
}

/// The changes of issue 13 over a link of `rtt_ms` and `mbit`: one line appended to a log of
/// `log_mib`, 1 MiB changed in the middle of a file of `big_mib`, a jar of `jar_mb` rebuilt with
/// one class changed, and a new file of `random_mib` of random bytes. Each file is on both sides
/// before the agents start (so they begin in sync); each change is made on the client and
/// timed until the server holds it whole, its bytes counted on the wire both ways.
pub fn changes_over_link(
    rtt_ms: u64,
    mbit: f64,
    log_mib: usize,
    big_mib: usize,
    jar_mb: usize,
    random_mib: usize,
) -> Vec<ChangeCost> {
    let changes = file_changes(log_mib, big_mib, jar_mb);
    let random = random_bytes(9, random_mib << 20);
    // What, the file's name, its version on both sides at the start (if any), the new one.
    type Case<'a> = (String, &'static str, Option<&'a [u8]>, &'a [u8]);
    let mut cases: Vec<Case<'_>> = changes.iter().map(|(w, n, o, v)| (w.clone(), *n, Some(&o[..]), &v[..])).collect();
    cases.push((format!("a new file of {random_mib} MiB of random bytes"), "random.bin", None, &random));
    let area = Area::new();
    let (c, s, r) = (area.path("client"), area.path("server/p"), area.path("rsync"));
    for d in [&c, &s, &r] {
        fs::create_dir_all(d).unwrap();
    }
    for (_, name, old, _) in &cases {
        if let Some(old) = old {
            for d in [&c, &s, &r] {
                fs::write(d.join(name), old).unwrap();
            }
        }
    }
    let server = secure_server(&area, &["client"]);
    let link = shaped(server.port, rtt_ms, mbit);
    let client = secure_client(&area, "client", link.port, &c, "p");
    let end = Instant::now() + Duration::from_secs(600);
    while !client.log().contains("connected to") || mirror_tests::snapshot(&c) != mirror_tests::snapshot(&s) {
        assert!(Instant::now() < end, "the agents never came in sync");
        std::thread::sleep(Duration::from_millis(50));
    }
    let quiet = Duration::from_millis(rtt_ms * 3 + 500);
    let mut results = Vec::new();
    for (what, name, _, new) in &cases {
        let before = quiet_carried(&link, quiet);
        let t = Instant::now();
        // As a build writes its output: a new file renamed over the old one.
        let tmp = c.join(format!(".{name}.tmp"));
        fs::write(&tmp, new).unwrap();
        fs::rename(&tmp, c.join(name)).unwrap();
        wait_for(&s.join(name), new);
        let took = t.elapsed();
        let wire = quiet_carried(&link, quiet) - before;
        results.push(ChangeCost { what: what.clone(), size: new.len() as u64, ours: (took, wire), rsync: None });
    }
    drop((client, server, link));
    // rsync -az of the same changes, through the same shaping, to its daemon.
    if let Some(d) = Rsyncd::start(&area, &r) {
        let link = shaped(d.port, rtt_ms, mbit);
        let src = area.path("rsync-src");
        fs::create_dir_all(&src).unwrap();
        for ((_, name, _, new), res) in cases.iter().zip(results.iter_mut()) {
            fs::write(src.join(name), new).unwrap();
            let before = link.carried();
            let t = Instant::now();
            let ok = Command::new("rsync")
                .arg("-az")
                .arg(src.join(name))
                .arg(format!("rsync://127.0.0.1:{}/m/", link.port))
                .status()
                .is_ok_and(|s| s.success());
            let took = t.elapsed();
            let after = link.carried();
            if ok && fs::read(r.join(name)).ok().as_deref() == Some(&new[..]) {
                res.rsync = Some((took, (after.0 - before.0) + (after.1 - before.1)));
            }
        }
    }
    results
}

/// What a delta of one change costs at one average chunk size, and how fast it is made.
#[derive(Debug, Clone)]
pub struct DeltaCost {
    pub what: String,
    pub avg: u32,
    /// The base in the request (20 bytes a chunk) and the new bytes sent.
    pub request: u64,
    pub literal: u64,
    /// Describing the base, and encoding the new version against it, in bytes a second.
    pub sign_rate: f64,
    pub encode_rate: f64,
}

/// Deltas of issue 13's changes (a line appended to a log of `log_mib`, 1 MiB changed in the
/// middle of `big_mib`, a jar of `jar_mb` with one class changed) at each average chunk size,
/// in memory: the choice of [`mirror_core::delta::DEFAULT_AVG`].
pub fn delta_sweep(log_mib: usize, big_mib: usize, jar_mb: usize, avgs: &[u32]) -> Vec<DeltaCost> {
    use mirror_core::delta::{Encoder, Piece, Signer};
    let cases = file_changes(log_mib, big_mib, jar_mb);
    let mut out = Vec::new();
    for (what, _, old, new) in &cases {
        for &avg in avgs {
            // As the agent's hashers read a file: 1 MiB at a time (its hash is known already).
            let t = Instant::now();
            let mut signer = Signer::new(avg).unwrap();
            for piece in old.chunks(1 << 20) {
                signer.update(piece);
            }
            let base = signer.finish([0; 32]);
            let sign_rate = old.len() as f64 / t.elapsed().as_secs_f64();
            let t = Instant::now();
            let mut e = Encoder::new(&new[..], new.len() as u64, &base).ok().unwrap();
            let mut literal = 0;
            while let Some(p) = e.next_piece().unwrap() {
                if let Piece::Literal(v) = p {
                    literal += v.len() as u64;
                }
            }
            let encode_rate = new.len() as f64 / t.elapsed().as_secs_f64();
            let request = 20 * base.chunks.len() as u64 + 48;
            out.push(DeltaCost { what: what.clone(), avg, request, literal, sign_rate, encode_rate });
        }
    }
    out
}
