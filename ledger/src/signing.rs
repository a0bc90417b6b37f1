//! The canonical byte strings parties sign. Each starts with a distinct, NUL-terminated domain tag so a
//! signature made for one purpose can never be replayed as another.

use crate::Hash;

/// What a PDC signs to register `public_key` under `pdc_id` (proof of possession).
pub fn register_message(pdc_id: &str, public_key: &[u8; 32]) -> Vec<u8> {
    let mut message = b"pdc.v1.register\0".to_vec();
    message.extend_from_slice(pdc_id.as_bytes());
    message.push(0);
    message.extend_from_slice(public_key);
    message
}

/// What a PDC signs to authenticate a call of `method` at `timestamp_ms` (Unix milliseconds), with the request's
/// `nonce` (fresh random bytes: the coordinator refuses a nonce it has seen within the signature window, so a
/// captured request cannot be sent again).
pub fn request_message(method: &str, pdc_id: &str, timestamp_ms: u64, nonce: &[u8]) -> Vec<u8> {
    let mut message = b"pdc.v1.request\0".to_vec();
    message.extend_from_slice(method.as_bytes());
    message.push(0);
    message.extend_from_slice(pdc_id.as_bytes());
    message.push(0);
    message.extend_from_slice(&timestamp_ms.to_le_bytes());
    message.extend_from_slice(nonce);
    message
}

/// Whether a consent message grants or revokes consent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsentAction {
    /// The PDC agrees to take part in the study with this manifest.
    Grant,
    /// The PDC withdraws from the study.
    Revoke,
}

/// What a PDC signs to grant or revoke consent to the study `study_id` whose manifest hashes to `manifest_hash`.
pub fn consent_message(action: ConsentAction, study_id: &str, manifest_hash: &Hash) -> Vec<u8> {
    let mut message = match action {
        ConsentAction::Grant => b"pdc.v1.consent\0".to_vec(),
        ConsentAction::Revoke => b"pdc.v1.revoke\0".to_vec(),
    };
    message.extend_from_slice(study_id.as_bytes());
    message.push(0);
    message.extend_from_slice(manifest_hash);
    message
}

/// The limits a hospital may attach to its consent, signed with it: the consent holds only while every one holds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ConsentConditions {
    /// The last round number the consent covers.
    pub max_rounds: Option<u32>,
    /// The most ε the hospital spends on this study (local DP studies).
    pub max_epsilon: Option<f64>,
    /// When the consent lapses, Unix milliseconds.
    pub expires_at_ms: Option<u64>,
}

impl ConsentConditions {
    /// Whether no condition is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The conditions' canonical bytes: for each of `max_rounds` (`u32`), `max_epsilon` (`f64` bits) and
    /// `expires_at_ms` (`u64`), a byte `0` when it is absent, or `1` and the value, little-endian. Ledger entries
    /// hold the same bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        match self.max_rounds {
            Some(rounds) => {
                bytes.push(1);
                bytes.extend_from_slice(&rounds.to_le_bytes());
            }
            None => bytes.push(0),
        }
        match self.max_epsilon {
            Some(epsilon) => {
                bytes.push(1);
                bytes.extend_from_slice(&epsilon.to_bits().to_le_bytes());
            }
            None => bytes.push(0),
        }
        match self.expires_at_ms {
            Some(expiry) => {
                bytes.push(1);
                bytes.extend_from_slice(&expiry.to_le_bytes());
            }
            None => bytes.push(0),
        }
        bytes
    }
}

/// What a PDC signs to grant consent to the study `study_id` whose manifest hashes to `manifest_hash`, under
/// `conditions`. A distinct domain from [`consent_message`], so an unconditional consent's signature can never be
/// passed off as a conditional one, nor the reverse.
pub fn conditional_consent_message(study_id: &str, manifest_hash: &Hash, conditions: &ConsentConditions) -> Vec<u8> {
    let mut message = b"pdc.v1.consent-conditions\0".to_vec();
    message.extend_from_slice(study_id.as_bytes());
    message.push(0);
    message.extend_from_slice(manifest_hash);
    message.extend_from_slice(&conditions.encode());
    message
}

