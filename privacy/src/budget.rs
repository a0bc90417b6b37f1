//! Privacy budgets: the (ε, δ) a dataset's owner allows, and the ledger of how much of it has been spent.
//!
//! ε from RDP accounting is not additive across rounds, so a [`Budget`] never adds ε figures: it asks the dataset's
//! cumulative [`Accountant`] — with the proposed round already composed — for the total ε at the budget's δ, and
//! accepts the round only if that total is within the limit.

use serde::{Deserialize, Serialize};

use crate::accountant::Accountant;
use crate::{Error, Result};

/// A privacy budget: at most `epsilon` at `delta` may ever be spent on a dataset.
///
/// Deserialisation validates like [`PrivacyBudget::new`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PrivacyBudgetFields")]
pub struct PrivacyBudget {
    epsilon: f64,
    delta: f64,
}

impl PrivacyBudget {
    /// A budget of `epsilon` at `delta`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEpsilon`] unless `epsilon` is finite and positive; [`Error::InvalidDelta`] unless
    /// `0 < delta < 1`.
    pub fn new(epsilon: f64, delta: f64) -> Result<Self> {
        if !(epsilon.is_finite() && epsilon > 0.0) {
            return Err(Error::InvalidEpsilon { epsilon });
        }
        if !(delta > 0.0 && delta < 1.0) {
            return Err(Error::InvalidDelta { delta });
        }
        Ok(Self { epsilon, delta })
    }

    /// The ε limit.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }

    /// The δ at which ε is measured.
    pub fn delta(&self) -> f64 {
        self.delta
    }
}

/// The privacy spent on one dataset against its [`PrivacyBudget`].
///
/// The recorded spend only grows and can never exceed the limit: every method that records spend refuses, leaving
/// the budget unchanged, when the total would go over. Deserialisation validates like [`Budget::restore`].
///
/// ```
/// use pdc_privacy::accountant::{Accountant, RdpAccountant};
/// use pdc_privacy::budget::{Budget, PrivacyBudget};
///
/// let mut budget = Budget::new(PrivacyBudget::new(2.0, 1e-5)?);
/// let mut accountant = RdpAccountant::new();
/// // One round of local DP-SGD: 1000 steps at sampling rate 1%, σ = 1.1 (ε ≈ 1.71).
/// let spent = budget.try_spend(&mut accountant, |a| a.compose_poisson_gaussian(0.01, 1.1, 1000))?;
/// assert!(spent < 2.0);
/// // A second such round would go over: it is refused and nothing changes.
/// assert!(budget.try_spend(&mut accountant, |a| a.compose_poisson_gaussian(0.01, 1.1, 1000)).is_err());
/// assert_eq!(budget.spent_epsilon(), spent);
/// # Ok::<(), pdc_privacy::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "BudgetFields")]
pub struct Budget {
    limit: PrivacyBudget,
    spent_epsilon: f64,
}

impl Budget {
    /// A budget with nothing spent yet.
    pub fn new(limit: PrivacyBudget) -> Self {
        Self { limit, spent_epsilon: 0.0 }
    }

    /// A budget with `spent_epsilon` already spent, e.g. as read back from the ledger.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSpend`] unless `0 ≤ spent_epsilon ≤ limit.epsilon()`.
    pub fn restore(limit: PrivacyBudget, spent_epsilon: f64) -> Result<Self> {
        if !(0.0..=limit.epsilon).contains(&spent_epsilon) {
            return Err(Error::InvalidSpend { spent_epsilon, budget_epsilon: limit.epsilon });
        }
        Ok(Self { limit, spent_epsilon })
    }

    /// The limit this budget enforces.
    pub fn limit(&self) -> PrivacyBudget {
        self.limit
    }

    /// The ε spent so far (at the limit's δ).
    pub fn spent_epsilon(&self) -> f64 {
        self.spent_epsilon
    }

    /// The ε still available (at the limit's δ); never negative.
    pub fn remaining_epsilon(&self) -> f64 {
        (self.limit.epsilon - self.spent_epsilon).max(0.0)
    }

    /// Whether the dataset's cumulative accountant, with the proposed releases already composed, is within budget.
    ///
    /// # Errors
    ///
    /// Those of `accountant_after.epsilon` (a poisoned accountant, for instance); being over budget is `Ok(false)`.
    pub fn can_afford(&self, accountant_after: &impl Accountant) -> Result<bool> {
        Ok(accountant_after.epsilon(self.limit.delta)? <= self.limit.epsilon)
    }

