//! Fan-out across a real (namespaced) network: a source and eight hosts, each
//! behind its own 200 Mbit/s full-duplex link, each running its own `ferry
//! serve` (the harness is `util/fanout_net.rs`). What a user would notice is
//! asserted: every copy byte-identical, the time to eight hosts is that of a
//! pipelined chain (T_8/T_1 reported; issue 21's 1.15 target is judged by
//! bench/fanout.sh), a dead middle host bypassed, a slow host not slowing
//! the others, the exit code. Each run is measured beside the same harness's
//! `nc | tee` relay chain and a single-host `ferry sync`, with CPU busy from
//! /proc/stat: on two shared cores a ratio taken while the CPU is saturated
//! measures the CPU, not the links, and is reported as such.
//!
//! Needs root (namespaces, tc, iptables); skipped with a message otherwise.
//! The tests run one at a time (a lock): they measure time.

#[path = "util/fanout_net.rs"]
mod fanout_net;
mod util;

use fanout_net::{CpuMeter, FanoutNet, Measured};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `ferry fanout`'s exit code when some hosts missed the job (its --help).
const PARTIAL: i32 = 24;

/// Timing tests must not overlap one another.
static SERIAL: Mutex<()> = Mutex::new(());

const MIB: usize = 1 << 20;
/// Each link's rate, both ways.
const RATE_MBIT: u32 = 200;
/// 256 MiB at 200 Mbit/s: T_1 ≈ 10.7 s, long enough that a fan-out's
/// start-up and chain fill are small beside it; 9 copies ≈ 2.3 GiB of disk.
const SIZE: usize = 256 * MIB;
/// Where a fanned-out `ckpt.bin` lands in each host's module: the
/// destinations are `HOST::data/fan/`.
const FANNED: &str = "fan/ckpt.bin";

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// T_1 per file size, measured once per run of this binary: every network
/// is built alike (8 hosts, the same rate), so one plain `ferry sync` of a
/// size serves every test that judges against it (CI time).
static T1: Mutex<Vec<(usize, Measured)>> = Mutex::new(Vec::new());

/// T_1 for `src` (of `size` bytes): one plain `ferry sync` to host 1, or the
/// one an earlier test measured at this size.
fn t1_of(net: &FanoutNet, src: &std::path::Path, size: usize) -> Measured {
    let mut known = T1.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&(_, m)) = known.iter().find(|(s, _)| *s == size) {
        return m;
    }
    let m = net.single_sync(src, 1, "t1.bin");
    net.clear("t1.bin");
    known.push((size, m));
    m
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The destinations 1..=n.
fn all(n: usize) -> Vec<usize> {
    (1..=n).collect()
}

