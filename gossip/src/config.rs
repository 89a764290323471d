//! Timing profiles. The LAN profile matches serf's LAN defaults (probe every 1 s with a 500 ms
//! timeout, suspicion multiplier 4, gossip to 3 members every 200 ms, push-pull every 30 s);
//! the WAN profile is for federation over slower links.

use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::time::Duration;

use crate::GossipError;
use crate::wire::{ENVELOPE_OVERHEAD, MAX_CLUSTER_ID_LEN, MAX_DATAGRAM};

/// Which timing profile a pool uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// One datacenter: low latency, fast detection.
    Lan,
    /// Between datacenters: slower probes, longer suspicion.
    Wan,
}

/// Settings of one gossip pool. Every member of a pool must use the same values.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// Cluster id carried in every packet; packets of other clusters are dropped.
    pub cluster_id: String,
    /// Timing profile.
    pub profile: Profile,
    /// Base interval of the full-state push-pull with one random member (scaled up for large
    /// clusters as memberlist does, so the total stream load stays flat).
    pub push_pull_interval: Duration,
    /// How long failed and left members stay listed before they are forgotten.
    pub reap_after: Duration,
    /// How often a member runs anti-entropy of the replicated state with a random member.
    pub sync_interval: Duration,
    /// First wait before a member that finds itself alone re-contacts its seeds; doubles on each
    /// attempt up to `rejoin_max`.
    pub rejoin_min: Duration,
    /// Longest wait between re-contacts of the seeds.
    pub rejoin_max: Duration,
}

impl GossipConfig {
    /// The LAN profile for the given cluster id.
    pub fn lan(cluster_id: &str) -> Self {
        Self {
            cluster_id: cluster_id.to_owned(),
            profile: Profile::Lan,
            push_pull_interval: Duration::from_secs(30),
            reap_after: Duration::from_secs(72 * 3600),
            sync_interval: Duration::from_secs(10),
            rejoin_min: Duration::from_secs(1),
            rejoin_max: Duration::from_secs(60),
        }
    }

    /// The WAN profile for the given cluster id.
    pub fn wan(cluster_id: &str) -> Self {
        Self {
            profile: Profile::Wan,
            push_pull_interval: Duration::from_secs(60),
            sync_interval: Duration::from_secs(30),
            ..Self::lan(cluster_id)
        }
    }

    /// Checks values a peer could not agree with.
    pub fn validate(&self) -> Result<(), GossipError> {
        let id = &self.cluster_id;
        if id.is_empty() || id.len() > MAX_CLUSTER_ID_LEN || !id.is_ascii() {
            return Err(GossipError::InvalidConfig(format!(
                "cluster id {id:?} must be 1 to {MAX_CLUSTER_ID_LEN} ASCII characters"
            )));
        }
        if self.sync_interval.is_zero() {
            return Err(GossipError::InvalidConfig(
                "anti-entropy interval must be positive".into(),
            ));
        }
        if self.rejoin_min.is_zero() || self.rejoin_max < self.rejoin_min {
            return Err(GossipError::InvalidConfig(
                "rejoin interval must be positive and rejoin_max at least rejoin_min".into(),
            ));
        }
        Ok(())
    }

    /// foca's settings for a cluster of about `size` members (suspicion time and retransmissions
    /// grow with the logarithm of the size).
    pub(crate) fn foca_config(&self, size: usize) -> foca::Config {
        let size = NonZeroU32::new(u32::try_from(size.max(1)).unwrap_or(u32::MAX))
            .unwrap_or(NonZeroU32::MIN);
        let mut config = match self.profile {
            Profile::Lan => foca::Config::new_lan(size),
            Profile::Wan => foca::Config::new_wan(size),
        };
        // memberlist's retransmit limit, 4 * ceil(log10(n + 1)); foca's own rounds the product
        // down and halves it for small clusters, which loses events in a 10-node cluster.
        let retransmits = 4 * (f64::from(size.get()) + 1.0).log10().ceil().max(1.0) as u32;
        config.max_transmissions = NonZeroU8::new(retransmits.min(255) as u8).expect("positive");
        config.max_packet_size =
            NonZeroUsize::new(MAX_DATAGRAM - ENVELOPE_OVERHEAD).expect("positive");
        config.remove_down_after = Some(self.reap_after);
        // Push-pull does what periodic announces would, with the whole member list.
        config.periodic_announce = None;
        if self.profile == Profile::Lan {
            // Halves of a healed split, each listing the other down, find each other only by
            // announcing to down members; foca's 65 s left a healed LAN split apart for minutes.
            config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
                frequency: Duration::from_secs(10),
                num_members: NonZeroUsize::new(2).expect("positive"),
            });
        }
        config
    }

    /// How long after a member crashes every member that can reach the others has declared
    /// it failed, barring bad luck of about one in a million per crash.
    ///
    /// Each member probes the others in a shuffled round, so the crashed one is first probed
    /// after k periods with probability about e^-k (14 periods: 10^-6); then it is suspected
    /// for the suspicion time, and the declaration takes a few seconds to reach everyone.
    pub fn failure_detection_bound(&self, size: usize) -> Duration {
        let foca = self.foca_config(size);
        foca.probe_period * 14 + foca.suspect_to_down_after + Duration::from_secs(5)
    }

    /// memberlist's push-pull scaling: every doubling past 32 members adds one base interval.
    pub(crate) fn push_pull_every(&self, size: usize) -> Duration {
        const THRESHOLD: f64 = 32.0;
        let size = size.max(1) as f64;
        if size <= THRESHOLD {
            return self.push_pull_interval;
        }
        let multiplier = (size.log2() - THRESHOLD.log2()).ceil() as u32 + 1;
        self.push_pull_interval * multiplier
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lan_profile_matches_serf() {
        let config = GossipConfig::lan("c").foca_config(32);
        assert_eq!(config.probe_period, Duration::from_secs(1));
        assert_eq!(config.probe_rtt, Duration::from_millis(500));
        let gossip = config.periodic_gossip.unwrap();
        assert_eq!(
            (gossip.frequency, gossip.num_members.get()),
            (Duration::from_millis(200), 3)
        );
        assert_eq!(
            config.max_transmissions.get(),
            8,
            "memberlist: 4 * ceil(log10(33))"
        );
    }

    #[test]
    fn push_pull_scales_like_memberlist() {
        let c = GossipConfig::lan("c");
        assert_eq!(c.push_pull_every(10), Duration::from_secs(30));
        assert_eq!(c.push_pull_every(64), Duration::from_secs(60));
        assert_eq!(c.push_pull_every(1000), Duration::from_secs(30 * 6));
    }

    #[test]
    fn bad_cluster_id_is_refused() {
        assert!(GossipConfig::lan("").validate().is_err());
        assert!(GossipConfig::lan(&"x".repeat(40)).validate().is_err());
        assert!(GossipConfig::lan("prod").validate().is_ok());
    }
}
