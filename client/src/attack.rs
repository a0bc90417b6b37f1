//! Misbehaving hospitals, for tests and robustness benchmarks: the hospital config's optional `[attack]` table.
//!
//! An [`Attack`] acts at two points of a round (see [`crate::training::train_round_attacked`]): on the local table
//! before training ([`Attack::apply_to_table`]: label flipping, backdoor triggers) and on the trained delta before
//! upload ([`Attack::apply_to_delta`]: sign flipping, noise, scaling, ALIE, IPM, free riding). Crashing mid-upload
//! is the agent's business; it asks [`Attack::crash_after_bytes`].
//!
//! Everything is seeded and pure. Table attacks use only the attack's own `seed`, so the same rows are poisoned
//! every round, as in a poisoned data set; delta attacks mix in the round's training seed so their noise differs
//! from round to round. The generator is rand's `StdRng` (ChaCha12), reproducible for the locked `rand` version.
//!
//! ```toml
//! [attack]
//! kind = "sign_flip"   # label_flip | sign_flip | gaussian_noise | scale | backdoor | alie | ipm | free_ride
//! scale = 4.0          # | crash_mid_upload
//! ```
//!
//! **ALIE and IPM need the benign updates' statistics.** The papers assume an omniscient attacker that knows the
//! mean (IPM, ALIE) and the coordinate-wise standard deviation (ALIE) of the honest updates. A simulation may pass
//! them in ([`BenignEstimate`]); otherwise the attacker estimates them itself, the way a real colluding PDC could:
//! it splits its own table into `benign_runs` disjoint shards, trains one honest update on each from the same
//! global model, and takes their coordinate-wise mean and (population) standard deviation. Shards of one
//! hospital are more alike than different hospitals are, so this estimate understates the true spread; that
//! makes the self-estimated ALIE stealthier but weaker than the omniscient one.

use pdc_models::{Dataset, Task};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How a hospital misbehaves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Attack {
    /// Label flipping: binary labels `y → 1 − y`, regression labels `y → −y`, on a seeded `fraction` of the rows.
    LabelFlip {
        /// Share of rows flipped, in `(0, 1]` (default 1: every row).
        #[serde(default = "one")]
        fraction: f64,
        /// Chooses the rows when `fraction < 1`.
        #[serde(default)]
        seed: u64,
    },
    /// Sign flipping: the delta becomes `−scale · delta` (`scale` 1 or 4 in the usual experiments).
    SignFlip {
        /// Factor applied after the flip; positive (default 1).
        #[serde(default = "one")]
        scale: f64,
    },
    /// Additive Gaussian noise `N(0, std²)` on every coordinate of the delta.
    GaussianNoise {
        /// Standard deviation; positive.
        std: f64,
        /// Mixed with the round's seed.
        #[serde(default)]
        seed: u64,
    },
    /// Scaling: the delta is multiplied by `factor`.
    Scale {
        /// The factor; finite and non-zero.
        factor: f64,
    },
    /// Backdoor with model replacement (Bagdasaryan et al., 2020): a seeded `poison_fraction` of the local rows get
    /// `trigger_value` in every feature of `features` and `target_label` as label, and the delta trained on them is
    /// boosted by `boost` so that it survives averaging. Trigger values are in the table's own units: they are set
    /// before the study's standardisation.
    Backdoor {
        /// Feature columns that carry the trigger; at least one.
        features: Vec<String>,
        /// The trigger's value.
        trigger_value: f32,
        /// The label poisoned rows get (0 or 1 for binary classification).
        target_label: f32,
        /// Share of rows poisoned, in `(0, 1]` (default 0.2).
        #[serde(default = "default_poison_fraction")]
        poison_fraction: f64,
        /// Factor the delta is boosted by; positive (default 1: no boost).
        #[serde(default = "one")]
        boost: f64,
        /// Chooses the poisoned rows.
        #[serde(default)]
        seed: u64,
    },
    /// A Little Is Enough (Baruch et al., 2019): the delta becomes `μ − z·σ` coordinate-wise, from the benign
    /// updates' mean μ and standard deviation σ. Give `z`, or `n_pdcs` and `n_attackers` to compute Baruch et al.'s
    /// `z_max = Φ⁻¹((n − s)/n)` with `s = ⌊n/2 + 1⌋ − m`.
    Alie {
        /// The number of standard deviations to shift by.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        z: Option<f64>,
        /// The round's number of participants `n`, for `z_max`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        n_pdcs: Option<usize>,
        /// The number of colluding attackers `m`, for `z_max`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        n_attackers: Option<usize>,
        /// Shards of the local table trained to estimate μ and σ when they are not given (default 5).
        #[serde(default = "default_benign_runs")]
        benign_runs: usize,
        /// Chooses the shards.
        #[serde(default)]
        seed: u64,
    },
    /// Inner Product Manipulation (Xie et al., 2020): the delta becomes `−epsilon · μ`, μ the benign mean.
    Ipm {
        /// The factor; positive (default 0.1; the paper also uses 100 against Krum).
        #[serde(default = "default_ipm_epsilon")]
        epsilon: f64,
        /// Shards of the local table trained to estimate μ when it is not given (default 5).
        #[serde(default = "default_benign_runs")]
        benign_runs: usize,
        /// Chooses the shards.
        #[serde(default)]
        seed: u64,
    },
    /// Free riding: send back the global model (a zero delta), or the global model plus `N(0, noise_std²)` noise,
    /// without training.
    FreeRide {
        /// Noise on the echo; 0 (the default) is a pure echo.
        #[serde(default)]
        noise_std: f64,
        /// Mixed with the round's seed.
        #[serde(default)]
        seed: u64,
    },
    /// Crash mid-upload: train honestly, then abort after sending `after_bytes` bytes of the update's body.
    CrashMidUpload {
        /// Bytes of the body sent before the crash.
        after_bytes: u64,
    },
}

