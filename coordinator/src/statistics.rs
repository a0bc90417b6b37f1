//! DP statistics outside training: a study's federated standardisation, and researchers' feasibility queries.
//!
//! Both are pure state, fed by the edge ([`crate::service`]) with the time, the PDCs available and their answers,
//! in the manner of [`crate::round`]: they decide whom to ask, when to give up on a PDC, and what the answers
//! pool to, and never touch the network, the ledger or the clock.
//!
//! A study with `[federated_standardization]` standardises nothing from the researcher's validation set. Once it
//! is started, and before its first round, it asks every available consenting PDC for a DP feature summary of its
//! table ([`pdc_privacy::stats::release_feature_summary`]); each PDC charges the release to its privacy budget and
//! signs it. When every PDC asked has answered or declined (with at least the study's minimum of answers), or at
//! the deadline if the minimum arrived, the summaries are pooled into the global mean and standard deviation
//! ([`pdc_privacy::stats::combine_feature_summaries`]) that every PDC and the validation set are then standardised
//! with. A window that closes with too few answers opens again, asking those that did not answer; after the
//! coordinator's maximum of attempts the study cannot start.

use std::collections::{BTreeMap, BTreeSet};

use pdc_ledger::signing::StatisticKind;
use pdc_privacy::stats::{
    FeatureBounds, GlobalStandardization, NoisyCohortCounts, NoisyFeatureSummary, combine_feature_summaries,
};

use crate::{Error, Result};

/// What a PDC is asked to release.
#[derive(Clone, Debug, PartialEq)]
pub struct StatisticsQuery {
    /// The statistic.
    pub kind: StatisticKind,
    /// The Gaussian mechanism's noise multiplier.
    pub noise_multiplier: f64,
    /// Feature summaries: each feature's clamping range, in the study's feature order.
    pub bounds: Vec<FeatureBounds>,
    /// Cohort counts: the label column.
    pub label: String,
}

/// What the edge must do for a study's standardisation.
#[derive(Clone, Debug, PartialEq)]
pub enum StandardizationStep {
    /// Send the query to these PDCs.
    Query(Vec<String>),
    /// Record the pooled standardisation and use it from the first round on.
    Fit {
        /// The PDCs whose summaries were pooled, sorted.
        contributors: Vec<String>,
        /// The pooled estimate.
        global: GlobalStandardization,
    },
    /// The study cannot start: too few PDCs answered in every attempt.
    Fail(String),
}

/// A study's federated standardisation, from the first query to the fit.
#[derive(Clone, Debug)]
pub struct Standardization {
    query: StatisticsQuery,
    min_answers: usize,
    window_ms: u64,
    max_attempts: u32,
    queried: BTreeSet<String>,
    answers: BTreeMap<String, NoisyFeatureSummary>,
    declined: BTreeMap<String, String>,
    deadline: Option<u64>,
    attempts: u32,
    fitted: Option<GlobalStandardization>,
    failed: bool,
}

impl Standardization {
    /// A standardisation that pools at least `min_answers` summaries of `bounds` released at `noise_multiplier`,
    /// giving PDCs `window_ms` to answer, at most `max_attempts` times.
    pub fn new(
        noise_multiplier: f64,
        bounds: Vec<FeatureBounds>,
        min_answers: usize,
        window_ms: u64,
        max_attempts: u32,
    ) -> Self {
        let query =
            StatisticsQuery { kind: StatisticKind::FeatureSummary, noise_multiplier, bounds, label: String::new() };
        Self {
            query,
            min_answers: min_answers.max(1),
            window_ms,
            max_attempts: max_attempts.max(1),
            queried: BTreeSet::new(),
            answers: BTreeMap::new(),
            declined: BTreeMap::new(),
            deadline: None,
            attempts: 0,
            fitted: None,
            failed: false,
        }
    }

    /// The query every PDC is sent.
    pub fn query(&self) -> &StatisticsQuery {
        &self.query
    }

    /// The pooled standardisation, once fitted.
    pub fn fitted(&self) -> Option<&GlobalStandardization> {
        self.fitted.as_ref()
    }

