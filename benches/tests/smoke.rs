//! The benchmarks run and converge (a tiny run; the figures are not checked).

#[test]
fn latency_benchmark_runs_both_ways() {
    let (up, down) = mirror_benches::latency(3);
    assert_eq!((up.n, down.n), (3, 3));
}

#[test]
fn initial_sync_benchmark_converges() {
    let (took, _) = mirror_benches::initial_sync(120);
    assert!(took.as_nanos() > 0);
}

#[test]
fn startup_benchmark_catches_up_from_the_history_and_by_a_scan() {
    let (scanned, replayed) = mirror_benches::startup(50);
    assert!(scanned.as_nanos() > 0 && replayed.as_nanos() > 0);
}

#[test]
fn throughput_benchmark_moves_the_file_both_ways_of_transport() {
    let (plain, tls) = mirror_benches::throughput(4);
    assert!(plain.as_nanos() > 0 && tls.as_nanos() > 0);
}

#[test]
fn hub_benchmark_reaches_every_client() {
    let h = mirror_benches::hub(3, 30, 2);
    assert_eq!(h.all.n, 2);
    assert!(h.all.p50 >= h.first.p50 && h.server > 0);
}
