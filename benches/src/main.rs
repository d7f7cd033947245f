//! `mirror-bench`: prints the benchmark table for BENCHMARKS.md.
//!
//! ```sh
//! cargo build --release -p mirror-agent -p mirror-benches && target/release/mirror-bench [SAMPLES] [FILES] [MIB]
//! target/release/mirror-bench startup [FILES]    # only the restart benchmark
//! target/release/mirror-bench memory [FILES]     # memory per synced file (default 100,000)
//! target/release/mirror-bench hub [CLIENTS] [FILES] [SAMPLES]   # one server, many clients (100, 10,000, 50)
//! ```

fn ms(d: std::time::Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn startup(files: usize) {
    let (scanned, replayed) = mirror_benches::startup(files);
    println!("| restart of a client with {files} synced files | to watching |");
    println!("| --- | --- |");
    println!("| walks the whole tree (no usable event history) | {} |", ms(scanned));
    println!("| replays its event history (one path changed) | {} |", ms(replayed));
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Memory per synced file: the difference between a tree of `files` and one of 100, so that
/// what any process holds (code, TLS, buffers) does not count.
fn memory(files: usize) {
    let base = mirror_benches::memory(100);
    let big = mirror_benches::memory(files);
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / (files - 100) as f64;
    println!("| {files} small files synced | server | client |");
    println!("| --- | --- | --- |");
    println!(
        "| resident after sync (100 files: {} / {}) | {} | {} |",
        mib(base.server),
        mib(base.client),
        mib(big.server),
        mib(big.client)
    );
    println!("| peak | {} | {} |", mib(big.server_peak), mib(big.client_peak));
    println!(
        "| per file (resident, over the 100-file run) | {:.0} B | {:.0} B |",
        per(big.server, base.server),
        per(big.client, base.client)
    );
    println!("| initial sync took | {:.1} s | |", big.took.as_secs_f64());
}

/// One server, many clients: memory, and how long a save on one client takes to reach all.
fn hub(clients: usize, files: usize, samples: usize) {
    let h = mirror_benches::hub(clients, files, samples);
    let others = clients - 1;
    println!("| hub of {clients} clients, one tree of {files} files | p50 | p99 | max | samples |");
    println!("| --- | --- | --- | --- | --- |");
    let row = |what: &str, s: mirror_benches::Summary| {
        println!("| {what} | {} | {} | {} | {} |", ms(s.p50), ms(s.p99), ms(s.max), s.n);
    };
    row(&format!("save on one client -> all {others} others have it"), h.all);
    row("...the first of them has it", h.first);
    println!();
    println!("| hub of {clients} clients | |");
    println!("| --- | --- |");
    println!("| server resident | {} |", mib(h.server));
    println!("| client resident (mean) | {} |", mib(h.client));
    println!("| every client started empty and took the whole tree | {:.1} s |", h.setup.as_secs_f64());
}

/// Issue 13's slow link: `rtt` ms of round trip, `mbit` Mbit/s each way.
fn link(rtt: u64, mbit: f64, samples: usize) {
    let (measured_rtt, rate) = mirror_benches::calibrate(rtt, mbit);
    println!("| the link, shaped to {rtt} ms and {mbit} Mbit/s | measured |");
    println!("| --- | --- |");
    println!("| round trip of one byte (ping), median of 20 | {} |", ms(measured_rtt));
    println!("| 4 MiB one way (iperf) | {rate:.1} Mbit/s |");
    println!();
    let f = mirror_benches::new_file_over_link(rtt, mbit, samples);
    println!("| new 1 KiB file over the link (TLS) | p50 | p99 | max | samples | on the wire per file |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (dir, d) in [("client -> server", f.up), ("server -> client", f.down)] {
        println!("| {dir} | {} | {} | {} | {} | {} B |", ms(d.p50), ms(d.p99), ms(d.max), d.n, f.wire_per_change);
    }
}

fn changes(rtt: u64, mbit: f64, log: usize, big: usize, jar: usize, random: usize) {
    let kb = |b: u64| format!("{:.1} KB", b as f64 / 1000.0);
    println!(
        "| over {rtt} ms / {mbit} Mbit/s | size | ours: time | ours: on the wire | rsync -az: time | rsync -az: on the wire |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for c in mirror_benches::changes_over_link(rtt, mbit, log, big, jar, random) {
        let (rt, rw) = c.rsync.map_or(("-".into(), "-".into()), |(t, w)| (ms(t), kb(w)));
        println!("| {} | {} | {} | {} | {rt} | {rw} |", c.what, kb(c.size), ms(c.ours.0), kb(c.ours.1));
    }
}

fn main() {
    let arg = |n: usize| std::env::args().nth(n).and_then(|a| a.parse().ok());
    if std::env::args().nth(1).as_deref() == Some("deltas") {
        let (log, big, jar) = (arg(2).unwrap_or(100), arg(3).unwrap_or(1024), arg(4).unwrap_or(50));
        println!("| change | average chunk | base in the request | new bytes sent | total | describe | encode |");
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        for d in mirror_benches::delta_sweep(log, big, jar, &[16384, 32768, 65536, 131072]) {
            let kb = |b: u64| format!("{:.1} KB", b as f64 / 1000.0);
            let gb = |r: f64| format!("{:.2} GB/s", r / 1e9);
            let (req, lit) = (d.request, d.literal);
            println!(
                "| {} | {} KiB | {} | {} | {} | {} | {} |",
                d.what,
                d.avg / 1024,
                kb(req),
                kb(lit),
                kb(req + lit),
                gb(d.sign_rate),
                gb(d.encode_rate)
            );
        }
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("changes") {
        let parsed = |n: usize| std::env::args().nth(n).and_then(|a| a.parse::<f64>().ok());
        let (rtt, mbit) = (parsed(2).map_or(40, |v| v as u64), parsed(3).unwrap_or(20.0));
        changes(rtt, mbit, arg(4).unwrap_or(100), arg(5).unwrap_or(1024), arg(6).unwrap_or(50), arg(7).unwrap_or(64));
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("hub") {
        hub(arg(2).unwrap_or(100).max(2), arg(3).unwrap_or(10_000), arg(4).unwrap_or(50));
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("memory") {
        // Measured over a run of 100 files: fewer would say nothing.
        memory(std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(100_000).max(1000));
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("beside") {
        let (mib, samples) = (arg(2).unwrap_or(256), arg(3).unwrap_or(20));
        let d = mirror_benches::beside_a_large_file(mib, samples);
        println!(
            "| save-to-visible, 1 KiB file saved as a {mib} MiB file appears on the other side | p50 | p99 | max | samples |"
        );
        println!("| --- | --- | --- | --- | --- |");
        println!("| client -> server | {} | {} | {} | {} |", ms(d.p50), ms(d.p99), ms(d.max), d.n);
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("again") {
        let d = mirror_benches::edited_again(arg(2).unwrap_or(100));
        println!(
            "| save-to-visible, one file edited again as soon as its last edit arrived | p50 | p99 | max | samples |"
        );
        println!("| --- | --- | --- | --- | --- |");
        println!("| client -> server | {} | {} | {} | {} |", ms(d.p50), ms(d.p99), ms(d.max), d.n);
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("link") {
        let parsed = |n: usize| std::env::args().nth(n).and_then(|a| a.parse::<f64>().ok());
        link(parsed(2).map_or(40, |v| v as u64), parsed(3).unwrap_or(20.0), arg(4).unwrap_or(20));
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("startup") {
        startup(std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(10_000));
        return;
    }
    let mut args = std::env::args().skip(1);
    let samples = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let files = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(512);
    let (up, down) = mirror_benches::latency(samples);
    println!("| save-to-visible, 1 KiB file | p50 | p99 | max | samples |");
    println!("| --- | --- | --- | --- | --- |");
    println!("| client -> server | {} | {} | {} | {} |", ms(up.p50), ms(up.p99), ms(up.max), up.n);
    println!("| server -> client | {} | {} | {} | {} |", ms(down.p50), ms(down.p99), ms(down.max), down.n);
    let (ours, rsync) = mirror_benches::initial_sync(files);
    println!();
    println!("| initial sync, {files} files (1-8 KiB) | time |");
    println!("| --- | --- |");
    println!("| mirror-agent (client start to last file on the server) | {} |", ms(ours));
    match rsync {
        Some(r) => println!("| rsync -a over a pipe transport (same tree, same run) | {} |", ms(r)),
        None => println!("| rsync -a | not installed |"),
    }
    println!();
    startup(files);
    let (plain, tls) = mirror_benches::throughput(mib);
    let rate = |d: std::time::Duration| mib as f64 / d.as_secs_f64();
    println!();
    println!("| one {mib} MiB file, client -> server | time | throughput |");
    println!("| --- | --- | --- |");
    println!("| plaintext (--insecure) | {} | {:.0} MiB/s |", ms(plain), rate(plain));
    println!("| TLS 1.3 (default) | {} | {:.0} MiB/s |", ms(tls), rate(tls));
}
