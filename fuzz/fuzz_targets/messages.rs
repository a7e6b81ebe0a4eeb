//! One frame's payload, decoded as any message (the tag picks the decoder), and
//! the two handshake greetings. Decoding must never panic; what decodes must
//! round-trip through the encoder.
#![no_main]

use ferry::proto::{check_server_hello, choose_version, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::decode(data) {
        let payload = msg.to_payload();
        assert_eq!(
            Message::decode(&payload).expect("re-encoded message decodes"),
            msg
        );
    }
    if let Ok(hello) = <[u8; 9]>::try_from(data.get(..9).unwrap_or_default()) {
        if let Ok(v) = choose_version(&hello) {
            assert!(v >= 1);
        }
    }
    if let Ok(reply) = <[u8; 7]>::try_from(data.get(..7).unwrap_or_default()) {
        let _ = check_server_hello(&reply);
    }
});
