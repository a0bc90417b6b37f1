//! `robustness`: pdc's robustness benchmark. Simulates federated studies in process (no gRPC) with the project's
//! own training, attacks, upload checks, aggregation rules and anomaly scores, over a matrix of attacks × rules ×
//! attacker shares on two consortia, and writes a Markdown report with its acceptance verdicts.
//!
//! ```text
//! robustness [--seeds N] [--rounds N] [--learning-rate X] [--out FILE] [--threads N] [--quick]
//!            [--datasets LIST] [--shares LIST] [--attacks LIST] [--defences LIST]
//!            [--server-optimizer NAME] [--server-learning-rate X] [--server-momentum X]
//!            [--multi-krum-m M]
//! ```
//!
//! Run it through `cargo xtask bench robustness` (the optimised dev profile).

mod acceptance;
mod benchmarks;
mod datasets;
mod matrix;
mod report;
mod runner;
mod seeds;
mod simulate;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use pdc_coordinator::aggregation::rule::OptimizerKind;

use crate::matrix::{Filter, MatrixSpec, ServerOptimizerChoice};
use crate::report::Provenance;
use crate::runner::{RunSettings, run_matrix};

const USAGE: &str = "\
Usage: robustness [--seeds N] [--rounds N] [--learning-rate X] [--out FILE] [--threads N] [--quick]
                  [--datasets LIST] [--shares LIST] [--attacks LIST] [--defences LIST]
                  [--server-optimizer NAME] [--server-learning-rate X] [--server-momentum X]
                  [--multi-krum-m M]

  --seeds N     seeds per cell (default 5; 1 with --quick)
  --rounds N    rounds for every dataset (default: each dataset's own, 30; 3 with --quick)
  --learning-rate X
                the hospitals' local learning rate for every dataset (default: each dataset's own, 0.05 for
                breast cancer and 0.1 for synthetic)
  --out FILE    where to write the Markdown report (default: robustness-report.md in the workspace root, which
                holds only the default matrix; written there, it also replaces the robustness-matrix section of
                BENCHMARKS.md). Any other run (every option here but --threads) needs --out.
  --threads N   worker threads (default: the available cores); the numbers do not depend on it
  --quick       a tiny matrix for CI smoke runs

A part of the matrix, for quick tuning runs (each LIST is comma-separated; its acceptance verdicts cover only
what ran):
  --datasets    breast_cancer, synthetic
  --shares      attacker shares in percent: 0, 20, 40
  --attacks     none (the attack-free scenario), label_flip, sign_flip, sign_flip_x4, gaussian_noise, backdoor,
                alie, ipm, free_ride, free_ride_noisy
  --defences    fedavg, median, trimmed_mean, krum, multi_krum, bulyan, centered_clipping, norm_bound, fltrust,
                fedavg+anomaly, trimmed_mean+anomaly, multi_krum+anomaly

