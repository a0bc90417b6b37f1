//! The Markdown report: how it was made (command, machine, date, wall time, settings), the acceptance verdicts,
//! and per dataset the AUROC, backdoor, flagging and free-rider tables, then every cell in one long table.

use std::fmt::Write;

use crate::acceptance::{Lookup, Verdict, free_riders, no_attack, twenty_percent};
use crate::datasets::{DatasetKind, ROOT_ROWS, Split, VALIDATION_FRACTION};
use crate::matrix::{AttackKind, BACKDOOR_POISON_FRACTION, IPM_EPSILON, MatrixSpec, Plan, assumed_byzantine};
use crate::runner::{CellResult, CellSummary, RunSettings};
use crate::stats::{FlagTally, ReasonKind};

/// What the report says about how it was produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Provenance {
    /// The command that reproduces it.
    pub command: String,
    /// The CPU's model name.
    pub cpu: String,
    /// Cores available to the process.
    pub cores: usize,
    /// The date, `YYYY-MM-DD` (UTC).
    pub date: String,
    /// Wall time of the whole matrix, in seconds.
    pub wall_seconds: f64,
}

/// Renders the whole report.
pub fn render(spec: &MatrixSpec, settings: &RunSettings, provenance: &Provenance, results: &[CellResult]) -> String {
    let lookup = Lookup::new(results);
    let mut out = String::new();
    let _ = writeln!(out, "# Robustness report\n");
    let _ = writeln!(
        out,
        "Simulated federated studies under attack, aggregated in process with pdc's own code (`pdc-client` \
         training and attacks, `pdc-coordinator` upload checks, `aggregate_round`, `apply_delta` and anomaly \
         scores, `pdc-models` data, partitions and metrics). No gRPC.\n"
    );
    let _ = writeln!(out, "- Reproduce: `{}`", provenance.command);
    let _ = writeln!(
        out,
        "- Machine: {} ({} cores available), {} worker thread(s); results do not depend on the thread count",
        provenance.cpu, provenance.cores, settings.threads
    );
    let _ = writeln!(out, "- Date: {} (UTC)", provenance.date);
    let ran = results.iter().map(|result| result.runs.len()).sum::<usize>();
    let _ = writeln!(
        out,
        "- Total wall time: {:.1} s ({:.1} min) for {ran} simulated studies ({} seeds per cell)\n",
        provenance.wall_seconds,
        provenance.wall_seconds / 60.0,
        settings.seeds
    );

    let _ = writeln!(out, "## Acceptance\n");
    let verdicts = verdicts(&lookup, spec);
    for (title, verdict) in &verdicts {
        let _ = writeln!(out, "**{title}: {}**\n", if verdict.pass { "PASS" } else { "FAIL" });
        for line in &verdict.lines {
            let _ = writeln!(out, "{line}");
        }
        out.push('\n');
    }

    notes(&mut out);
    setup(&mut out, spec, settings);
    for &dataset in &spec.datasets {
        dataset_tables(&mut out, spec, &lookup, dataset);
    }
    detail_table(&mut out, results, &lookup);
    out
}

