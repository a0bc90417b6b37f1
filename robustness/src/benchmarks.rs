//! The robustness section of `BENCHMARKS.md`: a compact table per consortium (one row per defence: the attack-free
//! AUROC, the mean and worst drop over the attacks at each attacker share, backdoor success and the anomaly check's
//! rates at 20 %), with the acceptance verdicts' headlines, written between two markers so that a full run of the
//! default matrix replaces exactly that section and leaves the rest of the file as it was.

use std::fmt::Write;

use anyhow::{Result, bail};

use crate::acceptance::{Lookup, Verdict};
use crate::datasets::DatasetKind;
use crate::matrix::{AttackKind, Defence, MatrixSpec};
use crate::report::{Provenance, percent_or_dash};
use crate::stats::FlagTally;

/// The line before the generated section.
pub const BEGIN: &str = "<!-- robustness-matrix:begin (written by `cargo xtask bench robustness`; edit outside) -->";
/// The line after it.
pub const END: &str = "<!-- robustness-matrix:end -->";

/// The generated section, without the markers.
pub fn section(
    spec: &MatrixSpec,
    provenance: &Provenance,
    results_ran: usize,
    lookup: &Lookup,
    verdicts: &[(&str, Verdict)],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "`{}` on {} ({} cores), {}: {results_ran} simulated studies in {:.1} s. Full tables: `robustness-report.md`.\n",
        provenance.command, provenance.cpu, provenance.cores, provenance.date, provenance.wall_seconds
    );
    for (title, verdict) in verdicts {
        let _ = writeln!(out, "- {title}: **{}**", if verdict.pass { "PASS" } else { "FAIL" });
    }
    out.push('\n');
    let shares: Vec<u32> = spec.attacker_percents.iter().copied().filter(|&percent| percent > 0).collect();
    for &dataset in &spec.datasets {
        let baseline = lookup.baseline(dataset).map_or("–".to_owned(), |auroc| format!("{auroc:.4}"));
        let _ = writeln!(out, "{} (attack-free FedAvg AUROC {baseline}; drops in AUROC points):\n", dataset.name());
        let _ = write!(out, "| defence | no attack: AUROC (drop) |");
        for &percent in &shares {
            let _ = write!(out, " {percent} %: mean / worst drop (attack) |");
        }
        let first = shares.first().copied();
        if let Some(percent) = first {
            let _ = write!(out, " {percent} %: backdoor success | {percent} %: flagged, TPR / FPR |");
        }
        out.push_str("\n|---|---|");
        for _ in &shares {
            out.push_str("---|");
        }
        if first.is_some() {
            out.push_str("---|---|");
        }
        out.push('\n');
        for &defence in &spec.defences {
            let clean = match (
                lookup.get(dataset, 0, AttackKind::None, defence),
                lookup.drop(dataset, 0, AttackKind::None, defence),
            ) {
                (Some(summary), Some(drop)) => format!("{:.4} ({drop:.2})", summary.auroc.mean),
                _ => "n/a".to_owned(),
            };
            let _ = write!(out, "| {} | {clean} |", defence.name());
            for &percent in &shares {
                let _ = write!(out, " {} |", drops(spec, lookup, dataset, percent, defence));
            }
            if let Some(percent) = first {
                let backdoor = lookup
                    .get(dataset, percent, AttackKind::Backdoor, defence)
                    .map_or("n/a".to_owned(), |summary| format!("{:.1} %", 100.0 * summary.backdoor.mean));
                let _ = write!(out, " {backdoor} | {} |", flags(spec, lookup, dataset, percent, defence));
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// "mean / worst (attack)" over the attacks that ran at `percent`, or n/a.
fn drops(spec: &MatrixSpec, lookup: &Lookup, dataset: DatasetKind, percent: u32, defence: Defence) -> String {
    let drops: Vec<(f64, AttackKind)> = spec
        .attacks
        .iter()
        .filter_map(|&attack| Some((lookup.drop(dataset, percent, attack, defence)?, attack)))
        .collect();
    let Some(&(worst, attack)) = drops.iter().max_by(|a, b| a.0.total_cmp(&b.0)) else {
        return "n/a".to_owned();
    };
    let mean = drops.iter().map(|(drop, _)| drop).sum::<f64>() / drops.len() as f64;
    format!("{mean:.2} / {worst:.2} ({})", attack.name())
}

/// "flagged, TPR / FPR" in percent over every attack at `percent`, or n/a.
fn flags(spec: &MatrixSpec, lookup: &Lookup, dataset: DatasetKind, percent: u32, defence: Defence) -> String {
    let mut pooled = FlagTally::default();
    let mut any = false;
    for &attack in &spec.attacks {
        if let Some(summary) = lookup.get(dataset, percent, attack, defence) {
            pooled.add(&summary.flags);
            any = true;
        }
    }
    if !any {
        return "n/a".to_owned();
    }
    format!(
        "{}, {} / {}",
        percent_or_dash(pooled.flagged_share()),
        percent_or_dash(pooled.true_positive_rate()),
        percent_or_dash(pooled.false_positive_rate())
    )
}

/// `text` with the lines strictly between [`BEGIN`] and [`END`] replaced by `section`. Refuses a text without
/// exactly one of each marker, in that order, so that nothing outside them is ever lost.
pub fn splice(text: &str, section: &str) -> Result<String> {
    let lines: Vec<&str> = text.lines().collect();
    let at = |marker: &str| -> Result<usize> {
        let found: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].trim() == marker).collect();
        match found[..] {
            [index] => Ok(index),
            [] => bail!("no line `{marker}`: add the two robustness-matrix markers where the tables should go"),
            _ => bail!("{} lines `{marker}`; there must be exactly one", found.len()),
        }
    };
    let (begin, end) = (at(BEGIN)?, at(END)?);
    if end < begin {
        bail!("`{END}` (line {}) comes before `{BEGIN}` (line {})", end + 1, begin + 1);
    }
    let mut out = String::with_capacity(text.len() + section.len());
    for line in &lines[..=begin] {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(section.trim_end());
    out.push('\n');
    for line in &lines[end..] {
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use expect_test::expect;

    use super::*;
    use crate::acceptance::tests::summary;
    use crate::matrix::{RuleChoice, ServerOptimizerChoice};

    #[test]
    fn the_section_replaces_only_what_lies_between_the_markers() {
        let text = format!("# Benchmarks\n\nbefore\n{BEGIN}\nold table\nold line\n{END}\nafter\n");
        let spliced = splice(&text, "new table\n\n").unwrap();
        assert_eq!(spliced, format!("# Benchmarks\n\nbefore\n{BEGIN}\nnew table\n{END}\nafter\n"));
        // Splicing again with the same section changes nothing.
        assert_eq!(splice(&spliced, "new table").unwrap(), spliced);
    }

    #[test]
    fn a_text_without_well_placed_markers_is_refused() {
        let message = |text: String| splice(&text, "x").unwrap_err().to_string();
        assert!(message("no markers\n".to_owned()).starts_with(&format!("no line `{BEGIN}`")));
        assert!(message(format!("{BEGIN}\n")).starts_with(&format!("no line `{END}`")));
        assert_eq!(
            message(format!("{BEGIN}\n{BEGIN}\n{END}\n")),
            format!("2 lines `{BEGIN}`; there must be exactly one")
        );
        assert_eq!(message(format!("{END}\n{BEGIN}\n")), format!("`{END}` (line 1) comes before `{BEGIN}` (line 2)"));
    }

    #[test]
    fn the_section_reads_well() {
        let dataset = DatasetKind::Synthetic;
        let (fedavg, krum) = (Defence::plain(RuleChoice::FedAvg), Defence::plain(RuleChoice::Krum));
        let flagged = |attacker_flagged, honest_flagged| FlagTally {
            attacker_updates: 10,
            attacker_flagged,
            honest_updates: 40,
            honest_flagged,
            ..FlagTally::default()
        };
        let cells = HashMap::from([
            ((dataset, 0, AttackKind::None, fedavg), summary(0.9, 0.0, FlagTally::default())),
            ((dataset, 0, AttackKind::None, krum), summary(0.88, 0.0, FlagTally::default())),
            ((dataset, 20, AttackKind::SignFlipX4, fedavg), summary(0.5, 0.0, flagged(10, 0))),
            ((dataset, 20, AttackKind::Backdoor, fedavg), summary(0.89, 0.9, flagged(5, 2))),
            ((dataset, 20, AttackKind::SignFlipX4, krum), summary(0.87, 0.0, flagged(9, 1))),
            ((dataset, 20, AttackKind::Backdoor, krum), summary(0.86, 0.05, flagged(10, 1))),
            ((dataset, 40, AttackKind::SignFlipX4, fedavg), summary(0.2, 0.0, flagged(10, 0))),
            ((dataset, 40, AttackKind::Backdoor, fedavg), summary(0.8, 1.0, flagged(10, 0))),
            ((dataset, 40, AttackKind::SignFlipX4, krum), None),
            ((dataset, 40, AttackKind::Backdoor, krum), None),
        ]);
        let spec = MatrixSpec {
            datasets: vec![dataset],
            attacker_percents: vec![0, 20, 40],
            attacks: vec![AttackKind::SignFlipX4, AttackKind::Backdoor],
            defences: vec![fedavg, krum],
            server: ServerOptimizerChoice::default(),
            multi_krum_m: None,
        };
        let provenance = Provenance {
            command: "cargo xtask bench robustness".to_owned(),
            cpu: "a CPU".to_owned(),
            cores: 2,
            date: "2026-12-02".to_owned(),
            wall_seconds: 12.34,
        };
        let verdicts = [
            ("(1) no attack", Verdict { pass: false, lines: vec!["ignored".to_owned()] }),
            ("(2) 20 %", Verdict { pass: true, lines: Vec::new() }),
        ];
        let text = section(&spec, &provenance, 40, &Lookup::from_cells(cells), &verdicts);
        expect![[r#"
            `cargo xtask bench robustness` on a CPU (2 cores), 2026-12-02: 40 simulated studies in 12.3 s. Full tables: `robustness-report.md`.

            - (1) no attack: **FAIL**
            - (2) 20 %: **PASS**

            synthetic (attack-free FedAvg AUROC 0.9000; drops in AUROC points):

            | defence | no attack: AUROC (drop) | 20 %: mean / worst drop (attack) | 40 %: mean / worst drop (attack) | 20 %: backdoor success | 20 %: flagged, TPR / FPR |
            |---|---|---|---|---|---|
            | fedavg | 0.9000 (0.00) | 20.50 / 40.00 (sign flip ×4) | 40.00 / 70.00 (sign flip ×4) | 90.0 % | 17.0, 75.0 / 2.5 |
            | krum | 0.8800 (2.00) | 3.50 / 4.00 (backdoor + boost) | n/a | 5.0 % | 21.0, 95.0 / 2.5 |

        "#]]
        .assert_eq(&text);
    }
}
