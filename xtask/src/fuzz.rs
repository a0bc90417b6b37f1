//! `cargo xtask fuzz`: runs the cargo-fuzz targets of `fuzz/` for a given time each, starting from their corpora
//! in the repository, and reports how many inputs each executed and any crash.

use std::collections::HashSet;
use std::env;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::prerequisites::ensure_prerequisites;
use crate::shell::{Shell, answers_version, format_duration};

/// Seconds per target when `--time` is not given.
const DEFAULT_SECONDS: u64 = 60;

/// How many crash inputs the summary names per target.
const SHOWN_ARTIFACTS: usize = 3;

/// What to fuzz, and for how long.
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    /// One target, or every target in `fuzz/fuzz_targets/` when `None`.
    pub target: Option<String>,
    /// Seconds per target.
    pub seconds: u64,
    /// Passed to libFuzzer as they are (after `--`), e.g. `-fork=1 -ignore_crashes=1` to go on past a known crash.
    pub libfuzzer_args: Vec<String>,
}

/// Parses `[TARGET] [--time SECONDS] [-- LIBFUZZER_ARGS...]`.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let (ours, libfuzzer_args) = match args.iter().position(|arg| arg == "--") {
        Some(at) => (&args[..at], args[at + 1..].to_vec()),
        None => (args, Vec::new()),
    };
    let mut options = Options { target: None, seconds: DEFAULT_SECONDS, libfuzzer_args };
    let mut words = ours.iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            "--time" => {
                let value = words.next().ok_or("`--time` needs a number of seconds")?;
                options.seconds = value
                    .parse()
                    .ok()
                    .filter(|&seconds| seconds > 0)
                    .ok_or_else(|| format!("`--time` takes a positive number of seconds, got `{value}`"))?;
            }
            flag if flag.starts_with('-') => return Err(format!("`fuzz` has no option `{flag}`")),
            name if options.target.is_none() => options.target = Some(name.to_owned()),
            extra => return Err(format!("`fuzz` takes at most one target, got a second, `{extra}`")),
        }
    }
    Ok(options)
}

/// Installs cargo-fuzz if it is missing, then fuzzes each target (or the one named) for the given time, and prints
/// a table of executions per target. Fails if a target crashed or could not be built.
pub fn run(shell: &Shell, options: &Options) -> Result<bool> {
    // libfuzzer-sys compiles libFuzzer, which is C++.
    ensure_prerequisites(shell)?;
    ensure_cargo_fuzz(shell)?;
    let fuzz_dir = shell.root().join("fuzz");
    let available = targets(&fuzz_dir)?;
    let chosen = match &options.target {
        Some(name) if available.contains(name) => vec![name.clone()],
        Some(name) => bail!("no fuzz target `{name}`; the targets are {}", available.join(", ")),
        None => available,
    };
    let cache = cache_dir()?;
    let mut results = Vec::new();
    for target in &chosen {
        results.push(fuzz_one(shell, &cache, target, options)?);
    }
    print_summary(&results, options.seconds);
    Ok(results.iter().all(|result| result.passed))
}

/// How one target's run went.
struct TargetResult {
    target: String,
    passed: bool,
    executions: Option<u64>,
    /// libFuzzer's own average, over the fuzzing time only (the wall time includes the build).
    executions_per_second: Option<u64>,
    seconds: f64,
    /// Inputs libFuzzer wrote for a crash, timeout or leak.
    artifacts: Vec<String>,
}

fn fuzz_one(shell: &Shell, cache: &Path, target: &str, options: &Options) -> Result<TargetResult> {
    // New inputs go to a scratch folder outside the clone; the repository's corpus is only read, so that it stays
    // small and curated (minimise into it with `cargo fuzz cmin` when a run finds something worth keeping).
    let scratch = cache.join("pdc-fuzz-corpus").join(target);
    fs::create_dir_all(&scratch).with_context(|| format!("could not create {}", scratch.display()))?;
    let seeds = Path::new("fuzz/corpus").join(target);
    let mut command = Command::new("cargo");
    command
        .current_dir(shell.root())
        // cargo-fuzz passes `-Z` flags to rustc; this lets the stable toolchain accept them.
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "run", "--sanitizer", "none", "--target-dir"])
        .arg(cache.join("pdc-fuzz-target"))
        .arg(target)
        .arg(&scratch)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={}", options.seconds))
        .arg("-print_final_stats=1")
        .args(&options.libfuzzer_args)
        .stderr(Stdio::piped());
    eprintln!("xtask: $ RUSTC_BOOTSTRAP=1 {}", words(&command));
    let started = Instant::now();
    let mut child = command.spawn().context("could not start `cargo fuzz`")?;
    let stderr = child.stderr.take().expect("stderr is piped");
    // libFuzzer reports on stderr; pass it through as it comes and keep it to read the figures from.
    let mut log = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.context("could not read cargo fuzz's output")?;
        eprintln!("{line}");
        log.push(line);
    }
    let status = child.wait().context("could not wait for `cargo fuzz`")?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("xtask: fuzz target `{target}` {} after {}", status, format_duration(started.elapsed()));
    Ok(TargetResult {
        target: target.to_owned(),
        passed: status.success(),
        executions: executions(&log),
        executions_per_second: final_stat(&log, "average_exec_per_sec"),
        seconds,
        artifacts: artifacts(&log),
    })
}

