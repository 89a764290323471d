//! Network coordinates: once per probe period the node pings one random member with a
//! small datagram of its own, and the reply carries that member's coordinate; the round
//! trip, measured on the driver's monotonic time, moves this node's [`Vivaldi`] coordinate.
//!
//! serf takes the same sample from its SWIM probe's ack; foca's acks carry nothing of
//! ours, so the ping is a separate datagram kind (two small datagrams per period).

use std::net::SocketAddr;
use std::time::Duration;

use murmur_catalog::Coordinate;
use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::{Node, Output, TimerEvent};
use crate::vivaldi::Vivaldi;
use crate::wire::{self, DatagramKind};

/// The coordinate datagrams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum CoordinateMessage {
    /// "Reply to `from` with your coordinate", numbered so the reply finds its ping.
    Ping {
        /// Random, so a late or forged reply does not match.
        seq: u32,
        /// Where the reply goes.
        from: SocketAddr,
    },
    /// The reply.
    Pong {
        /// The ping's number.
        seq: u32,
        /// The replier's coordinate.
        coordinate: Coordinate,
    },
}

/// The ping awaiting its reply (one at a time: a newer ping replaces it).
#[derive(Debug, Clone)]
pub(crate) struct PendingPing {
    seq: u32,
    peer: String,
    sent: Duration,
}

/// What a node keeps for its coordinate.
#[derive(Debug, Default)]
pub(crate) struct Coordinates {
    pub(crate) vivaldi: Vivaldi,
    pending: Option<PendingPing>,
}

impl Node {
    /// This node's network coordinate in this pool.
    pub fn coordinate(&self) -> &Coordinate {
        self.coordinates.vivaldi.coordinate()
    }

    /// How many times the coordinate went invalid and started over.
    pub fn coordinate_resets(&self) -> u64 {
        self.coordinates.vivaldi.resets()
    }

    pub(super) fn schedule_coordinate_ping(&mut self) {
        let period = self.config.foca_config(1).probe_period;
        // Up to 10% jitter so members do not ping in step.
        let after = period + period.mul_f64(self.rng.random_range(0.0..0.1));
        self.outputs.push_back(Output::Timer {
            after,
            timer: TimerEvent::Coordinate,
        });
    }

    /// Time to ping: one random active member, unless alone or leaving.
    pub(super) fn ping_for_coordinate(&mut self) {
        self.schedule_coordinate_ping();
        if self.leaving {
            return;
        }
        let Some((peer, to)) = self
            .random_member()
            .map(|id| (id.name.to_string(), id.addr))
        else {
            return;
        };
        let seq = self.rng.random::<u32>();
        self.coordinates.pending = Some(PendingPing {
            seq,
            peer,
            sent: self.elapsed,
        });
        let from = self.identity().addr;
        self.send_coordinate(to, &CoordinateMessage::Ping { seq, from });
    }

    /// A coordinate datagram arrived.
    pub(super) fn handle_coordinate(&mut self, body: &[u8]) {
        let message = match wire::decode::<CoordinateMessage>(body) {
            Ok(message) => message,
            Err(reason) => return self.stats.dropped.count(reason),
        };
        match message {
            CoordinateMessage::Ping { seq, from } => {
                let coordinate = self.coordinate().clone();
                self.send_coordinate(from, &CoordinateMessage::Pong { seq, coordinate });
            }
            CoordinateMessage::Pong { seq, coordinate } => {
                let Some(ping) = self.coordinates.pending.take_if(|p| p.seq == seq) else {
                    // Late (a newer ping went out) or not ours.
                    return;
                };
                let rtt = self.elapsed.saturating_sub(ping.sent);
                let taken =
                    self.coordinates
                        .vivaldi
                        .sample(&ping.peer, &coordinate, rtt, &mut self.rng);
                match taken {
                    Ok(_) => self.stats.coordinate_samples += 1,
                    Err(err) => {
                        self.stats.dropped.refused += 1;
                        tracing::debug!(peer = %ping.peer, %err, "coordinate sample refused");
                    }
                }
            }
        }
    }

    /// Forgets what was learned of a member that was reaped.
    pub(super) fn forget_coordinate_of(&mut self, name: &str) {
        self.coordinates.vivaldi.forget(name);
    }

    fn send_coordinate(&mut self, to: SocketAddr, message: &CoordinateMessage) {
        self.send_datagram(to, DatagramKind::Coordinate, &wire::encode(message));
    }
}
