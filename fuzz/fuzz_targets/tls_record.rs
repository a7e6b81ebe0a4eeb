//! The TLS record reader (ferry's own record layer after rustls's handshake)
//! against a peer that knows its keys: the input is a script of records to
//! seal and bytes to send (application data of every length up to the limit
//! and past it, padding, alerts, KeyUpdates at any point, post-handshake
//! messages, content types that may not come, altered, replayed and
//! reflected records, raw bytes, anything after close_notify), read back in
//! pieces and into buffers of the sizes it picks. Must never panic; the reader
//! must return exactly the data sealed, then end as a model of the script says
//! (close, truncation, or the error and the alert sent back), never holding
//! more than its read buffer. The harness is `ferry::transport::tls::harness`,
//! so that the unit tests replay `seeds/tls_record` through it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ferry::transport::tls::harness::run(data);
});
