//! Hot paths of the replicated state at the sizes the issue names: merging 100,000 keys and
//! 10,000 service instances, and the anti-entropy exchange that finds one changed key among
//! 100,000 (delta extraction).

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use murmur_catalog::{Change, KvValue, NodeRecord, Replica, ReplicaConfig, Service};

const NOW: u64 = 1_700_000_000_000;
const BUDGET: usize = 1 << 20;

fn replica(name: &str, id: u64) -> Replica {
    Replica::new(name, id, 1, ReplicaConfig::default())
}

/// A replica holding `n` keys of ~100 bytes, and the changes that built it.
fn with_keys(n: usize) -> (Replica, Vec<Change>) {
    let mut r = replica("writer", 1);
    for i in 0..n {
        let value = Some(KvValue {
            flags: 0,
            value: vec![b'x'; 64],
        });
        r.kv_write(&format!("app/{:03}/key-{i:06}", i % 500), value, None, NOW)
            .expect("valid write");
    }
    let changes = r.take_outbox();
    r.take_journal();
    (r, changes)
}

/// Record changes of `nodes` nodes with `per_node` services each.
fn records(nodes: usize, per_node: usize) -> Vec<Change> {
    (0..nodes)
        .flat_map(|n| {
            let mut r = replica(&format!("node-{n}"), n as u64 + 10);
            let services: BTreeMap<_, Service> = (0..per_node)
                .map(|s| {
                    let id = compact_str::format_compact!("svc-{s}-{n}");
                    let service = Service {
                        id: id.clone(),
                        name: format!("svc-{s}").into(),
                        tags: vec!["v1".into(), "primary".into()],
                        address: Default::default(),
                        port: 8000 + s as u16,
                        meta: BTreeMap::new(),
                        weight_passing: 1,
                        weight_warning: 1,
                    };
                    (id, service)
                })
                .collect();
            r.set_own_record(Some(NodeRecord {
                address: format!("10.0.{}.{}", n / 256, n % 256),
                datacenter: "dc1".into(),
                services,
                ..NodeRecord::default()
            }));
            r.take_outbox()
        })
        .collect()
}

fn apply_all(changes: &[Change]) -> Replica {
    let mut r = replica("reader", 2);
    for c in changes {
        r.apply(c, NOW).expect("valid change");
    }
    r
}

fn merge(c: &mut Criterion) {
    let (_, keys) = with_keys(100_000);
    c.bench_function("merge 100k keys into an empty replica", |b| {
        b.iter(|| black_box(apply_all(&keys)))
    });
    let services = records(1_000, 10);
    c.bench_function("merge 10k service instances (1k nodes x 10)", |b| {
        b.iter(|| black_box(apply_all(&services)))
    });
    let full = apply_all(&services);
    c.bench_function("query instances of one service among 10k", |b| {
        let failed = Default::default();
        b.iter(|| black_box(full.catalog(&failed).instances("svc-3", &["v1"]).len()))
    });
}

fn delta(c: &mut Criterion) {
    let (source, keys) = with_keys(100_000);
    let mut behind = apply_all(&keys);
    behind.take_journal();
    let mut ahead = source.clone();
    ahead
        .kv_write("app/000/changed", Some(KvValue::default()), None, NOW + 1)
        .expect("valid write");
    c.bench_function(
        "anti-entropy: find and fetch 1 changed key among 100k",
        |b| {
            b.iter_batched(
                || (behind.clone(), ahead.clone()),
                |(mut initiator, mut responder)| {
                    let digest = initiator.sync_digest(NOW);
                    let summary = responder
                        .answer_digest(&digest, NOW, BUDGET)
                        .expect("valid");
                    let push = initiator.reconcile(&summary, NOW, BUDGET).expect("valid");
                    let reply = responder.answer_push(&push, NOW, BUDGET);
                    initiator.finish_sync(&reply, NOW);
                    black_box((initiator, responder))
                },
                BatchSize::LargeInput,
            )
        },
    );
    c.bench_function("digest of 100k keys and 10k instances", |b| {
        let mut r = behind.clone();
        for change in records(1_000, 10) {
            r.apply(&change, NOW).expect("valid");
        }
        b.iter(|| black_box(r.sync_digest(NOW)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = merge, delta
}
criterion_main!(benches);
