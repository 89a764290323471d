//! Vivaldi network coordinates, as serf computes them (`serf/coordinate`, with its default
//! parameters): each round-trip sample to a peer moves this node's coordinate like a spring
//! between the two, so that over time the distance between any two coordinates estimates
//! their round-trip time.
//!
//! Sans-IO like the rest of the crate: the RTT is measured by the node from times its driver
//! hands in, and the one random choice (a direction when two nodes sit on the same point)
//! comes from the caller's RNG.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use murmur_catalog::{Coordinate, DIMENSIONS, ERROR_MAX, HEIGHT_MIN};
use rand::{Rng, RngExt};

/// serf's `VivaldiCE`: how fast the error estimate follows the observed error.
const CE: f64 = 0.25;
/// serf's `VivaldiCC`: how far one sample moves the coordinate.
const CC: f64 = 0.25;
/// serf's `AdjustmentWindowSize`: samples the adjustment term averages over.
const ADJUSTMENT_WINDOW: usize = 20;
/// serf's `LatencyFilterSize`: each peer's RTT is the median of its last this many samples.
const LATENCY_FILTER: usize = 3;
/// serf's `GravityRho`: how weakly coordinates are pulled back to the origin (seconds).
const GRAVITY_RHO: f64 = 150.0;
/// Below this, a length is zero.
const ZERO: f64 = 1.0e-6;
/// serf refuses samples over 10 s: no real round trip takes that long.
pub const MAX_RTT: Duration = Duration::from_secs(10);
/// Peers whose samples are kept at most; the longest-unheard is forgotten beyond it.
const MAX_PEERS_KEPT: usize = 4096;

/// Why a sample was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    /// The peer's coordinate holds nonsense (NaN, infinities, absurd magnitudes).
    #[error("the peer's coordinate is not valid")]
    InvalidCoordinate,
    /// The round trip is over [`MAX_RTT`].
    #[error("round-trip time {0:?} is out of range")]
    OutOfRange(Duration),
}

/// One node's coordinate and what it learned to compute it.
#[derive(Debug, Clone)]
pub struct Vivaldi {
    coordinate: Coordinate,
    /// Recent `rtt - raw distance` samples, for the adjustment term.
    adjustments: [f64; ADJUSTMENT_WINDOW],
    adjustment_at: usize,
    /// The last few RTT samples of each peer, in seconds.
    samples: HashMap<String, VecDeque<f64>>,
    /// How many times the coordinate went invalid and was reset.
    resets: u64,
}

impl Default for Vivaldi {
    fn default() -> Self {
        Self::new()
    }
}

impl Vivaldi {
    /// A node that has measured nothing yet.
    pub fn new() -> Self {
        Self {
            coordinate: Coordinate::default(),
            adjustments: [0.0; ADJUSTMENT_WINDOW],
            adjustment_at: 0,
            samples: HashMap::new(),
            resets: 0,
        }
    }

    /// This node's coordinate now.
    pub fn coordinate(&self) -> &Coordinate {
        &self.coordinate
    }

    /// Times the coordinate went invalid (numerical trouble) and started over.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// Takes one sample: a round trip of `rtt` to `peer`, whose coordinate was `theirs`.
    pub fn sample(
        &mut self,
        peer: &str,
        theirs: &Coordinate,
        rtt: Duration,
        rng: &mut impl Rng,
    ) -> Result<&Coordinate, SampleError> {
        if !theirs.is_valid() {
            return Err(SampleError::InvalidCoordinate);
        }
        if rtt > MAX_RTT {
            return Err(SampleError::OutOfRange(rtt));
        }
        let rtt = self.filtered(peer, rtt.as_secs_f64());
        self.update_vivaldi(theirs, rtt, rng);
        self.update_adjustment(theirs, rtt);
        self.update_gravity(rng);
        if !self.coordinate.is_valid() {
            self.resets += 1;
            self.coordinate = Coordinate::default();
        }
        Ok(&self.coordinate)
    }

    /// Forgets `peer`'s samples (it left the pool).
    pub fn forget(&mut self, peer: &str) {
        self.samples.remove(peer);
    }

    /// The median of `peer`'s last few samples, `rtt` included: one slow reply (a pause, a
    /// queue) does not throw the coordinate.
    fn filtered(&mut self, peer: &str, rtt: f64) -> f64 {
        if self.samples.len() >= MAX_PEERS_KEPT && !self.samples.contains_key(peer) {
            // A pool this large probes each peer rarely: their filters restart anyway.
            self.samples.clear();
        }
        let kept = self.samples.entry(peer.to_owned()).or_default();
        kept.push_back(rtt);
        if kept.len() > LATENCY_FILTER {
            kept.pop_front();
        }
        let mut sorted: Vec<f64> = kept.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    }

    fn update_vivaldi(&mut self, theirs: &Coordinate, rtt: f64, rng: &mut impl Rng) {
        let me = &mut self.coordinate;
        let dist = me.distance(theirs).as_secs_f64();
        let rtt = rtt.max(ZERO);
        let wrongness = (dist - rtt).abs() / rtt;
        let total_error = (me.error + theirs.error).max(ZERO);
        let weight = me.error / total_error;
        me.error = (CE * weight * wrongness + me.error * (1.0 - CE * weight)).min(ERROR_MAX);
        let force = CC * weight * (rtt - dist);
        apply_force(me, force, theirs, rng);
    }