fn print_summary(results: &[TargetResult], seconds: u64) {
    println!("xtask fuzz: {seconds} s per target, libFuzzer without a sanitizer (safe Rust; panics are the bugs)");
    println!("{:<12} {:>14} {:>10} {:>9}  outcome", "target", "executions", "exec/s", "wall");
    for result in results {
        let executions = result.executions.map_or_else(|| "?".to_owned(), |n| n.to_string());
        let rate = result.executions_per_second.map_or_else(|| "?".to_owned(), |n| n.to_string());
        let outcome = if result.passed { "ok" } else { "FAILED" };
        println!("{:<12} {executions:>14} {rate:>10} {:>8.0}s  {outcome}", result.target, result.seconds);
        // Fork mode can save hundreds, mostly one bug; the first few say where to look.
        for artifact in result.artifacts.iter().take(SHOWN_ARTIFACTS) {
            println!("    crash input: {artifact}");
        }
        if result.artifacts.len() > SHOWN_ARTIFACTS {
            println!("    and {} more crash inputs", result.artifacts.len() - SHOWN_ARTIFACTS);
        }
        if !result.artifacts.is_empty() {
            // The test replays without a fuzz build, under the same property, with a backtrace.
            let folder = format!("fuzz/regressions/{}/", result.target);
            println!("    replay one: copy it into {folder} and run `cargo nextest run -p pdc-ledger fuzz_corpus`");
        }
    }
}

/// Installs cargo-fuzz with its locked dependencies when `cargo fuzz` does not answer.
fn ensure_cargo_fuzz(shell: &Shell) -> Result<()> {
    if answers_version("cargo", &["fuzz"]) {
        return Ok(());
    }
    eprintln!("xtask: cargo-fuzz not found; installing it");
    let mut command = Command::new("cargo");
    command.current_dir(shell.root()).args(["install", "cargo-fuzz", "--locked"]);
    if !shell.run(command)? || !answers_version("cargo", &["fuzz"]) {
        bail!("could not install cargo-fuzz (`cargo install cargo-fuzz --locked`)");
    }
    Ok(())
}