#[test]
fn eight_hosts_at_200mbit_get_identical_bytes_in_about_the_time_of_one() {
    let _serial = serial();
    let Some(net) = FanoutNet::build(8, RATE_MBIT) else {
        return;
    };
    let src = net.source_file("ckpt.bin", SIZE, 21);
    // the yardsticks, in the same harness: one ferry copy, and the relay chain
    let t1 = t1_of(&net, &src, SIZE);
    let base1 = net.relay_chain(&src, &[1], "nc.bin");
    net.clear("nc.bin");
    let base8 = net.relay_chain(&src, &all(8), "nc.bin");
    net.clear("nc.bin");
    let r_base = secs(base8.took) / secs(base1.took);
    eprintln!(
        "{} MiB at {RATE_MBIT} Mbit/s: ferry sync T_1 {:.2} s (CPU {:.0}%); nc|tee T_1 {:.2} s, T_8 {:.2} s (CPU {:.0}%), R {:.2}",
        SIZE / MIB,
        secs(t1.took),
        t1.busy * 100.0,
        secs(base1.took),
        secs(base8.took),
        base8.busy * 100.0,
        r_base
    );

    net.require_fanout();
    let cpu = CpuMeter::start();
    let mut run = net.spawn_fanout(&["--json"], &src, &all(8), "fan");
    let status = run
        .wait(t1.took * 4 + Duration::from_secs(60))
        .unwrap_or_else(|| panic!("ferry fanout did not end\n{}", run.output()));
    let t8 = Measured {
        took: run.started.elapsed(),
        busy: cpu.busy(),
    };
    assert!(
        status.success(),
        "ferry fanout to 8 hosts failed ({status})\n{}",
        run.output()
    );
    for i in all(8) {
        assert!(
            net.same_bytes(i, FANNED, &src),
            "host {i} ({}) does not hold the source's bytes after fan-out\n{}",
            net.hosts[i].addr,
            run.output()
        );
    }
    // the source reads its file once: at most its size plus a window
    let read = run.source_read();
    assert!(
        read <= (SIZE + 64 * MIB) as u64,
        "the source read {read} bytes for a {SIZE}-byte file (limit: size + 64 MiB)\n{}",
        run.output()
    );
    let r = secs(t8.took) / secs(t1.took);
    eprintln!(
        "ferry fanout T_8 {:.2} s, R = T_8/T_1 = {r:.2} (CPU {:.0}%); nc|tee R {r_base:.2}",
        secs(t8.took),
        t8.busy * 100.0
    );
    // The target is T_8/T_1 ≤ 1.15 (1.10 × the relay chain's ratio
    // when CPU-bound); speed targets live in bench/fanout.sh, which prints
    // the ratio beside nc|tee and an rsync loop. Here the ratio is reported,
    // and the test only checks that the transfer is a pipelined chain: a
    // star or a loop of copies from the source takes about 8 × T_1.
    eprintln!(
        "{}R = {r:.2} (target 1.15; nc|tee R {r_base:.2}); the run's summary:\n{}",
        if t8.cpu_bound() { "CPU-bound: " } else { "" },
        run.output()
    );
    assert!(
        r <= 3.0,
        "T_8/T_1 = {r:.2} (T_8 {:.2} s, T_1 {:.2} s; nc|tee R {r_base:.2}): not a pipelined chain\n{}",
        secs(t8.took),
        secs(t1.took),
        run.output()
    );
}

#[test]
fn a_black_holed_middle_host_is_bypassed_within_the_stall_timeout() {
    let _serial = serial();
    let Some(net) = FanoutNet::build(8, RATE_MBIT) else {
        return;
    };
    net.require_fanout();
    let size = 64 * MIB; // ≈ 2.7 s a copy: long enough to cut mid-way
    let src = net.source_file("ckpt.bin", size, 22);
    let t1 = t1_of(&net, &src, size);
    let stall = Duration::from_secs(5);
    let dead = 4;
    let others: Vec<usize> = all(8).into_iter().filter(|&i| i != dead).collect();
    let arrivals = fanout_net::Arrivals::watch(
        others
            .iter()
            .map(|&i| net.hosts[i].data().join(FANNED))
            .collect(),
        size as u64,
    );
    let mut run = net.spawn_fanout(&["--json", "--stall-timeout", "5s"], &src, &all(8), "fan");
    std::thread::sleep(t1.took * 2 / 5);
    assert!(
        run.running(),
        "fan-out ended before host {dead} was cut off\n{}",
        run.output()
    );
    net.blackhole(dead);
    let cut_at = run.started.elapsed();
    let status = run
        .wait(t1.took * 3 + stall * 4 + Duration::from_secs(60))
        .unwrap_or_else(|| {
            panic!(
                "ferry fanout never ended with host {dead} black-holed\n{}",
                run.output()
            )
        });
    let arrived = arrivals.finish();
    let output = run.output();
    assert_eq!(
        status.code(),
        Some(PARTIAL),
        "a fan-out that missed host {dead} must end partial\n{output}"
    );
    assert!(
        output.contains(&net.hosts[dead].addr),
        "the partial result does not name the missed host {}\n{output}",
        net.hosts[dead].addr
    );
    for (k, &i) in others.iter().enumerate() {
        assert!(
            net.same_bytes(i, FANNED, &src),
            "host {i} did not complete around the black-holed host {dead} (exit {status})\n{output}"
        );
        let when = arrived[k].expect("arrived");
        // A bypass costs about the stall timeout on top of one copy; the
        // margin covers a CPU-bound chain on two cores. Without a bypass the
        // others would wait for the kernel's 120 s TCP_USER_TIMEOUT or forever.
        let limit = t1.took * 3 / 2 + stall * 2;
        assert!(
            when <= limit,
            "host {i} finished at {:.1} s, over {:.1} s (T_1 {:.1} s + stall {} s; cut at {:.1} s)",
            secs(when),
            secs(limit),
            secs(t1.took),
            stall.as_secs(),
            secs(cut_at)
        );
    }
    let at_dead = net.hosts[dead].data().join(FANNED);
    assert!(
        !at_dead.exists() || net.same_bytes(dead, FANNED, &src),
        "the black-holed host has wrong bytes at its final path"
    );
    eprintln!(
        "black hole at {:.1} s: exit {status}, others done by {:.1} s (T_1 {:.1} s)",
        secs(cut_at),
        arrived
            .iter()
            .flatten()
            .map(|d| secs(*d))
            .fold(0.0, f64::max),
        secs(t1.took)
    );
}

