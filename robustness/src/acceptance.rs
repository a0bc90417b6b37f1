//! The report's acceptance criteria, computed from the cell summaries: the cost of robustness without attackers,
//! the recommended rule at 20 % attackers (and FedAvg's collapse), and free-rider detection.

use std::collections::HashMap;

use crate::datasets::DatasetKind;
use crate::matrix::{AttackKind, Defence, MatrixSpec, RuleChoice};
use crate::runner::{CellResult, CellSummary};
use crate::stats::drop_points;

/// (1): every robust rule within this many points of FedAvg without attackers.
pub const NO_ATTACK_TOLERANCE: f64 = 1.0;
/// (2): the recommended rule within this many points of attack-free FedAvg at 20 % attackers.
pub const TWENTY_PERCENT_TOLERANCE: f64 = 4.0;
/// (2): FedAvg "collapses" when it loses more than this many points ...
pub const COLLAPSE_POINTS: f64 = 10.0;
/// ... or, under the backdoor, when more than this share of triggered rows get the target label.
pub const COLLAPSE_BACKDOOR: f64 = 0.5;
/// (3): free riders flagged in at least this share of their rounds ...
pub const FREE_RIDER_MIN_FLAGGED: f64 = 0.95;
/// ... and honest hospitals in at most this share.
pub const HONEST_MAX_FLAGGED: f64 = 0.05;

/// The key of a cell.
pub type Key = (DatasetKind, u32, AttackKind, Defence);

/// Every cell's summary by key; `None` for a cell that did not run (n/a).
#[derive(Clone, Debug, Default)]
pub struct Lookup {
    cells: HashMap<Key, Option<CellSummary>>,
}

impl Lookup {
    /// Summarises every cell.
    pub fn new(results: &[CellResult]) -> Self {
        let cells = results
            .iter()
            .map(|result| {
                let cell = &result.cell;
                ((cell.dataset, cell.attacker_percent, cell.attack, cell.defence), result.summary())
            })
            .collect();
        Self { cells }
    }

    /// Builds a lookup from given summaries (for tests).
    #[cfg(test)]
    pub fn from_cells(cells: HashMap<Key, Option<CellSummary>>) -> Self {
        Self { cells }
    }

    /// The summary of a cell that ran; `None` when it is n/a or not in the matrix.
    pub fn get(
        &self,
        dataset: DatasetKind,
        percent: u32,
        attack: AttackKind,
        defence: Defence,
    ) -> Option<&CellSummary> {
        self.cells.get(&(dataset, percent, attack, defence)).and_then(Option::as_ref)
    }

    /// The attack-free FedAvg mean AUROC, every drop's baseline.
    pub fn baseline(&self, dataset: DatasetKind) -> Option<f64> {
        self.get(dataset, 0, AttackKind::None, Defence::plain(RuleChoice::FedAvg)).map(|summary| summary.auroc.mean)
    }

    /// The drop of a cell's mean AUROC below the baseline, in points.
    pub fn drop(&self, dataset: DatasetKind, percent: u32, attack: AttackKind, defence: Defence) -> Option<f64> {
        let summary = self.get(dataset, percent, attack, defence)?;
        Some(drop_points(self.baseline(dataset)?, summary.auroc.mean))
    }
}

/// One criterion's verdict and the sentences that justify it.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// Whether it holds.
    pub pass: bool,
    /// Markdown lines with the numbers.
    pub lines: Vec<String>,
}

