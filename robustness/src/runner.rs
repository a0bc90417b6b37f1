//! Runs a matrix: every planned cell for every seed, on a few std threads that take jobs from a shared counter.
//! Each job is an independent study, and results are stored by job index, so the numbers do not depend on the
//! number of threads or on which thread ran what.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::datasets::{DatasetConfig, DatasetKind, Study};
use crate::matrix::{Cell, MatrixSpec, Plan};
use crate::simulate::{RunOutcome, run_study};
use crate::stats::{FlagTally, Summary};

/// How to run a matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSettings {
    /// Seeds `0..seeds`.
    pub seeds: u64,
    /// Rounds for every dataset, instead of each dataset's own.
    pub rounds: Option<u32>,
    /// The hospitals' local learning rate for every dataset, instead of each dataset's own.
    pub learning_rate: Option<f64>,
    /// Worker threads.
    pub threads: usize,
}

impl RunSettings {
    /// `dataset`'s configuration with these settings' overrides (rounds, learning rate) applied.
    pub fn dataset_config(&self, dataset: DatasetKind) -> DatasetConfig {
        let mut config = dataset.config();
        config.rounds = self.rounds.unwrap_or(config.rounds);
        config.learning_rate = self.learning_rate.unwrap_or(config.learning_rate);
        config
    }
}

/// A cell with its runs, one per seed in seed order (none when it is not applicable).
#[derive(Clone, Debug, PartialEq)]
pub struct CellResult {
    /// The cell.
    pub cell: Cell,
    /// Its runs.
    pub runs: Vec<RunOutcome>,
}

/// A cell's runs summarised over seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct CellSummary {
    /// Final validation AUROC.
    pub auroc: Summary,
    /// Backdoor success rate.
    pub backdoor: Summary,
    /// Flag counts over every round of every seed.
    pub flags: FlagTally,
    /// Runs whose final model overflowed.
    pub diverged: usize,
    /// Runs stopped by a failed aggregation, and the first reason.
    pub stopped: usize,
    /// The first stop's reason.
    pub stop_reason: Option<String>,
}

impl CellResult {
    /// The summary over seeds, or `None` for a cell that did not run.
    pub fn summary(&self) -> Option<CellSummary> {
        let aurocs: Vec<f64> = self.runs.iter().map(|run| run.auroc).collect();
        let backdoors: Vec<f64> = self.runs.iter().map(|run| run.backdoor_success).collect();
        let mut flags = FlagTally::default();
        self.runs.iter().for_each(|run| flags.add(&run.flags));
        let stopped: Vec<&(u32, String)> = self.runs.iter().filter_map(|run| run.stopped.as_ref()).collect();
        Some(CellSummary {
            auroc: Summary::of(&aurocs)?,
            backdoor: Summary::of(&backdoors)?,
            flags,
            diverged: self.runs.iter().filter(|run| run.diverged).count(),
            stopped: stopped.len(),
            stop_reason: stopped.first().map(|(round, reason)| format!("round {round}: {reason}")),
        })
    }
}

/// Runs every planned cell of `spec` for every seed; `progress` hears `(done, total)` after each job.
pub fn run_matrix(
    spec: &MatrixSpec,
    settings: &RunSettings,
    progress: &(dyn Fn(usize, usize, Duration) + Sync),
) -> Result<Vec<CellResult>> {
    let cells = spec.cells();
    let mut studies: Vec<(DatasetKind, Vec<Study>)> = Vec::new();
    for &dataset in &spec.datasets {
        let config = settings.dataset_config(dataset);
        let drawn = (0..settings.seeds)
            .map(|seed| config.prepare(seed, config.rounds))
            .collect::<Result<Vec<Study>>>()
            .with_context(|| format!("cannot prepare the {} consortium", dataset.name()))?;
        studies.push((dataset, drawn));
    }
    let study = |dataset: DatasetKind, seed: usize| -> &Study {
        let (_, drawn) = studies.iter().find(|(kind, _)| *kind == dataset).expect("every dataset is prepared");
        &drawn[seed]
    };
    // The costliest jobs first, so that the last ones to finish are short.
    let mut jobs: Vec<(usize, usize)> = Vec::new();
    for (index, cell) in cells.iter().enumerate() {
        if matches!(cell.plan, Plan::Run(_)) {
            jobs.extend((0..settings.seeds as usize).map(|seed| (index, seed)));
        }
    }
    jobs.sort_by_key(|&(index, seed)| (std::cmp::Reverse(job_cost(&cells[index])), index, seed));
    let results: Mutex<Vec<Option<Result<RunOutcome>>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..settings.threads.max(1) {
            scope.spawn(|| {
                loop {
                    let job = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(index, seed)) = jobs.get(job) else { break };
                    let cell = &cells[index];
                    let Plan::Run(config) = &cell.plan else { unreachable!("only planned cells are jobs") };
                    let study = study(cell.dataset, seed);
                    let rounds = study.terms.training.rounds;
                    let outcome =
                        run_study(study, cell.attack, cell.attacker_percent, config, rounds).with_context(|| {
                            format!(
                                "{} / {} % {} / {} / seed {seed}",
                                cell.dataset.name(),
                                cell.attacker_percent,
                                cell.attack.name(),
                                cell.defence.name()
                            )
                        });
                    results.lock().unwrap_or_else(|poisoned| poisoned.into_inner())[job] = Some(outcome);
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, jobs.len(), started.elapsed());
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut runs: Vec<Vec<Option<RunOutcome>>> =
        cells.iter().map(|_| (0..settings.seeds).map(|_| None).collect()).collect();
    for (&(index, seed), result) in jobs.iter().zip(results) {
        let outcome = result.ok_or_else(|| anyhow!("a job was never run"))??;
        runs[index][seed] = Some(outcome);
    }
    Ok(cells
        .into_iter()
        .zip(runs)
        .map(|(cell, runs)| CellResult { cell, runs: runs.into_iter().flatten().collect() })
        .collect())
}

/// A rough relative cost for ordering jobs: training rows × local epochs (rounds are alike).
fn job_cost(cell: &Cell) -> usize {
    let config = cell.dataset.config();
    match cell.dataset {
        DatasetKind::BreastCancer => 455 * config.local_epochs as usize,
        DatasetKind::Synthetic => config.synthetic_rows * config.local_epochs as usize,
    }
}