fn one() -> f64 {
    1.0
}

fn default_poison_fraction() -> f64 {
    0.2
}

fn default_benign_runs() -> usize {
    5
}

fn default_ipm_epsilon() -> f64 {
    0.1
}

/// The benign updates' coordinate-wise mean and standard deviation, for ALIE and IPM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenignEstimate {
    /// Coordinate-wise mean.
    pub mean: Vec<f32>,
    /// Coordinate-wise population standard deviation.
    pub std: Vec<f32>,
}

impl BenignEstimate {
    /// The mean and population standard deviation (`numpy.std`'s default) of `deltas`, in `f64`.
    ///
    /// ```
    /// use pdc_client::attack::BenignEstimate;
    /// let estimate = BenignEstimate::from_deltas(&[vec![1.0, 0.0], vec![3.0, 0.0]]).unwrap();
    /// assert_eq!(estimate.mean, [2.0, 0.0]);
    /// assert_eq!(estimate.std, [1.0, 0.0]);
    /// ```
    pub fn from_deltas(deltas: &[Vec<f32>]) -> Result<Self> {
        let Some(first) = deltas.first() else {
            return Err(Error::Attack("a benign estimate needs at least one update".into()));
        };
        let p = first.len();
        if deltas.iter().any(|delta| delta.len() != p) {
            return Err(Error::Attack("benign updates of different lengths".into()));
        }
        let n = deltas.len() as f64;
        let mut mean = vec![0.0f64; p];
        for delta in deltas {
            for (sum, &value) in mean.iter_mut().zip(delta) {
                *sum += f64::from(value);
            }
        }
        mean.iter_mut().for_each(|sum| *sum /= n);
        let mut variance = vec![0.0f64; p];
        for delta in deltas {
            for ((sum, &value), &mu) in variance.iter_mut().zip(delta).zip(&mean) {
                *sum += (f64::from(value) - mu).powi(2);
            }
        }
        Ok(Self {
            mean: mean.iter().map(|&mu| mu as f32).collect(),
            std: variance.iter().map(|&sum| (sum / n).sqrt() as f32).collect(),
        })
    }
}

