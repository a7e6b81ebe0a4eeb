//! How a long listing looks, as `ls -l` and sftp lay it out: the time of a
//! file in local time (`Dec  5 09:47`, or `Dec  5  2025` when it is more than
//! six months old or in the future), and sizes in human units for `df -h`
//! (OpenSSH's `fmt_scaled`: `1.5G`, `264G`). Used by `ferry ls` and by
//! `ferry shell`'s `ls -l` and `df`.
//!
//! Not for machine output: `--json` keeps the numbers (seconds since the
//! epoch, bytes).

use chrono::{Local, TimeZone};

/// Half a year, as `ls` counts it: older (or future) times show the year.
const SIX_MONTHS: i64 = 365 * 24 * 3600 / 2;

/// `mtime` (seconds since the epoch) as `ls -l` shows it, in local time,
/// seen at `now`.
pub fn time(mtime: i64, now: i64) -> String {
    let Some(t) = Local.timestamp_opt(mtime, 0).single() else {
        return mtime.to_string();
    };
    let recent = mtime <= now && now - mtime < SIX_MONTHS;
    if recent {
        t.format("%b %e %H:%M").to_string()
    } else {
        t.format("%b %e  %Y").to_string()
    }
}

/// The seconds since the epoch now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `bytes` in the units `df -h` and sftp's `df -h` show: B, K, M, G, T, P,
/// E by 1024, one decimal below 10 (`1.5G`), whole above (`264G`).
pub fn human(bytes: u64) -> String {
    const UNITS: [char; 7] = ['B', 'K', 'M', 'G', 'T', 'P', 'E'];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes}B");
    }
    if value < 10.0 && (value * 10.0).round() < 100.0 {
        format!("{:.1}{}", value, UNITS[unit])
    } else {
        format!("{:.0}{}", value.round(), UNITS[unit])
    }
}

/// Percent of `total` in use, as df rounds it (up); 0 for an empty total.
pub fn capacity(used: u64, total: u64) -> u64 {
    if total == 0 {
        return 0;
    }
    (used as u128 * 100).div_ceil(total as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_times_show_the_clock_and_old_ones_the_year() {
        // (the test runs in whatever zone the machine has: only the shape)
        let now = 1_764_928_000; // 2025-12-05
        let recent = time(now - 3600, now);
        assert_eq!(recent.len(), 12, "{recent:?}");
        assert_eq!(&recent[9..10], ":", "{recent:?}");
        let old = time(now - 400 * 86400, now);
        assert_eq!(old.len(), 12, "{old:?}");
        assert!(old.ends_with(" 2024"), "{old:?}");
        let future = time(now + 86400 * 40, now);
        assert!(future.ends_with(" 2026"), "{future:?}");
    }

    #[test]
    fn sizes_scale_by_1024_with_one_decimal_below_ten() {
        assert_eq!(human(0), "0B");
        assert_eq!(human(1023), "1023B");
        assert_eq!(human(1024), "1.0K");
        assert_eq!(human(1536), "1.5K");
        assert_eq!(human(264_212_084 * 1024), "252G");
        assert_eq!(human(10 * 1024 * 1024), "10M");
        assert_eq!(human(1024 * 1024 * 1024 * 3 / 2), "1.5G");
    }

    #[test]
    fn capacity_rounds_up_as_df_does() {
        assert_eq!(capacity(0, 100), 0);
        assert_eq!(capacity(1, 1000), 1);
        assert_eq!(capacity(50, 100), 50);
        assert_eq!(capacity(5, 0), 0);
    }
}
