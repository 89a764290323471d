//! Counters a member keeps about its traffic and about what it refused to read.

use crate::wire::DropReason;

/// Input dropped unread, one counter per reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// Not a murmur envelope, or truncated.
    pub malformed: u64,
    /// Another protocol version.
    pub wrong_version: u64,
    /// Another cluster id.
    pub wrong_cluster: u64,
    /// No installed key opens it.
    pub undecryptable: u64,
    /// Plaintext where encryption is required.
    pub unexpected_plaintext: u64,
    /// Sealed where this member has no keys.
    pub unexpected_sealed: u64,
    /// Opened but did not decode.
    pub undecodable: u64,
    /// Decoded but refused: by the SWIM core (e.g. addressed to an older identity of ours),
    /// or an ask for offered changes from an address no member gossips at.
    pub refused: u64,
}

impl DropCounts {
    pub(crate) fn count(&mut self, reason: DropReason) {
        let counter = match reason {
            DropReason::Malformed => &mut self.malformed,
            DropReason::WrongVersion => &mut self.wrong_version,
            DropReason::WrongCluster => &mut self.wrong_cluster,
            DropReason::Undecryptable => &mut self.undecryptable,
            DropReason::UnexpectedPlaintext => &mut self.unexpected_plaintext,
            DropReason::UnexpectedSealed => &mut self.unexpected_sealed,
            DropReason::Undecodable => &mut self.undecodable,
        };
        *counter += 1;
    }

    /// Every counter with its name, for `/v1/agent/self` and metrics.
    pub fn named(&self) -> [(&'static str, u64); 8] {
        [
            ("malformed", self.malformed),
            ("wrong_version", self.wrong_version),
            ("wrong_cluster", self.wrong_cluster),
            ("undecryptable", self.undecryptable),
            ("unexpected_plaintext", self.unexpected_plaintext),
            ("unexpected_sealed", self.unexpected_sealed),
            ("undecodable", self.undecodable),
            ("refused", self.refused),
        ]
    }

    /// All drops together.
    pub fn total(&self) -> u64 {
        self.named().iter().map(|(_, n)| n).sum()
    }
}

/// Traffic and drop counters of one member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams received (including dropped ones).
    pub packets_received: u64,
    /// Datagrams sent.
    pub packets_sent: u64,
    /// Bytes of datagrams received.
    pub bytes_received: u64,
    /// Bytes of datagrams sent.
    pub bytes_sent: u64,
    /// What was dropped, and why.
    pub dropped: DropCounts,
    /// Local changes not queued for gossip because the queue was full (anti-entropy repairs).
    pub changes_dropped: u64,
    /// Large changes peers offered that this member lacked and asked for.
    pub offered_changes_wanted: u64,
    /// Large changes peers offered that this member held already: copies not sent.
    pub offered_changes_known: u64,
    /// Offered changes asked for again, of another member that offered them: the first answer
    /// or the stream carrying the change was lost.
    pub offered_changes_asked_again: u64,
    /// Round trips that moved this member's network coordinate.
    pub coordinate_samples: u64,
    /// Evidence that members are unreachable (see [`UnreachableCounts`]).
    pub unreachable: UnreachableCounts,
}

/// How a member confirmed others unreachable: its hosts' answers for crashed processes, and
/// its own checks of suspected members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnreachableCounts {
    /// Signals from the driver: a datagram bounced or a stream was refused.
    pub signals: u64,
    /// Reports received from other members.
    pub reports: u64,
    /// Checks of a suspected or reported member that went unanswered.
    pub silent_checks: u64,
    /// Tethers held for other members that ended: each started a check of its member.
    pub tethers_lost: u64,
    /// Members this one declared down on enough reports.
    pub declared: u64,
}

impl UnreachableCounts {
    /// Every counter with its name, for `/v1/agent/self` and metrics.
    pub fn named(&self) -> [(&'static str, u64); 5] {
        [
            ("signal", self.signals),
            ("report", self.reports),
            ("silent_check", self.silent_checks),
            ("tether_lost", self.tethers_lost),
            ("declared", self.declared),
        ]
    }
}

impl Stats {
    /// Counts an error foca returned for a message: decoding failures as undecodable, the
    /// rest (stale or misaddressed messages) as refused.
    pub(crate) fn count_foca_error(&mut self, err: &foca::Error) {
        match err {
            foca::Error::MalformedPacket
            | foca::Error::Decode(_)
            | foca::Error::CustomBroadcast(_) => {
                self.dropped.undecodable += 1;
            }
            _ => self.dropped.refused += 1,
        }
    }
}
