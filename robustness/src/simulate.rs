//! One simulated study, in process and without gRPC: every round each hospital trains with `pdc-client`'s own
//! training code (honestly or under its attack), and the coordinator's own round pipeline
//! (`pdc_coordinator::pipeline`) screens the updates ([`screen`]) and aggregates them ([`aggregate_rows`]: the
//! rule, the anomaly scores, and the study's `ServerState` installing the next global model). Under FLTrust the
//! server first trains its own update on the study's root data.

use anyhow::{Context, Result};
use pdc_client::attack::{Attack, BenignEstimate};
use pdc_client::training::{LocalUpdate, train_round, train_round_attacked};
use pdc_coordinator::aggregation::ServerState;
use pdc_coordinator::aggregation::rule::AggregationConfig;
use pdc_coordinator::manifest::UpdateChecks;
use pdc_coordinator::pipeline::{aggregate_rows, screen};
use pdc_models::{Task, evaluate, predict};

use crate::datasets::{Study, Trigger};
use crate::matrix::{AttackKind, attackers_for};
use crate::seeds::{Purpose, derive, training_seed};
use crate::stats::FlagTally;

/// What one study run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOutcome {
    /// The final global model's validation AUROC (0.5 when its outputs are not finite: see `diverged`).
    pub auroc: f64,
    /// The share of triggered validation rows of the other class that the final model gives the target label.
    pub backdoor_success: f64,
    /// The anomaly check's verdicts, attackers and honest hospitals apart.
    pub flags: FlagTally,
    /// Whether the final model's outputs overflowed (scored as AUROC 0.5).
    pub diverged: bool,
    /// The round in which aggregation failed and the study stopped (the coordinator stops a study whose
    /// aggregation fails), with the reason; the model of the round before is final.
    pub stopped: Option<(u32, String)>,
}

/// A hospital's id as the coordinator sorts it: `h00`, `h01`, …
pub fn hospital_id(index: usize) -> String {
    format!("h{index:02}")
}

