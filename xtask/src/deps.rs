//! The dependency-direction check: fails when a workspace crate gains a dependency that DESIGN.md §2 forbids.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::shell::Shell;

/// What one workspace package may depend on.
#[derive(Debug, Clone, Copy)]
pub enum Rule {
    /// None of these crates may be among the package's transitive normal dependencies.
    Forbid(&'static [&'static str]),
    /// Every direct normal dependency must be one of these crates; what they bring in is theirs to choose.
    DirectOnly(&'static [&'static str]),
    /// A leaf of the workspace: no workspace package depends on it (with any kind of dependency), and of the
    /// workspace's own packages it depends directly only on these (external crates are its own business).
    Leaf(&'static [&'static str]),
}

/// The "must not depend on" column of DESIGN.md §2, by package name. Keep the two in step.
pub const RULES: &[(&str, Rule)] = &[
    ("pdc-coordinator", Rule::Forbid(&["pdc-client"])),
    ("pdc-client", Rule::Forbid(&["pdc-coordinator"])),
    ("pdc-models", Rule::Forbid(&["tokio", "tonic", "rocksdb"])),
    ("pdc-privacy", Rule::Forbid(&["tokio", "tonic", "rocksdb", "burn"])),
    ("pdc-ledger", Rule::Forbid(&["tokio", "tonic", "burn"])),
    ("pdc-proto", Rule::DirectOnly(&["prost", "tonic", "tonic-prost"])),
    ("pdc-robustness", Rule::Leaf(&["pdc-coordinator", "pdc-client", "pdc-models", "pdc-privacy"])),
];

/// Runs `cargo metadata`, checks [`RULES`] against the resolved graph and prints every violation.
///
/// Then checks the source-level invariants ([`crate::invariants`]). Returns whether the workspace keeps to both.
pub fn check(shell: &Shell) -> Result<bool> {
    eprintln!("xtask: checking dependency directions (DESIGN.md §2)");
    // Without `--no-deps`: only the full metadata carries the resolved graph. It is filtered to the host, the
    // platform the system is built for: unfiltered, dependencies of other targets count too, and tokio reaches
    // pdc-models through a chain that exists only on emscripten.
    let host = host_triple()?;
    let output = shell
        .cargo(&["metadata", "--format-version", "1", "--filter-platform", &host])
        .output()
        .context("could not start `cargo metadata`")?;
    if !output.status.success() {
        bail!("`cargo metadata` failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    let metadata: Value = serde_json::from_slice(&output.stdout).context("`cargo metadata` printed invalid JSON")?;
    let graph = Graph::from_metadata(&metadata)?;
    let violations = graph.violations(RULES)?;
    for violation in &violations {
        eprintln!("xtask: dependency-direction violation: {violation}");
    }
    if violations.is_empty() {
        eprintln!("xtask: dependency directions ok ({} rules)", RULES.len());
    } else {
        eprintln!("xtask: {} dependency-direction violation(s); see DESIGN.md §2", violations.len());
    }
    // The finer, source-level invariants of ARCHITECTURE.md (a file, not a crate, is their unit).
    let sources_ok = crate::invariants::check(shell.root())?;
    Ok(violations.is_empty() && sources_ok)
}

/// The target triple rustc builds for by default, from `rustc -vV`.
fn host_triple() -> Result<String> {
    let output = Command::new("rustc").arg("-vV").output().context("could not start `rustc -vV`")?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.lines().find_map(|line| line.strip_prefix("host: ")) {
        Some(host) if output.status.success() => Ok(host.trim().to_owned()),
        _ => bail!("`rustc -vV` did not name the host triple:\n{text}"),
    }
}

/// A dependency that breaks a rule, with the chain of packages that brings it in.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    /// The workspace package the rule is about.
    pub package: String,
    /// Package names from `package` to the offending crate, both included.
    pub path: Vec<String>,
    /// The rule's wording, for the message.
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.package, self.reason, self.path.join(" -> "))
    }
}