    /// Whether the study may go on to its rounds.
    pub fn is_done(&self) -> bool {
        self.fitted.is_some() || self.failed
    }

    /// Whether `pdc_id` was asked and owes an answer (so a reconnecting PDC is asked again).
    pub fn awaits(&self, pdc_id: &str) -> bool {
        !self.is_done() && self.queried.contains(pdc_id) && !self.answered_or_declined(pdc_id)
    }

    fn answered_or_declined(&self, pdc_id: &str) -> bool {
        self.answers.contains_key(pdc_id) || self.declined.contains_key(pdc_id)
    }

    /// Time passed; `available` are the PDCs that could answer now (consenting, connected).
    pub fn tick(&mut self, now_ms: u64, available: &BTreeSet<String>) -> Vec<StandardizationStep> {
        if self.is_done() {
            return Vec::new();
        }
        let mut steps = Vec::new();
        let fresh: Vec<String> = available
            .iter()
            .filter(|id| !self.queried.contains(*id) && !self.answered_or_declined(id))
            .cloned()
            .collect();
        match self.deadline {
            None => {
                let pending = available.iter().filter(|id| self.awaits(id)).count();
                if self.answers.len() + pending + fresh.len() >= self.min_answers {
                    // Those asked in an earlier attempt that did not answer are asked again.
                    let mut ask: Vec<String> = available.iter().filter(|id| self.awaits(id)).cloned().collect();
                    ask.extend(fresh);
                    ask.sort();
                    self.queried.extend(ask.iter().cloned());
                    self.deadline = Some(now_ms.saturating_add(self.window_ms));
                    self.attempts += 1;
                    if !ask.is_empty() {
                        steps.push(StandardizationStep::Query(ask));
                    }
                    steps.extend(self.fit_if_complete());
                }
            }
            Some(deadline) => {
                if !fresh.is_empty() {
                    self.queried.extend(fresh.iter().cloned());
                    steps.push(StandardizationStep::Query(fresh));
                }
                if now_ms >= deadline {
                    if self.answers.len() >= self.min_answers {
                        steps.extend(self.fit());
                    } else if self.attempts >= self.max_attempts {
                        self.failed = true;
                        steps.push(StandardizationStep::Fail(format!(
                            "federated standardisation: {} of the {} feature summaries needed arrived in {} attempts",
                            self.answers.len(),
                            self.min_answers,
                            self.attempts
                        )));
                    } else {
                        self.deadline = None;
                    }
                }
            }
        }
        steps
    }

    /// Checks that `pdc_id` may answer now: it was asked, has not answered or declined, and the fit is not done.
    pub fn check_answer(&self, pdc_id: &str) -> Result<()> {
        if self.is_done() {
            return Err(Error::FailedPrecondition("the study's standardisation is already fitted".into()));
        }
        if self.answers.contains_key(pdc_id) {
            return Err(Error::AlreadyExists(format!("{pdc_id} already released its feature summary for this study")));
        }
        if self.declined.contains_key(pdc_id) {
            return Err(Error::FailedPrecondition(format!("{pdc_id} declined to release a feature summary")));
        }
        if !self.queried.contains(pdc_id) {
            return Err(Error::PermissionDenied(format!("{pdc_id} was not asked for a feature summary")));
        }
        Ok(())
    }

    /// Records `pdc_id`'s summary (checked with [`Self::check_answer`] first); fits when it was the last owed.
    pub fn answer(&mut self, pdc_id: &str, summary: NoisyFeatureSummary) -> Result<Vec<StandardizationStep>> {
        self.check_answer(pdc_id)?;
        self.answers.insert(pdc_id.to_owned(), summary);
        Ok(self.fit_if_complete())
    }

    /// Records that `pdc_id` will not answer, and why.
    pub fn decline(&mut self, pdc_id: &str, reason: &str) -> Result<Vec<StandardizationStep>> {
        self.check_answer(pdc_id)?;
        self.declined.insert(pdc_id.to_owned(), reason.to_owned());
        Ok(self.fit_if_complete())
    }