    fn update_adjustment(&mut self, theirs: &Coordinate, rtt: f64) {
        let dist = self.coordinate.raw_distance(theirs);
        self.adjustments[self.adjustment_at] = rtt - dist;
        self.adjustment_at = (self.adjustment_at + 1) % ADJUSTMENT_WINDOW;
        let sum: f64 = self.adjustments.iter().sum();
        self.coordinate.adjustment = sum / (2.0 * ADJUSTMENT_WINDOW as f64);
    }

    fn update_gravity(&mut self, rng: &mut impl Rng) {
        let origin = Coordinate::default();
        let dist = origin.distance(&self.coordinate).as_secs_f64();
        let force = -(dist / GRAVITY_RHO).powi(2);
        apply_force(&mut self.coordinate, force, &origin, rng);
    }
}

/// Moves `me` by `force` along the line from `other` (serf's `ApplyForce`): away when the
/// force is positive, toward when negative; the height grows or shrinks in proportion.
fn apply_force(me: &mut Coordinate, force: f64, other: &Coordinate, rng: &mut impl Rng) {
    let (unit, magnitude) = unit_vector_at(&me.vec, &other.vec, rng);
    for (x, u) in me.vec.iter_mut().zip(unit) {
        *x += u * force;
    }
    if magnitude > ZERO {
        me.height = ((me.height + other.height) * force / magnitude + me.height).max(HEIGHT_MIN);
    }
}

/// The unit vector from `b` to `a` and the distance between them; a random direction (and
/// distance zero) when they are on the same point, so two new nodes can push apart.
fn unit_vector_at(
    a: &[f64; DIMENSIONS],
    b: &[f64; DIMENSIONS],
    rng: &mut impl Rng,
) -> ([f64; DIMENSIONS], f64) {
    let mut diff = [0.0; DIMENSIONS];
    for (d, (x, y)) in diff.iter_mut().zip(a.iter().zip(b)) {
        *d = x - y;
    }
    let length = |v: &[f64; DIMENSIONS]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let magnitude = length(&diff);
    if magnitude > ZERO {
        return (diff.map(|d| d / magnitude), magnitude);
    }
    let random = [0.0; DIMENSIONS].map(|_: f64| rng.random::<f64>() - 0.5);
    let magnitude = length(&random);
    if magnitude > ZERO {
        return (random.map(|d| d / magnitude), 0.0);
    }
    let mut first = [0.0; DIMENSIONS];
    first[0] = 1.0;
    (first, 0.0)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    /// Nodes on a line, `spacing` apart in RTT, sampling each other at random: the
    /// estimates come to within a few percent of the truth, as serf's tests expect.
    #[test]
    fn coordinates_learn_the_distances_of_a_line() {
        let mut rng = StdRng::seed_from_u64(7);
        let n = 10;
        let spacing = 0.010;
        let mut nodes: Vec<Vivaldi> = (0..n).map(|_| Vivaldi::new()).collect();
        let truth = |i: usize, j: usize| (i as f64 - j as f64).abs() * spacing;
        for _ in 0..10_000 {
            let i = rng.random_range(0..n);
            let j = rng.random_range(0..n);
            if i == j {
                continue;
            }
            let theirs = nodes[j].coordinate().clone();
            let rtt = Duration::from_secs_f64(truth(i, j));
            nodes[i]
                .sample(&j.to_string(), &theirs, rtt, &mut rng)
                .unwrap();
        }
        for i in 0..n {
            for j in 0..n {
                if i == j {
                    continue;
                }
                let estimate = nodes[i]
                    .coordinate()
                    .distance(nodes[j].coordinate())
                    .as_secs_f64();
                let error = (estimate - truth(i, j)).abs();
                assert!(
                    error < 0.2 * truth(i, j) + 0.001,
                    "{i}-{j}: estimated {estimate:.4} s, truly {:.4} s",
                    truth(i, j)
                );
            }
        }
        assert_eq!(nodes[0].resets(), 0);
    }

    #[test]
    fn nonsense_samples_are_refused_and_leave_the_coordinate_alone() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut v = Vivaldi::new();
        let before = v.coordinate().clone();
        let nan = Coordinate {
            error: f64::NAN,
            ..Coordinate::default()
        };
        assert_eq!(
            v.sample("p", &nan, Duration::from_millis(1), &mut rng),
            Err(SampleError::InvalidCoordinate)
        );
        assert!(matches!(
            v.sample("p", &before, Duration::from_secs(11), &mut rng),
            Err(SampleError::OutOfRange(_))
        ));
        assert_eq!(*v.coordinate(), before);
    }

    #[test]
    fn one_slow_reply_does_not_move_the_estimate_much() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut v = Vivaldi::new();
        let peer = Coordinate::default();
        for _ in 0..3 {
            v.sample("p", &peer, Duration::from_millis(10), &mut rng)
                .unwrap();
        }
        assert_eq!(v.filtered("p", 5.0), 0.010, "the median of 10, 10, 5000 ms");
    }
}
