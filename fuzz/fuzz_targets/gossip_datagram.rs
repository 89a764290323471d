//! A datagram from anyone: envelope, foca's messages, piggybacked items (events, leaves,
//! replicated changes).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut node = murmur_fuzz::node();
    node.handle_datagram(data);
    node.handle_datagram(&murmur_fuzz::envelope(data));
    murmur_fuzz::drain(&mut node);
});