/// Runs `rounds` rounds of `study` with `attacker_percent` % of its hospitals (the first of its attacker order)
/// running `attack`, aggregated with `config`.
pub fn run_study(
    study: &Study,
    attack: AttackKind,
    attacker_percent: u32,
    config: &AggregationConfig,
    rounds: u32,
) -> Result<RunOutcome> {
    let n = study.parts.len();
    let n_attackers = if attack == AttackKind::None { 0 } else { attackers_for(n, attacker_percent) };
    let mut attacks: Vec<Option<Attack>> = vec![None; n];
    for &hospital in &study.attacker_order[..n_attackers] {
        attacks[hospital] = attack.attack(&study.config, n, n_attackers, study.seed, hospital);
    }
    let ids: Vec<String> = (0..n).map(hospital_id).collect();
    let checks = UpdateChecks::default();
    let mut global = study.initial.clone();
    let mut state = ServerState::new(config, global.len())?;
    let mut flags = FlagTally::default();
    let mut stopped = None;
    for round in 1..=rounds {
        let mut updates: Vec<Option<LocalUpdate>> = vec![None; n];
        // Honest hospitals first: ALIE and IPM are given the honest updates' statistics (the omniscient attacker
        // of the papers), which is the strongest form of either.
        for hospital in (0..n).filter(|&hospital| attacks[hospital].is_none()) {
            let seed = training_seed(study.seed, round, hospital);
            // A hospital whose training fails (a diverged model) reports a failure and sends nothing.
            updates[hospital] =
                train_round(&study.terms, &global, &study.parts[hospital], &study.standardizer, seed).ok();
        }
        let needs_benign = attacks.iter().flatten().any(Attack::needs_benign_estimate);
        let honest: Vec<Vec<f32>> = updates.iter().flatten().map(|update| update.delta.clone()).collect();
        let benign =
            if needs_benign && !honest.is_empty() { Some(BenignEstimate::from_deltas(&honest)?) } else { None };
        for hospital in (0..n).filter(|&hospital| attacks[hospital].is_some()) {
            let attack = attacks[hospital].as_ref().expect("filtered on attackers");
            let seed = training_seed(study.seed, round, hospital);
            let table = &study.parts[hospital];
            updates[hospital] =
                train_round_attacked(&study.terms, &global, table, &study.standardizer, seed, attack, benign.as_ref())
                    .ok();
        }
        // The archive's checks on upload: finite values and the manifest's norm bound.
        let mut rows: Vec<(&str, f64, &[f32])> = Vec::with_capacity(n);
        let mut is_attacker: Vec<bool> = Vec::with_capacity(n);
        for (hospital, update) in updates.iter().enumerate() {
            let Some(update) = update else { continue };
            if screen(&update.delta, update.n_examples, &checks).is_err() {
                flags.record_rejected(attacks[hospital].is_some());
                continue;
            }
            rows.push((ids[hospital].as_str(), update.n_examples as f64, update.delta.as_slice()));
            is_attacker.push(attacks[hospital].is_some());
        }
        if rows.is_empty() {
            stopped = Some((round, "no update arrived".to_owned()));
            break;
        }
        // FLTrust's server trains the global model on its root data with the study's own training terms, as the
        // coordinator does on the researcher's validation set.
        let server_update = if config.needs_server_update() {
            let seed = derive(study.seed, Purpose::RootTraining, u64::from(round));
            match train_round(&study.terms, &global, &study.root, &study.standardizer, seed) {
                Ok(update) => Some(update.delta),
                Err(error) => {
                    stopped = Some((round, format!("the server update failed: {error}")));
                    break;
                }
            }
        } else {
            None
        };
        let batch_size = study.terms.training.batch_size;
        match aggregate_rows(config, &rows, &mut state, &global, server_update.as_deref(), batch_size) {
            Ok(outcome) => {
                // `rows` are already in id order, which is the order of the scores.
                for ((_, score), &attacker) in outcome.scores.iter().zip(&is_attacker) {
                    flags.record_score(attacker, score);
                }
                global = outcome.model;
            }
            Err(error) => {
                stopped = Some((round, error.to_string()));
                break;
            }
        }
    }
    let spec = study.terms.model_spec();
    let (auroc, diverged) = match evaluate(&spec, &global, &study.validation) {
        Ok(metrics) => (metrics.auroc.context("the validation set lacks a class")?, false),
        Err(pdc_models::Error::NonFiniteOutput { .. }) => (0.5, true),
        Err(error) => return Err(error.into()),
    };
    let backdoor_success = if diverged { 0.0 } else { backdoor_success(study, &global, &study.config.trigger)? };
    Ok(RunOutcome { auroc, backdoor_success, flags, diverged, stopped })
}

/// The share of validation rows whose label is not the trigger's target that `parameters` classify as the target
/// once the trigger is applied (with `pdc-client`'s own backdoor code, to every such row).
pub fn backdoor_success(study: &Study, parameters: &[f32], trigger: &Trigger) -> Result<f64> {
    let others: Vec<usize> = (0..study.raw_validation.n_rows())
        .filter(|&row| study.raw_validation.labels[row] != trigger.target_label)
        .collect();
    let mut triggered = study.raw_validation.subset(&others);
    let attack = Attack::Backdoor {
        features: trigger.features.clone(),
        trigger_value: trigger.value,
        target_label: trigger.target_label,
        poison_fraction: 1.0,
        boost: 1.0,
        seed: 0,
    };
    attack.apply_to_table(&mut triggered, Task::BinaryClassification)?;
    study.standardizer.apply(&mut triggered)?;
    let logits = predict(&study.terms.model_spec(), parameters, &triggered)?;
    Ok(share_classified_as(&logits, trigger.target_label))
}