    /// The ε the dataset would reach with `accountant_after`, if that is within budget.
    ///
    /// # Errors
    ///
    /// [`Error::BudgetExceeded`] if it is not; those of `accountant_after.epsilon`.
    pub fn check(&self, accountant_after: &impl Accountant) -> Result<f64> {
        let required_epsilon = accountant_after.epsilon(self.limit.delta)?;
        if required_epsilon <= self.limit.epsilon {
            Ok(required_epsilon)
        } else {
            Err(Error::BudgetExceeded { required_epsilon, budget_epsilon: self.limit.epsilon, delta: self.limit.delta })
        }
    }

    /// Records the spend of the dataset's cumulative accountant `accountant_after`, if it is within budget, and
    /// returns the ε spent so far.
    ///
    /// `accountant_after` must account for everything ever released from the dataset. Spend never decreases: an
    /// accountant reporting less than what is already recorded leaves the record as it is.
    ///
    /// # Errors
    ///
    /// As [`Budget::check`]; the budget is unchanged on error.
    pub fn commit(&mut self, accountant_after: &impl Accountant) -> Result<f64> {
        let epsilon = self.check(accountant_after)?;
        self.spent_epsilon = self.spent_epsilon.max(epsilon);
        Ok(self.spent_epsilon)
    }

    /// Applies `spend` to a copy of the dataset's cumulative `accountant` and, if the result is within budget,
    /// commits it: both the accountant and the budget are updated. Returns the ε spent so far.
    ///
    /// This is the all-or-nothing way to charge a round: on error neither `accountant` nor the budget changes.
    ///
    /// # Errors
    ///
    /// As [`Budget::check`] on the updated copy (including [`Error::AccountantPoisoned`] if `spend` composed an
    /// invalid event).
    pub fn try_spend<A: Accountant + Clone>(&mut self, accountant: &mut A, spend: impl FnOnce(&mut A)) -> Result<f64> {
        let mut after = accountant.clone();
        spend(&mut after);
        let spent = self.commit(&after)?;
        *accountant = after;
        Ok(spent)
    }
}

/// The serialised form of [`PrivacyBudget`], validated on the way in.
#[derive(Deserialize)]
struct PrivacyBudgetFields {
    epsilon: f64,
    delta: f64,
}

impl TryFrom<PrivacyBudgetFields> for PrivacyBudget {
    type Error = Error;

    fn try_from(fields: PrivacyBudgetFields) -> Result<Self> {
        Self::new(fields.epsilon, fields.delta)
    }
}

/// The serialised form of [`Budget`], validated on the way in.
#[derive(Deserialize)]
struct BudgetFields {
    limit: PrivacyBudget,
    spent_epsilon: f64,
}

impl TryFrom<BudgetFields> for Budget {
    type Error = Error;

