//! The harness's bookkeeping: mean ± sample standard deviation over seeds, and flag counts split into attackers'
//! updates (true positives) and honest ones (false positives).

use pdc_coordinator::aggregation::{AnomalyReason, AnomalyScore};

/// Counts of one run's (or several runs') anomaly verdicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlagTally {
    /// Attackers' updates scored.
    pub attacker_updates: u64,
    /// Attackers' updates flagged (any reason).
    pub attacker_flagged: u64,
    /// Attackers' updates flagged for a free-riding reason (echo, negligible norm, noisy echo).
    pub attacker_free_rider: u64,
    /// Honest updates scored.
    pub honest_updates: u64,
    /// Honest updates flagged (any reason).
    pub honest_flagged: u64,
    /// Honest updates flagged for a free-riding reason.
    pub honest_free_rider: u64,
    /// Attackers' uploads refused by the upload checks (non-finite or above the norm bound).
    pub attacker_rejected: u64,
    /// Honest uploads refused by the upload checks.
    pub honest_rejected: u64,
    /// Honest updates flagged for each kind of reason, in [`ReasonKind`] order (an update may have several).
    pub honest_reasons: [u64; 7],
}

/// The kinds of anomaly reasons, for the breakdown of false positives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasonKind {
    /// The norm's z-score is too large.
    NormTooLarge = 0,
    /// The cosine to the centre is too low.
    LowCosine = 1,
    /// Too far from the centre.
    FarFromCentre = 2,
    /// The update is exactly zero: the global model echoed.
    Echo = 3,
    /// The norm is a negligible fraction of the round's median.
    NegligibleNorm = 4,
    /// A small norm without alignment to the centre: the global model plus noise.
    NoisyEcho = 5,
    /// Another update of the round is (nearly) the same vector.
    NearDuplicate = 6,
}

impl ReasonKind {
    /// The kind of `reason`.
    pub fn of(reason: &AnomalyReason) -> Self {
        match reason {
            AnomalyReason::NormTooLarge { .. } => Self::NormTooLarge,
            AnomalyReason::LowCosine { .. } => Self::LowCosine,
            AnomalyReason::FarFromCentre { .. } => Self::FarFromCentre,
            AnomalyReason::Echo => Self::Echo,
            AnomalyReason::NegligibleNorm { .. } => Self::NegligibleNorm,
            AnomalyReason::NoisyEcho { .. } => Self::NoisyEcho,
            AnomalyReason::NearDuplicate { .. } => Self::NearDuplicate,
        }
    }
}

impl FlagTally {
    /// Records one scored update.
    pub fn record(&mut self, attacker: bool, flagged: bool, free_rider: bool) {
        let (updates, any, riding) = if attacker {
            (&mut self.attacker_updates, &mut self.attacker_flagged, &mut self.attacker_free_rider)
        } else {
            (&mut self.honest_updates, &mut self.honest_flagged, &mut self.honest_free_rider)
        };
        *updates += 1;
        *any += u64::from(flagged);
        *riding += u64::from(free_rider);
    }

    /// Records one scored update with its reasons.
    pub fn record_score(&mut self, attacker: bool, score: &AnomalyScore) {
        self.record(attacker, score.flagged, score.is_free_rider());
        if !attacker {
            let mut seen = [false; 7];
            for reason in &score.reasons {
                seen[ReasonKind::of(reason) as usize] = true;
            }
            for (count, seen) in self.honest_reasons.iter_mut().zip(seen) {
                *count += u64::from(seen);
            }
        }
    }

    /// The share of honest updates flagged for `kind`.
    pub fn honest_reason_rate(&self, kind: ReasonKind) -> Option<f64> {
        ratio(self.honest_reasons[kind as usize], self.honest_updates)
    }

    /// Records an upload refused before scoring.
    pub fn record_rejected(&mut self, attacker: bool) {
        if attacker {
            self.attacker_rejected += 1;
        } else {
            self.honest_rejected += 1;
        }
    }

    /// Adds another tally.
    pub fn add(&mut self, other: &FlagTally) {
        self.attacker_updates += other.attacker_updates;
        self.attacker_flagged += other.attacker_flagged;
        self.attacker_free_rider += other.attacker_free_rider;
        self.honest_updates += other.honest_updates;
        self.honest_flagged += other.honest_flagged;
        self.honest_free_rider += other.honest_free_rider;
        self.attacker_rejected += other.attacker_rejected;
        self.honest_rejected += other.honest_rejected;
        for (mine, theirs) in self.honest_reasons.iter_mut().zip(other.honest_reasons) {
            *mine += theirs;
        }
    }

    /// The share of all scored updates that were flagged, if any were scored.
    pub fn flagged_share(&self) -> Option<f64> {
        ratio(self.attacker_flagged + self.honest_flagged, self.attacker_updates + self.honest_updates)
    }