/// What a researcher signs to put its name to a study's manifest: the researcher's consortium id and the SHA3-256
/// of the canonical manifest. Hospitals that consent only to named researchers check this signature.
pub fn manifest_message(researcher_id: &str, manifest_hash: &Hash) -> Vec<u8> {
    let mut message = b"pdc.v1.manifest\0".to_vec();
    message.extend_from_slice(researcher_id.as_bytes());
    message.push(0);
    message.extend_from_slice(manifest_hash);
    message
}

/// What a party signs with its current key `old_key` to replace it by `new_key`; it signs the same bytes with
/// `new_key` to prove it holds it.
pub fn rotate_message(pdc_id: &str, old_key: &[u8; 32], new_key: &[u8; 32]) -> Vec<u8> {
    let mut message = b"pdc.v1.rotate\0".to_vec();
    message.extend_from_slice(pdc_id.as_bytes());
    message.push(0);
    message.extend_from_slice(old_key);
    message.extend_from_slice(new_key);
    message
}

/// What a PDC signs to declare the differential-privacy budget `(epsilon, delta)` of its table `dataset`: the most
/// it will ever spend on it, across every study.
pub fn budget_message(pdc_id: &str, dataset: &str, epsilon: f64, delta: f64) -> Vec<u8> {
    let mut message = b"pdc.v1.budget\0".to_vec();
    message.extend_from_slice(pdc_id.as_bytes());
    message.push(0);
    message.extend_from_slice(dataset.as_bytes());
    message.push(0);
    message.extend_from_slice(&epsilon.to_bits().to_le_bytes());
    message.extend_from_slice(&delta.to_bits().to_le_bytes());
    message
}

/// The differential privacy of an update trained with DP-SGD, as the PDC that trained it states it: the mechanism's
/// parameters for this round and the dataset's cumulative spend after it.
#[derive(Clone, Debug, PartialEq)]
pub struct PrivacyClaim {
    /// The local table the update was trained on (the name its budget was declared under).
    pub dataset: String,
    /// The noise multiplier σ of every DP-SGD step.
    pub noise_multiplier: f64,
    /// The Poisson sampling rate q of every step.
    pub sampling_rate: f64,
    /// The number of DP-SGD steps this round.
    pub steps: u64,
    /// The clip norm C of every per-example gradient.
    pub clip_norm: f64,
    /// The dataset's cumulative ε after this round, over every study it has been used for, at `delta`.
    pub epsilon: f64,
    /// The δ `epsilon` is measured at (the budget's δ).
    pub delta: f64,
}

/// A PDC's contribution to a round, as it signs it: the coordinator cannot alter any field without the
/// signature failing.
#[derive(Clone, Debug, PartialEq)]
pub struct Contribution {
    /// The study.
    pub study_id: String,
    /// The round the update was trained for.
    pub round: u32,
    /// The contributing PDC.
    pub pdc_id: String,
    /// Local training examples (the FedAvg weight).
    pub n_examples: u64,
    /// Length of the update in parameters.
    pub n_parameters: u64,
    /// SHA3-256 of the update's canonical bytes.
    pub update_hash: Hash,
    /// The PDC's local training loss; 0 under local DP, where the loss on private rows is not released.
    pub train_loss: f64,
    /// How the update was made differentially private; `None` for a study without local DP.
    pub privacy: Option<PrivacyClaim>,
}

impl Contribution {
    /// The canonical bytes the PDC signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut message = b"pdc.v1.contribution\0".to_vec();
        message.extend_from_slice(self.study_id.as_bytes());
        message.push(0);
        message.extend_from_slice(&self.round.to_le_bytes());
        message.extend_from_slice(self.pdc_id.as_bytes());
        message.push(0);
        message.extend_from_slice(&self.n_examples.to_le_bytes());
        message.extend_from_slice(&self.n_parameters.to_le_bytes());
        message.extend_from_slice(&self.update_hash);
        message.extend_from_slice(&self.train_loss.to_bits().to_le_bytes());
        // Without a claim the bytes are exactly those of a contribution before claims existed.
        if let Some(claim) = &self.privacy {
            message.push(1);
            message.extend_from_slice(claim.dataset.as_bytes());
            message.push(0);
            for value in [claim.noise_multiplier, claim.sampling_rate] {
                message.extend_from_slice(&value.to_bits().to_le_bytes());
            }
            message.extend_from_slice(&claim.steps.to_le_bytes());
            for value in [claim.clip_norm, claim.epsilon, claim.delta] {
                message.extend_from_slice(&value.to_bits().to_le_bytes());
            }
        }
        message
    }
}