#[test]
fn a_host_throttled_to_a_tenth_does_not_slow_the_other_seven() {
    let _serial = serial();
    let Some(net) = FanoutNet::build(8, RATE_MBIT) else {
        return;
    };
    net.require_fanout();
    let src = net.source_file("ckpt.bin", SIZE, 23);
    let t1 = t1_of(&net, &src, SIZE);
    // a host in the middle (its predecessor links past it), then the head
    // (the source links past it), each slowed a second into a fan-out
    for slow in [3, 1] {
        one_host_throttled(&net, &src, t1, slow);
        net.clear("fan");
    }
}

/// One fan-out with host `slow` cut to a tenth of the rate after a second:
/// the other seven finish within 1.25 × T_1, the slow one gets it all too.
fn one_host_throttled(net: &FanoutNet, src: &std::path::Path, t1: Measured, slow: usize) {
    let others: Vec<usize> = all(8).into_iter().filter(|&i| i != slow).collect();
    let arrivals = fanout_net::Arrivals::watch(
        others
            .iter()
            .map(|&i| net.hosts[i].data().join(FANNED))
            .collect(),
        SIZE as u64,
    );
    let cpu = CpuMeter::start();
    let mut run = net.spawn_fanout(&["--json"], src, &all(8), "fan");
    std::thread::sleep(Duration::from_secs(1));
    net.set_rate(slow, RATE_MBIT / 10);
    // the seven, or a deadline well past the limit; then the slow host gets
    // its rate back so that the job ends in bounded time
    let deadline = Instant::now() + t1.took * 3 + Duration::from_secs(30);
    while !arrivals.done() && Instant::now() < deadline && run.running() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let busy = cpu.busy();
    let arrived = arrivals.finish();
    net.set_rate(slow, RATE_MBIT);
    let status = run
        .wait(Duration::from_secs(180))
        .unwrap_or_else(|| panic!("ferry fanout did not end\n{}", run.output()));
    let output = run.output();
    let limit = t1.took * 5 / 4;
    for &i in &others {
        assert!(
            net.same_bytes(i, FANNED, src),
            "host {i} does not hold the source's bytes (exit {status})\n{output}"
        );
    }
    let moved: Vec<usize> = all(8)
        .into_iter()
        .filter(|&i| {
            let shown = format!("\"{}\",\"moved_to_tail\":true", net.hosts[i].dest("fan/"));
            output.contains(&shown)
        })
        .collect();
    eprintln!(
        "slow host {slow} at {} Mbit/s: the other seven by {:?} s, limit {:.1} s (T_1 {:.1} s, CPU {:.0}%); hosts moved: {moved:?}",
        RATE_MBIT / 10,
        arrived.iter().map(|d| d.map(secs)).collect::<Vec<_>>(),
        secs(limit),
        secs(t1.took),
        busy * 100.0
    );
    // what each host took: after a move, each byte once and no piece
    // refused (issue 21: before session 22 each host behind the moved one
    // refused a piece and took 2.4% more, one piece's time more per host)
    let taken: Vec<String> = output
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .filter_map(|v| v["hosts"].as_array().cloned())
        .flatten()
        .map(|h| format!("{}/{}", h["bytes_received"], h["pieces_refused"]))
        .collect();
    eprintln!("bytes received/pieces refused per host (1..8): {taken:?}");
    // the source reads its file once: a relink (the head moved, the source
    // links to host 2) re-reads only what was in flight to the old head,
    // replayed to the new one: the piece in progress and what its queue
    // (4 MiB) and the sockets held; 4 pieces (16 MiB) bound that. Measured
    // (session 22): +30 KB with host 3 slow, +2.1 MiB with the head slow;
    // a session-21 run, before the replay, read about twice the file
    let read = run.source_read();
    eprintln!(
        "the source read {read} bytes for {SIZE} ({:.3} x; limit size + 16 MiB)",
        read as f64 / SIZE as f64
    );
    assert!(
        read <= (SIZE + 16 * MIB) as u64,
        "the source read {read} bytes for a {SIZE}-byte file with host {slow} slow (limit: size + 16 MiB)\n{output}"
    );
    // on a saturated CPU the 1.25 bound measures the CPU; a chain dragged
    // down to the slow host's pace (10 × T_1) still fails the looser 2 × T_1
    let judged = if busy > fanout_net::CPU_BOUND {
        eprintln!(
            "CPU-bound ({:.0}% busy): judged against 2 × T_1 instead of 1.25 × T_1",
            busy * 100.0
        );
        t1.took * 2
    } else {
        limit
    };
    let late: Vec<String> = others
        .iter()
        .zip(&arrived)
        .filter(|(_, d)| d.is_none_or(|d| d > judged))
        .map(|(i, d)| format!("host {i} at {:?} s", d.map(secs)))
        .collect();
    assert!(
        late.is_empty(),
        "host {slow} at a tenth of the rate slowed the others past {:.1} s (T_1 {:.1} s; None: not done when the test gave up at 3 × T_1 + 30 s): {}\n{output}",
        secs(judged),
        secs(t1.took),
        late.join(", ")
    );
    assert!(
        status.success(),
        "fan-out failed once the slow host had its rate back ({status})\n{output}"
    );
    assert!(
        net.same_bytes(slow, FANNED, src),
        "the slow host's copy differs"
    );
    assert!(
        output.contains("\"moved_to_tail\":true"),
        "no host was reported moved to the tail\n{output}"
    );
}