/// The fuzz targets: the files of `fuzz/fuzz_targets/`, by name, sorted.
fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut names = Vec::new();
    for item in fs::read_dir(&dir).with_context(|| format!("could not list {}", dir.display()))? {
        let path = item.with_context(|| format!("could not list {}", dir.display()))?.path();
        if let Some(name) = path.file_name().and_then(|name| name.to_str()).and_then(|name| name.strip_suffix(".rs")) {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// `$HOME/.cache`, where the fuzz build and the scratch corpora live, apart from the main build cache: the fuzz
/// build's instrumentation flags would otherwise invalidate it.
fn cache_dir() -> Result<PathBuf> {
    match env::var_os("HOME") {
        Some(home) if !home.is_empty() => Ok(PathBuf::from(home).join(".cache")),
        _ => bail!("HOME is unset; the fuzz build goes to $HOME/.cache/pdc-fuzz-target"),
    }
}

/// The number of inputs libFuzzer ran, from its final statistics (`-print_final_stats=1`), or else from its last
/// status line (`#N ...`, which fork mode also prints).
fn executions(log: &[String]) -> Option<u64> {
    final_stat(log, "number_of_executed_units").or_else(|| {
        log.iter().rev().find_map(|line| {
            let digits: String = line.strip_prefix('#')?.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
    })
}

/// One of libFuzzer's final statistics (`stat::NAME: VALUE`), the last if it printed several.
fn final_stat(log: &[String], name: &str) -> Option<u64> {
    log.iter().rev().find_map(|line| {
        let value = line.strip_prefix("stat::")?.strip_prefix(name)?.strip_prefix(':')?;
        value.trim().parse().ok()
    })
}

/// The inputs saved for crashes, timeouts and leaks, each once: from cargo-fuzz's "Failing input:" blocks, which
/// fork mode also prints, or else from libFuzzer's "Test unit written to PATH".
fn artifacts(log: &[String]) -> Vec<String> {
    let mut found: Vec<String> = log
        .windows(3)
        .filter(|lines| lines[0].trim() == "Failing input:" && lines[1].trim().is_empty())
        .map(|lines| lines[2].trim().to_owned())
        .collect();
    if found.is_empty() {
        found = log
            .iter()
            .filter_map(|line| line.split_once("Test unit written to ").map(|(_, path)| path.trim().to_owned()))
            .collect();
    }
    let mut seen = HashSet::new();
    found.retain(|path| seen.insert(path.clone()));
    found
}

/// The command's program and arguments as one line.
fn words(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|arg| arg.to_string_lossy().into_owned()));
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &str) -> Result<Options, String> {
        parse(&line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    }

    #[test]
    fn parses_target_time_and_libfuzzer_arguments() {
        assert_eq!(parsed(""), Ok(Options { target: None, seconds: DEFAULT_SECONDS, libfuzzer_args: vec![] }));
        assert_eq!(
            parsed("entry --time 120"),
            Ok(Options { target: Some("entry".into()), seconds: 120, libfuzzer_args: vec![] })
        );
        assert_eq!(
            parsed("--time 5 merkle -- -fork=1 -ignore_crashes=1"),
            Ok(Options {
                target: Some("merkle".into()),
                seconds: 5,
                libfuzzer_args: vec!["-fork=1".into(), "-ignore_crashes=1".into()],
            })
        );
    }

    #[test]
    fn rejects_bad_times_and_extra_words() {
        assert!(parsed("--time").is_err());
        assert!(parsed("--time 0").is_err());
        assert!(parsed("--time soon").is_err());
        assert!(parsed("entry export").is_err());
        assert!(parsed("--release").is_err());
    }

    #[test]
    fn reads_executions_from_final_stats_or_the_last_status_line() {
        let log = |lines: &[&str]| lines.iter().map(|line| (*line).to_owned()).collect::<Vec<_>>();
        let normal = log(&[
            "#4096\tpulse  cov: 398 ft: 990 corp: 120/12766b exec/s: 2048 rss: 42Mb",
            "#812345\tDONE   cov: 512 ft: 1404 corp: 200/20Kb exec/s: 6769 rss: 60Mb",
            "Done 812345 runs in 120 second(s)",
            "stat::number_of_executed_units: 812345",
            "stat::average_exec_per_sec:     6769",
        ]);
        assert_eq!(executions(&normal), Some(812_345));
        assert_eq!(final_stat(&normal, "average_exec_per_sec"), Some(6769));
        let fork = log(&["#1000: cov: 10 ft: 20 corp: 5 exec/s: 100", "#25000: cov: 40 ft: 90 corp: 9 exec/s: 200"]);
        assert_eq!(executions(&fork), Some(25_000));
        assert_eq!(final_stat(&fork, "average_exec_per_sec"), None);
        assert_eq!(executions(&log(&["error: could not compile `pdc-ledger`"])), None);
    }

    #[test]
    fn finds_the_crash_inputs_libfuzzer_saved() {
        let log = vec![
            "==1== ERROR: libFuzzer: deadly signal".to_owned(),
            "artifact_prefix='/w/fuzz/artifacts/merkle/'; Test unit written to /w/fuzz/artifacts/merkle/crash-ab12"
                .to_owned(),
        ];
        assert_eq!(artifacts(&log), ["/w/fuzz/artifacts/merkle/crash-ab12"]);
        // cargo-fuzz's own report, once per crash in fork mode, is preferred and deduplicated.
        let fork: Vec<String> = ["Failing input:", "", "\tfuzz/artifacts/merkle/crash-1", "", "Failing input:", ""]
            .into_iter()
            .chain(["\tfuzz/artifacts/merkle/crash-2", "Failing input:", "", "\tfuzz/artifacts/merkle/crash-1"])
            .map(str::to_owned)
            .collect();
        assert_eq!(artifacts(&fork), ["fuzz/artifacts/merkle/crash-1", "fuzz/artifacts/merkle/crash-2"]);
    }

    #[test]
    fn lists_the_fuzz_targets_of_the_repository() {
        let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        assert_eq!(targets(&fuzz_dir).unwrap(), ["checkpoint", "entry", "export", "merkle"]);
    }
}
