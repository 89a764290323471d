//! A stream reply from a peer we contacted: push-pull replies, anti-entropy summaries and
//! push replies, keyring replies.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut node = murmur_fuzz::node();
    let peer = SocketAddr::from(([127, 0, 0, 1], 2));
    let _ = node.handle_reply(peer, &murmur_fuzz::envelope(data));
    let _ = node
        .node_mut()
        .handle_keyring_reply(&murmur_fuzz::envelope(data));
    murmur_fuzz::drain(&mut node);
});