/// The resolved package graph, keyed by cargo's package ids.
#[derive(Debug, Default)]
pub struct Graph {
    members: Vec<String>,
    names: HashMap<String, String>,
    /// Each package's dependencies, as (package id, whether it is a normal dependency), in cargo's order.
    edges: HashMap<String, Vec<(String, bool)>>,
}

impl Graph {
    /// Reads the graph from the JSON that `cargo metadata --format-version 1` prints.
    pub fn from_metadata(metadata: &Value) -> Result<Self> {
        let mut graph = Graph::default();
        for package in array(metadata, "packages")? {
            graph.names.insert(string(package, "id")?, string(package, "name")?);
        }
        for member in array(metadata, "workspace_members")? {
            graph.members.push(member.as_str().context("a workspace member is not a string")?.to_owned());
        }
        let resolve =
            metadata.get("resolve").filter(|resolve| !resolve.is_null()).context("metadata has no resolve")?;
        for node in array(resolve, "nodes")? {
            let mut deps = Vec::new();
            for dep in array(node, "deps")? {
                // A dependency can be normal and dev at once; a null kind is cargo's word for normal.
                let normal = array(dep, "dep_kinds")?.iter().any(|kind| kind.get("kind").is_some_and(Value::is_null));
                deps.push((string(dep, "pkg")?, normal));
            }
            graph.edges.insert(string(node, "id")?, deps);
        }
        Ok(graph)
    }

    /// Every violation of `rules`, in the order of the rules and then by offending crate.
    ///
    /// A rule about a package missing from the workspace is an error, so that a rename cannot quietly switch the
    /// check off.
    pub fn violations(&self, rules: &[(&str, Rule)]) -> Result<Vec<Violation>> {
        let mut violations = Vec::new();
        for &(package, rule) in rules {
            let Some(root) = self.members.iter().find(|id| self.name(id) == package) else {
                bail!("the dependency rules name {package}, which is not a workspace member");
            };
            match rule {
                Rule::Forbid(forbidden) => {
                    let parents = self.normal_closure(root);
                    let mut reached: Vec<&String> = parents.keys().copied().filter(|id| *id != root).collect();
                    reached.sort_by_key(|id| (self.name(id), *id));
                    let mut reported = HashSet::new();
                    for id in reached {
                        let name = self.name(id);
                        // Two versions of one forbidden crate make one violation: the rule is about the crate.
                        if forbidden.contains(&name) && reported.insert(name) {
                            violations.push(Violation {
                                package: package.to_owned(),
                                path: self.path(&parents, id),
                                reason: format!("must not depend on {name}"),
                            });
                        }
                    }
                }
                Rule::DirectOnly(allowed) => {
                    for (id, _) in self.deps(root).iter().filter(|(_, normal)| *normal) {
                        let name = self.name(id);
                        if !allowed.contains(&name) {
                            violations.push(Violation {
                                package: package.to_owned(),
                                path: vec![package.to_owned(), name.to_owned()],
                                reason: format!("may depend directly only on {}", allowed.join(", ")),
                            });
                        }
                    }
                }
                Rule::Leaf(allowed) => {
                    for (id, _) in self.deps(root) {
                        let name = self.name(id);
                        if self.is_member(id) && !allowed.contains(&name) {
                            violations.push(Violation {
                                package: package.to_owned(),
                                path: vec![package.to_owned(), name.to_owned()],
                                reason: format!("may depend directly only on {} of the workspace", allowed.join(", ")),
                            });
                        }
                    }
                    let mut dependents: Vec<&String> = self
                        .members
                        .iter()
                        .filter(|member| self.deps(member).iter().any(|(id, _)| id == root))
                        .collect();
                    dependents.sort_by_key(|id| self.name(id));
                    for dependent in dependents {
                        violations.push(Violation {
                            package: package.to_owned(),
                            path: vec![self.name(dependent).to_owned(), package.to_owned()],
                            reason: "must have no dependents in the workspace".to_owned(),
                        });
                    }
                }
            }
        }
        Ok(violations)
    }