/// Whether `--json` output shows some host refusing a piece
/// (`"pieces_refused": N` with N > 0).
fn some_piece_refused(output: &str) -> bool {
    output.match_indices("refused\"").any(|(at, _)| {
        let rest = output[at + 8..]
            .trim_start()
            .trim_start_matches(':')
            .trim_start();
        let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
        n.parse::<u64>().is_ok_and(|n| n > 0)
    })
}

#[test]
fn a_bit_flipped_by_a_middle_hop_is_refused_and_never_published() {
    let _serial = serial();
    let Some(mut net) = FanoutNet::build(8, RATE_MBIT) else {
        return;
    };
    net.require_fanout();
    // host 3 flips a bit in the 2nd piece it forwards to host 4
    net.start_daemon(
        3,
        &[
            ("FERRY_TEST_HOOKS", "1"),
            ("FERRY_TEST_FANOUT_CORRUPT", "2"),
        ],
    );
    let size = 64 * MIB;
    let src = net.source_file("ckpt.bin", size, 24);
    let mut run = net.spawn_fanout(&["--json"], &src, &all(8), "fan");
    let status = run
        .wait(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("ferry fanout did not end\n{}", run.output()));
    let output = run.output();
    assert!(
        status.success(),
        "fan-out with a corrupting hop failed ({status})\n{output}"
    );
    for i in all(8) {
        assert!(
            net.same_bytes(i, FANNED, &src),
            "host {i} published bytes that differ from the source's\n{output}"
        );
    }
    assert!(
        some_piece_refused(&output),
        "no host reported refusing the flipped piece (did the hook fire?)\n{output}"
    );
}

