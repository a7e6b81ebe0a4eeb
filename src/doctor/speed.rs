//! `ferry doctor --speed`: throughput to the host with one stream and with
//! several at once, each way, beside the round trip, and the advice that
//! follows (more streams, bigger socket buffers, or neither). The streams
//! are ssh sessions (`head -c … /dev/zero` down, `cat > /dev/null` up), so the figure
//! is the path's as ssh sees it: the daemon has no speed-test request, and
//! the doctor writes nothing on the host. Not part of a normal run: it takes
//! about 10 s.

use super::ssh::{batch_args, destination, ssh_words};
use super::{Check, Options, Status};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long each measurement runs once data flows.
const WINDOW: Duration = Duration::from_secs(2);
/// How long an ssh login may take before a stream is given up.
const LOGIN: Duration = Duration::from_secs(8);
/// Streams in the several-streams measurement.
pub const STREAMS: usize = 4;

fn spawn(opts: &Options, dest: &str, remote: &str, upload: bool) -> Result<Child, String> {
    let words = ssh_words(opts);
    Command::new(&words[0])
        .args(&words[1..])
        .args(batch_args())
        .args([dest, remote])
        .stdin(if upload {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {}", words[0], crate::error::io_text(&e)))
}

/// Kills `child` at `deadline` unless it has exited; bounded either way.
fn watchdog(child: Arc<Mutex<Child>>, deadline: Instant) {
    std::thread::spawn(move || loop {
        {
            let mut c = child.lock().unwrap_or_else(|p| p.into_inner());
            if matches!(c.try_wait(), Ok(Some(_))) {
                return;
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    });
}

/// What the streams of one measurement share.
#[derive(Default)]
struct Flow {
    /// Bytes moved by all streams since each began to flow.
    bytes: AtomicU64,
    /// Streams whose data flows.
    flowing: AtomicUsize,
    /// Set when the measurement is over.
    stop: AtomicBool,
}

/// One stream from the host (`head -c … /dev/zero` there) until `stop`.
fn stream_down(opts: &Options, dest: &str, flow: &Flow) -> Result<(), String> {
    let mut child = spawn(opts, dest, "head -c 100000000000 /dev/zero", false)?;
    let mut out = child.stdout.take().expect("piped");
    let child = Arc::new(Mutex::new(child));
    watchdog(child.clone(), Instant::now() + LOGIN + WINDOW * 2);
    let mut buf = vec![0u8; 256 << 10];
    match out.read(&mut buf) {
        Ok(n) if n > 0 => flow.flowing.fetch_add(1, Ordering::SeqCst),
        _ => return Err("the download did not start".into()),
    };
    while !flow.stop.load(Ordering::SeqCst) {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => return Err("the download stopped".into()),
            Ok(n) => flow.bytes.fetch_add(n as u64, Ordering::SeqCst),
        };
    }
    let _ = child.lock().map(|mut c| c.kill());
    Ok(())
}

/// One stream to the host (`cat > /dev/null` there) until `stop`. Counted
/// as written here once more than pipes and ssh's buffers hold went in: from
/// then on, writing goes exactly as fast as the path drains.
fn stream_up(opts: &Options, dest: &str, flow: &Flow) -> Result<(), String> {
    let mut child = spawn(opts, dest, "cat > /dev/null", true)?;
    let mut input = child.stdin.take().expect("piped");
    let child = Arc::new(Mutex::new(child));
    watchdog(child.clone(), Instant::now() + LOGIN + WINDOW * 2);
    let buf = vec![0u8; 64 << 10];
    let mut written = 0u64;
    while !flow.stop.load(Ordering::SeqCst) {
        if input.write_all(&buf).is_err() {
            return Err("the upload stopped".into());
        }
        written += buf.len() as u64;
        if written == 4 << 20 {
            flow.flowing.fetch_add(1, Ordering::SeqCst);
        } else if written > 4 << 20 {
            flow.bytes.fetch_add(buf.len() as u64, Ordering::SeqCst);
        }
    }
    drop(input);
    let _ = child.lock().map(|mut c| c.kill());
    Ok(())
}

/// Bytes per second over `n` streams at once, one way, measured over one
/// window that starts when every stream flows.
fn measure(opts: &Options, dest: &str, n: usize, upload: bool) -> Result<f64, String> {
    let flow = Flow::default();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    if upload {
                        stream_up(opts, dest, &flow)
                    } else {
                        stream_down(opts, dest, &flow)
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + LOGIN;
        let mut result = Ok(0.0);
        while flow.flowing.load(Ordering::SeqCst) < n {
            if Instant::now() >= deadline || handles.iter().any(|h| h.is_finished()) {
                result = Err("not every stream started".to_string());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if result.is_ok() {
            let (c0, t0) = (flow.bytes.load(Ordering::SeqCst), Instant::now());
            std::thread::sleep(WINDOW);
            let (c1, secs) = (
                flow.bytes.load(Ordering::SeqCst),
                t0.elapsed().as_secs_f64(),
            );
            result = Ok(c1.saturating_sub(c0) as f64 / secs);
        }
        flow.stop.store(true, Ordering::SeqCst);
        for h in handles {
            match h.join() {
                Ok(Err(e)) if result.is_ok() => result = Err(e),
                Err(_) => result = Err("a stream failed".into()),
                _ => {}
            }
        }
        result
    })
}

fn mb(rate: f64) -> String {
    format!("{:.1} MB/s", rate / 1e6)
}

/// The largest receive buffer TCP may grow to (`tcp_rmem`'s third field).
fn rmem_max() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem")
        .ok()?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// The smallest of three TCP handshakes to `addr`, in milliseconds.
fn handshake_rtt(addr: std::net::SocketAddr) -> Option<f64> {
    (0..3)
        .filter_map(|_| {
            let t = Instant::now();
            std::net::TcpStream::connect_timeout(&addr, super::limits::CONNECT)
                .ok()
                .map(|_| t.elapsed().as_secs_f64() * 1000.0)
        })
        .reduce(f64::min)
}

/// The speed check: one stream and [`STREAMS`] each way, the round trip to
/// `rtt_to`, and advice.
pub fn check(
    host: &str,
    user: Option<&str>,
    opts: &Options,
    rtt_to: Option<std::net::SocketAddr>,
) -> Check {
    let t = Instant::now();
    let c = Check::new("speed", "Speed");
    let dest = destination(host, user);
    let one =
        measure(opts, &dest, 1, false).and_then(|d| measure(opts, &dest, 1, true).map(|u| (d, u)));
    let many = one.as_ref().ok().map(|_| {
        measure(opts, &dest, STREAMS, false)
            .and_then(|d| measure(opts, &dest, STREAMS, true).map(|u| (d, u)))
    });
    let ((d1, u1), (dn, un)) = match (one, many) {
        (Ok(one), Some(Ok(many))) => (one, many),
        (Err(e), _) | (_, Some(Err(e))) => {
            return c
                .set(
                    Status::Warn,
                    "speed",
                    format!("could not measure over ssh: {e}"),
                )
                .took(t)
        }
        (Ok(_), None) => unreachable!("measured when one stream worked"),
    };
    let rtt = rtt_to.and_then(handshake_rtt);
    let mut c = c.ok(format!(
        "over ssh: 1 stream ↓ {} ↑ {}; {STREAMS} streams ↓ {} ↑ {}{}",
        mb(d1),
        mb(u1),
        mb(dn),
        mb(un),
        rtt.map(|r| format!("; round trip {}", super::ms_text(r)))
            .unwrap_or_default()
    ));
    let best_one = d1.max(u1);
    if dn.max(un) > best_one * 1.3 {
        c = c.ev(format!(
            "several streams carry {:.1}x one: use `--streams {STREAMS}` for large files",
            dn.max(un) / best_one
        ));
    } else {
        c = c.ev("one stream fills the path: more streams would not help");
    }
    if let (Some(rtt), Some(rmem)) = (rtt, rmem_max()) {
        // what one stream must keep in flight to fill the best rate seen
        let bdp = dn.max(un) * rtt / 1000.0;
        if bdp > rmem as f64 {
            c = c.ev(format!(
                "the bandwidth-delay product ({:.1} MiB) exceeds tcp_rmem's maximum ({:.1} MiB): raise net.core.rmem_max and net.ipv4.tcp_rmem, or use more streams",
                bdp / (1 << 20) as f64,
                rmem as f64 / (1 << 20) as f64
            ));
        }
    }
    c.took(t)
}
