//! `ferry doctor --speed`: throughput to the host with one stream and with
//! several at once, each way, beside the round trip, and the advice that
//! follows (more streams, bigger socket buffers, or neither). The streams
//! are ssh sessions (`head -c … /dev/zero` down, `dd of=/dev/null` up), so the figure
//! is the path's as ssh sees it: the daemon has no speed-test request, and
//! the doctor writes nothing on the host. Not part of a normal run: it takes
//! about 10 s.

use super::ssh::{batch_args, destination, ssh_words};
use super::{Check, Options, Status};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
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

/// Bytes per second from the host, once the first byte has arrived.
fn down(opts: &Options, dest: &str) -> Result<f64, String> {
    let mut child = spawn(opts, dest, "head -c 100000000000 /dev/zero", false)?;
    let mut out = child.stdout.take().expect("piped");
    let child = Arc::new(Mutex::new(child));
    watchdog(child.clone(), Instant::now() + LOGIN + WINDOW);
    let mut buf = vec![0u8; 256 << 10];
    let first = match out.read(&mut buf) {
        Ok(n) if n > 0 => Instant::now(),
        _ => return Err("the download did not start".into()),
    };
    let mut bytes = 0u64;
    while first.elapsed() < WINDOW {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes += n as u64,
        }
    }
    let secs = first.elapsed().as_secs_f64();
    let _ = child.lock().map(|mut c| c.kill());
    Ok(bytes as f64 / secs)
}

/// Bytes per second to the host: zeros into `dd` there for the window, as
/// `dd` counts and times them (it starts with the pipe already full).
fn up(opts: &Options, dest: &str) -> Result<f64, String> {
    let mut child = spawn(opts, dest, "LC_ALL=C dd of=/dev/null bs=64k 2>&1", true)?;
    let mut input = child.stdin.take().expect("piped");
    let mut out = child.stdout.take().expect("piped");
    let child = Arc::new(Mutex::new(child));
    watchdog(child.clone(), Instant::now() + LOGIN + WINDOW * 3);
    let buf = vec![0u8; 256 << 10];
    // the window starts once more than pipes and ssh's buffers could hold went in
    let mut written = 0u64;
    let mut start: Option<Instant> = None;
    loop {
        if input.write_all(&buf).is_err() {
            return Err("the upload stopped".into());
        }
        written += buf.len() as u64;
        match start {
            None if written >= 4 << 20 => start = Some(Instant::now()),
            Some(t) if t.elapsed() >= WINDOW => break,
            _ => {}
        }
    }
    drop(input);
    let mut text = String::new();
    let _ = out.read_to_string(&mut text);
    // "N bytes (…) copied, S s, R MB/s"
    let line = text
        .lines()
        .find(|l| l.contains(" bytes") && l.contains(" copied"))
        .ok_or_else(|| format!("dd on the host printed {:?}", text.trim()))?;
    let bytes: f64 = line
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("dd printed {line:?}"))?;
    let secs: f64 = line
        .split(" copied, ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .filter(|&s: &f64| s > 0.0)
        .ok_or_else(|| format!("dd printed {line:?}"))?;
    Ok(bytes / secs)
}

/// Runs `f` on `n` streams at once; the sum of their rates.
fn parallel(n: usize, f: impl Fn() -> Result<f64, String> + Sync) -> Result<f64, String> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n).map(|_| s.spawn(&f)).collect();
        let mut sum = 0.0;
        for h in handles {
            sum += h.join().map_err(|_| "a stream failed".to_string())??;
        }
        Ok(sum)
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
    let one = down(opts, &dest).and_then(|d| up(opts, &dest).map(|u| (d, u)));
    let many = one.as_ref().ok().map(|_| {
        parallel(STREAMS, || down(opts, &dest))
            .and_then(|d| parallel(STREAMS, || up(opts, &dest)).map(|u| (d, u)))
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