    /// Summaries received so far.
    pub fn answers(&self) -> usize {
        self.answers.len()
    }

    fn fit_if_complete(&mut self) -> Vec<StandardizationStep> {
        let outstanding = self.queried.iter().any(|id| !self.answered_or_declined(id));
        if self.deadline.is_some() && !outstanding && self.answers.len() >= self.min_answers {
            self.fit()
        } else {
            Vec::new()
        }
    }

    fn fit(&mut self) -> Vec<StandardizationStep> {
        let contributors: Vec<String> = self.answers.keys().cloned().collect();
        let summaries: Vec<NoisyFeatureSummary> = self.answers.values().cloned().collect();
        match combine_feature_summaries(&summaries) {
            Ok(global) => {
                self.fitted = Some(global.clone());
                vec![StandardizationStep::Fit { contributors, global }]
            }
            Err(error) => {
                self.failed = true;
                vec![StandardizationStep::Fail(format!(
                    "federated standardisation: cannot pool the summaries: {error}"
                ))]
            }
        }
    }
}

/// One PDC's part in a feasibility query, as reported to the researcher.
#[derive(Clone, Debug, PartialEq)]
pub enum CohortAnswer {
    /// It released its counts; its table's cumulative ε after the release.
    Released {
        /// The noisy counts.
        counts: NoisyCohortCounts,
        /// The PDC's cumulative ε after the release.
        epsilon: f64,
    },
    /// It declined, and why.
    Declined(String),
    /// It had not answered by the timeout.
    NoAnswer,
}

/// A researcher's feasibility query: noisy cohort counts from every PDC connected when it was asked.
#[derive(Clone, Debug)]
pub struct FeasibilityQuery {
    query: StatisticsQuery,
    answers: BTreeMap<String, CohortAnswer>,
}

impl FeasibilityQuery {
    /// A query for `label`'s counts at `noise_multiplier`, asked of `asked`.
    pub fn new(label: &str, noise_multiplier: f64, asked: impl IntoIterator<Item = String>) -> Self {
        let query = StatisticsQuery {
            kind: StatisticKind::CohortCounts,
            noise_multiplier,
            bounds: Vec::new(),
            label: label.to_owned(),
        };
        Self { query, answers: asked.into_iter().map(|id| (id, CohortAnswer::NoAnswer)).collect() }
    }

    /// The query every PDC is sent.
    pub fn query(&self) -> &StatisticsQuery {
        &self.query
    }

    /// Checks that `pdc_id` was asked and has not answered.
    pub fn check_answer(&self, pdc_id: &str) -> Result<()> {
        match self.answers.get(pdc_id) {
            None => Err(Error::PermissionDenied(format!("{pdc_id} was not asked this feasibility query"))),
            Some(CohortAnswer::NoAnswer) => Ok(()),
            Some(_) => Err(Error::AlreadyExists(format!("{pdc_id} already answered this feasibility query"))),
        }
    }

    /// Records `pdc_id`'s answer (checked first).
    pub fn answer(&mut self, pdc_id: &str, answer: CohortAnswer) -> Result<()> {
        self.check_answer(pdc_id)?;
        self.answers.insert(pdc_id.to_owned(), answer);
        Ok(())
    }

    /// Whether every PDC asked has answered or declined.
    pub fn is_complete(&self) -> bool {
        self.answers.values().all(|answer| *answer != CohortAnswer::NoAnswer)
    }

    /// Every PDC asked, in id order, with its answer.
    pub fn answers(&self) -> &BTreeMap<String, CohortAnswer> {
        &self.answers
    }
}

#[cfg(test)]
mod tests {
    use pdc_privacy::stats::release_feature_summary;

    use super::*;

