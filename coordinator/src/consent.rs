//! Consent conditions: which limits a hospital may sign with its consent, and whether a consent still covers a
//! round. Pure: the wall clock is an argument.
//!
//! A consent holds while each condition it carries holds: `expires_at_ms` is after the coordinator's clock, the
//! round is at most `max_rounds`, and the PDC's ε on the study is below `max_epsilon`. That ε is what the
//! coordinator records for the study: each accepted update adds the increase of the PDC's signed cumulative spend
//! over the spend recorded before it (an over-count when other studies interleave, never an under-count).

use std::collections::BTreeMap;

use pdc_ledger::signing::ConsentConditions;

use crate::{Error, Result};

/// The conditions of a study's conditional consents, and each PDC's ε on the study.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConsentTerms {
    conditions: BTreeMap<String, ConsentConditions>,
    spent: BTreeMap<String, f64>,
}

impl ConsentTerms {
    /// Checks conditions a PDC signs with its consent to study `study_id`: a round limit of at least 1; an ε
    /// limit finite and positive, for a study that trains with local DP (only there does a PDC spend ε per
    /// update); an expiry after `now_wall_ms`.
    pub fn check(conditions: &ConsentConditions, study_id: &str, local_dp: bool, now_wall_ms: u64) -> Result<()> {
        let invalid = |detail: String| Err(Error::InvalidArgument { field: "conditions", detail });
        if conditions.max_rounds == Some(0) {
            return invalid("max_rounds must be at least 1".into());
        }
        if let Some(cap) = conditions.max_epsilon {
            if !(cap.is_finite() && cap > 0.0) {
                return invalid(format!("max_epsilon {cap} is not finite and positive"));
            }
            if !local_dp {
                return invalid(format!(
                    "max_epsilon needs a study that trains with local DP, and {study_id} does not"
                ));
            }
        }
        if let Some(expiry) = conditions.expires_at_ms
            && expiry <= now_wall_ms
        {
            return invalid(format!("expires_at_ms {expiry} is not after the coordinator's clock {now_wall_ms}"));
        }
        Ok(())
    }

    /// The conditions of `pdc_id`'s consent, if it carries some.
    pub fn conditions(&self, pdc_id: &str) -> Option<&ConsentConditions> {
        self.conditions.get(pdc_id)
    }

    /// Records a grant: its conditions replace any earlier ones.
    pub fn grant(&mut self, pdc_id: &str, conditions: Option<ConsentConditions>) {
        match conditions {
            Some(conditions) => self.conditions.insert(pdc_id.to_owned(), conditions),
            None => self.conditions.remove(pdc_id),
        };
    }

    /// Records a revocation: the conditions go with the consent.
    pub fn revoke(&mut self, pdc_id: &str) {
        self.conditions.remove(pdc_id);
    }

    /// Why `pdc_id`'s consent (given, not revoked) to study `study_id` does not cover `round` at `now_wall_ms`,
    /// if it does not.
    pub fn lapse(&self, study_id: &str, pdc_id: &str, round: u32, now_wall_ms: u64) -> Option<String> {
        let conditions = self.conditions.get(pdc_id)?;
        if let Some(expiry) = conditions.expires_at_ms
            && now_wall_ms >= expiry
        {
            return Some(format!("{pdc_id}'s consent to study {study_id} expired at {expiry} (Unix ms)"));
        }
        if let Some(rounds) = conditions.max_rounds
            && round > rounds
        {
            return Some(format!("{pdc_id}'s consent to study {study_id} covers rounds 1 to {rounds}, not {round}"));
        }
        let spent = self.spent.get(pdc_id).copied().unwrap_or(0.0);
        if let Some(cap) = conditions.max_epsilon
            && spent >= cap
        {
            return Some(format!(
                "{pdc_id} spent ε = {spent} on study {study_id}, all the ε = {cap} its consent allows"
            ));
        }
        None
    }

