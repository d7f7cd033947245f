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

#[test]
fn the_shaped_link_delays_and_every_file_crosses_it() {
    // The proxy holds every byte at least its delay each way: a lower bound, not a timing figure.
    let (rtt, rate) = mirror_benches::calibrate(20, 50.0);
    assert!(rtt >= std::time::Duration::from_millis(20) && rate > 0.0, "{rtt:?} {rate}");
    let f = mirror_benches::new_file_over_link(10, 100.0, 2);
    assert_eq!((f.up.n, f.down.n), (2, 2));
    assert!(f.up.p50 >= std::time::Duration::from_millis(5), "faster than the link's one-way delay: {f:?}");
    assert!(f.wire_per_change > 1000, "a 1 KiB file crossed in {} bytes", f.wire_per_change);
}

#[test]
fn the_changes_over_a_link_cross_it_and_a_delta_sends_less_than_the_file() {
    let cases = mirror_benches::changes_over_link(10, 200.0, 1, 4, 1, 1);
    assert_eq!(cases.len(), 4);
    for c in &cases {
        assert!(c.ours.1 > 0, "{c:?}");
    }
    // The append and the change in the middle go as deltas: less than the file on the wire.
    assert!(cases[0].ours.1 < cases[0].size / 10, "{:?}", cases[0]);
    assert!(cases[1].ours.1 < cases[1].size / 2, "{:?}", cases[1]);
    // A new file of random bytes cannot be less than itself.
    assert!(cases[3].ours.1 >= cases[3].size, "{:?}", cases[3]);
}
