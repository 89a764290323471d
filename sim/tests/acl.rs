//! ACL tokens on a virtual network with partitions: tokens made on both sides converge, and a
//! token revoked on one side stays revoked after the heal everywhere, even when the other side
//! updated it after the revocation (last-writer-wins alone would have brought it back).

use std::time::Duration;

use murmur_catalog::AclToken;
use murmur_sim::{Net, cluster};

fn token(accessor: &str, description: &str) -> AclToken {
    AclToken {
        accessor_id: accessor.into(),
        secret_hash: format!("hash-of-{accessor}"),
        description: description.into(),
        policies: vec!["p".into()],
        ..AclToken::default()
    }
}

fn put(net: &mut Net, at: usize, token: AclToken) {
    net.call(at, |n| n.write(|r, now| r.put_acl_token(token, now)));
}

/// The live tokens' accessors on node `at`, sorted and joined with commas.
fn live(net: &Net, at: usize) -> String {
    let replica = net.slots[at].node.as_ref().unwrap().replica();
    let mut ids: Vec<&str> = replica
        .acl_tokens()
        .map(|(t, _)| t.accessor_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.join(",")
}

#[test]
fn a_token_revoked_during_a_partition_stays_revoked_after_the_heal_on_every_node() {
    for seed in 1..=6 {
        let mut net = cluster(6, seed);
        put(&mut net, 0, token("t0", "made before the cut"));
        let spread = net.run_until(Duration::from_secs(30), |net| {
            net.running().into_iter().all(|i| live(net, i) == "t0")
        });
        assert!(spread.is_some(), "seed {seed}: t0 reached everyone");

        net.partition(&[0, 1, 2], &[3, 4, 5]);
        net.call(1, |n| n.write(|r, now| r.revoke_acl_token("t0", now)));
        put(&mut net, 2, token("left", "made on the left"));
        net.run_for(Duration::from_secs(2));
        // Later, on the other side, someone updates the revoked token, and makes another.
        put(
            &mut net,
            4,
            token("t0", "updated on the right, after the revocation"),
        );
        put(&mut net, 5, token("right", "made on the right"));
        let sides = net.run_until(Duration::from_secs(60), |net| {
            (0..3).all(|i| live(net, i) == "left") && (3..6).all(|i| live(net, i) == "right,t0")
        });
        assert!(
            sides.is_some(),
            "seed {seed}: each side holds its own view: {:?}",
            (0..6).map(|i| live(&net, i)).collect::<Vec<_>>()
        );

        net.heal();
        // Each side declared the other down; they find each other again through announcements
        // to down members (every 10 s on a LAN; 8.6–32 s for seeds 1–6).
        let converged = net.run_until(Duration::from_secs(120), |net| {
            net.running()
                .into_iter()
                .all(|i| live(net, i) == "left,right")
        });
        assert!(
            converged.is_some(),
            "seed {seed}: after the heal every node holds left and right, and not t0: {:?}",
            (0..6).map(|i| live(&net, i)).collect::<Vec<_>>()
        );
    }
}
