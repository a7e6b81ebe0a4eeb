//! A byte stream from a peer, cut into frames and decoded into messages the way
//! a session reads it. Must never panic or allocate past the frame limit; every
//! message that decodes must encode back to a payload that decodes to itself.
#![no_main]

use ferry::proto::Message;
use ferry::session::wire::{Counters, FrameReader};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let mut reader = FrameReader::new(data, Arc::new(Counters::default()));
    while let Ok(Some(msg)) = reader.recv() {
        let again = Message::decode(&msg.to_payload()).expect("re-encoded message decodes");
        assert_eq!(again, msg);
    }
});