    /// True-positive rate: attackers' updates flagged over attackers' updates; `None` without attackers.
    pub fn true_positive_rate(&self) -> Option<f64> {
        ratio(self.attacker_flagged, self.attacker_updates)
    }

    /// False-positive rate: honest updates flagged over honest updates.
    pub fn false_positive_rate(&self) -> Option<f64> {
        ratio(self.honest_flagged, self.honest_updates)
    }

    /// The share of attackers' updates flagged as free riding.
    pub fn free_rider_rate(&self) -> Option<f64> {
        ratio(self.attacker_free_rider, self.attacker_updates)
    }
}

/// `numerator / denominator`, or `None` for an empty denominator.
pub fn ratio(numerator: u64, denominator: u64) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

/// Mean and sample standard deviation of a metric over seeds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// The mean.
    pub mean: f64,
    /// The sample standard deviation (n − 1 in the denominator; 0 for a single value).
    pub std: f64,
    /// The number of values.
    pub n: usize,
}

impl Summary {
    /// Summarises `values`; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (values.iter().map(|value| (value - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Summary { mean, std, n })
    }
}

/// The drop of `value` below `baseline`, in points (hundredths of AUROC): positive is worse.
pub fn drop_points(baseline: f64, value: f64) -> f64 {
    100.0 * (baseline - value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_uses_the_sample_standard_deviation() {
        let summary = Summary::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!(summary.mean, 5.0);
        // Σ(x − 5)² = 32 over n − 1 = 7.
        assert!((summary.std - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(summary.n, 8);
        assert_eq!(Summary::of(&[0.9]), Some(Summary { mean: 0.9, std: 0.0, n: 1 }));
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn drops_are_in_points() {
        assert!((drop_points(0.99, 0.95) - 4.0).abs() < 1e-9);
        assert!(drop_points(0.95, 0.99) < 0.0);
    }

    #[test]
    fn flags_split_into_true_and_false_positives() {
        let mut tally = FlagTally::default();
        // Two attackers flagged in 3 of 4 updates (2 as free riders), six honest hospitals flagged once in 12.
        for (flagged, free_rider) in [(true, true), (true, true), (true, false), (false, false)] {
            tally.record(true, flagged, free_rider);
        }
        for i in 0..12 {
            tally.record(false, i == 5, false);
        }
        assert_eq!(tally.true_positive_rate(), Some(0.75));
        assert_eq!(tally.free_rider_rate(), Some(0.5));
        assert_eq!(tally.false_positive_rate(), Some(1.0 / 12.0));
        assert_eq!(tally.flagged_share(), Some(4.0 / 16.0));
        tally.record_rejected(true);
        assert_eq!(tally.attacker_rejected, 1);
        let mut total = FlagTally::default();
        total.add(&tally);
        total.add(&tally);
        assert_eq!(total.attacker_updates, 8);
        assert_eq!(total.true_positive_rate(), Some(0.75));
        assert_eq!(FlagTally::default().true_positive_rate(), None);
    }

    #[test]
    fn honest_flags_are_broken_down_by_reason_once_per_kind() {
        let score = |reasons: Vec<AnomalyReason>| AnomalyScore {
            norm: 1.0,
            norm_ratio: 1.0,
            norm_z: 0.0,
            distance: 0.0,
            distance_ratio: 0.0,
            cosine: 1.0,
            nearest_ratio: 1.0,
            flagged: !reasons.is_empty(),
            reasons,
        };
        let mut tally = FlagTally::default();
        let norm = AnomalyReason::NormTooLarge { norm_z: 5.0, limit: 3.5 };
        let cosine = AnomalyReason::LowCosine { cosine: -0.1, limit: 0.0 };
        tally.record_score(
            false,
            &score(vec![norm, cosine, AnomalyReason::FarFromCentre { distance_ratio: 4.0, limit: 3.0 }]),
        );
        tally.record_score(false, &score(vec![AnomalyReason::NoisyEcho { norm_ratio: 0.1, cosine: 0.1 }, cosine]));
        tally.record_score(false, &score(vec![]));
        tally.record_score(false, &score(vec![AnomalyReason::NearDuplicate { nearest_ratio: 0.0, limit: 0.01 }]));
        tally.record_score(true, &score(vec![AnomalyReason::Echo]));
        assert_eq!(tally.honest_reasons, [1, 2, 1, 0, 0, 1, 1]);
        assert_eq!(tally.honest_reason_rate(ReasonKind::LowCosine), Some(2.0 / 4.0));
        assert_eq!((tally.honest_flagged, tally.honest_free_rider, tally.attacker_free_rider), (3, 1, 1));
    }
}