fn pass_fail(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

/// (1) Without attackers, every robust defence within [`NO_ATTACK_TOLERANCE`] points of FedAvg.
pub fn no_attack(lookup: &Lookup, spec: &MatrixSpec) -> Verdict {
    let mut pass = true;
    let mut lines = Vec::new();
    for &dataset in &spec.datasets {
        let Some(baseline) = lookup.baseline(dataset) else {
            lines.push(format!("- {}: no attack-free FedAvg run.", dataset.name()));
            pass = false;
            continue;
        };
        let mut worst: Option<(f64, Defence)> = None;
        let mut outside = Vec::new();
        let mut not_applicable = Vec::new();
        for &defence in spec.defences.iter().filter(|defence| **defence != Defence::plain(RuleChoice::FedAvg)) {
            match lookup.drop(dataset, 0, AttackKind::None, defence) {
                Some(drop) => {
                    if worst.is_none_or(|(worst, _)| drop > worst) {
                        worst = Some((drop, defence));
                    }
                    if drop > NO_ATTACK_TOLERANCE {
                        outside.push(format!("{} ({drop:.2})", defence.name()));
                    }
                }
                None => not_applicable.push(defence.name()),
            }
        }
        let ok = outside.is_empty();
        pass &= ok;
        let worst = worst.map_or("no robust rule ran".to_owned(), |(drop, defence)| {
            format!("the largest drop is {drop:.2} points ({})", defence.name())
        });
        let mut line = format!("- {}: {}: FedAvg reaches {baseline:.4}; {worst}", dataset.name(), pass_fail(ok));
        if !outside.is_empty() {
            line.push_str(&format!("; more than {NO_ATTACK_TOLERANCE} point below: {}", outside.join(", ")));
        }
        if !not_applicable.is_empty() {
            line.push_str(&format!("; n/a (refused for this participant count): {}", not_applicable.join(", ")));
        }
        line.push('.');
        lines.push(line);
    }
    Verdict { pass, lines }
}

/// The defence with the smallest worst-case drop over every attack at 20 % on every dataset (ties: the smaller
/// mean drop), among those that ran in all of those cells; FedAvg alone is not a candidate. Returns it with its
/// worst drop and where that happened.
pub fn recommend(lookup: &Lookup, spec: &MatrixSpec) -> Option<(Defence, f64, f64, String)> {
    let attacks: Vec<AttackKind> = spec.attacks.iter().copied().filter(|&attack| attack != AttackKind::None).collect();
    let mut best: Option<(Defence, f64, f64, String)> = None;
    for &defence in spec.defences.iter().filter(|defence| **defence != Defence::plain(RuleChoice::FedAvg)) {
        let mut drops = Vec::new();
        for &dataset in &spec.datasets {
            for &attack in &attacks {
                drops.push((lookup.drop(dataset, 20, attack, defence), dataset, attack));
            }
        }
        if drops.is_empty() || drops.iter().any(|(drop, _, _)| drop.is_none()) {
            continue;
        }
        let (worst, dataset, attack) = drops
            .iter()
            .map(|&(drop, dataset, attack)| (drop.expect("checked"), dataset, attack))
            .fold(None, |acc: Option<(f64, DatasetKind, AttackKind)>, item| match acc {
                Some(acc) if acc.0 >= item.0 => Some(acc),
                _ => Some(item),
            })
            .expect("not empty");
        let mean = drops.iter().map(|(drop, _, _)| drop.expect("checked")).sum::<f64>() / drops.len() as f64;
        let better = match &best {
            None => true,
            Some((_, best_worst, best_mean, _)) => worst < *best_worst || (worst == *best_worst && mean < *best_mean),
        };
        if better {
            best = Some((defence, worst, mean, format!("{} on {}", attack.name(), dataset.name())));
        }
    }
    best
}

/// (2) At 20 % attackers the recommended defence stays within [`TWENTY_PERCENT_TOLERANCE`] points of attack-free
/// FedAvg on every attack, while FedAvg collapses under sign flipping ×4 and scaling (the boosted backdoor).
pub fn twenty_percent(lookup: &Lookup, spec: &MatrixSpec) -> (Verdict, Option<Defence>) {
    let mut lines = Vec::new();
    let Some((defence, worst, mean, where_)) = recommend(lookup, spec) else {
        lines.push("- No robust defence ran in every 20 % cell.".to_owned());
        return (Verdict { pass: false, lines }, None);
    };
    let robust_ok = worst <= TWENTY_PERCENT_TOLERANCE;
    lines.push(format!(
        "- Recommended default: **{}** (the smallest worst-case drop at 20 % over every attack on both datasets). \
         {}: its worst drop is {worst:.2} points ({where_}), its mean drop {mean:.2} points; the limit is \
         {TWENTY_PERCENT_TOLERANCE}.",
        defence.name(),
        pass_fail(robust_ok)
    ));
    for &dataset in &spec.datasets {
        let per_attack: Vec<String> = spec
            .attacks
            .iter()
            .filter_map(|&attack| {
                lookup.drop(dataset, 20, attack, defence).map(|drop| format!("{} {drop:.2}", attack.name()))
            })
            .collect();
        lines.push(format!("  - {}: drops by attack: {}.", dataset.name(), per_attack.join("; ")));
    }
    let fedavg = Defence::plain(RuleChoice::FedAvg);
    let mut collapse_ok = true;
    for &dataset in &spec.datasets {
        let mut parts = Vec::new();
        let clean_backdoor =
            lookup.get(dataset, 0, AttackKind::None, fedavg).map(|summary| summary.backdoor.mean).unwrap_or(0.0);
        for attack in [AttackKind::SignFlip, AttackKind::SignFlipX4, AttackKind::Backdoor] {
            if !spec.attacks.contains(&attack) {
                continue;
            }
            // Sign flip ×1 is reported but not judged: see the context line below.
            let judged = attack != AttackKind::SignFlip;
            let (Some(drop), Some(summary)) =
                (lookup.drop(dataset, 20, attack, fedavg), lookup.get(dataset, 20, attack, fedavg))
            else {
                collapse_ok &= !judged;
                parts.push(format!("{}: not run", attack.name()));
                continue;
            };
            let collapsed = if attack == AttackKind::Backdoor {
                drop > COLLAPSE_POINTS || summary.backdoor.mean > COLLAPSE_BACKDOOR
            } else {
                drop > COLLAPSE_POINTS
            };
            if judged {
                collapse_ok &= collapsed;
            }
            let mut part = format!("{}: AUROC {:.4}, a drop of {drop:.2} points", attack.name(), summary.auroc.mean);
            if attack == AttackKind::Backdoor {
                part.push_str(&format!(
                    ", backdoor success {:.1} % (attack-free model: {:.1} %)",
                    100.0 * summary.backdoor.mean,
                    100.0 * clean_backdoor
                ));
            }
            part.push_str(match (collapsed, judged) {
                (true, _) => " (collapsed)",
                (false, true) => " (did not collapse)",
                (false, false) => " (slowed, not collapsed; not judged)",
            });
            parts.push(part);
        }
        lines.push(format!("- FedAvg at 20 % on {}: {}.", dataset.name(), parts.join("; ")));
    }
    lines.push(format!(
        "- {}: FedAvg collapses (a drop of more than {COLLAPSE_POINTS} points, or for the backdoor more than \
         {:.0} % backdoor success) on sign flipping ×4 and on scaling (the boosted backdoor). Sign flipping ×1 \
         is not judged: 20 % negated updates cannot reverse an average of 80 % honest ones (next line).",
        pass_fail(collapse_ok),
        100.0 * COLLAPSE_BACKDOOR
    ));
    if spec.attacks.contains(&AttackKind::SignFlip) {
        // With m of n equal weights negated, FedAvg still steps (n − 2m)/n of the honest mean: slower, not
        // backwards, until m approaches n/2.
        let at_forty: Vec<String> = spec
            .datasets
            .iter()
            .filter_map(|&dataset| {
                let drop = lookup.drop(dataset, 40, AttackKind::SignFlip, fedavg)?;
                Some(format!("{} {drop:.2} points", dataset.name()))
            })
            .collect();
        let mut line = "- Context: with m of n (about equally weighted) updates negated, FedAvg still moves \
                        (n − 2m)/n of the honest mean, 60 % at 20 % attackers: sign flip ×1 slows it rather than \
                        reversing it."
            .to_owned();
        if !at_forty.is_empty() {
            line.push_str(&format!(
                " At 40 % (20 % of the honest step) FedAvg's drop under sign flip ×1 is: {}.",
                at_forty.join("; ")
            ));
        }
        lines.push(line);
    }
    (Verdict { pass: robust_ok && collapse_ok, lines }, Some(defence))
}

/// (3) Free riders flagged in at least [`FREE_RIDER_MIN_FLAGGED`] of their rounds and honest hospitals in at most
/// [`HONEST_MAX_FLAGGED`] of theirs, in every free-riding cell that ran.
pub fn free_riders(lookup: &Lookup, spec: &MatrixSpec, recommended: Option<Defence>) -> Verdict {
    let mut pass = true;
    let mut lines = Vec::new();
    for &dataset in &spec.datasets {
        let mut worst_caught: Option<(f64, String)> = None;
        let mut worst_honest: Option<(f64, String)> = None;
        let mut any = false;
        for &attack in spec.attacks.iter().filter(|attack| attack.is_free_riding()) {
            for &percent in spec.attacker_percents.iter().filter(|&&percent| percent > 0) {
                for &defence in &spec.defences {
                    let Some(summary) = lookup.get(dataset, percent, attack, defence) else { continue };
                    any = true;
                    let label = format!("{} at {percent} % under {}", attack.name(), defence.name());
                    if let Some(rate) = summary.flags.true_positive_rate()
                        && worst_caught.as_ref().is_none_or(|(worst, _)| rate < *worst)
                    {
                        worst_caught = Some((rate, label.clone()));
                    }
                    if let Some(rate) = summary.flags.false_positive_rate()
                        && worst_honest.as_ref().is_none_or(|(worst, _)| rate > *worst)
                    {
                        worst_honest = Some((rate, label));
                    }
                }
            }
        }
        if !any {
            lines.push(format!("- {}: no free-riding cell ran.", dataset.name()));
            pass = false;
            continue;
        }
        let caught_ok = worst_caught.as_ref().is_some_and(|(rate, _)| *rate >= FREE_RIDER_MIN_FLAGGED);
        let honest_ok = worst_honest.as_ref().is_none_or(|(rate, _)| *rate <= HONEST_MAX_FLAGGED);
        pass &= caught_ok && honest_ok;
        let describe = |worst: &Option<(f64, String)>| {
            worst.as_ref().map_or("n/a".to_owned(), |(rate, label)| format!("{:.1} % ({label})", 100.0 * rate))
        };
        let mut line = format!(
            "- {}: {}: free riders flagged in at least {} of their rounds (limit {:.0} %); honest hospitals in at \
             most {} (limit {:.0} %)",
            dataset.name(),
            pass_fail(caught_ok && honest_ok),
            describe(&worst_caught),
            100.0 * FREE_RIDER_MIN_FLAGGED,
            describe(&worst_honest),
            100.0 * HONEST_MAX_FLAGGED
        );
        if let Some(defence) = recommended {
            let rates: Vec<String> = spec
                .attacks
                .iter()
                .filter(|attack| attack.is_free_riding())
                .flat_map(|&attack| {
                    spec.attacker_percents.iter().filter(|&&percent| percent > 0).filter_map(move |&percent| {
                        let summary = lookup.get(dataset, percent, attack, defence)?;
                        Some(format!(
                            "{} at {percent} %: {:.1} % / honest {:.1} %",
                            attack.name(),
                            100.0 * summary.flags.true_positive_rate().unwrap_or(0.0),
                            100.0 * summary.flags.false_positive_rate().unwrap_or(0.0)
                        ))
                    })
                })
                .collect();
            line.push_str(&format!("; under {}: {}", defence.name(), rates.join("; ")));
        }
        line.push('.');
        lines.push(line);
    }
    Verdict { pass, lines }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::matrix::ServerOptimizerChoice;
    use crate::stats::{FlagTally, Summary};

    /// A cell summary over 5 seeds with these means (and no spread), for tests.
    pub(crate) fn summary(auroc: f64, backdoor: f64, flags: FlagTally) -> Option<CellSummary> {
        Some(CellSummary {
            auroc: Summary { mean: auroc, std: 0.0, n: 5 },
            backdoor: Summary { mean: backdoor, std: 0.0, n: 5 },
            flags,
            diverged: 0,
            stopped: 0,
            stop_reason: None,
        })
    }

    fn spec() -> MatrixSpec {
        MatrixSpec {
            datasets: vec![DatasetKind::BreastCancer],
            attacker_percents: vec![0, 20],
            attacks: vec![AttackKind::SignFlip, AttackKind::SignFlipX4, AttackKind::Backdoor, AttackKind::FreeRide],
            defences: vec![
                Defence::plain(RuleChoice::FedAvg),
                Defence::plain(RuleChoice::Median),
                Defence::plain(RuleChoice::TrimmedMean),
                Defence::plain(RuleChoice::Bulyan),
            ],
            server: ServerOptimizerChoice::default(),
            multi_krum_m: None,
        }
    }

    fn flags(attacker: (u64, u64), honest: (u64, u64)) -> FlagTally {
        FlagTally {
            attacker_updates: attacker.1,
            attacker_flagged: attacker.0,
            honest_updates: honest.1,
            honest_flagged: honest.0,
            ..FlagTally::default()
        }
    }

    /// FedAvg 0.99 clean; median costs 0.5 points, trimmed mean 1.5; at 20 % FedAvg collapses under sign flip ×4
    /// and the backdoor and only slows under sign flip ×1, the median holds within 3 points, the trimmed mean
    /// loses 6 on the backdoor; Bulyan is n/a.
    fn lookup() -> Lookup {
        let bc = DatasetKind::BreastCancer;
        let (fedavg, median, trimmed, bulyan) = (
            Defence::plain(RuleChoice::FedAvg),
            Defence::plain(RuleChoice::Median),
            Defence::plain(RuleChoice::TrimmedMean),
            Defence::plain(RuleChoice::Bulyan),
        );
        let none = flags((0, 0), (1, 100));
        let riders = flags((39, 40), (2, 160));
        let mut cells = HashMap::new();
        let mut put = |percent, attack, defence, value| {
            cells.insert((bc, percent, attack, defence), value);
        };
        put(0, AttackKind::None, fedavg, summary(0.99, 0.1, none));
        put(0, AttackKind::None, median, summary(0.985, 0.1, none));
        put(0, AttackKind::None, trimmed, summary(0.975, 0.1, none));
        put(0, AttackKind::None, bulyan, None);
        put(20, AttackKind::SignFlip, fedavg, summary(0.95, 0.1, none));
        put(20, AttackKind::SignFlip, median, summary(0.97, 0.1, none));
        put(20, AttackKind::SignFlip, trimmed, summary(0.98, 0.1, none));
        put(20, AttackKind::SignFlipX4, fedavg, summary(0.6, 0.1, none));
        put(20, AttackKind::SignFlipX4, median, summary(0.97, 0.1, none));
        put(20, AttackKind::SignFlipX4, trimmed, summary(0.98, 0.1, none));
        put(20, AttackKind::Backdoor, fedavg, summary(0.97, 0.9, none));
        put(20, AttackKind::Backdoor, median, summary(0.96, 0.2, none));
        put(20, AttackKind::Backdoor, trimmed, summary(0.93, 0.2, none));
        put(20, AttackKind::FreeRide, fedavg, summary(0.99, 0.1, riders));
        put(20, AttackKind::FreeRide, median, summary(0.99, 0.1, riders));
        put(20, AttackKind::FreeRide, trimmed, summary(0.99, 0.1, flags((40, 40), (9, 160))));
        for attack in [AttackKind::SignFlip, AttackKind::SignFlipX4, AttackKind::Backdoor, AttackKind::FreeRide] {
            put(20, attack, bulyan, None);
        }
        Lookup::from_cells(cells)
    }

    #[test]
    fn drops_are_against_attack_free_fedavg() {
        let lookup = lookup();
        let drop =
            lookup.drop(DatasetKind::BreastCancer, 20, AttackKind::SignFlipX4, Defence::plain(RuleChoice::FedAvg));
        assert!((drop.unwrap() - 39.0).abs() < 1e-9);
        assert_eq!(
            lookup.drop(DatasetKind::BreastCancer, 0, AttackKind::None, Defence::plain(RuleChoice::Bulyan)),
            None
        );
    }

    #[test]
    fn no_attack_names_the_rules_outside_the_band_and_the_refused_ones() {
        let verdict = no_attack(&lookup(), &spec());
        assert!(!verdict.pass);
        assert_eq!(verdict.lines.len(), 1);
        let line = &verdict.lines[0];
        assert!(line.contains("FAIL") && line.contains("trimmed_mean (1.50)"), "{line}");
        assert!(line.contains("n/a (refused for this participant count): bulyan"), "{line}");
    }

    #[test]
    fn the_recommendation_minimises_the_worst_drop_and_skips_rules_that_did_not_run() {
        let (defence, worst, mean, where_) = recommend(&lookup(), &spec()).unwrap();
        assert_eq!(defence, Defence::plain(RuleChoice::Median));
        assert!((worst - 3.0).abs() < 1e-9);
        assert!((mean - (2.0 + 2.0 + 3.0 + 0.0) / 4.0).abs() < 1e-9);
        assert_eq!(where_, "backdoor + boost on breast cancer");
        let (verdict, recommended) = twenty_percent(&lookup(), &spec());
        assert_eq!(recommended, Some(Defence::plain(RuleChoice::Median)));
        assert!(verdict.pass, "{:#?}", verdict.lines);
        let text = verdict.lines.join("\n");
        assert!(text.contains("sign flip ×4: AUROC 0.6000, a drop of 39.00 points (collapsed)"), "{text}");
        assert!(
            text.contains("sign flip ×1: AUROC 0.9500, a drop of 4.00 points (slowed, not collapsed; not judged)"),
            "{text}"
        );
        assert!(text.contains("backdoor success 90.0 % (attack-free model: 10.0 %) (collapsed)"), "{text}");
        assert!(text.contains("- PASS: FedAvg collapses"), "{text}");
    }

    /// Sign flip ×4 that FedAvg survives fails the criterion, whatever sign flip ×1 does.
    #[test]
    fn fedavg_surviving_sign_flip_x4_fails_the_collapse_criterion() {
        let mut lookup = lookup();
        let key = (DatasetKind::BreastCancer, 20, AttackKind::SignFlipX4, Defence::plain(RuleChoice::FedAvg));
        lookup.cells.insert(key, summary(0.95, 0.1, flags((0, 0), (1, 100))));
        let (verdict, _) = twenty_percent(&lookup, &spec());
        assert!(!verdict.pass);
        let text = verdict.lines.join("\n");
        assert!(text.contains("sign flip ×4: AUROC 0.9500, a drop of 4.00 points (did not collapse)"), "{text}");
        assert!(text.contains("- FAIL: FedAvg collapses"), "{text}");
    }

    #[test]
    fn free_rider_detection_reports_the_worst_cells() {
        let verdict = free_riders(&lookup(), &spec(), Some(Defence::plain(RuleChoice::Median)));
        assert!(!verdict.pass);
        let line = &verdict.lines[0];
        // 39 of 40 is 97.5 %; the trimmed mean's run flags 9 of 160 honest updates, 5.6 %.
        assert!(line.contains("at least 97.5 % (free ride (echo) at 20 % under fedavg)"), "{line}");
        assert!(line.contains("at most 5.6 % (free ride (echo) at 20 % under trimmed_mean)"), "{line}");
        assert!(line.contains("under median: free ride (echo) at 20 %: 97.5 % / honest 1.2 %"), "{line}");
    }
}