    fn is_member(&self, id: &str) -> bool {
        self.members.iter().any(|member| member == id)
    }

    /// Every package reachable from `root` through normal dependencies, each with the package it was first reached
    /// from. The walk is breadth-first, so following the parents back gives a shortest path.
    fn normal_closure<'a>(&'a self, root: &'a str) -> HashMap<&'a String, Option<&'a String>> {
        let mut parents: HashMap<&String, Option<&String>> = HashMap::new();
        let Some(root) = self.edges.get_key_value(root).map(|(id, _)| id) else {
            return parents;
        };
        parents.insert(root, None);
        let mut queue = VecDeque::from([root]);
        while let Some(id) = queue.pop_front() {
            for (dep, normal) in self.deps(id) {
                if *normal && !parents.contains_key(dep) {
                    parents.insert(dep, Some(id));
                    queue.push_back(dep);
                }
            }
        }
        parents
    }

    /// Package names from the walk's root to `id`.
    fn path(&self, parents: &HashMap<&String, Option<&String>>, id: &String) -> Vec<String> {
        let mut path = vec![self.name(id).to_owned()];
        let mut current = id;
        while let Some(Some(parent)) = parents.get(current) {
            path.push(self.name(parent).to_owned());
            current = parent;
        }
        path.reverse();
        path
    }

    fn deps(&self, id: &str) -> &[(String, bool)] {
        self.edges.get(id).map_or(&[], Vec::as_slice)
    }

    fn name<'a>(&'a self, id: &'a str) -> &'a str {
        self.names.get(id).map_or(id, String::as_str)
    }
}

fn array<'a>(value: &'a Value, key: &str) -> Result<&'a Vec<Value>> {
    value.get(key).and_then(Value::as_array).with_context(|| format!("metadata: `{key}` is not an array"))
}