    /// `pdc_id`'s ε on study `study_id` once an update claiming cumulative `claimed` is recorded, when its
    /// cumulative spend recorded so far is `recorded`; refused when that would pass the consent's `max_epsilon`.
    pub fn epsilon_after(&self, study_id: &str, pdc_id: &str, claimed: Option<f64>, recorded: f64) -> Result<f64> {
        let before = self.spent.get(pdc_id).copied().unwrap_or(0.0);
        let Some(claimed) = claimed else { return Ok(before) };
        let after = before + (claimed - recorded).max(0.0);
        if let Some(cap) = self.conditions.get(pdc_id).and_then(|conditions| conditions.max_epsilon)
            && after > cap
        {
            return Err(Error::PermissionDenied(format!(
                "the update would take {pdc_id}'s ε on study {study_id} to {after}, above the ε = {cap} its consent \
                 allows"
            )));
        }
        Ok(after)
    }

    /// Records `pdc_id`'s ε on the study after an accepted update (from [`ConsentTerms::epsilon_after`]).
    pub fn record_epsilon(&mut self, pdc_id: &str, epsilon: f64) {
        self.spent.insert(pdc_id.to_owned(), epsilon);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_that_cannot_hold_are_refused() {
        let none = ConsentConditions::default();
        ConsentTerms::check(&none, "s", false, 10).unwrap();
        let error = |conditions, local_dp| ConsentTerms::check(&conditions, "s", local_dp, 10).unwrap_err().to_string();
        assert!(
            error(ConsentConditions { max_rounds: Some(0), ..none }, true).contains("max_rounds must be at least 1")
        );
        assert!(error(ConsentConditions { max_epsilon: Some(-1.0), ..none }, true).contains("not finite and positive"));
        assert!(error(ConsentConditions { max_epsilon: Some(f64::NAN), ..none }, true).contains("not finite"));
        assert!(error(ConsentConditions { max_epsilon: Some(1.0), ..none }, false).contains("and s does not"));
        assert!(error(ConsentConditions { expires_at_ms: Some(10), ..none }, true).contains("is not after"));
        ConsentTerms::check(
            &ConsentConditions { max_epsilon: Some(1.0), expires_at_ms: Some(11), ..none },
            "s",
            true,
            10,
        )
        .unwrap();
    }

    #[test]
    fn a_consent_lapses_at_its_expiry_after_its_last_round_and_when_its_epsilon_is_spent() {
        let mut terms = ConsentTerms::default();
        assert_eq!(terms.lapse("s", "a", 99, u64::MAX), None, "an unconditional consent never lapses");
        let conditions = ConsentConditions { max_rounds: Some(3), max_epsilon: Some(1.0), expires_at_ms: Some(1_000) };
        terms.grant("a", Some(conditions));
        assert_eq!(terms.lapse("s", "a", 3, 999), None);
        assert_eq!(terms.lapse("s", "a", 3, 1_000).unwrap(), "a's consent to study s expired at 1000 (Unix ms)");
        assert_eq!(terms.lapse("s", "a", 4, 0).unwrap(), "a's consent to study s covers rounds 1 to 3, not 4");

        // Spend: increases of the cumulative figure are charged to the study; other studies' spend in between
        // counts too (an over-count, never an under-count).
        assert_eq!(terms.epsilon_after("s", "a", None, 0.0).unwrap(), 0.0, "no claim, no spend");
        let after = terms.epsilon_after("s", "a", Some(0.4), 0.0).unwrap();
        terms.record_epsilon("a", after);
        let error = terms.epsilon_after("s", "a", Some(1.2), 0.4).unwrap_err().to_string();
        assert!(error.contains("take a's ε on study s to 1.2"), "{error}");
        let after = terms.epsilon_after("s", "a", Some(1.0), 0.4).unwrap();
        assert!((after - 1.0).abs() < 1e-12);
        assert_eq!(terms.lapse("s", "a", 1, 0), None, "not charged until recorded");
        terms.record_epsilon("a", after);
        assert!(terms.lapse("s", "a", 1, 0).unwrap().contains("all the ε = 1 its consent allows"));

        // A new grant replaces the conditions; a revocation drops them.
        terms.grant("a", Some(ConsentConditions { max_rounds: Some(10), ..ConsentConditions::default() }));
        assert_eq!(terms.lapse("s", "a", 4, 5_000), None);
        terms.revoke("a");
        assert_eq!(terms.conditions("a"), None);
    }
}