impl Attack {
    /// Checks the parameters that TOML's types cannot; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let fraction = |value: f64, name: &str| {
            if value > 0.0 && value <= 1.0 {
                Ok(())
            } else {
                Err(format!("attack.{name} must lie in (0, 1], got {value}"))
            }
        };
        let positive = |value: f64, name: &str| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(format!("attack.{name} must be finite and positive, got {value}"))
            }
        };
        let runs = |value: usize| {
            if value >= 2 { Ok(()) } else { Err(format!("attack.benign_runs must be at least 2, got {value}")) }
        };
        match self {
            Self::LabelFlip { fraction: share, .. } => fraction(*share, "fraction"),
            Self::SignFlip { scale } => positive(*scale, "scale"),
            Self::GaussianNoise { std, .. } => positive(*std, "std"),
            Self::Scale { factor } => {
                if factor.is_finite() && *factor != 0.0 {
                    Ok(())
                } else {
                    Err(format!("attack.factor must be finite and non-zero, got {factor}"))
                }
            }
            Self::Backdoor { features, trigger_value, target_label, poison_fraction, boost, .. } => {
                if features.is_empty() {
                    return Err("attack.features must name at least one feature column".into());
                }
                if !trigger_value.is_finite() || !target_label.is_finite() {
                    return Err("attack.trigger_value and attack.target_label must be finite".into());
                }
                fraction(*poison_fraction, "poison_fraction")?;
                positive(*boost, "boost")
            }
            Self::Alie { z, n_pdcs, n_attackers, benign_runs, .. } => {
                runs(*benign_runs)?;
                match (z, n_pdcs, n_attackers) {
                    (Some(z), None, None) => {
                        if z.is_finite() {
                            Ok(())
                        } else {
                            Err(format!("attack.z must be finite, got {z}"))
                        }
                    }
                    (None, Some(n), Some(m)) => alie_z(*n, *m).map(|_| ()),
                    _ => Err("ALIE needs either attack.z, or both attack.n_pdcs and attack.n_attackers".into()),
                }
            }
            Self::Ipm { epsilon, benign_runs, .. } => {
                runs(*benign_runs)?;
                positive(*epsilon, "epsilon")
            }
            Self::FreeRide { noise_std, .. } => {
                if noise_std.is_finite() && *noise_std >= 0.0 {
                    Ok(())
                } else {
                    Err(format!("attack.noise_std must be finite and non-negative, got {noise_std}"))
                }
            }
            Self::CrashMidUpload { .. } => Ok(()),
        }
    }

    /// The number of body bytes after which the agent's upload must abort, for [`Attack::CrashMidUpload`].
    pub fn crash_after_bytes(&self) -> Option<u64> {
        match self {
            Self::CrashMidUpload { after_bytes } => Some(*after_bytes),
            _ => None,
        }
    }

    /// Whether [`Attack::apply_to_delta`] needs a [`BenignEstimate`] (ALIE and IPM).
    pub fn needs_benign_estimate(&self) -> bool {
        matches!(self, Self::Alie { .. } | Self::Ipm { .. })
    }

    /// For ALIE and IPM: how many shards the attacker trains to estimate the benign statistics, and the seed that
    /// chooses them.
    pub fn benign_runs(&self) -> Option<(usize, u64)> {
        match self {
            Self::Alie { benign_runs, seed, .. } | Self::Ipm { benign_runs, seed, .. } => Some((*benign_runs, *seed)),
            _ => None,
        }
    }

    /// Whether the attacker skips training altogether (free riding).
    pub fn skips_training(&self) -> bool {
        matches!(self, Self::FreeRide { .. })
    }

    /// Poisons the local table before training (label flipping, backdoor triggers); other attacks leave it alone.
    /// Fails if the attack is invalid, names a feature the table lacks, or gives a binary task a label other
    /// than 0 or 1.
    pub fn apply_to_table(&self, table: &mut Dataset, task: Task) -> Result<()> {
        self.validate().map_err(Error::Attack)?;
        match self {
            Self::LabelFlip { fraction, seed } => {
                for row in chosen_rows(table.n_rows(), *fraction, *seed) {
                    let label = &mut table.labels[row];
                    *label = match task {
                        Task::BinaryClassification => 1.0 - *label,
                        Task::Regression => -*label,
                    };
                }
                Ok(())
            }
            Self::Backdoor { features, trigger_value, target_label, poison_fraction, seed, .. } => {
                if task == Task::BinaryClassification && *target_label != 0.0 && *target_label != 1.0 {
                    return Err(Error::Attack(format!(
                        "attack.target_label must be 0 or 1 for binary classification, got {target_label}"
                    )));
                }
                let columns = features
                    .iter()
                    .map(|name| {
                        table.feature_names.iter().position(|column| column == name).ok_or_else(|| {
                            Error::Attack(format!("attack.features names `{name}`, which the study's table lacks"))
                        })
                    })
                    .collect::<Result<Vec<usize>>>()?;
                let n_features = table.n_features();
                for row in chosen_rows(table.n_rows(), *poison_fraction, *seed) {
                    for &column in &columns {
                        table.features[row * n_features + column] = *trigger_value;
                    }
                    table.labels[row] = *target_label;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Turns an honestly trained `delta` into the attacker's. `benign` is required by ALIE and IPM;
    /// `round_seed` (the round's training seed) varies the noise of the noisy attacks from round to round.
    pub fn apply_to_delta(&self, delta: &mut [f32], benign: Option<&BenignEstimate>, round_seed: u64) -> Result<()> {
        self.validate().map_err(Error::Attack)?;
        let scale = |delta: &mut [f32], factor: f64| {
            delta.iter_mut().for_each(|value| *value = (f64::from(*value) * factor) as f32);
        };
        match self {
            Self::LabelFlip { .. } | Self::CrashMidUpload { .. } => {}
            Self::SignFlip { scale: factor } => scale(delta, -factor),
            Self::Scale { factor } => scale(delta, *factor),
            Self::Backdoor { boost, .. } => scale(delta, *boost),
            Self::GaussianNoise { std, seed } => {
                let mut noise = Gaussian::new(mix(*seed, round_seed));
                delta.iter_mut().for_each(|value| *value = (f64::from(*value) + std * noise.sample()) as f32);
            }
            Self::FreeRide { noise_std, seed } => {
                let mut noise = Gaussian::new(mix(*seed, round_seed));
                delta.iter_mut().for_each(|value| *value = (noise_std * noise.sample()) as f32);
            }
            Self::Alie { z, n_pdcs, n_attackers, .. } => {
                let benign = check_benign(benign, delta.len(), "ALIE")?;
                let z = match (z, n_pdcs, n_attackers) {
                    (Some(z), _, _) => *z,
                    (None, Some(n), Some(m)) => alie_z(*n, *m).map_err(Error::Attack)?,
                    _ => return Err(Error::Attack("ALIE has neither z nor n_pdcs and n_attackers".into())),
                };
                for ((value, &mu), &sigma) in delta.iter_mut().zip(&benign.mean).zip(&benign.std) {
                    *value = (f64::from(mu) - z * f64::from(sigma)) as f32;
                }
            }
            Self::Ipm { epsilon, .. } => {
                let benign = check_benign(benign, delta.len(), "IPM")?;
                for (value, &mu) in delta.iter_mut().zip(&benign.mean) {
                    *value = (-epsilon * f64::from(mu)) as f32;
                }
            }
        }
        Ok(())
    }
}

/// Baruch et al.'s `z_max` for `n` participants of which `m` collude: `Φ⁻¹((n − s)/n)` with
/// `s = ⌊n/2 + 1⌋ − m`, the number of benign updates the attackers need on their side.
///
/// ```
/// // 50 participants, 12 attackers (Baruch et al.'s setting): s = 14, z = Φ⁻¹(0.72) ≈ 0.583.
/// let z = pdc_client::attack::alie_z(50, 12).unwrap();
/// assert!((z - 0.582_841_5).abs() < 1e-6);
/// ```
pub fn alie_z(n_pdcs: usize, n_attackers: usize) -> std::result::Result<f64, String> {
    if n_attackers == 0 || n_attackers >= n_pdcs {
        return Err(format!("ALIE needs 0 < n_attackers < n_pdcs, got {n_attackers} of {n_pdcs}"));
    }
    let s = (n_pdcs / 2 + 1) as i64 - n_attackers as i64;
    if s <= 0 {
        return Err(format!(
            "ALIE: with {n_attackers} attackers among {n_pdcs} the attackers need no benign update and z is unbounded"
        ));
    }
    Ok(inverse_normal_cdf((n_pdcs as f64 - s as f64) / n_pdcs as f64))
}

/// Φ⁻¹(p) for `p` in (0, 1), by Acklam's rational approximation (relative error below 1.2e-9).
fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] =
        [7.784_695_709_041_462e-3, 3.224_671_290_700_398e-1, 2.445_134_137_142_996, 3.754_408_661_907_416];
    const P_LOW: f64 = 0.02425;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < P_LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p <= 1.0 - P_LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    }
}

