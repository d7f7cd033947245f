//! `mirror-sim`: runs seeded histories and reports what failed.
//!
//! ```text
//! cargo run --release -p mirror-sim -- --seeds 0-9999            # a range, on every core
//! cargo run --release -p mirror-sim -- --seeds 1234 --trace      # one seed, every event
//! cargo run --release -p mirror-sim -- --seeds 1234 --shrink     # the fewest steps that fail
//! cargo run --release -p mirror-sim --features planted-bugs -- --plant echo --seeds 0-999
//! ```
//! Prints `N seeds, F failures` and a digest of all traces (the same for the same seeds and
//! commit); each failure with the command that replays it. Exits non-zero if any failed.

use mirror_sim::{Plan, Planted, run_plan, run_seed, shrink};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

struct Args {
    from: u64,
    to: u64,
    trace: bool,
    shrink: bool,
    planted: Planted,
    threads: usize,
}

fn usage() -> String {
    "usage: mirror-sim --seeds A[-B] [--trace [--log]] [--shrink] [--threads N] [--plant BUG]".into()
}

fn parse() -> Result<Args, String> {
    let mut a = Args { from: 0, to: 999, trace: false, shrink: false, planted: None, threads: 0 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seeds" => {
                let v = it.next().ok_or_else(usage)?;
                let (f, t) = v.split_once('-').unwrap_or((&v, &v));
                a.from = f.parse().map_err(|_| format!("not a seed: {f}"))?;
                a.to = t.parse().map_err(|_| format!("not a seed: {t}"))?;
                if a.to < a.from {
                    return Err(format!("an empty range: {v}"));
                }
            }
            "--trace" => a.trace = true,
            "--log" => mirror_sim::logs::catch(),
            "--shrink" => a.shrink = true,
            "--threads" => {
                a.threads = it.next().and_then(|v| v.parse().ok()).ok_or_else(usage)?;
            }
            "--plant" => {
                let name = it.next().ok_or_else(usage)?;
                a.planted = plant(&name)?;
            }
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    Ok(a)
}

#[cfg(feature = "planted-bugs")]
fn plant(name: &str) -> Result<Planted, String> {
    mirror_sim::Bug::parse(name).map(Some).ok_or_else(|| {
        let all: Vec<&str> = mirror_sim::Bug::ALL.iter().map(|b| b.name()).collect();
        format!("no planted bug {name:?} (there are: {})", all.join(", "))
    })
}

#[cfg(not(feature = "planted-bugs"))]
fn plant(_: &str) -> Result<Planted, String> {
    Err("--plant needs a build with --features planted-bugs".into())
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if a.trace || a.shrink {
        replay(&a);
        return ExitCode::SUCCESS;
    }
    let started = std::time::Instant::now();
    let threads = if a.threads > 0 { a.threads } else { std::thread::available_parallelism().map_or(1, |n| n.get()) };
    let n = a.to - a.from + 1;
    let (digest, failures) = run_range(&a, threads);
    let plant_arg = plant_arg(a.planted);
    for (seed, what) in &failures {
        println!("seed {seed} FAILED {what}");
        println!(
            "  replay: cargo run --release -p mirror-sim{} -- --seeds {seed}{} --shrink --trace",
            plant_arg.0, plant_arg.1
        );
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{n} seeds, {} failures, digest {digest} ({:.1} s, {:.0} seeds/minute on {threads} threads)",
        failures.len(),
        secs,
        n as f64 / secs * 60.0
    );
    if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// `--trace` and `--shrink`: each seed of the range once more, shrunk if it fails, with its
/// steps and its trace.
fn replay(a: &Args) {
    for seed in a.from..=a.to {
        let plan = Plan::of(seed);
        let plan =
            if a.shrink && run_seed(seed, a.planted).failure.is_some() { shrink(&plan, seed, a.planted) } else { plan };
        let (out, trace) = run_plan(&plan, seed, a.planted, true);
        if a.shrink {
            println!("seed {seed}: {} steps", plan.len());
            for (r, steps) in plan.rounds.iter().enumerate() {
                for s in steps {
                    println!("  round {r} +{} ms: {:?}", s.at_ms, s.action);
                }
            }
        }
        if a.trace {
            for line in trace {
                println!("{line}");
            }
        }
        match out.failure {
            Some(f) => println!("seed {seed} FAILED in round {}: {}", f.round, f.what),
            None => println!("seed {seed} passed"),
        }
    }
}

/// Runs every seed of the range on `threads` threads: the digest of all their traces (in seed
/// order, whatever the threads did), and the failures, by seed.
fn run_range(a: &Args, threads: usize) -> (String, Vec<(u64, String)>) {
    let next = AtomicU64::new(a.from);
    let results: Mutex<Vec<(u64, [u8; 32])>> = Mutex::new(Vec::new());
    let failures: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed > a.to {
                        break;
                    }
                    let out = run_seed(seed, a.planted);
                    if let Some(f) = out.failure {
                        let line = format!("round {}: {}", f.round, f.what);
                        failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((seed, line));
                    }
                    results.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((seed, out.digest));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    results.sort();
    let mut all = blake3::Hasher::new();
    for (_, d) in &results {
        all.update(d);
    }
    let mut failures = failures.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    failures.sort();
    (all.finalize().to_hex()[..16].to_string(), failures)
}

/// What the replay command needs for the bug planted: cargo's part, the simulator's part.
#[cfg(feature = "planted-bugs")]
fn plant_arg(p: Planted) -> (String, String) {
    p.map(|b| (" --features planted-bugs".to_string(), format!(" --plant {}", b.name()))).unwrap_or_default()
}

#[cfg(not(feature = "planted-bugs"))]
fn plant_arg(_: Planted) -> (String, String) {
    (String::new(), String::new())
}