    fn ids(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    fn summary(values: &[f64]) -> NoisyFeatureSummary {
        let rows: Vec<[f64; 1]> = values.iter().map(|&v| [v]).collect();
        release_feature_summary(&rows, &[FeatureBounds::new(0.0, 10.0).unwrap()], 1.0).unwrap()
    }

    fn standardization() -> Standardization {
        Standardization::new(1.0, vec![FeatureBounds::new(0.0, 10.0).unwrap()], 2, 1_000, 2)
    }

    #[test]
    fn asks_once_enough_pdcs_are_available_and_fits_when_all_answered() {
        let mut s = standardization();
        assert_eq!(s.tick(0, &ids(&["a"])), []);
        assert_eq!(s.tick(10, &ids(&["a", "b"])), [StandardizationStep::Query(vec!["a".into(), "b".into()])]);
        // A PDC that connects during the window is asked too; one never asked may not answer.
        assert_eq!(s.tick(20, &ids(&["a", "b", "c"])), [StandardizationStep::Query(vec!["c".into()])]);
        assert!(matches!(s.check_answer("d"), Err(Error::PermissionDenied(_))));
        assert_eq!(s.answer("a", summary(&[1.0; 50])).unwrap(), []);
        assert!(matches!(s.answer("a", summary(&[1.0])), Err(Error::AlreadyExists(_))));
        assert_eq!(s.decline("c", "no budget").unwrap(), []);
        assert!(matches!(s.check_answer("c"), Err(Error::FailedPrecondition(_))));
        let steps = s.answer("b", summary(&[9.0; 50])).unwrap();
        let [StandardizationStep::Fit { contributors, global }] = steps.as_slice() else { panic!("{steps:?}") };
        assert_eq!(contributors, &["a".to_owned(), "b".to_owned()]);
        assert_eq!(global.mean.len(), 1);
        assert!(s.is_done() && s.fitted().is_some());
        assert_eq!(s.tick(5_000, &ids(&["a", "b", "c"])), []);
        assert!(matches!(s.check_answer("c"), Err(Error::FailedPrecondition(_))));
    }

    #[test]
    fn the_deadline_fits_with_the_minimum_and_retries_without_it_then_fails() {
        // Enough answers by the deadline: the silent PDC is not waited for.
        let mut s = standardization();
        s.tick(0, &ids(&["a", "b", "c"]));
        s.answer("a", summary(&[2.0])).unwrap();
        s.answer("b", summary(&[3.0])).unwrap();
        assert!(s.awaits("c"));
        assert_eq!(s.tick(999, &ids(&["a", "b", "c"])), []);
        assert!(matches!(s.tick(1_000, &ids(&["a", "b", "c"])).as_slice(), [StandardizationStep::Fit { .. }]));

        // Too few: the window opens again for those that owe an answer, and the study fails after two attempts.
        let mut s = standardization();
        s.tick(0, &ids(&["a", "b"]));
        s.answer("a", summary(&[2.0])).unwrap();
        assert_eq!(s.tick(1_000, &ids(&["a", "b"])), []);
        assert_eq!(s.tick(1_001, &ids(&["a", "b"])), [StandardizationStep::Query(vec!["b".into()])]);
        let steps = s.tick(2_001, &ids(&["a", "b"]));
        let [StandardizationStep::Fail(reason)] = steps.as_slice() else { panic!("{steps:?}") };
        assert!(reason.contains("1 of the 2 feature summaries needed arrived in 2 attempts"), "{reason}");
        assert!(s.is_done() && s.fitted().is_none());
    }

    #[test]
    fn a_feasibility_query_completes_when_every_pdc_asked_answered_or_declined() {
        let mut query = FeasibilityQuery::new("y", 2.0, ["a".to_owned(), "b".to_owned()]);
        assert!(!query.is_complete());
        assert!(matches!(query.check_answer("z"), Err(Error::PermissionDenied(_))));
        let counts = NoisyCohortCounts::from_values(2.0, 10.0, 20.0).unwrap();
        query.answer("a", CohortAnswer::Released { counts, epsilon: 0.5 }).unwrap();
        assert!(matches!(query.answer("a", CohortAnswer::Declined("x".into())), Err(Error::AlreadyExists(_))));
        query.answer("b", CohortAnswer::Declined("no budget".into())).unwrap();
        assert!(query.is_complete());
        assert_eq!(query.answers().len(), 2);
    }
}
