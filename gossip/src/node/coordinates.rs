//! Network coordinates, sampled from SWIM's own probes as serf does: a direct probe's round
//! trip, measured on the driver's monotonic time, is the sample, and the ack carries the
//! acking member's coordinate (the codec writes it after the ack's header and notes what it
//! sends and reads, [`crate::wire::ProbeTap`]). Each member probes one other a probe period,
//! so each takes one sample a period, and no datagram is sent for coordinates alone: a ping
//! and its reply of their own had been a third of an idle agent's packets.

use std::time::Duration;

use compact_str::CompactString;

use super::Node;

/// The direct probe awaiting its ack (foca runs one probe at a time; a newer one replaces it).
#[derive(Debug, Clone)]
pub(crate) struct PendingProbe {
    peer: CompactString,
    probe: foca::ProbeNumber,
    sent: Duration,
}

/// What a node keeps for its coordinate.
#[derive(Debug, Default)]
pub(crate) struct Coordinates {
    pub(crate) vivaldi: crate::vivaldi::Vivaldi,
    pending: Option<PendingProbe>,
}

impl Node {
    /// This node's network coordinate in this pool.
    pub fn coordinate(&self) -> &murmur_catalog::Coordinate {
        self.coordinates.vivaldi.coordinate()
    }

    /// How many times the coordinate went invalid and started over.
    pub fn coordinate_resets(&self) -> u64 {
        self.coordinates.vivaldi.resets()
    }

    /// Takes what the codec saw of probes during the last call into foca: a ping sent starts
    /// a round trip (on the driver's time of the call), its ack ends it and moves this node's
    /// coordinate; acks of other probes (late, or of a probe foca gave up) are dropped.
    pub(super) fn take_probe_samples(&mut self) {
        let (pings, acks) = {
            let mut probes = self.probes.lock().expect("probe tap poisoned");
            if probes.pings.is_empty() && probes.acks.is_empty() {
                return;
            }
            (
                std::mem::take(&mut probes.pings),
                std::mem::take(&mut probes.acks),
            )
        };
        for (peer, probe, coordinate) in acks {
            let Some(pending) = self
                .coordinates
                .pending
                .take_if(|p| p.peer == peer && p.probe == probe)
            else {
                continue;
            };
            let rtt = self.elapsed.saturating_sub(pending.sent);
            let taken = self
                .coordinates
                .vivaldi
                .sample(&peer, &coordinate, rtt, &mut self.rng);
            match taken {
                Ok(_) => {
                    self.stats.coordinate_samples += 1;
                    let own = self.coordinates.vivaldi.coordinate().clone();
                    self.probes.lock().expect("probe tap poisoned").own = own;
                }
                Err(err) => {
                    self.stats.dropped.refused += 1;
                    tracing::debug!(%peer, %err, "coordinate sample refused");
                }
            }
        }
        if let Some((peer, probe)) = pings.into_iter().last() {
            self.coordinates.pending = Some(PendingProbe {
                peer,
                probe,
                sent: self.elapsed,
            });
        }
    }

    /// Forgets what was learned of a member that was reaped.
    pub(super) fn forget_coordinate_of(&mut self, name: &str) {
        self.coordinates.vivaldi.forget(name);
    }
}