/// The share of `logits` whose predicted class (1 when the logit is ≥ 0, as `pdc_models::evaluate` counts
/// accuracy) is `target`; 0 for no rows.
pub fn share_classified_as(logits: &[f32], target: f32) -> f64 {
    if logits.is_empty() {
        return 0.0;
    }
    let hits = logits.iter().filter(|&&logit| if logit >= 0.0 { 1.0 } else { 0.0 } == target).count();
    hits as f64 / logits.len() as f64
}

#[cfg(test)]
mod tests {
    use pdc_coordinator::aggregation::rule::RuleKind;

    use super::*;
    use crate::datasets::DatasetKind;

    #[test]
    fn the_predicted_class_follows_evaluates_threshold() {
        let logits = [-2.0f32, -0.1, 0.0, 0.3, 4.0];
        assert_eq!(share_classified_as(&logits, 0.0), 0.4);
        assert_eq!(share_classified_as(&logits, 1.0), 0.6);
        assert_eq!(share_classified_as(&[], 1.0), 0.0);
    }

    #[test]
    fn backdoor_success_counts_triggered_rows_of_the_other_class_given_the_target() {
        let study = DatasetKind::BreastCancer.config().prepare(0, 1).unwrap();
        let spec = study.terms.model_spec();
        let trigger = &study.config.trigger;
        // Zero weights: every logit is the output bias. A negative one labels every row 0, the trigger's target.
        let mut parameters = vec![0.0f32; spec.layout().n_parameters()];
        *parameters.last_mut().unwrap() = -1.0;
        assert_eq!(backdoor_success(&study, &parameters, trigger).unwrap(), 1.0);
        *parameters.last_mut().unwrap() = 1.0;
        assert_eq!(backdoor_success(&study, &parameters, trigger).unwrap(), 0.0);
        // A model that reads only the first trigger feature, 2 − relu(x): with the trigger (4 standard deviations
        // above that feature's mean) the logit is negative for every malignant row, whatever the rest of the row.
        let hidden = 16;
        let column = study.terms.data.features.iter().position(|name| *name == trigger.features[0]).unwrap();
        let mut reader = vec![0.0f32; spec.layout().n_parameters()];
        reader[column * hidden] = 1.0; // layers.0.weight[column, 0]
        let output_weights = 30 * hidden + hidden;
        reader[output_weights] = -1.0; // layers.1.weight[0, 0]
        reader[output_weights + hidden] = 2.0; // layers.1.bias
        assert_eq!(backdoor_success(&study, &reader, trigger).unwrap(), 1.0);
        // Without the trigger those rows are mostly malignant to this model, so the metric measures the trigger.
        let mut malignant = study.validation.clone();
        let rows: Vec<usize> = (0..malignant.n_rows()).filter(|&row| malignant.labels[row] == 1.0).collect();
        malignant = malignant.subset(&rows);
        let clean = share_classified_as(&predict(&spec, &reader, &malignant).unwrap(), 0.0);
        assert!(clean < 0.5, "{clean}");
    }

    #[test]
    fn a_short_study_is_deterministic_and_counts_attackers_and_honest_hospitals_apart() {
        let study = DatasetKind::BreastCancer.config().prepare(1, 2).unwrap();
        let config = AggregationConfig { rule: RuleKind::Median, ..AggregationConfig::default() };
        let run = || run_study(&study, AttackKind::FreeRide, 20, &config, 2).unwrap();
        let outcome = run();
        assert_eq!(outcome, run());
        // Two echoing attackers and eight honest hospitals, over two rounds; echoes are always flagged.
        assert_eq!((outcome.flags.attacker_updates, outcome.flags.honest_updates), (4, 16));
        assert_eq!(outcome.flags.attacker_flagged, 4);
        assert_eq!(outcome.flags.attacker_free_rider, 4);
        assert!(outcome.stopped.is_none() && !outcome.diverged);
        assert!(outcome.auroc > 0.5, "{outcome:?}");
        // Without attackers nobody counts as one.
        let clean = run_study(&study, AttackKind::None, 0, &config, 2).unwrap();
        assert_eq!((clean.flags.attacker_updates, clean.flags.honest_updates), (0, 20));
    }