/// Which statistic a [`StatisticsRelease`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatisticKind {
    /// Per-feature count, deviation sums and square sums of the clamped table, for a study's federated
    /// standardisation: `1 + 2d` values for `d` features.
    FeatureSummary,
    /// The numbers of rows labelled 1 and 0, for a researcher's feasibility query: 2 values.
    CohortCounts,
}

impl StatisticKind {
    /// The byte that stands for the kind in signatures and ledger entries.
    pub fn code(self) -> u8 {
        match self {
            StatisticKind::FeatureSummary => 1,
            StatisticKind::CohortCounts => 2,
        }
    }

    /// The kind a byte stands for.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(StatisticKind::FeatureSummary),
            2 => Some(StatisticKind::CohortCounts),
            _ => None,
        }
    }

    /// The kind's name, as in the enum.
    pub fn name(self) -> &'static str {
        match self {
            StatisticKind::FeatureSummary => "FeatureSummary",
            StatisticKind::CohortCounts => "CohortCounts",
        }
    }
}

/// A differentially private release of statistics about a PDC's table outside training, as the PDC signs it:
/// the noisy values themselves, the mechanism's noise multiplier, and the table's cumulative spend after it. The
/// coordinator can neither alter the values it pools nor the spend it records.
#[derive(Clone, Debug, PartialEq)]
pub struct StatisticsRelease {
    /// What the release answers: the study whose standardisation it feeds, or the feasibility query's id. A PDC
    /// answers each scope once, so a release cannot be replayed into another query.
    pub scope: String,
    /// The releasing PDC.
    pub pdc_id: String,
    /// The statistic.
    pub kind: StatisticKind,
    /// The local table (the name its budget was declared under).
    pub dataset: String,
    /// The Gaussian mechanism's noise multiplier: its noise is this times the statistic's L2 sensitivity.
    pub noise_multiplier: f64,
    /// The noisy values, in the kind's order.
    pub values: Vec<f64>,
    /// The table's cumulative ε after the release, over everything it was used for, at `delta`.
    pub epsilon: f64,
    /// The δ `epsilon` is measured at (the budget's δ).
    pub delta: f64,
}

