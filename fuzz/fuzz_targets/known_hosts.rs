//! known_hosts text: looking a host up never panics; a line recording exactly
//! the presented key makes it known whatever else the file holds.
#![no_main]

use ferry::trust::key::PublicKey;
use ferry::trust::known_hosts::{check_text, HostKeyStatus};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let key = PublicKey([5u8; 32]);
    for label in ["example", "[10.0.0.1]:7070", ""] {
        let _ = check_text(text, label, &key);
    }
    let with_key = format!("{text}\n[h]:1 {}\n", key.to_openssh());
    assert_eq!(check_text(&with_key, "[h]:1", &key), HostKeyStatus::Known);
});