fn check_benign<'a>(benign: Option<&'a BenignEstimate>, n: usize, attack: &str) -> Result<&'a BenignEstimate> {
    let benign = benign.ok_or_else(|| Error::Attack(format!("{attack} needs the benign updates' statistics")))?;
    if benign.mean.len() != n || benign.std.len() != n {
        return Err(Error::Attack(format!(
            "{attack}: the benign estimate has {} means and {} deviations for {n} parameters",
            benign.mean.len(),
            benign.std.len()
        )));
    }
    Ok(benign)
}

/// `round(fraction · n)` distinct rows (at least one when `n > 0`), chosen by a seeded shuffle, in ascending
/// order; every row when `fraction` is 1.
pub(crate) fn chosen_rows(n: usize, fraction: f64, seed: u64) -> Vec<usize> {
    let mut rows: Vec<usize> = (0..n).collect();
    if fraction >= 1.0 {
        return rows;
    }
    let count = ((fraction * n as f64).round() as usize).clamp(usize::from(n > 0), n);
    rows.shuffle(&mut StdRng::seed_from_u64(seed));
    rows.truncate(count);
    rows.sort_unstable();
    rows
}

/// Combines an attack's seed with a round's, so that neither alone fixes the stream.
pub(crate) fn mix(seed: u64, round_seed: u64) -> u64 {
    // SplitMix64's finaliser on the first, then xor: distinct attack seeds give unrelated streams per round.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) ^ round_seed
}