/// The three acceptance criteria's titles and verdicts.
pub fn verdicts(lookup: &Lookup, spec: &MatrixSpec) -> [(&'static str, Verdict); 3] {
    let (second, recommended) = twenty_percent(lookup, spec);
    [
        ("(1) No attack: every robust rule within 1 AUROC point of FedAvg", no_attack(lookup, spec)),
        ("(2) 20 % attackers: the recommended rule within 4 points on every attack; FedAvg collapses", second),
        (
            "(3) Free riders flagged in ≥ 95 % of their rounds, honest hospitals in ≤ 5 %",
            free_riders(lookup, spec, recommended),
        ),
    ]
}

/// What the harness had to take from the coordinator as it is, which the numbers reflect.
fn notes(out: &mut String) {
    let _ = writeln!(out, "## How the coordinator's code shapes these numbers\n");
    for line in [
        "- `aggregate_round` leaves flagged updates out *before* the rule runs and then runs Krum, Multi-Krum and \
         Bulyan with f lowered only as far as the kept updates require (f' = min(f, ⌊(n' − 3)/2⌋), or \
         ⌊(n' − 3)/4⌋ for Bulyan); with fewer than 3 kept it leaves nothing out. A study stops on a failed \
         aggregation (cells marked ‡; see the reasons in the last table).",
        "- Centered clipping starts each round from the previous round's aggregate (the study's `ServerState`), \
         from zero only in round 1.",
        "- A study with the default `[aggregation]` table streams FedAvg and computes no anomaly scores at all; the \
         harness scores the FedAvg cells anyway (same updates, same thresholds) so that their flag rates can be \
         compared. Flags under `+anomaly` change the aggregate; under the other rules they are only recorded.",
        "- The anomaly checks compare updates at a common scale (each divided by √(steps / median steps), steps being \
         a hospital's local SGD steps per epoch, ⌈examples / batch⌉, as the coordinator does), \
         take the round's statistics from the updates that are neither free riders nor near duplicates, and flag \
         near-duplicate updates: ALIE's and IPM's colluders here send one identical vector each round, which is \
         what the duplicate check catches; colluders that add jitter would not be caught by it. The \
         \"Why honest updates are flagged\" tables show which checks fire on honest hospitals.",
    ] {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "- FLTrust's server trains its own update each round, with the hospitals' training terms, on a root set of \
         {ROOT_ROWS} training rows drawn with the seed (Cao et al.'s default size; the hospitals keep those rows). \
         The coordinator trains it on the researcher's validation set; here that set is every rule's held-out \
         measure, and training on it would flatter FLTrust."
    );
    out.push('\n');
}

fn setup(out: &mut String, spec: &MatrixSpec, settings: &RunSettings) {
    let _ = writeln!(out, "## Setup\n");
    let _ = writeln!(
        out,
        "| dataset | hospitals | split | model | local training | rounds | τ / max_norm | noise σ | free-ride σ | \
         trigger |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for &dataset in &spec.datasets {
        let config = settings.dataset_config(dataset);
        let split = match config.split {
            Split::Dirichlet(alpha) => format!("Dirichlet α = {alpha}"),
            Split::Iid => "IID".to_owned(),
        };
        let source = match dataset {
            DatasetKind::BreastCancer => "569 rows × 30 features".to_owned(),
            DatasetKind::Synthetic => {
                format!("{} rows × {} features, 30 % positive", config.synthetic_rows, config.synthetic_features)
            }
        };
        let model = match &config.model {
            pdc_models::ModelKind::LogisticRegression => "logistic regression".to_owned(),
            pdc_models::ModelKind::Mlp { hidden } => format!("MLP, hidden {hidden:?}, ReLU"),
        };
        let _ = writeln!(
            out,
            "| {} ({source}) | {} | {:.0} % held out for validation, then {split} | {model} | {} epoch(s), batch {}, \
             lr {} | {} | {} | {} | {} | {} = {} → label {} |",
            dataset.name(),
            config.n_hospitals,
            100.0 * VALIDATION_FRACTION,
            config.local_epochs,
            config.batch_size,
            config.learning_rate,
            config.rounds,
            config.clip_radius,
            config.gaussian_std,
            config.free_ride_noise_std,
            config.trigger.features.join(", "),
            config.trigger.value,
            config.trigger.target_label,
        );
    }
    let _ = writeln!(
        out,
        "\n- Every hospital takes part in every round. Seeds 0 to {} change the synthetic rows, the validation split, \
         the partition, the initial model, which hospitals attack (a seeded order: the 20 % attackers are among the \
         40 % ones), the attacks' seeds and every round's training seeds.",
        settings.seeds.saturating_sub(1)
    );
    let _ = writeln!(
        out,
        "- The coordinator fits the standardisation on the researcher's validation set and hospitals apply it, as \
         `pdc-coordinator` does. Uploads go through the archive's checks (finite values, norm ≤ the manifest's \
         default `max_update_norm` = 10⁴); a hospital whose training fails sends nothing; a round whose \
         aggregation fails stops the study (the coordinator stops it too), keeping the last model."
    );
    let _ = writeln!(
        out,
        "- Rules are sized for f Byzantine updates: the cell's attacker count (2 or 4 of 10, 4 or 8 of 20), and \
         for the attack-free column the 20 % configuration a study would deploy (f = {} of 10, {} of 20). Krum and \
         Multi-Krum take `f` (Multi-Krum averages n − f), Bulyan `f`, the trimmed mean β = f / n; centered \
         clipping (3 iterations from the previous round's aggregate) uses τ and the norm bound `max_norm` from \
         the table. `+anomaly` is the same rule with `anomaly.exclude_flagged = \
         true`. Anomaly scores use the study-default thresholds for every cell. A combination the coordinator's \
         study validation refuses (`AggregationConfig::validate`) is reported as n/a with its reason.",
        assumed_byzantine(10, 0),
        assumed_byzantine(20, 0)
    );
    if !spec.server.is_none() {
        let _ = writeln!(
            out,
            "- Server optimiser: **{}** on top of every rule, FedAvg included (the default matrix has none), so \
             \"drop\" compares with FedAvg under the same optimiser.",
            spec.server.describe()
        );
    }
    if let Some(m) = spec.multi_krum_m {
        let _ = writeln!(
            out,
            "- Multi-Krum keeps **m = {m}** updates per round (the default matrix: n − f; m = 1 is Krum)."
        );
    }
    let _ = writeln!(
        out,
        "- Attacks: label flip (every label); sign flip ×1 and ×4; Gaussian noise N(0, σ²) added to the delta; \
         backdoor with model replacement ({:.0} % of the attacker's rows get the trigger and the target label, \
         the delta boosted by n / m for m attackers among n); ALIE with Baruch et al.'s z_max for (n, m); IPM with \
         ε = {IPM_EPSILON}; ALIE and IPM are given the honest updates' mean and deviation of the round (the \
         omniscient attacker); free riding: the global model echoed, or echoed plus N(0, σ²) noise. Free riders \
         claim their table's row count as weight.",
        100.0 * BACKDOOR_POISON_FRACTION
    );
    let _ = writeln!(
        out,
        "- AUROC is the final global model's on the validation set (mean ± sample std over seeds); \"drop\" is \
         attack-free FedAvg's mean minus the cell's mean, in points (hundredths; positive is worse). Backdoor \
         success: the share of validation rows of the other class that, with the trigger applied, get the target \
         label. TPR: attackers' updates flagged by the anomaly check over attackers' updates; FPR: honest updates \
         flagged over honest updates, both over every round of every seed.\n"
    );
}

fn dataset_tables(out: &mut String, spec: &MatrixSpec, lookup: &Lookup, dataset: DatasetKind) {
    let _ = writeln!(out, "## {}\n", capitalised(dataset.name()));
    if let Some(baseline) = lookup.baseline(dataset) {
        let _ = writeln!(out, "Attack-free FedAvg: AUROC {baseline:.4}.\n");
    }
    let header = |out: &mut String, first: &str| {
        let _ = write!(out, "| {first} |");
        for defence in &spec.defences {
            let _ = write!(out, " {} |", defence.name());
        }
        let _ = write!(out, "\n|---|");
        for _ in &spec.defences {
            out.push_str("---|");
        }
        out.push('\n');
    };
    let rows =
        |percent: u32| -> Vec<AttackKind> { if percent == 0 { vec![AttackKind::None] } else { spec.attacks.clone() } };

    let _ = writeln!(
        out,
        "### Final AUROC, mean ± std (drop in points)\n\n† some run's final model overflowed (scored 0.5); ‡ some \
         run stopped on a failed aggregation (see the last table).\n"
    );
    for &percent in &spec.attacker_percents {
        let _ = writeln!(out, "{percent} % attackers:\n");
        header(out, "attack");
        for attack in rows(percent) {
            let _ = write!(out, "| {} |", attack.name());
            for &defence in &spec.defences {
                let text = match (
                    lookup.get(dataset, percent, attack, defence),
                    lookup.drop(dataset, percent, attack, defence),
                ) {
                    (Some(summary), Some(drop)) => {
                        format!("{:.3} ± {:.3} ({drop:.1}){}", summary.auroc.mean, summary.auroc.std, marks(summary))
                    }
                    _ => "n/a".to_owned(),
                };
                let _ = write!(out, " {text} |");
            }
            out.push('\n');
        }
        out.push('\n');
    }

    if spec.attacks.contains(&AttackKind::Backdoor) {
        let _ = writeln!(out, "### Backdoor success, mean ± std\n");
        header(out, "attackers");
        for &percent in &spec.attacker_percents {
            let attack = if percent == 0 { AttackKind::None } else { AttackKind::Backdoor };
            let label = if percent == 0 { "0 % (no attack)".to_owned() } else { format!("{percent} %") };
            let _ = write!(out, "| {label} |");
            for &defence in &spec.defences {
                let text = lookup.get(dataset, percent, attack, defence).map_or("n/a".to_owned(), |summary| {
                    format!("{:.1} % ± {:.1}", 100.0 * summary.backdoor.mean, 100.0 * summary.backdoor.std)
                });
                let _ = write!(out, " {text} |");
            }
            out.push('\n');
        }
        out.push('\n');
    }

    let _ = writeln!(out, "### Anomaly flags: TPR / FPR (%)\n");
    header(out, "attackers, attack");
    for &percent in &spec.attacker_percents {
        for attack in rows(percent) {
            let _ = write!(out, "| {percent} %, {} |", attack.name());
            for &defence in &spec.defences {
                let text = lookup.get(dataset, percent, attack, defence).map_or("n/a".to_owned(), |summary| {
                    format!(
                        "{} / {}",
                        percent_or_dash(summary.flags.true_positive_rate()),
                        percent_or_dash(summary.flags.false_positive_rate())
                    )
                });
                let _ = write!(out, " {text} |");
            }
            out.push('\n');
        }
    }
    out.push('\n');

    let _ = writeln!(
        out,
        "### Why honest updates are flagged (% of honest updates, every defence and attack of the row pooled; an \
         update may have several reasons)\n"
    );
    let _ = writeln!(
        out,
        "| attackers | flagged | norm z-score | cosine | distance | echo | negligible norm | noisy echo | near duplicate |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for &percent in &spec.attacker_percents {
        let mut pooled = FlagTally::default();
        for attack in rows(percent) {
            for &defence in &spec.defences {
                if let Some(summary) = lookup.get(dataset, percent, attack, defence) {
                    pooled.add(&summary.flags);
                }
            }
        }
        let _ = writeln!(
            out,
            "| {percent} % | {} | {} | {} | {} | {} | {} | {} | {} |",
            percent_or_dash(pooled.false_positive_rate()),
            percent_or_dash(pooled.honest_reason_rate(ReasonKind::NormTooLarge)),
            percent_or_dash(pooled.honest_reason_rate(ReasonKind::LowCosine)),
            percent_or_dash(pooled.honest_reason_rate(ReasonKind::FarFromCentre)),
            percent_or_dash(pooled.honest_reason_rate(ReasonKind::Echo)),
            percent_or_dash(pooled.honest_reason_rate(ReasonKind::NegligibleNorm)),
            percent_or_dash(pooled.honest_reason_rate(ReasonKind::NoisyEcho)),
            percent_or_dash(pooled.honest_reason_rate(ReasonKind::NearDuplicate)),
        );
    }
    out.push('\n');

    let riders: Vec<AttackKind> = spec.attacks.iter().copied().filter(|attack| attack.is_free_riding()).collect();
    if !riders.is_empty() {
        let _ = writeln!(
            out,
            "### Free riders: share of their rounds flagged (as free riders) / honest hospitals flagged (%)\n"
        );
        header(out, "attackers, attack");
        for &percent in spec.attacker_percents.iter().filter(|&&percent| percent > 0) {
            for &attack in &riders {
                let _ = write!(out, "| {percent} %, {} |", attack.name());
                for &defence in &spec.defences {
                    let text = lookup.get(dataset, percent, attack, defence).map_or("n/a".to_owned(), |summary| {
                        format!(
                            "{} ({}) / {}",
                            percent_or_dash(summary.flags.true_positive_rate()),
                            percent_or_dash(summary.flags.free_rider_rate()),
                            percent_or_dash(summary.flags.false_positive_rate())
                        )
                    });
                    let _ = write!(out, " {text} |");
                }
                out.push('\n');
            }
        }
        out.push('\n');
    }
}

fn detail_table(out: &mut String, results: &[CellResult], lookup: &Lookup) {
    let _ = writeln!(out, "## Every cell\n");
    let _ = writeln!(out, "<details><summary>{} cells</summary>\n", results.len());
    let _ = writeln!(
        out,
        "| dataset | attackers | attack | defence | AUROC | drop | backdoor | flagged | TPR | FPR | notes |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for result in results {
        let cell = &result.cell;
        let _ = write!(
            out,
            "| {} | {} % | {} | {} |",
            cell.dataset.name(),
            cell.attacker_percent,
            cell.attack.name(),
            cell.defence.name()
        );
        match (&cell.plan, result.summary()) {
            (Plan::NotApplicable(reason), _) => {
                let _ = writeln!(out, " n/a | | | | | | {} |", reason.replace('|', "\\|"));
            }
            (Plan::Run(_), Some(summary)) => {
                let drop = lookup.drop(cell.dataset, cell.attacker_percent, cell.attack, cell.defence);
                let mut notes = Vec::new();
                if summary.diverged > 0 {
                    notes.push(format!("{} run(s) diverged (AUROC 0.5)", summary.diverged));
                }
                if summary.stopped > 0 {
                    notes.push(format!(
                        "{} run(s) stopped; first: {}",
                        summary.stopped,
                        summary.stop_reason.clone().unwrap_or_default()
                    ));
                }
                let rejected = summary.flags.attacker_rejected + summary.flags.honest_rejected;
                if rejected > 0 {
                    notes.push(format!("{rejected} upload(s) refused"));
                }
                let _ = writeln!(
                    out,
                    " {:.4} ± {:.4} | {} | {:.1} % | {} | {} | {} | {} |",
                    summary.auroc.mean,
                    summary.auroc.std,
                    drop.map_or("–".to_owned(), |drop| format!("{drop:.2}")),
                    100.0 * summary.backdoor.mean,
                    percent_or_dash(summary.flags.flagged_share()),
                    percent_or_dash(summary.flags.true_positive_rate()),
                    percent_or_dash(summary.flags.false_positive_rate()),
                    notes.join("; ").replace('|', "\\|")
                );
            }
            (Plan::Run(_), None) => {
                let _ = writeln!(out, " – | | | | | | no runs |");
            }
        }
    }
    let _ = writeln!(out, "\n</details>");
}

/// `†` when some run diverged, `‡` when some run stopped.
fn marks(summary: &CellSummary) -> &'static str {
    match (summary.diverged > 0, summary.stopped > 0) {
        (false, false) => "",
        (true, false) => " †",
        (false, true) => " ‡",
        (true, true) => " †‡",
    }
}

