//! Filter rules as a client sends them to a daemon: building the rule list
//! never panics, and matching paths (also long ones) stays bounded — libFuzzer's
//! timeout catches exponential matching.
#![no_main]

use ferry::filter::Filters;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // rules first, one per line ('+' include, else exclude), then after a NUL
    // the paths to test, one per line
    let (rules, paths) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"a/b/c\nx.bin\n.git/config"[..]),
    };
    let rules: Vec<(bool, Vec<u8>)> = rules
        .split(|&b| b == b'\n')
        .map(|r| match r.strip_prefix(b"+") {
            Some(p) => (true, p.to_vec()),
            None => (false, r.to_vec()),
        })
        .collect();
    let Ok(filters) = Filters::new(&rules) else {
        return;
    };
    for path in paths.split(|&b| b == b'\n') {
        let _ = filters.excludes(path, false);
        let _ = filters.excludes(path, true);
    }
});