A server optimiser on top of every rule, FedAvg included (the default matrix has none; parameters left out take
the coordinator's defaults, and a combination a manifest could not have is refused):
  --server-optimizer      none, fedavgm, fedadam, fedyogi, fedadagrad
  --server-learning-rate  the server learning rate
  --server-momentum       FedAvgM's momentum

  --multi-krum-m M  Multi-Krum keeps the M best-scored updates instead of n − f (M = 1 is Krum); a cell where M
                    exceeds n − f is reported as n/a, as the coordinator refuses such a manifest";

/// The parsed command line.
#[derive(Debug, PartialEq)]
struct Options {
    seeds: Option<u64>,
    rounds: Option<u32>,
    learning_rate: Option<f64>,
    out: Option<PathBuf>,
    threads: Option<usize>,
    quick: bool,
    filter: Filter,
    server: ServerOptimizerChoice,
    multi_krum_m: Option<usize>,
    help: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        seeds: None,
        rounds: None,
        learning_rate: None,
        out: None,
        threads: None,
        quick: false,
        filter: Filter::default(),
        server: ServerOptimizerChoice::default(),
        multi_krum_m: None,
        help: false,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().cloned().ok_or_else(|| format!("`{name}` needs a value"));
        let positive = |name: &str, text: String| match text.parse::<u64>() {
            Ok(value) if value > 0 => Ok(value),
            _ => Err(format!("`{name}` takes a positive integer, got `{text}`")),
        };
        let number = |name: &str, text: String| match text.parse::<f64>() {
            Ok(value) if value.is_finite() => Ok(value),
            _ => Err(format!("`{name}` takes a finite number, got `{text}`")),
        };
        match arg.as_str() {
            "--seeds" => options.seeds = Some(positive("--seeds", value("--seeds")?)?),
            "--rounds" => {
                let rounds = positive("--rounds", value("--rounds")?)?;
                options.rounds = Some(u32::try_from(rounds).map_err(|_| "`--rounds` is too large".to_owned())?);
            }
            "--threads" => options.threads = Some(positive("--threads", value("--threads")?)? as usize),
            "--out" => options.out = Some(PathBuf::from(value("--out")?)),
            "--quick" => options.quick = true,
            "--multi-krum-m" => options.multi_krum_m = Some(positive(arg, value(arg)?)? as usize),
            "--server-optimizer" => {
                let name = value(arg)?;
                let kinds = OptimizerKind::ALL;
                options.server.kind = kinds.into_iter().find(|kind| kind.name() == name).ok_or_else(|| {
                    let names: Vec<&str> = kinds.iter().map(|kind| kind.name()).collect();
                    format!("`--server-optimizer` has no `{name}`; it takes {}", names.join(", "))
                })?;
            }
            "--learning-rate" => match number(arg, value(arg)?)? {
                rate if rate > 0.0 => options.learning_rate = Some(rate),
                rate => return Err(format!("`--learning-rate` must be positive, got {rate}")),
            },
            "--server-learning-rate" => options.server.learning_rate = Some(number(arg, value(arg)?)?),
            "--server-momentum" => options.server.momentum = Some(number(arg, value(arg)?)?),
            "--datasets" | "--shares" | "--attacks" | "--defences" => {
                let list: Vec<String> = value(arg)?.split(',').map(|item| item.trim().to_owned()).collect();
                if list.iter().any(String::is_empty) {
                    return Err(format!("`{arg}` takes a comma-separated list without empty items"));
                }
                let slot = match arg.as_str() {
                    "--datasets" => &mut options.filter.datasets,
                    "--shares" => &mut options.filter.shares,
                    "--attacks" => &mut options.filter.attacks,
                    _ => &mut options.filter.defences,
                };
                *slot = Some(list);
            }
            "-h" | "--help" => options.help = true,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if !options.is_default_matrix() && options.out.is_none() {
        return Err("a run other than the default matrix needs `--out FILE` (it would otherwise overwrite the full \
                    report)"
            .to_owned());
    }
    Ok(options)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("robustness: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if options.help {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match run(&options, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("robustness: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &Options, args: &[String]) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let (spec, settings) = plan(options, cores).map_err(anyhow::Error::msg)?;
    let out = options.out.clone().unwrap_or_else(default_out);
    let started = Instant::now();
    let step = |done: usize, total: usize, elapsed: std::time::Duration| {
        if done == total || done.is_multiple_of((total / 20).max(1)) {
            eprintln!("robustness: {done}/{total} studies in {:.0} s", elapsed.as_secs_f64());
        }
    };
    let results = run_matrix(&spec, &settings, &step)?;
    let provenance = Provenance {
        command: command_line(args),
        cpu: cpu_model(),
        cores,
        date: utc_date(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())),
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    let text = report::render(&spec, &settings, &provenance, &results);
    std::fs::write(&out, text).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("robustness: wrote {} in {:.1} s", out.display(), provenance.wall_seconds);
    if options.is_default_run() {
        let path = workspace_root().join("BENCHMARKS.md");
        let lookup = acceptance::Lookup::new(&results);
        let ran = results.iter().map(|result| result.runs.len()).sum();
        let section = benchmarks::section(&spec, &provenance, ran, &lookup, &report::verdicts(&lookup, &spec));
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let spliced = benchmarks::splice(&text, &section).with_context(|| format!("in {}", path.display()))?;
        std::fs::write(&path, spliced).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("robustness: replaced the robustness-matrix section of {}", path.display());
    }
    Ok(())
}

impl Options {
    /// Whether this run is the default matrix written to the default report, the one BENCHMARKS.md summarises.
    fn is_default_run(&self) -> bool {
        self.out.is_none() && self.is_default_matrix()
    }

    /// Whether the options ask for the default matrix with its default settings (`--threads` changes no number).
    fn is_default_matrix(&self) -> bool {
        !self.quick
            && self.seeds.is_none()
            && self.rounds.is_none()
            && self.learning_rate.is_none()
            && self.filter.is_empty()
            && self.server.is_none()
            && self.multi_krum_m.is_none()
    }
}

/// The matrix (cut down by the filter) and run settings the options ask for.
fn plan(options: &Options, cores: usize) -> Result<(MatrixSpec, RunSettings), String> {
    let (spec, seeds, rounds) = if options.quick {
        (MatrixSpec::quick(), options.seeds.unwrap_or(1), Some(options.rounds.unwrap_or(3)))
    } else {
        (MatrixSpec::default_matrix(), options.seeds.unwrap_or(5), options.rounds)
    };
    let mut spec = spec.filtered(&options.filter)?;
    for dataset in &spec.datasets {
        options.server.validate(dataset.config().n_hospitals)?;
    }
    spec.server = options.server;
    spec.multi_krum_m = options.multi_krum_m;
    let threads = options.threads.unwrap_or(cores);
    Ok((spec, RunSettings { seeds, rounds, learning_rate: options.learning_rate, threads }))
}

/// `robustness-report.md` in the workspace root.
fn default_out() -> PathBuf {
    workspace_root().join("robustness-report.md")
}

/// The workspace root, this crate's parent folder. Cargo names the crate's directory when it runs the binary,
/// which stays right if a shared build cache holds a binary built in a clone elsewhere; the compile-time path is
/// the fallback for a binary started by hand.
fn workspace_root() -> PathBuf {
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir.join("..")
}

/// The `cargo xtask` line that reproduces a run with these arguments (`--out` and `--threads` left out: they
/// change neither the numbers nor the matrix).
fn command_line(args: &[String]) -> String {
    let mut kept = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--out" || arg == "--threads" {
            args.next();
        } else {
            kept.push(arg.as_str());
        }
    }
    let mut line = "cargo xtask bench robustness".to_owned();
    if !kept.is_empty() {
        line.push_str(" -- ");
        line.push_str(&kept.join(" "));
    }
    line
}