    fn try_from(fields: BudgetFields) -> Result<Self> {
        Self::restore(fields.limit, fields.spent_epsilon)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::accountant::RdpAccountant;

    fn budget(epsilon: f64) -> Budget {
        Budget::new(PrivacyBudget::new(epsilon, 1e-5).unwrap())
    }

    #[test]
    fn privacy_budget_validation() {
        for epsilon in [0.0, -1.0, f64::INFINITY] {
            assert_eq!(PrivacyBudget::new(epsilon, 1e-5), Err(Error::InvalidEpsilon { epsilon }));
        }
        for delta in [0.0, 1.0, -0.5] {
            assert_eq!(PrivacyBudget::new(1.0, delta), Err(Error::InvalidDelta { delta }));
        }
        assert!(PrivacyBudget::new(f64::NAN, 1e-5).is_err());
        let limit = PrivacyBudget::new(3.0, 1e-6).unwrap();
        assert_eq!((limit.epsilon(), limit.delta()), (3.0, 1e-6));
    }

    #[test]
    fn restore_validates_the_spend() {
        let limit = PrivacyBudget::new(3.0, 1e-6).unwrap();
        assert_eq!(Budget::restore(limit, 1.0).unwrap().remaining_epsilon(), 2.0);
        assert_eq!(Budget::restore(limit, 3.0).unwrap().remaining_epsilon(), 0.0);
        for spent_epsilon in [-0.1, 3.1, f64::INFINITY] {
            assert_eq!(
                Budget::restore(limit, spent_epsilon),
                Err(Error::InvalidSpend { spent_epsilon, budget_epsilon: 3.0 })
            );
        }
        assert!(Budget::restore(limit, f64::NAN).is_err());
    }

    #[test]
    fn affordability_follows_the_cumulative_accountant() {
        let budget = budget(2.0);
        let mut accountant = RdpAccountant::new();
        accountant.compose_poisson_gaussian(0.01, 1.1, 1000); // ε ≈ 1.712
        assert_eq!(budget.can_afford(&accountant), Ok(true));
        let epsilon = budget.check(&accountant).unwrap();
        assert!((epsilon - 1.712).abs() < 1e-3);

        accountant.compose_poisson_gaussian(0.01, 1.1, 1000);
        assert_eq!(budget.can_afford(&accountant), Ok(false));
        assert!(matches!(
            budget.check(&accountant),
            Err(Error::BudgetExceeded { budget_epsilon: 2.0, delta: 1e-5, required_epsilon }) if required_epsilon > 2.0
        ));
    }

    #[test]
    fn a_release_without_noise_is_never_affordable() {
        let mut accountant = RdpAccountant::new();
        accountant.compose_gaussian(0.0, 1);
        assert_eq!(budget(100.0).can_afford(&accountant), Ok(false));
    }

    #[test]
    fn accountant_errors_propagate_and_change_nothing() {
        let mut budget = budget(5.0);
        let mut accountant = RdpAccountant::new();
        budget.try_spend(&mut accountant, |a| a.compose_poisson_gaussian(0.01, 1.1, 100)).unwrap();
        let (budget_before, accountant_before) = (budget.clone(), accountant.clone());

        let result = budget.try_spend(&mut accountant, |a| a.compose_poisson_gaussian(7.0, 1.1, 100));
        assert!(matches!(result, Err(Error::AccountantPoisoned { .. })), "{result:?}");
        assert_eq!(budget, budget_before);
        assert_eq!(accountant, accountant_before);

        let mut poisoned = accountant.clone();
        poisoned.compose_gaussian(f64::NAN, 1);
        assert!(budget.can_afford(&poisoned).is_err());
        assert!(budget.commit(&poisoned).is_err());
        assert_eq!(budget, budget_before);
    }

    #[test]
    fn spend_never_decreases() {
        let mut budget = budget(5.0);
        let mut accountant = RdpAccountant::new();
        accountant.compose_poisson_gaussian(0.01, 1.1, 1000);
        let spent = budget.commit(&accountant).unwrap();
        // A fresh accountant reports 0, but what was spent stays spent.
        assert_eq!(budget.commit(&RdpAccountant::new()), Ok(spent));
        assert_eq!(budget.spent_epsilon(), spent);
    }

    #[test]
    fn serde_round_trip_and_validation() {
        // serde_json (without its `float_roundtrip` feature) may be one ulp off on arbitrary floats; 1.5 is exact.
        let budget = Budget::restore(PrivacyBudget::new(4.0, 1e-5).unwrap(), 1.5).unwrap();
        let json = serde_json::to_string(&budget).unwrap();
        assert_eq!(json, r#"{"limit":{"epsilon":4.0,"delta":0.00001},"spent_epsilon":1.5}"#);
        assert_eq!(serde_json::from_str::<Budget>(&json).unwrap(), budget);

        let overspent = r#"{"limit":{"epsilon":1.0,"delta":1e-5},"spent_epsilon":1.5}"#;
        assert!(serde_json::from_str::<Budget>(overspent).unwrap_err().to_string().contains("spent epsilon 1.5"));
        let bad_delta = r#"{"epsilon":1.0,"delta":2.0}"#;
        assert!(serde_json::from_str::<PrivacyBudget>(bad_delta).unwrap_err().to_string().contains("delta"));
    }

    /// One proposed round: Poisson sampling rate, noise multiplier, steps; or a plain Gaussian release (rate 1).
    fn round() -> impl Strategy<Value = (f64, f64, u64)> {
        (prop_oneof![Just(1.0), 0.001_f64..0.2], 0.3_f64..8.0, 1_u64..2000)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn spend_never_exceeds_the_budget(
            limit in 0.1_f64..10.0,
            rounds in prop::collection::vec(round(), 1..12),
        ) {
            let mut budget = budget(limit);
            let mut accountant = RdpAccountant::new();
            let mut previous = 0.0;
            for (sampling_rate, noise_multiplier, steps) in rounds {
                let (budget_before, accountant_before) = (budget.clone(), accountant.clone());
                let result = budget.try_spend(&mut accountant, |a| {
                    a.compose_poisson_gaussian(sampling_rate, noise_multiplier, steps)
                });
                match result {
                    Ok(spent) => {
                        prop_assert_eq!(spent, budget.spent_epsilon());
                        prop_assert_eq!(spent, accountant.epsilon(1e-5).unwrap());
                    }
                    Err(Error::BudgetExceeded { required_epsilon, .. }) => {
                        prop_assert!(required_epsilon > limit);
                        prop_assert_eq!(&budget, &budget_before);
                        prop_assert_eq!(&accountant, &accountant_before);
                    }
                    Err(other) => prop_assert!(false, "unexpected error {}", other),
                }
                prop_assert!(budget.spent_epsilon() <= limit);
                prop_assert!(budget.spent_epsilon() >= previous);
                prop_assert!(budget.remaining_epsilon() >= 0.0);
                prop_assert!(accountant.epsilon(1e-5).unwrap() <= limit);
                previous = budget.spent_epsilon();
            }
        }
    }
}