#[test]
fn a_middle_host_killed_half_way_is_left_out_then_repaired_by_resume() {
    let _serial = serial();
    let Some(mut net) = FanoutNet::build(8, RATE_MBIT) else {
        return;
    };
    net.require_fanout();
    let size = 64 * MIB;
    let src = net.source_file("ckpt.bin", size, 25);
    let t1 = t1_of(&net, &src, size);
    let dead = 4;
    let mut run = net.spawn_fanout(&["--json", "--stall-timeout", "5s"], &src, &all(8), "fan");
    // half-way: half the file has crossed the killed host's link
    let start = net.bytes_into(dead);
    let give_up = Instant::now() + t1.took * 3;
    while net.bytes_into(dead) - start < size as u64 / 2 {
        assert!(
            Instant::now() < give_up && run.running(),
            "host {dead} never got half the file\n{}",
            run.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    net.stop_daemon(dead); // SIGKILL
    let status = run
        .wait(t1.took * 3 + Duration::from_secs(60))
        .unwrap_or_else(|| panic!("ferry fanout did not end\n{}", run.output()));
    let output = run.output();
    assert_eq!(
        status.code(),
        Some(PARTIAL),
        "a fan-out that lost host {dead} must end partial\n{output}"
    );
    assert!(
        output.contains(&net.hosts[dead].addr),
        "the partial result does not name the killed host\n{output}"
    );
    for i in all(8).into_iter().filter(|&i| i != dead) {
        assert!(
            net.same_bytes(i, FANNED, &src),
            "host {i} did not complete without a restart\n{output}"
        );
    }
    let at_dead = net.hosts[dead].data().join(FANNED);
    assert!(
        !at_dead.exists() || net.same_bytes(dead, FANNED, &src),
        "wrong bytes at the killed host's final path"
    );
    let job = run
        .job_id()
        .unwrap_or_else(|| panic!("the fan-out's output names no job to --resume\n{output}"));
    drop(run);
    // the host comes back; --resume repairs it by delta against its partial file
    net.start_daemon(dead, &[]);
    let before = net.bytes_into(dead);
    let resumed = net
        .ferry_on_source("fanout")
        .args(["--resume", &job])
        .output()
        .unwrap();
    let moved = net.bytes_into(dead) - before;
    assert!(
        resumed.status.success(),
        "ferry fanout --resume {job} failed ({:?}): {}",
        resumed.status.code(),
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(
        net.same_bytes(dead, FANNED, &src),
        "the resumed host's copy differs"
    );
    eprintln!(
        "--resume moved {moved} bytes to host {dead} ({:.0}% of the file)",
        moved as f64 * 100.0 / size as f64
    );
    assert!(
        (moved as f64) < 0.6 * size as f64,
        "--resume moved {moved} bytes to the repaired host, not under 60% of {size}"
    );
}

#[test]
fn every_host_holding_v1_gets_v2_with_5_percent_changed_for_under_7_percent_per_link() {
    let _serial = serial();
    let Some(net) = FanoutNet::build(8, RATE_MBIT) else {
        return;
    };
    net.require_fanout();
    let size = 64 * MIB;
    let src = net.source_file("ckpt.bin", size, 26);
    let mut run = net.spawn_fanout(&["--json"], &src, &all(8), "fan");
    let status = run
        .wait(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("ferry fanout of v1 did not end\n{}", run.output()));
    assert!(status.success(), "v1 fan-out failed\n{}", run.output());
    drop(run);
    // v2: 5% rewritten, in 64 KiB regions spread over the whole file (as a
    // fine-tune touches tensors everywhere)
    let mut v2 = std::fs::read(&src).unwrap();
    let region = 64 << 10;
    let regions = size / 20 / region;
    let fresh = util::random_bytes(regions * region, 27);
    for k in 0..regions {
        let at = k * (size / regions) + (k * 7919) % (size / regions - region);
        v2[at..at + region].copy_from_slice(&fresh[k * region..(k + 1) * region]);
    }
    std::fs::write(&src, &v2).unwrap();
    let before: Vec<u64> = all(8).iter().map(|&i| net.bytes_into(i)).collect();
    let mut run = net.spawn_fanout(&["--json"], &src, &all(8), "fan");
    let status = run
        .wait(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("ferry fanout of v2 did not end\n{}", run.output()));
    let output = run.output();
    assert!(status.success(), "v2 fan-out failed\n{output}");
    let moved: Vec<u64> = all(8)
        .iter()
        .zip(&before)
        .map(|(&i, b)| net.bytes_into(i) - b)
        .collect();
    for i in all(8) {
        assert!(
            net.same_bytes(i, FANNED, &src),
            "host {i} does not hold v2\n{output}"
        );
    }
    eprintln!(
        "v2 (5% changed in {regions} regions): bytes into each host's link {:?} ({:?}% of the file)",
        moved,
        moved
            .iter()
            .map(|m| (*m as f64 * 1000.0 / size as f64).round() / 10.0)
            .collect::<Vec<_>>()
    );
    for (k, m) in moved.iter().enumerate() {
        assert!(
            (*m as f64) < 0.07 * size as f64,
            "host {}'s link carried {m} bytes for v2 (IP, TCP and TLS included), not under 7% of {size}\n{output}",
            k + 1
        );
    }
}