/// The first `model name` in /proc/cpuinfo, or "unknown CPU".
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// `YYYY-MM-DD` of a Unix time, by Howard Hinnant's `civil_from_days`.
fn utc_date(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acceptance::Lookup;
    use crate::datasets::DatasetKind;
    use crate::matrix::{AttackKind, Defence, Plan, RuleChoice};

    fn parsed(line: &str) -> Result<Options, String> {
        parse(&line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    }

    #[test]
    fn only_the_default_matrix_in_the_default_report_rewrites_benchmarks_md() {
        assert!(parsed("").unwrap().is_default_run());
        assert!(parsed("--threads 1").unwrap().is_default_run());
        for line in ["--out x.md", "--out x.md --quick", "--out x.md --attacks ipm"] {
            assert!(!parsed(line).unwrap().is_default_run(), "{line}");
        }
        // Only the default matrix may go to the default report.
        for line in [
            "--quick",
            "--seeds 3",
            "--rounds 5",
            "--learning-rate 0.02",
            "--attacks ipm",
            "--server-optimizer fedavgm",
            "--multi-krum-m 3",
        ] {
            assert_eq!(
                parsed(line).unwrap_err(),
                "a run other than the default matrix needs `--out FILE` (it would otherwise overwrite the full \
                 report)",
                "{line}"
            );
        }
    }

    #[test]
    fn options_parse_and_refuse_nonsense() {
        let options = parsed("--seeds 3 --rounds 10 --out r.md --quick").unwrap();
        assert_eq!(
            options,
            Options {
                seeds: Some(3),
                rounds: Some(10),
                learning_rate: None,
                out: Some("r.md".into()),
                threads: None,
                quick: true,
                filter: Filter::default(),
                server: ServerOptimizerChoice::default(),
                multi_krum_m: None,
                help: false
            }
        );
        assert_eq!(parsed("--seeds 0").unwrap_err(), "`--seeds` takes a positive integer, got `0`");
        assert_eq!(parsed("--rounds").unwrap_err(), "`--rounds` needs a value");
        assert_eq!(parsed("--fast").unwrap_err(), "unknown argument `--fast`");
        let (spec, settings) = plan(&parsed("").unwrap(), 2).unwrap();
        assert_eq!(spec, MatrixSpec::default_matrix());
        assert_eq!(settings, RunSettings { seeds: 5, rounds: None, learning_rate: None, threads: 2 });
        let (spec, settings) = plan(&parsed("--quick --threads 1 --out q.md").unwrap(), 2).unwrap();
        assert_eq!(spec, MatrixSpec::quick());
        assert_eq!(settings, RunSettings { seeds: 1, rounds: Some(3), learning_rate: None, threads: 1 });
        let (_, settings) = plan(&parsed("--learning-rate 0.02 --rounds 60 --out l.md").unwrap(), 2).unwrap();
        let config = settings.dataset_config(DatasetKind::Synthetic);
        assert_eq!((config.learning_rate, config.rounds), (0.02, 60));
        assert_eq!(settings.dataset_config(DatasetKind::BreastCancer).learning_rate, 0.02);
        assert_eq!(parsed("--learning-rate 0 --out l.md").unwrap_err(), "`--learning-rate` must be positive, got 0");
        assert_eq!(
            parsed("--learning-rate inf --out l.md").unwrap_err(),
            "`--learning-rate` takes a finite number, got `inf`"
        );
    }

    #[test]
    fn filters_cut_the_matrix_down_and_refuse_unknown_names() {
        let spec = |line: &str| plan(&parsed(line)?, 2).map(|(spec, _)| spec);
        let krum = spec("--out k.md --datasets synthetic --attacks none --defences fedavg,krum").unwrap();
        assert_eq!(krum.datasets, [DatasetKind::Synthetic]);
        assert_eq!(krum.attacker_percents, [0, 20, 40]);
        assert!(krum.attacks.is_empty());
        assert_eq!(krum.defences, [Defence::plain(RuleChoice::FedAvg), Defence::plain(RuleChoice::Krum)]);
        // Only the attack-free cells remain: one per defence.
        assert_eq!(krum.cells().len(), 2);
        let echo = spec("--out e.md --shares 20,40 --attacks free_ride --defences multi_krum+anomaly").unwrap();
        assert_eq!(echo.attacker_percents, [20, 40]);
        assert_eq!(echo.attacks, [AttackKind::FreeRide]);
        assert_eq!(echo.cells().len(), 2 * 2);
        // Without `none`, the 0 % scenario goes.
        assert_eq!(spec("--out x.md --attacks ipm").unwrap().attacker_percents, [20, 40]);
        assert_eq!(
            spec("--out x.md --defences krum,fltrust+anomaly").unwrap_err(),
            "`--defences` has no `fltrust+anomaly`; it takes fedavg, median, trimmed_mean, krum, multi_krum, bulyan, \
             centered_clipping, norm_bound, fltrust, fedavg+anomaly, trimmed_mean+anomaly, multi_krum+anomaly"
        );
        assert_eq!(spec("--out x.md --shares 10").unwrap_err(), "`--shares` has no `10`; it takes 0, 20, 40");
        assert_eq!(
            parsed("--out x.md --datasets synthetic,").unwrap_err(),
            "`--datasets` takes a comma-separated list without empty items"
        );
    }

    #[test]
    fn a_server_optimizer_goes_on_every_rule_and_bad_ones_are_refused() {
        let spec = |line: &str| plan(&parsed(line)?, 2).map(|(spec, _)| spec);
        let momentum = spec(
            "--out m.md --attacks none --defences fedavg,krum --server-optimizer fedavgm --server-learning-rate 0.5 \
             --server-momentum 0.9",
        )
        .unwrap();
        let expected =
            ServerOptimizerChoice { kind: OptimizerKind::FedAvgM, learning_rate: Some(0.5), momentum: Some(0.9) };
        assert_eq!(momentum.server, expected);
        assert_eq!(expected.describe(), "fedavgm (server_learning_rate 0.5, server_momentum 0.9)");
        let cells = momentum.cells();
        assert_eq!(cells.len(), 2 * 2);
        for cell in &cells {
            let Plan::Run(table) = &cell.plan else { panic!("{:?} is refused", cell.defence) };
            assert_eq!(table.server_optimizer, expected.kind);
            assert_eq!((table.server_learning_rate, table.server_momentum), (Some(0.5), Some(0.9)));
        }
        // The default matrix has none.
        assert!(spec("").unwrap().server.is_none());
        assert!(spec("").unwrap().cells().iter().all(|cell| match &cell.plan {
            Plan::Run(table) => table.server_optimizer == OptimizerKind::None,
            Plan::NotApplicable(_) => true,
        }));
        assert_eq!(
            parsed("--out x.md --server-optimizer adam").unwrap_err(),
            "`--server-optimizer` has no `adam`; it takes none, fedavgm, fedadam, fedyogi, fedadagrad"
        );
        assert_eq!(
            parsed("--out x.md --server-momentum NaN").unwrap_err(),
            "`--server-momentum` takes a finite number, got `NaN`"
        );
        // What a manifest could not say is refused before anything runs, with the coordinator's reason.
        for line in [
            "--out x.md --server-optimizer fedadam --server-momentum 0.9",
            "--out x.md --server-optimizer fedavgm --server-learning-rate -1",
            "--out x.md --server-momentum 0.9",
        ] {
            let error = spec(line).unwrap_err();
            assert!(error.starts_with("the server optimiser is refused: "), "{line}: {error}");
        }
    }

    #[test]
    fn multi_krum_m_goes_on_multi_krum_only_and_is_refused_above_n_minus_f() {
        let spec = |line: &str| plan(&parsed(line)?, 2).map(|(spec, _)| spec);
        let sweep = spec("--out s.md --shares 0 --defences fedavg,krum,multi_krum,multi_krum+anomaly --multi-krum-m 3")
            .unwrap();
        assert_eq!(sweep.multi_krum_m, Some(3));
        let cells = sweep.cells();
        assert_eq!(cells.len(), 2 * 4);
        for cell in &cells {
            let Plan::Run(table) = &cell.plan else { panic!("{:?} is refused", cell.defence) };
            let expected = (cell.defence.rule == RuleChoice::MultiKrum).then_some(3);
            assert_eq!(table.m, expected, "{:?}", cell.defence);
        }
        // Without the option Multi-Krum keeps the coordinator's default, n − f.
        assert!(spec("").unwrap().cells().iter().all(|cell| match &cell.plan {
            Plan::Run(table) => table.m.is_none(),
            Plan::NotApplicable(_) => true,
        }));
        // m = 9 exceeds n − f = 8 on ten hospitals (f = 2) but not 16 on twenty (f = 4): the coordinator's refusal.
        let wide = spec("--out w.md --shares 0 --defences multi_krum --multi-krum-m 9").unwrap().cells();
        match &wide[0].plan {
            Plan::NotApplicable(reason) => assert!(reason.contains("aggregation.m must lie in 1..=8"), "{reason}"),
            Plan::Run(_) => panic!("m = 9 of 10 hospitals with f = 2 ran"),
        }
        assert!(matches!(wide[1].plan, Plan::Run(_)));
        assert_eq!(
            parsed("--out x.md --multi-krum-m 0").unwrap_err(),
            "`--multi-krum-m` takes a positive integer, got `0`"
        );
    }

    #[test]
    fn the_command_line_reproduces_the_matrix() {
        let args = |line: &str| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(command_line(&[]), "cargo xtask bench robustness");
        assert_eq!(
            command_line(&args("--seeds 3 --out /tmp/x.md --threads 2 --quick")),
            "cargo xtask bench robustness -- --seeds 3 --quick"
        );
    }

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_767_225_599), "2025-12-31");
        assert_eq!(utc_date(1_767_225_600), "2026-01-01");
    }

    /// The quick matrix end to end, twice: it runs, refuses Bulyan on ten hospitals as n/a, and gives the same
    /// numbers with one thread as with two.
    #[test]
    fn the_quick_matrix_runs_and_is_deterministic() {
        let (spec, settings) = plan(&parsed("--quick --rounds 2 --out q.md").unwrap(), 2).unwrap();
        let quiet = |_: usize, _: usize, _: std::time::Duration| {};
        let results = run_matrix(&spec, &settings, &quiet).unwrap();
        let single = run_matrix(&spec, &RunSettings { threads: 1, ..settings.clone() }, &quiet).unwrap();
        assert_eq!(results, single);
        let bulyan: Vec<_> = results
            .iter()
            .filter(|result| {
                result.cell.dataset == DatasetKind::BreastCancer
                    && result.cell.defence == Defence::plain(RuleChoice::Bulyan)
            })
            .collect();
        assert_eq!(bulyan.len(), 4);
        assert!(
            bulyan.iter().all(|result| matches!(result.cell.plan, Plan::NotApplicable(_)) && result.runs.is_empty())
        );
        let lookup = Lookup::new(&results);
        for dataset in DatasetKind::ALL {
            assert!(lookup.baseline(dataset).unwrap() > 0.5, "{dataset:?}");
        }
        // Echoes are always flagged.
        let echo =
            lookup.get(DatasetKind::Synthetic, 20, AttackKind::FreeRide, Defence::plain(RuleChoice::FedAvg)).unwrap();
        assert_eq!(echo.flags.true_positive_rate(), Some(1.0));
        let provenance = Provenance {
            command: "cargo xtask bench robustness -- --quick".into(),
            cpu: "test CPU".into(),
            cores: 2,
            date: "2026-01-01".into(),
            wall_seconds: 1.0,
        };
        let text = report::render(&spec, &settings, &provenance, &results);
        for expected in [
            "# Robustness report",
            "- Reproduce: `cargo xtask bench robustness -- --quick`",
            "## Acceptance",
            "**(1) No attack",
            "## Breast cancer",
            "## Synthetic",
            "| breast cancer | 20 % | sign flip ×1 | bulyan | n/a |",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }
}