fn string(value: &Value, key: &str) -> Result<String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("metadata: `{key}` is not a string"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Builds metadata JSON for a graph whose package ids are `name@0`; each edge is (from, to, dependency kind).
    fn metadata(members: &[&str], edges: &[(&str, &str, Option<&str>)]) -> Value {
        let mut names: Vec<&str> = members.to_vec();
        names.extend(edges.iter().flat_map(|(from, to, _)| [*from, *to]));
        names.sort_unstable();
        names.dedup();
        let id = |name: &str| format!("{name}@0");
        let nodes: Vec<Value> = names
            .iter()
            .map(|name| {
                let deps: Vec<Value> = edges
                    .iter()
                    .filter(|(from, _, _)| from == name)
                    .map(|(_, to, kind)| json!({ "name": to, "pkg": id(to), "dep_kinds": [{ "kind": kind, "target": null }] }))
                    .collect();
                json!({ "id": id(name), "deps": deps })
            })
            .collect();
        json!({
            "packages": names.iter().map(|name| json!({ "id": id(name), "name": name })).collect::<Vec<_>>(),
            "workspace_members": members.iter().map(|name| id(name)).collect::<Vec<_>>(),
            "resolve": { "nodes": nodes, "root": null },
        })
    }

    fn violations(members: &[&str], edges: &[(&str, &str, Option<&str>)], rules: &[(&str, Rule)]) -> Vec<String> {
        let graph = Graph::from_metadata(&metadata(members, edges)).unwrap();
        graph.violations(rules).unwrap().iter().map(ToString::to_string).collect()
    }

    const MODELS_RULE: &[(&str, Rule)] = &[("pdc-models", Rule::Forbid(&["tokio", "tonic"]))];

    #[test]
    fn a_transitive_violation_is_found_with_its_path() {
        let edges = [("pdc-models", "burn", None), ("burn", "foo", None), ("foo", "tokio", None)];
        assert_eq!(
            violations(&["pdc-models"], &edges, MODELS_RULE),
            ["pdc-models must not depend on tokio: pdc-models -> burn -> foo -> tokio"]
        );
    }

    #[test]
    fn the_shortest_path_is_reported_once_per_crate() {
        let edges = [
            ("pdc-models", "a", None),
            ("a", "b", None),
            ("b", "tokio", None),
            ("pdc-models", "c", None),
            ("c", "tokio", None),
            ("tokio", "tonic", None),
        ];
        assert_eq!(
            violations(&["pdc-models"], &edges, MODELS_RULE),
            [
                "pdc-models must not depend on tokio: pdc-models -> c -> tokio",
                "pdc-models must not depend on tonic: pdc-models -> c -> tokio -> tonic",
            ]
        );
    }

    #[test]
    fn dev_and_build_dependencies_are_ignored_all_the_way_down() {
        let edges = [
            ("pdc-models", "tokio", Some("dev")),
            ("pdc-models", "protox", Some("build")),
            ("protox", "tonic", None),
            ("pdc-models", "burn", None),
            ("burn", "tonic", Some("dev")),
        ];
        assert!(violations(&["pdc-models"], &edges, MODELS_RULE).is_empty());
    }

    #[test]
    fn a_dependency_that_is_both_dev_and_normal_counts_as_normal() {
        let mut metadata = metadata(&["pdc-models"], &[("pdc-models", "tokio", Some("dev"))]);
        metadata["resolve"]["nodes"][0]["deps"][0]["dep_kinds"] =
            json!([{ "kind": "dev", "target": null }, { "kind": null, "target": "cfg(unix)" }]);
        let graph = Graph::from_metadata(&metadata).unwrap();
        let found = graph.violations(MODELS_RULE).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, ["pdc-models", "tokio"]);
    }

    #[test]
    fn direct_only_allows_the_listed_crates_and_what_they_bring() {
        let rules = &[("pdc-proto", Rule::DirectOnly(&["prost", "tonic"]))];
        let edges = [
            ("pdc-proto", "prost", None),
            ("pdc-proto", "tonic", None),
            ("tonic", "tokio", None),
            ("pdc-proto", "protox", Some("build")),
            ("pdc-proto", "pdc-ledger", None),
        ];
        assert_eq!(
            violations(&["pdc-proto", "pdc-ledger"], &edges, rules),
            ["pdc-proto may depend directly only on prost, tonic: pdc-proto -> pdc-ledger"]
        );
    }

    #[test]
    fn a_leaf_has_no_dependents_and_only_the_listed_workspace_dependencies() {
        let rules = &[("pdc-robustness", Rule::Leaf(&["pdc-client"]))];
        let members = ["pdc-robustness", "pdc-client", "pdc-ledger", "pdc"];
        let allowed = [
            ("pdc-robustness", "pdc-client", None),
            ("pdc-robustness", "anyhow", None),
            ("pdc-client", "pdc-ledger", None),
        ];
        assert!(violations(&members, &allowed, rules).is_empty());
        let edges = [
            ("pdc-robustness", "pdc-client", None),
            ("pdc-robustness", "pdc-ledger", None),
            ("pdc", "pdc-robustness", Some("dev")),
        ];
        assert_eq!(
            violations(&members, &edges, rules),
            [
                "pdc-robustness may depend directly only on pdc-client of the workspace: pdc-robustness -> pdc-ledger",
                "pdc-robustness must have no dependents in the workspace: pdc -> pdc-robustness",
            ]
        );
    }

    #[test]
    fn a_rule_about_a_missing_package_is_an_error() {
        let graph = Graph::from_metadata(&metadata(&["pdc-ledger"], &[])).unwrap();
        let error = graph.violations(MODELS_RULE).unwrap_err();
        assert!(error.to_string().contains("pdc-models"), "{error}");
    }

    #[test]
    fn the_rules_name_each_package_once() {
        let mut packages: Vec<&str> = RULES.iter().map(|(package, _)| *package).collect();
        packages.sort_unstable();
        packages.dedup();
        assert_eq!(packages.len(), RULES.len());
    }
}
