//! `cargo xtask`: pdc's build tasks (demo, test, ci, bench, deps), so a fresh machine needs only a Rust toolchain.

mod deps;
mod fuzz;
mod invariants;
mod prerequisites;
mod shell;

use std::env;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::prerequisites::ensure_prerequisites;
use crate::shell::{Shell, answers_version, format_duration};

const USAGE: &str = "\
Usage: cargo xtask <COMMAND>

Commands:
  demo [ARGS...]              install missing build prerequisites, then run `pdc demo ARGS...`
  test                        install missing build prerequisites, then run every test (unit, integration, doc)
  ci                          every gate, cheapest first, stopping at the first failure:
                              fmt, dependency directions, clippy, doc, test, benches run once
  bench [NAME] [-- ARGS...]   run the criterion bench NAME (all benches without it); ARGS go to criterion
  bench robustness [ARGS...]  run the robustness benchmark (`cargo run -p pdc-robustness -- ARGS`, the
                              dev profile, which is optimised): --seeds N, --rounds N, --learning-rate X, --out FILE,
                              --threads N, --quick;
                              a part of the matrix: --datasets, --shares, --attacks, --defences LIST; a server
                              optimiser on every rule: --server-optimizer NAME, --server-learning-rate X,
                              --server-momentum X; any run but the default matrix needs --out
  bench large-model [ARGS...] one FedAvg round of a 100M-parameter model, ten hospitals, the real coordinator
                              under /usr/bin/time -v (installed when missing): peak RSS and MB/s both ways;
                              --parameters N, --hospitals N, --compression none|zstd, --test (a small round)
  deps                        check only that no crate depends on what DESIGN.md §2 forbids, and the
                              source-level invariants of ARCHITECTURE.md (RocksDB behind the stores, pb:: at
                              the edges, no I/O or clock in the coordinator's pure cores)
  fuzz [TARGET] [--time SECONDS] [-- LIBFUZZER_ARGS...]
                              run each cargo-fuzz target of fuzz/ (or TARGET) for SECONDS (default 60) from
                              its corpus, installing cargo-fuzz when missing; reports executions per target
  help                        print this text

Cargo builds into $CARGO_TARGET_DIR, or into $HOME/.cache/pdc-target when it is unset, so the build cache
outlives the clone.";

/// A parsed command line.
#[derive(Debug, PartialEq, Eq)]
enum Task {
    Demo(Vec<String>),
    Test,
    Ci,
    Bench {
        name: Option<String>,
        criterion_args: Vec<String>,
    },
    /// The robustness benchmark (not a criterion bench), with the arguments for its binary.
    Robustness(Vec<String>),
    /// The large-model bench (not a criterion bench), with its arguments.
    LargeModel(Vec<String>),
    Deps,
    /// `cargo xtask fuzz`, with its options.
    Fuzz(fuzz::Options),
    Help,
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let task = match parse(&args) {
        Ok(task) => task,
        Err(message) => {
            eprintln!("xtask: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(task) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse(args: &[String]) -> Result<Task, String> {
    let Some((command, rest)) = args.split_first() else {
        return Err("no command given".to_owned());
    };
    let no_arguments = |task: Task| {
        if rest.is_empty() {
            Ok(task)
        } else {
            Err(format!("`{command}` takes no arguments, got `{}`", rest.join(" ")))
        }
    };
    match command.as_str() {
        "demo" => Ok(Task::Demo(rest.to_vec())),
        "test" => no_arguments(Task::Test),
        "ci" => no_arguments(Task::Ci),
        "deps" => no_arguments(Task::Deps),
        "fuzz" => fuzz::parse(rest).map(Task::Fuzz),
        "help" | "-h" | "--help" => no_arguments(Task::Help),
        "bench" if rest.first().is_some_and(|name| name == ROBUSTNESS || name == LARGE_MODEL) => {
            // Its options may follow the name directly or after `--`, like criterion's.
            let args = match &rest[1..] {
                [separator, args @ ..] if separator == "--" => args,
                args => args,
            };
            Ok(if rest[0] == ROBUSTNESS { Task::Robustness(args.to_vec()) } else { Task::LargeModel(args.to_vec()) })
        }
        "bench" => {
            let (ours, criterion_args) = match rest.iter().position(|arg| arg == "--") {
                Some(at) => (&rest[..at], rest[at + 1..].to_vec()),
                None => (rest, Vec::new()),
            };
            match ours {
                [] => Ok(Task::Bench { name: None, criterion_args }),
                [name] if !name.starts_with('-') => Ok(Task::Bench { name: Some(name.clone()), criterion_args }),
                _ => Err(format!("`bench` takes at most one bench name, got `{}`", ours.join(" "))),
            }
        }
        other => Err(format!("unknown command `{other}`")),
    }
}

fn run(task: Task) -> Result<ExitCode> {
    let passed = match task {
        Task::Help => {
            println!("{USAGE}");
            return Ok(ExitCode::SUCCESS);
        }
        Task::Demo(args) => return demo(&Shell::new()?, &args),
        Task::Test => test(&Shell::new()?)?,
        Task::Ci => ci(&Shell::new()?)?,
        Task::Bench { name, criterion_args } => bench(&Shell::new()?, name.as_deref(), &criterion_args)?,
        Task::Robustness(args) => robustness(&Shell::new()?, &args)?,
        Task::LargeModel(args) => large_model(&Shell::new()?, &args)?,
        Task::Deps => deps::check(&Shell::new()?)?,
        Task::Fuzz(options) => fuzz::run(&Shell::new()?, &options)?,
    };
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Runs the demo, handing back its exit status so that scripts see the demo's own failure.
fn demo(shell: &Shell, args: &[String]) -> Result<ExitCode> {
    ensure_prerequisites(shell)?;
    let mut command = shell.cargo(&["run", "--package", "pdc", "--bin", "pdc", "--", "demo"]);
    command.args(args);
    let status = command.status().context("could not start cargo")?;
    // A signal leaves no code; 1 is the closest honest answer.
    Ok(ExitCode::from(status.code().map_or(1, |code| u8::try_from(code).unwrap_or(1))))
}

/// Runs every test, all of them even after a failure so that one run shows everything broken, then one summary line.
fn test(shell: &Shell) -> Result<bool> {
    ensure_prerequisites(shell)?;
    let started = Instant::now();
    // nextest runs test binaries in parallel and reports better, but it is optional: a fresh machine lacks it.
    let main_suite: &[&str] = if answers_version("cargo", &["nextest"]) {
        &["nextest", "run", "--workspace", "--all-targets", "--no-fail-fast"]
    } else {
        &["test", "--workspace", "--all-targets", "--no-fail-fast"]
    };
    // Neither nextest nor `--all-targets` runs doc tests, so they get their own run, first: the main suite's
    // summary is then the last test-runner line of the output, the one CI reads.
    let suites: [(&str, &[&str]); 2] = [("doc tests", &["test", "--workspace", "--doc"]), ("tests", main_suite)];
    let mut failed = Vec::new();
    for (label, args) in suites {
        if !shell.run(shell.cargo(args))? {
            failed.push(label);
        }
    }
    let took = format_duration(started.elapsed());
    if failed.is_empty() {
        println!("xtask test: passed (tests and doc tests) in {took}");
    } else {
        println!("xtask test: FAILED ({}) in {took}; see cargo's output above", failed.join(", "));
    }
    Ok(failed.is_empty())
}

/// Selects every `[[bench]]` target and nothing else. `--benches` would also take each library's and binary's unit
/// tests, which `-- --test` then runs a second time.
const ALL_BENCHES: &str = "*";

/// A gate of `ci`: a name for the log, and the check, which says whether it passed.
type Gate = (&'static str, fn(&Shell) -> Result<bool>);

/// The gates, cheapest first, so that a formatting slip fails in seconds rather than after the test suite.
const GATES: &[Gate] = &[
    ("fmt", |shell| shell.run(shell.cargo(&["fmt", "--all", "--check"]))),
    ("dependency directions", deps::check),
    ("clippy", |shell| {
        // Clippy runs build scripts, RocksDB's among them, so this is the first gate that needs the prerequisites.
        ensure_prerequisites(shell)?;
        shell.run(shell.cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))
    }),
    ("doc", |shell| {
        let mut command = shell.cargo(&["doc", "--workspace", "--no-deps"]);
        command.env("RUSTDOCFLAGS", "-D warnings");
        shell.run(command)
    }),
    ("test", test),
    ("benches run once", |shell| {
        // `--test` makes criterion run each bench once, unmeasured: the point is that benches keep compiling and
        // running. The dev profile (optimised in this workspace) reuses the test build; the bench profile would
        // rebuild every dependency, RocksDB and burn included, at release settings and break CI's time budget.
        shell.run(shell.cargo(&["bench", "--workspace", "--profile", "dev", "--bench", ALL_BENCHES, "--", "--test"]))
    }),
];

fn ci(shell: &Shell) -> Result<bool> {
    let started = Instant::now();
    for (index, (name, gate)) in GATES.iter().enumerate() {
        eprintln!("xtask ci: gate {} of {}: {name}", index + 1, GATES.len());
        if !gate(shell)? {
            let took = format_duration(started.elapsed());
            println!("xtask ci: FAILED at gate `{name}` ({} of {}) after {took}", index + 1, GATES.len());
            return Ok(false);
        }
    }
    println!("xtask ci: all {} gates passed in {}", GATES.len(), format_duration(started.elapsed()));
    Ok(true)
}

fn bench(shell: &Shell, name: Option<&str>, criterion_args: &[String]) -> Result<bool> {
    ensure_prerequisites(shell)?;
    let mut command = match name {
        Some(name) => shell.cargo(&["bench", "--workspace", "--bench", name]),
        None => shell.cargo(&["bench", "--workspace", "--bench", ALL_BENCHES]),
    };
    if !criterion_args.is_empty() {
        command.arg("--").args(criterion_args);
    }
    shell.run(command)
}

/// The bench name that runs the robustness harness instead of a criterion bench.
const ROBUSTNESS: &str = "robustness";

/// Runs the robustness harness in the dev profile, which this workspace optimises (opt-level 3) as the test build
/// does: a release build would rebuild RocksDB and burn for half an hour first. The harness's numbers do not depend
/// on the profile, only its wall time does.
fn robustness(shell: &Shell, args: &[String]) -> Result<bool> {
    ensure_prerequisites(shell)?;
    let mut command = shell.cargo(&["run", "--package", "pdc-robustness", "--bin", "robustness", "--"]);
    command.args(args);
    shell.run(command)
}

/// The bench name of the large-model harness.
const LARGE_MODEL: &str = "large-model";

/// Runs `benches/large_model.rs` in the dev profile (optimised in this workspace, and the test build's), with GNU
/// time installed first: the harness starts the coordinator under `/usr/bin/time -v` for its peak RSS.
fn large_model(shell: &Shell, args: &[String]) -> Result<bool> {
    ensure_prerequisites(shell)?;
    prerequisites::ensure_gnu_time(shell)?;
    let mut command = shell.cargo(&["bench", "--workspace", "--profile", "dev", "--bench", "large_model", "--"]);
    command.args(args);
    shell.run(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &str) -> Result<Task, String> {
        parse(&line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    }

    #[test]
    fn parses_each_command() {
        assert_eq!(parsed("demo"), Ok(Task::Demo(vec![])));
        assert_eq!(parsed("demo --rounds 3"), Ok(Task::Demo(vec!["--rounds".into(), "3".into()])));
        assert_eq!(parsed("test"), Ok(Task::Test));
        assert_eq!(parsed("ci"), Ok(Task::Ci));
        assert_eq!(parsed("deps"), Ok(Task::Deps));
        assert_eq!(parsed("--help"), Ok(Task::Help));
        assert_eq!(parsed("bench"), Ok(Task::Bench { name: None, criterion_args: vec![] }));
        assert_eq!(
            parsed("bench aggregation -- --save-baseline main"),
            Ok(Task::Bench {
                name: Some("aggregation".into()),
                criterion_args: vec!["--save-baseline".into(), "main".into()]
            })
        );
    }

    #[test]
    fn robustness_is_a_bench_name_with_its_own_arguments() {
        assert_eq!(parsed("bench robustness"), Ok(Task::Robustness(vec![])));
        let quick = Ok(Task::Robustness(vec!["--seeds".into(), "2".into(), "--quick".into()]));
        assert_eq!(parsed("bench robustness --seeds 2 --quick"), quick);
        assert_eq!(parsed("bench robustness -- --seeds 2 --quick"), quick);
        let large = Ok(Task::LargeModel(vec!["--hospitals".into(), "4".into()]));
        assert_eq!(parsed("bench large-model --hospitals 4"), large);
        assert_eq!(parsed("bench large-model -- --hospitals 4"), large);
        // Other names are still criterion benches.
        assert_eq!(
            parsed("bench robust_aggregation"),
            Ok(Task::Bench { name: Some("robust_aggregation".into()), criterion_args: vec![] })
        );
    }

    #[test]
    fn rejects_unknown_commands_and_stray_arguments() {
        assert_eq!(parsed(""), Err("no command given".into()));
        assert_eq!(parsed("tset"), Err("unknown command `tset`".into()));
        assert_eq!(parsed("test --release"), Err("`test` takes no arguments, got `--release`".into()));
        assert!(parsed("bench a b").is_err());
        assert!(parsed("bench --release").is_err());
    }
}
