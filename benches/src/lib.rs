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
