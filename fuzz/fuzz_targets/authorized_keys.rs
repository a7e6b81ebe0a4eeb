//! authorized_keys text from a file an admin (or an attacker with write access
//! to a badly-moded file) wrote: parsing never panics, every line is either a
//! key or one message, and authorizing against what parsed never panics. The
//! seed corpus (fuzz/seeds/authorized_keys) holds lines with the key used here.
#![no_main]

use ferry::trust::authorized::AuthorizedKeys;
use ferry::trust::key::PublicKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (keys, problems) = AuthorizedKeys::parse(text);
    let lines = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
        .count();
    assert!(problems.len() <= lines);
    for p in &problems {
        assert!(!p.contains('\n'), "one-line messages: {p:?}");
    }
    let someone = PublicKey([9u8; 32]);
    for ip in ["127.0.0.1", "10.1.2.3", "::1", "fe80::1"] {
        if let Ok(grant) = keys.authorize(&someone, ip.parse().unwrap(), 1_800_000_000) {
            let _ = grant.check("SHA256:x", "data", true);
            let _ = grant.may_see("data");
        }
    }
});