/// Standard normal samples by the Box–Muller transform over a seeded `StdRng`.
struct Gaussian {
    rng: StdRng,
    spare: Option<f64>,
}

impl Gaussian {
    fn new(seed: u64) -> Self {
        Self { rng: StdRng::seed_from_u64(seed), spare: None }
    }

    fn sample(&mut self) -> f64 {
        if let Some(spare) = self.spare.take() {
            return spare;
        }
        // 1 − U lies in (0, 1], so the logarithm is finite.
        let radius = (-2.0 * (1.0 - self.rng.random::<f64>()).ln()).sqrt();
        let angle = std::f64::consts::TAU * self.rng.random::<f64>();
        self.spare = Some(radius * angle.sin());
        radius * angle.cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Dataset {
        // 10 rows of 3 features: row i is [i, 10 + i, 20 + i], labels alternate 0, 1.
        let features = (0..10).flat_map(|i| [i as f32, 10.0 + i as f32, 20.0 + i as f32]).collect();
        let labels = (0..10).map(|i| (i % 2) as f32).collect();
        Dataset::from_parts(vec!["a".into(), "b".into(), "c".into()], features, labels).unwrap()
    }

    #[derive(Debug, Deserialize)]
    struct Wrapper {
        attack: Attack,
    }

    fn parse(text: &str) -> Attack {
        toml::from_str::<Wrapper>(text).unwrap().attack
    }

    #[test]
    fn sign_flip_is_exact() {
        let mut delta = [1.0f32, -2.0, 0.5, 0.0];
        Attack::SignFlip { scale: 1.0 }.apply_to_delta(&mut delta, None, 0).unwrap();
        assert_eq!(delta, [-1.0, 2.0, -0.5, 0.0]);
        Attack::SignFlip { scale: 4.0 }.apply_to_delta(&mut delta, None, 0).unwrap();
        assert_eq!(delta, [4.0, -8.0, 2.0, 0.0]);
        Attack::Scale { factor: 0.25 }.apply_to_delta(&mut delta, None, 0).unwrap();
        assert_eq!(delta, [1.0, -2.0, 0.5, 0.0]);
    }

    #[test]
    fn label_flip_is_exact() {
        let mut flipped = table();
        Attack::LabelFlip { fraction: 1.0, seed: 0 }.apply_to_table(&mut flipped, Task::BinaryClassification).unwrap();
        let expected: Vec<f32> = (0..10).map(|i| ((i + 1) % 2) as f32).collect();
        assert_eq!(flipped.labels, expected);
        assert_eq!(flipped.features, table().features);
        // Regression labels are negated.
        let mut regression = table();
        regression.labels = vec![1.5; 10];
        Attack::LabelFlip { fraction: 1.0, seed: 0 }.apply_to_table(&mut regression, Task::Regression).unwrap();
        assert_eq!(regression.labels, vec![-1.5; 10]);
        // A fraction flips that many rows, the same ones for the same seed.
        let mut half = table();
        Attack::LabelFlip { fraction: 0.3, seed: 7 }.apply_to_table(&mut half, Task::BinaryClassification).unwrap();
        let changed: Vec<usize> = (0..10).filter(|&i| half.labels[i] != table().labels[i]).collect();
        assert_eq!(changed, chosen_rows(10, 0.3, 7));
        assert_eq!(changed.len(), 3);
    }

    #[test]
    fn backdoor_poisons_the_chosen_rows_and_boosts() {
        let attack = parse(
            "[attack]\nkind = \"backdoor\"\nfeatures = [\"c\", \"a\"]\ntrigger_value = 99.0\ntarget_label = 1.0\n\
             poison_fraction = 0.4\nboost = 10.0\nseed = 3",
        );
        let mut poisoned = table();
        attack.apply_to_table(&mut poisoned, Task::BinaryClassification).unwrap();
        let rows = chosen_rows(10, 0.4, 3);
        assert_eq!(rows.len(), 4);
        for i in 0..10 {
            if rows.contains(&i) {
                assert_eq!(poisoned.row(i), [99.0, 10.0 + i as f32, 99.0], "row {i}");
                assert_eq!(poisoned.labels[i], 1.0);
            } else {
                assert_eq!(poisoned.row(i), table().row(i), "row {i}");
                assert_eq!(poisoned.labels[i], table().labels[i]);
            }
        }
        let mut delta = [0.5f32, -0.25];
        attack.apply_to_delta(&mut delta, None, 0).unwrap();
        assert_eq!(delta, [5.0, -2.5]);
        // A missing feature and a non-binary target are refused.
        let missing = Attack::Backdoor {
            features: vec!["z".into()],
            trigger_value: 1.0,
            target_label: 1.0,
            poison_fraction: 0.5,
            boost: 1.0,
            seed: 0,
        };
        assert_eq!(
            missing.apply_to_table(&mut table(), Task::BinaryClassification).unwrap_err().to_string(),
            "simulated attack: attack.features names `z`, which the study's table lacks"
        );
        let bad_label = Attack::Backdoor {
            features: vec!["a".into()],
            trigger_value: 1.0,
            target_label: 2.0,
            poison_fraction: 0.5,
            boost: 1.0,
            seed: 0,
        };
        assert!(bad_label.apply_to_table(&mut table(), Task::BinaryClassification).is_err());
        assert!(bad_label.apply_to_table(&mut table(), Task::Regression).is_ok());
    }

    #[test]
    fn gaussian_noise_has_the_configured_std_and_is_seeded() {
        let attack = Attack::GaussianNoise { std: 0.5, seed: 11 };
        let mut delta = vec![1.0f32; 200_000];
        attack.apply_to_delta(&mut delta, None, 42).unwrap();
        let n = delta.len() as f64;
        let mean = delta.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let std = (delta.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n).sqrt();
        // Standard errors: 0.5/√n ≈ 0.0011 for the mean, 0.5/√(2n) ≈ 0.0008 for the std.
        assert!((mean - 1.0).abs() < 0.006, "{mean}");
        assert!((std - 0.5).abs() < 0.005, "{std}");
        let mut again = vec![1.0f32; 200_000];
        attack.apply_to_delta(&mut again, None, 42).unwrap();
        assert_eq!(delta, again);
        let mut other_round = vec![1.0f32; 200_000];
        attack.apply_to_delta(&mut other_round, None, 43).unwrap();
        assert_ne!(delta, other_round);
    }

    #[test]
    fn free_riding_echoes() {
        let mut delta = [0.3f32, -0.7, 1.0];
        Attack::FreeRide { noise_std: 0.0, seed: 0 }.apply_to_delta(&mut delta, None, 5).unwrap();
        assert_eq!(delta, [0.0; 3]);
        let mut noisy = vec![0.3f32; 50_000];
        Attack::FreeRide { noise_std: 0.01, seed: 1 }.apply_to_delta(&mut noisy, None, 5).unwrap();
        let n = noisy.len() as f64;
        let rms = (noisy.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / n).sqrt();
        assert!((rms - 0.01).abs() < 0.0002, "{rms}");
        assert!(Attack::FreeRide { noise_std: 0.0, seed: 0 }.skips_training());
    }

    #[test]
    fn alie_and_ipm_use_the_benign_statistics() {
        let benign = BenignEstimate::from_deltas(&[vec![1.0, -2.0, 0.0], vec![3.0, -2.0, 4.0]]).unwrap();
        assert_eq!(benign.mean, [2.0, -2.0, 2.0]);
        assert_eq!(benign.std, [1.0, 0.0, 2.0]);
        let mut delta = [9.0f32; 3];
        Attack::Alie { z: Some(1.5), n_pdcs: None, n_attackers: None, benign_runs: 5, seed: 0 }
            .apply_to_delta(&mut delta, Some(&benign), 0)
            .unwrap();
        assert_eq!(delta, [0.5, -2.0, -1.0]);
        Attack::Ipm { epsilon: 0.5, benign_runs: 5, seed: 0 }.apply_to_delta(&mut delta, Some(&benign), 0).unwrap();
        assert_eq!(delta, [-1.0, 1.0, -1.0]);
        // Without statistics, or with the wrong length, they refuse.
        let ipm = Attack::Ipm { epsilon: 0.5, benign_runs: 5, seed: 0 };
        assert_eq!(
            ipm.apply_to_delta(&mut delta, None, 0).unwrap_err().to_string(),
            "simulated attack: IPM needs the benign updates' statistics"
        );
        assert!(ipm.apply_to_delta(&mut [0.0; 2], Some(&benign), 0).is_err());
        assert!(ipm.needs_benign_estimate() && ipm.benign_runs() == Some((5, 0)));
    }

    #[test]
    fn alie_z_matches_baruch_et_al() {
        // Φ⁻¹ at known quantiles.
        assert!(inverse_normal_cdf(0.5).abs() < 1e-12);
        assert!((inverse_normal_cdf(0.975) - 1.959_963_985).abs() < 1e-8);
        assert!((inverse_normal_cdf(0.01) + 2.326_347_874).abs() < 1e-8);
        assert!((inverse_normal_cdf(0.999) - 3.090_232_306).abs() < 1e-8);
        // n = 20, m = 4: s = 11 − 4 = 7, z = Φ⁻¹(13/20).
        assert!((alie_z(20, 4).unwrap() - 0.385_320_466).abs() < 1e-8);
        // n = 10, m = 1: s = 5, z = Φ⁻¹(0.5) = 0.
        assert!(alie_z(10, 1).unwrap().abs() < 1e-12);
        assert!(alie_z(10, 6).is_err());
        assert!(alie_z(10, 0).is_err());
        let attack = parse("[attack]\nkind = \"alie\"\nn_pdcs = 20\nn_attackers = 4");
        let benign = BenignEstimate { mean: vec![1.0], std: vec![1.0] };
        let mut delta = [0.0f32];
        attack.apply_to_delta(&mut delta, Some(&benign), 0).unwrap();
        assert!((f64::from(delta[0]) - (1.0 - 0.385_320_466)).abs() < 1e-6);
    }

    #[test]
    fn config_tables_parse_strictly() {
        assert_eq!(parse("[attack]\nkind = \"sign_flip\""), Attack::SignFlip { scale: 1.0 });
        assert_eq!(parse("[attack]\nkind = \"sign_flip\"\nscale = 4.0"), Attack::SignFlip { scale: 4.0 });
        assert_eq!(parse("[attack]\nkind = \"crash_mid_upload\"\nafter_bytes = 1024").crash_after_bytes(), Some(1024));
        assert_eq!(Attack::SignFlip { scale: 1.0 }.crash_after_bytes(), None);
        assert_eq!(parse("[attack]\nkind = \"free_ride\""), Attack::FreeRide { noise_std: 0.0, seed: 0 });
        let error = toml::from_str::<Wrapper>("[attack]\nkind = \"sign_flip\"\nscal = 4.0").unwrap_err().to_string();
        assert!(error.contains("unknown field `scal`"), "{error}");
        for (attack, expected) in [
            (Attack::SignFlip { scale: 0.0 }, "attack.scale must be finite and positive, got 0"),
            (Attack::LabelFlip { fraction: 1.5, seed: 0 }, "attack.fraction must lie in (0, 1], got 1.5"),
            (Attack::GaussianNoise { std: f64::NAN, seed: 0 }, "attack.std must be finite and positive, got NaN"),
            (
                Attack::Alie { z: None, n_pdcs: Some(10), n_attackers: None, benign_runs: 5, seed: 0 },
                "ALIE needs either attack.z, or both attack.n_pdcs and attack.n_attackers",
            ),
            (Attack::Ipm { epsilon: 1.0, benign_runs: 1, seed: 0 }, "attack.benign_runs must be at least 2, got 1"),
        ] {
            assert_eq!(attack.validate().unwrap_err(), expected);
        }
    }
}