pub(crate) fn percent_or_dash(value: Option<f64>) -> String {
    value.map_or("–".to_owned(), |value| format!("{:.1}", 100.0 * value))
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or(String::new(), |first| first.to_uppercase().chain(chars).collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use expect_test::expect;

    use super::*;
    use crate::matrix::{Defence, RuleChoice, ServerOptimizerChoice};
    use crate::stats::{FlagTally, Summary};

    #[test]
    fn dataset_tables_read_well() {
        let dataset = DatasetKind::BreastCancer;
        let (fedavg, bulyan) = (Defence::plain(RuleChoice::FedAvg), Defence::plain(RuleChoice::Bulyan));
        let summary = |auroc: f64, std: f64, flags: FlagTally, stopped: usize| {
            Some(CellSummary {
                auroc: Summary { mean: auroc, std, n: 5 },
                backdoor: Summary { mean: 0.1, std: 0.05, n: 5 },
                flags,
                diverged: 0,
                stopped,
                stop_reason: None,
            })
        };
        let clean = FlagTally {
            honest_updates: 100,
            honest_flagged: 4,
            honest_reasons: [3, 1, 0, 0, 0, 0, 0],
            ..FlagTally::default()
        };
        let attacked = FlagTally {
            attacker_updates: 40,
            attacker_flagged: 38,
            honest_updates: 160,
            honest_flagged: 8,
            honest_reasons: [2, 6, 1, 0, 1, 0, 1],
            ..FlagTally::default()
        };
        let cells = HashMap::from([
            ((dataset, 0, AttackKind::None, fedavg), summary(0.99, 0.004, clean, 0)),
            ((dataset, 0, AttackKind::None, bulyan), None),
            ((dataset, 20, AttackKind::SignFlip, fedavg), summary(0.8512, 0.1, attacked, 1)),
            ((dataset, 20, AttackKind::SignFlip, bulyan), None),
        ]);
        let spec = MatrixSpec {
            datasets: vec![dataset],
            attacker_percents: vec![0, 20],
            attacks: vec![AttackKind::SignFlip],
            defences: vec![fedavg, bulyan],
            server: ServerOptimizerChoice::default(),
            multi_krum_m: None,
        };
        let mut out = String::new();
        dataset_tables(&mut out, &spec, &Lookup::from_cells(cells), dataset);
        expect![[r#"
            ## Breast cancer

            Attack-free FedAvg: AUROC 0.9900.

            ### Final AUROC, mean ± std (drop in points)

            † some run's final model overflowed (scored 0.5); ‡ some run stopped on a failed aggregation (see the last table).

            0 % attackers:

            | attack | fedavg | bulyan |
            |---|---|---|
            | none | 0.990 ± 0.004 (0.0) | n/a |

            20 % attackers:

            | attack | fedavg | bulyan |
            |---|---|---|
            | sign flip ×1 | 0.851 ± 0.100 (13.9) ‡ | n/a |

            ### Anomaly flags: TPR / FPR (%)

            | attackers, attack | fedavg | bulyan |
            |---|---|---|
            | 0 %, none | – / 4.0 | n/a |
            | 20 %, sign flip ×1 | 95.0 / 5.0 | n/a |

            ### Why honest updates are flagged (% of honest updates, every defence and attack of the row pooled; an update may have several reasons)

            | attackers | flagged | norm z-score | cosine | distance | echo | negligible norm | noisy echo | near duplicate |
            |---|---|---|---|---|---|---|---|---|
            | 0 % | 4.0 | 3.0 | 1.0 | 0.0 | 0.0 | 0.0 | 0.0 | 0.0 |
            | 20 % | 5.0 | 1.2 | 3.8 | 0.6 | 0.0 | 0.6 | 0.0 | 0.6 |

        "#]]
        .assert_eq(&out);
    }
}
