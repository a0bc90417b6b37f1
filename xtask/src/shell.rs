//! Running cargo and other programs for the tasks: one place that picks the build cache and reports each step.

use std::cell::Cell;
use std::env;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where the tasks run their commands, and the build cache they give to cargo.
pub struct Shell {
    root: PathBuf,
    /// `Some` only when the caller left `CARGO_TARGET_DIR` unset and we chose the cache for them.
    chosen_target_dir: Option<PathBuf>,
    announced: Cell<bool>,
}

impl Shell {
    /// Finds the workspace root and decides on the build cache; prints nothing yet.
    pub fn new() -> Result<Self> {
        let root = workspace_root()?;
        // A cache inside the clone would be thrown away with it, and a cold build of RocksDB and burn does not fit
        // CI's time budget on two cores; so, unless told otherwise, builds share one cache in the home directory.
        let chosen_target_dir = match env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => None,
            _ => match env::var_os("HOME") {
                Some(home) if !home.is_empty() => Some(PathBuf::from(home).join(".cache/pdc-target")),
                _ => {
                    eprintln!("xtask: CARGO_TARGET_DIR and HOME are unset; cargo will build into the clone");
                    None
                }
            },
        };
        Ok(Self { root, chosen_target_dir, announced: Cell::new(false) })
    }

    /// The workspace root, where every command runs.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A `cargo` command with the given arguments, run from the workspace root with the chosen build cache.
    pub fn cargo<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut command = Command::new("cargo");
        command.args(args).current_dir(&self.root);
        if let Some(dir) = &self.chosen_target_dir {
            if !self.announced.replace(true) {
                eprintln!("xtask: CARGO_TARGET_DIR is unset; using {} as the build cache", dir.display());
            }
            command.env("CARGO_TARGET_DIR", dir);
        }
        command
    }

    /// Runs a command with the terminal as its input and output, and says whether it succeeded.
    ///
    /// A command that cannot be started at all is an error rather than a failure, so the caller stops at once.
    pub fn run(&self, mut command: Command) -> Result<bool> {
        let line = describe(&command);
        eprintln!("xtask: $ {line}");
        let started = Instant::now();
        let status = command.status().with_context(|| format!("could not start `{line}`"))?;
        let took = format_duration(started.elapsed());
        if status.success() {
            eprintln!("xtask: ok ({took}): {line}");
        } else {
            eprintln!("xtask: FAILED ({status}, {took}): {line}");
        }
        Ok(status.success())
    }
}

/// Whether `program --version` runs and succeeds, with its output hidden.
pub fn answers_version(program: &str, leading_args: &[&str]) -> bool {
    Command::new(program)
        .args(leading_args)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The first file named `name` in a directory on `PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// A duration as people read it in a log: `42s` or `3m05s`.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if seconds < 60 { format!("{seconds}s") } else { format!("{}m{:02}s", seconds / 60, seconds % 60) }
}

/// The command as a shell line, with the environment variables it sets, so that a failed step can be rerun by hand.
/// The build cache is left out: it is announced once, and repeating it on every line would hide the commands.
fn describe(command: &Command) -> String {
    let mut words: Vec<String> = command
        .get_envs()
        .filter(|(key, _)| *key != "CARGO_TARGET_DIR")
        .filter_map(|(key, value)| Some(format!("{}={}", key.to_string_lossy(), quote(&value?.to_string_lossy()))))
        .collect();
    words.push(command.get_program().to_string_lossy().into_owned());
    words.extend(command.get_args().map(|arg| quote(&arg.to_string_lossy())));
    words.join(" ")
}

/// Quotes a word for a POSIX shell when it holds anything but plainly safe characters.
fn quote(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain { word.to_owned() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

/// The workspace root: the parent of xtask's manifest directory.
///
/// Cargo sets `CARGO_MANIFEST_DIR` when it runs the binary, which stays right if the clone has moved since xtask was
/// built; the path baked in at compile time is the fallback for a binary started by hand.
fn workspace_root() -> Result<PathBuf> {
    let manifest_dir =
        env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let Some(root) = manifest_dir.parent() else {
        bail!("xtask's manifest directory {} has no parent", manifest_dir.display());
    };
    if !root.join("Cargo.toml").is_file() {
        bail!("no Cargo.toml in {}, where the workspace root should be", root.display());
    }
    Ok(root.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_shows_set_variables_and_quotes_odd_words() {
        let mut command = Command::new("cargo");
        command.args(["doc", "--no-deps", "it's"]).env("RUSTDOCFLAGS", "-D warnings").env("CARGO_TARGET_DIR", "/x");
        assert_eq!(describe(&command), r"RUSTDOCFLAGS='-D warnings' cargo doc --no-deps 'it'\''s'");
    }

    #[test]
    fn durations_read_as_minutes_and_seconds() {
        assert_eq!(format_duration(Duration::from_millis(42_900)), "42s");
        assert_eq!(format_duration(Duration::from_secs(185)), "3m05s");
    }
}
