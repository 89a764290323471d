//! Network coordinates as replicated data: where a node sits in serf's Vivaldi space (8
//! dimensions plus a height), so any agent estimates the round-trip time between any two
//! nodes without measuring it.
//!
//! A node's LAN coordinate lives under `coordinate/<node>` (its datacenter's data, written
//! by the node itself, gone with its record when it is reaped); a gateway's WAN coordinate
//! rides in its datacenter directory entry (`datacenter/`, global). The math that moves a
//! coordinate is the gossip crate's (`murmur_gossip::vivaldi`); this module holds the value,
//! checks one a peer sent, and measures distance.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Key prefix of LAN coordinates.
pub const COORDINATE_PREFIX: &str = "coordinate/";

/// Dimensions of the Euclidean part, as serf's default.
pub const DIMENSIONS: usize = 8;
/// The largest error a coordinate claims (serf's `VivaldiErrorMax`): a new one has it.
pub const ERROR_MAX: f64 = 1.5;
/// The least height, in seconds (serf's `HeightMin`, 10 µs).
pub const HEIGHT_MIN: f64 = 10.0e-6;
/// Any component beyond this many seconds is nonsense (10,000 s): refused.
const COMPONENT_MAX: f64 = 1.0e4;

/// A node's place in Vivaldi space, in seconds, with the fields and meaning of serf's (and
/// so of Consul's `/v1/coordinate` answers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coordinate {
    /// The Euclidean part.
    pub vec: [f64; DIMENSIONS],
    /// How unsure the node is of its place (0 … [`ERROR_MAX`]).
    pub error: f64,
    /// An offset learned from how far off the estimates ran (may be negative).
    pub adjustment: f64,
    /// The distance from the node to the network's core: its access link.
    pub height: f64,
}

impl Default for Coordinate {
    /// A node that has measured nothing: at the origin, as unsure as can be.
    fn default() -> Self {
        Self {
            vec: [0.0; DIMENSIONS],
            error: ERROR_MAX,
            adjustment: 0.0,
            height: HEIGHT_MIN,
        }
    }
}

impl Coordinate {
    /// The shared-map key of `node`'s LAN coordinate.
    pub fn key(node: &str) -> String {
        format!("{COORDINATE_PREFIX}{node}")
    }

    /// Whether every component is a finite number in range: a peer's coordinate that is not
    /// would poison every estimate made from it.
    pub fn is_valid(&self) -> bool {
        let finite = |x: f64| x.is_finite() && x.abs() <= COMPONENT_MAX;
        self.vec.iter().all(|&x| finite(x))
            && finite(self.error)
            && self.error >= 0.0
            && finite(self.adjustment)
            && finite(self.height)
            && self.height >= 0.0
    }

    /// The distance without the adjustments, in seconds.
    pub fn raw_distance(&self, other: &Self) -> f64 {
        let squares: f64 = self
            .vec
            .iter()
            .zip(&other.vec)
            .map(|(a, b)| (a - b) * (a - b))
            .sum();
        squares.sqrt() + self.height + other.height
    }

    /// The estimated round-trip time to `other` (serf's `DistanceTo`): the adjustments are
    /// applied unless they would make it negative.
    pub fn distance(&self, other: &Self) -> Duration {
        let raw = self.raw_distance(other);
        let adjusted = raw + self.adjustment + other.adjustment;
        let seconds = if adjusted > 0.0 { adjusted } else { raw };
        Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
    }

    /// Every component as bits: valid coordinates hold no NaN, so this is a total order
    /// that agrees with equality.
    fn bits(&self) -> ([u64; DIMENSIONS], [u64; 3]) {
        (
            self.vec.map(f64::to_bits),
            [self.error, self.adjustment, self.height].map(f64::to_bits),
        )
    }

    /// Rough size in bytes, for budgets.
    pub(crate) fn weight(&self) -> usize {
        (DIMENSIONS + 3) * 8
    }
}

// Replicated values are ordered and hashed (a tie between two writes is broken by value);
// coordinates are by their bits.
impl Eq for Coordinate {}

impl PartialOrd for Coordinate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Coordinate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.bits().cmp(&other.bits())
    }
}

impl Hash for Coordinate {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bits().hash(state);
    }
}

/// The node a `coordinate/` key is of.
pub(crate) fn node_of_key(key: &str) -> Option<&str> {
    key.strip_prefix(COORDINATE_PREFIX)
        .filter(|n| !n.is_empty() && !n.contains('/'))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn at(vec: [f64; DIMENSIONS], height: f64, adjustment: f64) -> Coordinate {
        Coordinate {
            vec,
            error: 0.1,
            adjustment,
            height,
        }
    }

    #[test]
    fn distance_is_euclidean_plus_heights_and_adjustments_unless_negative() {
        let mut v = [0.0; DIMENSIONS];
        v[0] = 0.003;
        v[1] = 0.004;
        let a = at([0.0; DIMENSIONS], 0.001, 0.0);
        let b = at(v, 0.002, 0.0);
        // 5 ms apart, plus 1 ms and 2 ms of height.
        assert_eq!(a.distance(&b).as_micros(), 8_000);
        let pulled = at(v, 0.002, -0.001);
        assert_eq!(a.distance(&pulled).as_micros(), 7_000);
        let too_far = at(v, 0.002, -1.0);
        assert_eq!(a.distance(&too_far).as_micros(), 8_000, "raw when negative");
    }

    #[test]
    fn nonsense_is_invalid() {
        assert!(Coordinate::default().is_valid());
        for bad in [f64::NAN, f64::INFINITY, 1.0e9] {
            let mut c = Coordinate::default();
            c.vec[3] = bad;
            assert!(!c.is_valid(), "{bad}");
            let c = Coordinate {
                height: bad,
                ..Coordinate::default()
            };
            assert!(!c.is_valid(), "{bad}");
        }
        let negative = Coordinate {
            error: -1.0,
            ..Coordinate::default()
        };
        assert!(!negative.is_valid());
        assert_eq!(node_of_key(&Coordinate::key("web-1")), Some("web-1"));
        assert_eq!(node_of_key("coordinate/"), None);
        assert_eq!(node_of_key("kv/web-1"), None);
    }

    proptest! {
        #[test]
        fn distance_is_symmetric_and_order_agrees_with_equality(
            a in proptest::array::uniform8(-1.0f64..1.0),
            b in proptest::array::uniform8(-1.0f64..1.0),
            ha in 0.0f64..0.1,
            hb in 0.0f64..0.1,
        ) {
            let (x, y) = (at(a, ha, 0.0), at(b, hb, 0.0));
            prop_assert_eq!(x.distance(&y), y.distance(&x));
            prop_assert_eq!(x.cmp(&y) == Ordering::Equal, x == y);
        }
    }
}
