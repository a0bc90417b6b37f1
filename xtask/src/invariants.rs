//! The source-level architecture invariants of ARCHITECTURE.md: which names may appear in which files.
//!
//! `deps.rs` checks what crates depend on; some invariants are finer than a crate: RocksDB stays behind the stores
//! inside `pdc-ledger` and `pdc-coordinator`, protobuf types stop at the gRPC edges, and the coordinator's pure
//! cores neither do I/O nor read a clock. Each is a list of forbidden spellings, the files it covers, and the files
//! allowed to use them. Only production code is read: a file's `#[cfg(test)]` module and comment lines are skipped,
//! so tests and docs may name anything.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One invariant: none of `forbidden` may appear in the production code of the files under `scope`, except in
/// `allowed`.
#[derive(Debug, Clone, Copy)]
pub struct Invariant {
    /// The invariant's wording, as ARCHITECTURE.md states it.
    pub name: &'static str,
    /// Substrings that break it.
    pub forbidden: &'static [&'static str],
    /// Files or folders (relative to the workspace root) whose `.rs` files it covers.
    pub scope: &'static [&'static str],
    /// Files within the scope that may use the forbidden names.
    pub allowed: &'static [&'static str],
}

/// The invariants, each matching an "Architecture Invariant" line of ARCHITECTURE.md.
pub const INVARIANTS: &[Invariant] = &[
    Invariant {
        name: "RocksDB stays behind the stores (pdc_ledger::store and the coordinator's StateStore)",
        forbidden: &["rocksdb::", "use rocksdb", "extern crate rocksdb"],
        scope: &[
            "coordinator/src",
            "client/src",
            "ledger/src",
            "models/src",
            "privacy/src",
            "proto/src",
            "robustness/src",
            "src",
        ],
        allowed: &["ledger/src/store.rs", "coordinator/src/recovery.rs"],
    },
    Invariant {
        name: "protobuf types (pb::) appear only at the gRPC edges",
        forbidden: &["pb::"],
        scope: &["coordinator/src", "client/src", "ledger/src", "models/src", "privacy/src", "robustness/src"],
        allowed: &[
            "coordinator/src/server.rs",
            "coordinator/src/audit_server.rs",
            "coordinator/src/ledger.rs",
            "client/src/agent.rs",
        ],
    },
    Invariant {
        name: "the coordinator's pure cores do no I/O and read no clock",
        forbidden: &[
            "std::fs",
            "std::net",
            "tokio",
            "tonic",
            "File::open",
            "File::create",
            "SystemTime::now",
            "Instant::now",
            "rocksdb",
        ],
        scope: &[
            "coordinator/src/round.rs",
            "coordinator/src/aggregation",
            "coordinator/src/valuation.rs",
            "coordinator/src/manifest.rs",
            "coordinator/src/pipeline.rs",
            "coordinator/src/statistics.rs",
            "coordinator/src/consent.rs",
            "coordinator/src/access.rs",
        ],
        allowed: &[],
    },
];

/// A forbidden name found in a file's production code.
#[derive(Debug, PartialEq, Eq)]
pub struct Breach {
    /// The invariant broken.
    pub invariant: &'static str,
    /// The file, relative to the workspace root.
    pub file: String,
    /// The line, from 1.
    pub line: usize,
    /// The forbidden name found.
    pub found: &'static str,
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: `{}` breaks \"{}\"", self.file, self.line, self.found, self.invariant)
    }
}

/// Checks every invariant against the sources under `root`; prints each breach and returns whether there were none.
pub fn check(root: &Path) -> Result<bool> {
    let breaches = breaches(root, INVARIANTS)?;
    for breach in &breaches {
        eprintln!("xtask: architecture invariant broken: {breach}");
    }
    if breaches.is_empty() {
        eprintln!("xtask: architecture invariants ok ({} rules)", INVARIANTS.len());
    }
    Ok(breaches.is_empty())
}

/// Every breach of `invariants` in the sources under `root`, in file and line order.
pub fn breaches(root: &Path, invariants: &[Invariant]) -> Result<Vec<Breach>> {
    let mut found = Vec::new();
    for invariant in invariants {
        for file in rust_files(root, invariant.scope)? {
            let relative = file.strip_prefix(root).unwrap_or(&file).to_string_lossy().replace('\\', "/");
            if invariant.allowed.contains(&relative.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            for (line, name) in production_hits(&text, invariant.forbidden) {
                found.push(Breach { invariant: invariant.name, file: relative.clone(), line, found: name });
            }
        }
    }
    found.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    Ok(found)
}

/// The `.rs` files under each of `scope` (a file or a folder, searched recursively), sorted; missing ones skipped.
fn rust_files(root: &Path, scope: &[&str]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending: Vec<PathBuf> = scope.iter().map(|entry| root.join(entry)).collect();
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).with_context(|| format!("listing {}", path.display()))? {
                pending.push(entry?.path());
            }
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Each (line number, name) where one of `forbidden` appears in `text` before its test module, outside comments.
fn production_hits(text: &str, forbidden: &[&'static str]) -> Vec<(usize, &'static str)> {
    let mut hits = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((index, line)) = lines.next() {
        let trimmed = line.trim_start();
        // The unit tests sit in a `#[cfg(test)]` module at the end of the file, by house style.
        if trimmed.starts_with("#[cfg(test)]")
            && lines.peek().is_some_and(|(_, next)| next.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        // A trailing comment may name anything too.
        let code = line.split("//").next().unwrap_or(line);
        if let Some(&name) = forbidden.iter().find(|name| code.contains(*name)) {
            hits.push((index + 1, name));
        }
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_modules_and_comments_may_name_anything() {
        let text = "//! Talks about std::fs.\nuse std::fs; // really\nfn f() {}\n/// tokio here\n#[cfg(test)]\nmod tests {\n    use tokio;\n}\n";
        assert_eq!(production_hits(text, &["std::fs", "tokio"]), [(2, "std::fs")]);
    }

    #[test]
    fn a_trailing_comment_is_not_code() {
        assert!(production_hits("let x = 1; // std::fs::read is not used\n", &["std::fs"]).is_empty());
    }

    #[test]
    fn a_breach_names_the_file_line_and_invariant() {
        let dir = std::env::temp_dir().join(format!("xtask-invariants-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("core")).unwrap();
        std::fs::write(dir.join("core/pure.rs"), "fn f() {\n    let _ = std::time::Instant::now();\n}\n").unwrap();
        std::fs::write(dir.join("core/edge.rs"), "fn g() { std::time::Instant::now(); }\n").unwrap();
        let invariant =
            Invariant { name: "no clock", forbidden: &["Instant::now"], scope: &["core"], allowed: &["core/edge.rs"] };
        let found = breaches(&dir, &[invariant]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            found,
            [Breach { invariant: "no clock", file: "core/pure.rs".into(), line: 2, found: "Instant::now" }]
        );
        assert_eq!(found[0].to_string(), "core/pure.rs:2: `Instant::now` breaks \"no clock\"");
    }

    /// The workspace itself keeps every invariant: this runs in `cargo xtask test` as well as in `cargo xtask deps`.
    #[test]
    fn the_workspace_keeps_its_architecture_invariants() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace root");
        let found = breaches(root, INVARIANTS).unwrap();
        let listed: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert!(found.is_empty(), "{}", listed.join("\n"));
        // The scopes name real places: a renamed folder must not silently empty a rule.
        for invariant in INVARIANTS {
            for entry in invariant.scope.iter().chain(invariant.allowed) {
                assert!(root.join(entry).exists(), "{entry} of \"{}\" does not exist", invariant.name);
            }
        }
    }
}