impl StatisticsRelease {
    /// The canonical bytes the PDC signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut message = b"pdc.v1.statistics\0".to_vec();
        for text in [&self.scope, &self.pdc_id] {
            message.extend_from_slice(text.as_bytes());
            message.push(0);
        }
        message.push(self.kind.code());
        message.extend_from_slice(self.dataset.as_bytes());
        message.push(0);
        message.extend_from_slice(&self.noise_multiplier.to_bits().to_le_bytes());
        message.extend_from_slice(&(self.values.len() as u64).to_le_bytes());
        for value in self.values.iter().chain([&self.epsilon, &self.delta]) {
            message.extend_from_slice(&value.to_bits().to_le_bytes());
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_distinct_so_signatures_cannot_be_replayed_across_purposes() {
        let hash = [3u8; 32];
        let grant = consent_message(ConsentAction::Grant, "s", &hash);
        let revoke = consent_message(ConsentAction::Revoke, "s", &hash);
        assert_ne!(grant, revoke);
        assert_ne!(manifest_message("s", &hash)[..15], grant[..15]);
        assert_ne!(manifest_message("ab", &[0; 32]), manifest_message("a", &[0; 32]));
        let none = ConsentConditions::default();
        assert!(none.is_empty());
        let conditional = conditional_consent_message("s", &hash, &none);
        assert_ne!(conditional, grant, "an empty condition list is still a conditional consent's domain");
        let variants = [
            ConsentConditions { max_rounds: Some(3), ..none },
            ConsentConditions { max_epsilon: Some(1.5), ..none },
            ConsentConditions { expires_at_ms: Some(7), ..none },
            ConsentConditions { max_rounds: Some(4), max_epsilon: Some(1.5), expires_at_ms: Some(7) },
        ];
        for (i, a) in variants.iter().enumerate() {
            assert!(!a.is_empty());
            assert_ne!(conditional_consent_message("s", &hash, a), conditional);
            for b in &variants[i + 1..] {
                assert_ne!(a.encode(), b.encode(), "{a:?} {b:?}");
            }
        }
        assert_ne!(request_message("WaitTasks", "a", 1, &[0; 16]), request_message("ListStudies", "a", 1, &[0; 16]));
        // The NUL separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(request_message("ab", "c", 1, &[0; 16]), request_message("a", "bc", 1, &[0; 16]));
        // The nonce is signed: a request cannot be made new by changing it.
        assert_ne!(request_message("WaitTasks", "a", 1, &[0; 16]), request_message("WaitTasks", "a", 1, &[1; 16]));
    }

    #[test]
    fn every_statistics_field_is_signed() {
        let base = StatisticsRelease {
            scope: "s".into(),
            pdc_id: "a".into(),
            kind: StatisticKind::CohortCounts,
            dataset: "icu".into(),
            noise_multiplier: 2.0,
            values: vec![10.0, 20.0],
            epsilon: 0.5,
            delta: 1e-5,
        };
        let variants = [
            StatisticsRelease { scope: "t".into(), ..base.clone() },
            StatisticsRelease { pdc_id: "b".into(), ..base.clone() },
            StatisticsRelease { kind: StatisticKind::FeatureSummary, ..base.clone() },
            StatisticsRelease { dataset: "ed".into(), ..base.clone() },
            StatisticsRelease { noise_multiplier: 2.5, ..base.clone() },
            StatisticsRelease { values: vec![10.0, 21.0], ..base.clone() },
            StatisticsRelease { values: vec![10.0, 20.0, 0.0], ..base.clone() },
            StatisticsRelease { epsilon: 0.25, ..base.clone() },
            StatisticsRelease { delta: 1e-6, ..base.clone() },
            // The separators keep ("s", "a") and ("sa", "") apart.
            StatisticsRelease { scope: "sa".into(), pdc_id: String::new(), ..base.clone() },
        ];
        for variant in variants {
            assert_ne!(variant.signing_bytes(), base.signing_bytes(), "{variant:?}");
        }
        for kind in [StatisticKind::FeatureSummary, StatisticKind::CohortCounts] {
            assert_eq!(StatisticKind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(StatisticKind::from_code(0), None);
    }

    #[test]
    fn every_contribution_field_is_signed() {
        let base = Contribution {
            study_id: "s".into(),
            round: 1,
            pdc_id: "p".into(),
            n_examples: 10,
            n_parameters: 5,
            update_hash: [1; 32],
            train_loss: 0.5,
            privacy: None,
        };
        let claim = PrivacyClaim {
            dataset: "d".into(),
            noise_multiplier: 1.1,
            sampling_rate: 0.1,
            steps: 20,
            clip_norm: 1.0,
            epsilon: 0.5,
            delta: 1e-5,
        };
        let private = Contribution { privacy: Some(claim.clone()), ..base.clone() };
        let claims = [
            PrivacyClaim { dataset: "e".into(), ..claim.clone() },
            PrivacyClaim { noise_multiplier: 1.2, ..claim.clone() },
            PrivacyClaim { sampling_rate: 0.2, ..claim.clone() },
            PrivacyClaim { steps: 21, ..claim.clone() },
            PrivacyClaim { clip_norm: 2.0, ..claim.clone() },
            PrivacyClaim { epsilon: 0.6, ..claim.clone() },
            PrivacyClaim { delta: 1e-6, ..claim.clone() },
        ];
        for variant in claims {
            let variant = Contribution { privacy: Some(variant), ..base.clone() };
            assert_ne!(variant.signing_bytes(), private.signing_bytes(), "{variant:?}");
        }
        assert_ne!(private.signing_bytes(), base.signing_bytes());
        assert_ne!(budget_message("p", "d", 1.0, 1e-5), budget_message("p", "d", 2.0, 1e-5));
        assert_ne!(budget_message("p", "d", 1.0, 1e-5), budget_message("p", "d", 1.0, 1e-6));
        let variants = [
            Contribution { study_id: "t".into(), ..base.clone() },
            Contribution { round: 2, ..base.clone() },
            Contribution { pdc_id: "q".into(), ..base.clone() },
            Contribution { n_examples: 11, ..base.clone() },
            Contribution { n_parameters: 6, ..base.clone() },
            Contribution { update_hash: [2; 32], ..base.clone() },
            Contribution { train_loss: 0.25, ..base.clone() },
        ];
        for variant in variants {
            assert_ne!(variant.signing_bytes(), base.signing_bytes(), "{variant:?}");
        }
    }
}