    #[test]
    fn fltrusts_server_trains_on_root_rows_drawn_from_the_training_rows() {
        let study = DatasetKind::BreastCancer.config().prepare(1, 2).unwrap();
        assert_eq!(study.root.n_rows(), crate::datasets::ROOT_ROWS);
        // Every root row is one of the hospitals' rows and none is a validation row.
        let is_in = |table: &pdc_models::Dataset, row: &[f32]| (0..table.n_rows()).any(|i| table.row(i) == row);
        for row in (0..study.root.n_rows()).map(|i| study.root.row(i)) {
            assert!(study.parts.iter().any(|part| is_in(part, row)));
            assert!(!is_in(&study.raw_validation, row));
        }
        let config = AggregationConfig { rule: RuleKind::FlTrust, ..AggregationConfig::default() };
        let outcome = run_study(&study, AttackKind::SignFlipX4, 20, &config, 2).unwrap();
        assert_eq!(outcome, run_study(&study, AttackKind::SignFlipX4, 20, &config, 2).unwrap());
        assert!(outcome.stopped.is_none() && !outcome.diverged, "{outcome:?}");
        // The flipped updates point away from the server's and get no trust: FLTrust learns where FedAvg,
        // averaging them in at four times their size, goes backwards.
        let fedavg = run_study(&study, AttackKind::SignFlipX4, 20, &AggregationConfig::default(), 2).unwrap();
        assert!(outcome.auroc > fedavg.auroc + 0.05, "FLTrust {} vs FedAvg {}", outcome.auroc, fedavg.auroc);
        // A server without root data cannot train its update, and the study stops with the reason.
        let mut rootless = study.clone();
        rootless.root = rootless.root.subset(&[]);
        let (round, reason) = run_study(&rootless, AttackKind::None, 0, &config, 2).unwrap().stopped.unwrap();
        assert_eq!(round, 1);
        assert!(reason.starts_with("the server update failed: "), "{reason}");
    }

    #[test]
    fn a_failed_aggregation_stops_the_study_with_the_last_model() {
        // Multi-Krum with f = 5 needs 13 updates; the consortium has 10 hospitals.
        let study = DatasetKind::BreastCancer.config().prepare(1, 2).unwrap();
        let config = AggregationConfig { rule: RuleKind::MultiKrum, f: Some(5), ..AggregationConfig::default() };
        let outcome = run_study(&study, AttackKind::FreeRide, 20, &config, 2).unwrap();
        let (round, reason) = outcome.stopped.unwrap();
        assert_eq!(round, 1);
        assert!(reason.contains("Krum needs n >= 2f + 3 = 13"), "{reason}");
        // Nothing was aggregated: the initial model is final.
        let initial = evaluate(&study.terms.model_spec(), &study.initial, &study.validation).unwrap();
        assert_eq!(Some(outcome.auroc), initial.auroc);
    }

    #[test]
    fn leaving_flagged_updates_out_no_longer_stops_a_krum_study() {
        // Multi-Krum with f = 3 needs 9 updates: with the two echoes left out 8 remain, and the rule runs with
        // f = 2 instead of refusing the round (which used to stop the study in round 1).
        let study = DatasetKind::BreastCancer.config().prepare(1, 2).unwrap();
        let mut config = AggregationConfig { rule: RuleKind::MultiKrum, f: Some(3), ..AggregationConfig::default() };
        config.anomaly.exclude_flagged = true;
        let outcome = run_study(&study, AttackKind::FreeRide, 20, &config, 2).unwrap();
        assert_eq!(outcome.stopped, None);
        assert_eq!(outcome.flags.attacker_flagged, 4);
        let initial = evaluate(&study.terms.model_spec(), &study.initial, &study.validation).unwrap();
        assert_ne!(Some(outcome.auroc), initial.auroc);
    }
}
