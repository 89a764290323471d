//! A stream request from anyone: push-pull, keyring steps, anti-entropy digests and pushes,
//! flooded changes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut node = murmur_fuzz::node();
    let _ = node.handle_stream(data);
    let _ = node.handle_stream(&murmur_fuzz::envelope(data));
    murmur_fuzz::drain(&mut node);
});
