//! Heap held by one replica with 10,000 service instances (1,000 nodes x 10) and 100,000 KV
//! keys of 64-byte values, and by one holding 172,000 instances as 256 agents register them
//! (672 per node record), counted by a counting global allocator (bytes asked for and live
//! allocations: each small one costs the system allocator 16–32 bytes more than it asked).
//! Run with `cargo run --release -p murmur-catalog --example footprint`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use murmur_catalog::{Change, KvValue, NodeRecord, Replica, ReplicaConfig, Service};

/// The system allocator, counting live bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static LIVE_ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        LIVE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        LIVE_ALLOCATIONS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const NOW: u64 = 1_700_000_000_000;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let before = LIVE.load(Ordering::Relaxed);
    let mut replica = Replica::new("reader", 1, 1, ReplicaConfig::default());
    let mut writer = Replica::new("writer", 2, 1, ReplicaConfig::default());
    for i in 0..100_000 {
        let value = Some(KvValue {
            flags: 0,
            value: vec![b'x'; 64],
        });
        writer
            .kv_write(&format!("app/{:03}/key-{i:06}", i % 500), value, None, NOW)
            .expect("valid write");
        for change in writer.take_outbox() {
            replica.apply(&change, NOW).expect("valid change");
        }
    }
    drop(writer);
    replica.take_journal();
    let keys = LIVE.load(Ordering::Relaxed) - before;
    let (services, _) = add_instances(&mut replica, 1_000, 10);
    println!(
        "100,000 keys (64-byte values): {:.1} MiB of heap",
        mib(keys)
    );
    println!(
        "10,000 service instances (1,000 records): {:.1} MiB of heap",
        mib(services)
    );
    println!(
        "one replica holding both: {:.1} MiB",
        mib(LIVE.load(Ordering::Relaxed) - before)
    );
    drop(replica);
    let mut replica = Replica::new("reader", 1, 1, ReplicaConfig::default());
    let (bytes, allocations) = add_instances(&mut replica, 256, 672);
    let instances = 256 * 672;
    println!(
        "{instances} service instances (256 records): {:.1} MiB of heap, {} bytes and {:.2} \
         allocations per instance",
        mib(bytes),
        bytes / instances,
        allocations as f64 / instances as f64
    );
}

/// Applies the records of `nodes` nodes with `per_node` services each (one tag, no meta) to
/// `replica`; returns the heap bytes and allocations that added.
fn add_instances(replica: &mut Replica, nodes: u64, per_node: u16) -> (usize, usize) {
    let before = (
        LIVE.load(Ordering::Relaxed),
        LIVE_ALLOCATIONS.load(Ordering::Relaxed),
    );
    for n in 0..nodes {
        let mut node = Replica::new(&format!("node-{n}"), n + 10, 1, ReplicaConfig::default());
        let services: BTreeMap<_, Service> = (0..per_node)
            .map(|s| {
                let id = compact_str::format_compact!("svc-{s}-{n}");
                let service = Service {
                    id: id.clone(),
                    name: format!("svc-{}", s % 1000).into(),
                    tags: vec!["v1".into()],
                    address: Default::default(),
                    port: 8000 + s,
                    meta: BTreeMap::new(),
                    weight_passing: 1,
                    weight_warning: 1,
                };
                (id, service)
            })
            .collect();
        node.set_own_record(Some(NodeRecord {
            address: "10.0.0.1".into(),
            datacenter: "dc1".into(),
            services,
            ..NodeRecord::default()
        }));
        for change in node.take_outbox() {
            // Decoded, as an agent gets a peer's record off the wire: the heap it builds is
            // the decoder's, not a copy of the writer's.
            let config = bincode::config::standard();
            let bytes = bincode::serde::encode_to_vec(&change, config).expect("encodes");
            let (change, _): (Change, _) =
                bincode::serde::decode_from_slice(&bytes, config).expect("decodes");
            replica.apply(&change, NOW).expect("valid change");
        }
    }
    replica.take_journal();
    (
        LIVE.load(Ordering::Relaxed) - before.0,
        LIVE_ALLOCATIONS.load(Ordering::Relaxed) - before.1,
    )
}
