//! The pages: for each, a serialisable view built from a [`Snapshot`] (which is also the page's JSON twin) and
//! its HTML, rendered with maud, which escapes every value. No page carries a script or an inline style.

use maud::{DOCTYPE, Markup, html};
use pdc_ledger::audit::{self, Failure};
use pdc_ledger::checkpoint::key_hash;
use pdc_ledger::merkle;
use serde::Serialize;

use crate::model::{
    self, ConsentRow, EntryQuery, Field, FieldKind, HospitalView, PrivacyView, StudyRewards, StudySummary, StudyView,
};
use crate::source::{Snapshot, Verdict};
use crate::svg::{self, Reference, Series, short_number};
use crate::time::{age, utc};

/// How many entries the explorer lists per page.
pub const ENTRIES_PER_PAGE: usize = 100;

/// What every page shares: where its data came from and whether it refreshes itself.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The source in words.
    pub source: String,
    /// Seconds between refreshes for a live source; `None` for a fixed one.
    pub refresh_seconds: Option<u64>,
    /// Now, Unix milliseconds.
    pub now_ms: u64,
}

/// The ledger head: size, root, the latest checkpoint's signatures, the witnesses, and the audit's verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeadView {
    /// The source in words.
    pub source: String,
    /// The log's origin, as the ledger names it.
    pub origin: String,
    /// The log's key name.
    pub log_key_name: String,
    /// The log key the ledger names for itself, hex.
    pub log_key_named: String,
    /// The log key the auditor pinned, hex.
    pub log_key_pinned: Option<String>,
    /// The number of entries.
    pub size: u64,
    /// The root re-derived from the entries, hex.
    pub root: String,
    /// Entries that do not decode (or cannot be read).
    pub undecodable_entries: Vec<u64>,
    /// The latest checkpoint.
    pub checkpoint: Option<CheckpointView>,
    /// The witnesses: those pinned, then those only the ledger names.
    pub witnesses: Vec<WitnessView>,
    /// Whether the latest checkpoint has its quorum of pinned witnesses.
    pub quorum: QuorumView,
    /// The audit of the whole ledger.
    pub verdict: VerdictView,
}

/// A checkpoint as the head page shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckpointView {
    /// Its tree size.
    pub size: u64,
    /// The root it states, hex.
    pub root: String,
    /// When it was made, Unix milliseconds.
    pub timestamp_ms: u64,
    /// The same, as a UTC date.
    pub made: String,
    /// How long ago.
    pub age: String,
    /// The log's signature line.
    pub log_signature: Option<SignatureView>,
    /// Entries after it, which no checkpoint vouches for yet.
    pub unsealed_entries: u64,
}

/// A signature line and whether it verifies.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SignatureView {
    /// The signer's key name.
    pub name: String,
    /// The key hash the line claims, hex.
    pub key_hash: String,
    /// The Ed25519 signature, hex.
    pub signature: String,
    /// Whether it verifies over the checkpoint's body.
    pub valid: bool,
    /// `pinned key` or `key the ledger names`.
    pub checked_against: String,
}

/// A witness and its latest valid co-signature.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WitnessView {
    /// Its key name.
    pub name: String,
    /// Its key, hex.
    pub key: String,
    /// Whether the auditor pinned it (only pinned witnesses count towards the quorum).
    pub pinned: bool,
    /// Whether it co-signed the latest checkpoint, validly.
    pub cosigned_latest: bool,
    /// Its Ed25519 co-signature on the last checkpoint it co-signed validly, hex.
    pub signature: Option<String>,
    /// The size of the latest checkpoint it co-signed validly.
    pub last_cosigned_size: Option<u64>,
    /// That checkpoint's time, Unix milliseconds.
    pub last_cosigned_ms: Option<u64>,
    /// How long ago.
    pub age: Option<String>,
}

/// The quorum of the latest checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QuorumView {
    /// Co-signatures required (the auditor's `--quorum`).
    pub required: usize,
    /// Valid co-signatures by pinned witnesses on the latest checkpoint.
    pub cosigned: usize,
    /// Whether `cosigned >= required` (and there is a checkpoint).
    pub met: bool,
}

/// The audit's verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VerdictView {
    /// `PASS`, `FAIL`, `NO SEALED CHECKPOINT`, `UNSEALED TAIL` (as `pdc audit verify` concludes) or
    /// `UNAVAILABLE` (no pinned log key).
    pub status: String,
    /// Why there is no verdict.
    pub reason: Option<String>,
    /// Checkpoints the audit checked.
    pub checkpoints_checked: Option<usize>,
    /// The size of the last checkpoint sealed under the trust policy (log signature, root, witness quorum).
    pub sealed_size: Option<u64>,
    /// The entries no sealed checkpoint covers, as `[first, end)`; `None` when there are none.
    pub unsealed: Option<[u64; 2]>,
    /// The failures, each with its rule, entries and checkpoints.
    pub failures: Vec<Failure>,
}

/// Builds the head page's view.
pub fn head(snapshot: &Snapshot, now_ms: u64) -> HeadView {
    let claimed = &snapshot.claimed;
    let (log_key, checked_against) = match snapshot.policy.log_key {
        Some(key) => (key, "pinned key"),
        None => (claimed.log_key, "key the ledger names"),
    };
    let latest = snapshot.latest_checkpoint();
    let checkpoint = latest.map(|signed| {
        let c = &signed.checkpoint;
        let expected = key_hash(&claimed.log_key_name, &log_key);
        let log_signature = signed
            .signatures
            .iter()
            .find(|s| s.name == claimed.log_key_name && s.key_hash == expected)
            .or_else(|| signed.signatures.iter().find(|s| s.name == claimed.log_key_name))
            .map(|s| SignatureView {
                name: s.name.clone(),
                key_hash: hex::encode(s.key_hash),
                signature: hex::encode(s.signature),
                valid: signed.verify(&claimed.log_key_name, &log_key).is_ok(),
                checked_against: checked_against.into(),
            });
        CheckpointView {
            size: c.size,
            root: hex::encode(c.root),
            timestamp_ms: c.timestamp_ms,
            made: utc(c.timestamp_ms),
            age: age(c.timestamp_ms, now_ms),
            log_signature,
            unsealed_entries: snapshot.tree.len().saturating_sub(c.size),
        }
    });
    let mut witnesses: Vec<WitnessView> = Vec::new();
    let pinned = snapshot.policy.witnesses.iter().map(|w| (w, true));
    let named = claimed.witnesses.iter().filter(|w| !snapshot.policy.witnesses.contains(w)).map(|w| (w, false));
    for ((name, key), is_pinned) in pinned.chain(named) {
        let last = snapshot
            .checkpoints
            .iter()
            .rev()
            .filter_map(|c| c.parsed.as_ref().ok())
            .find(|signed| signed.verify(name, key).is_ok());
        witnesses.push(WitnessView {
            name: name.clone(),
            key: hex::encode(key.to_bytes()),
            pinned: is_pinned,
            cosigned_latest: latest.is_some_and(|l| l.verify(name, key).is_ok()),
            signature: last.and_then(|signed| {
                // The line that verified: the one with the witness's name and key hash whose signature checks.
                let expected = key_hash(name, key);
                let body = signed.checkpoint.body();
                signed
                    .signatures
                    .iter()
                    .filter(|s| s.name == *name && s.key_hash == expected)
                    .find(|s| key.verify(body.as_bytes(), &s.signature, name).is_ok())
                    .map(|s| hex::encode(s.signature))
            }),
            last_cosigned_size: last.map(|s| s.checkpoint.size),
            last_cosigned_ms: last.map(|s| s.checkpoint.timestamp_ms),
            age: last.map(|s| age(s.checkpoint.timestamp_ms, now_ms)),
        });
    }
    let required = snapshot.policy.quorum();
    let cosigned = witnesses.iter().filter(|w| w.pinned && w.cosigned_latest).count();
    let verdict = match &snapshot.verdict {
        Verdict::Unavailable { reason } => VerdictView {
            status: "UNAVAILABLE".into(),
            reason: Some(reason.clone()),
            checkpoints_checked: None,
            sealed_size: None,
            unsealed: None,
            failures: Vec::new(),
        },
        Verdict::Checked(report) => {
            let tail = report.unsealed_tail();
            VerdictView {
                status: match report.verdict() {
                    audit::Verdict::Pass => "PASS",
                    audit::Verdict::Fail => "FAIL",
                    audit::Verdict::NoSealedCheckpoint => "NO SEALED CHECKPOINT",
                    audit::Verdict::UnsealedTail => "UNSEALED TAIL",
                }
                .into(),
                reason: None,
                checkpoints_checked: Some(report.checkpoints),
                sealed_size: report.sealed.map(|sealed| sealed.size),
                unsealed: (!tail.is_empty()).then_some([tail.start, tail.end]),
                failures: report.failures.clone(),
            }
        }
    };
    HeadView {
        source: snapshot.source.clone(),
        origin: claimed.origin.clone(),
        log_key_name: claimed.log_key_name.clone(),
        log_key_named: hex::encode(claimed.log_key.to_bytes()),
        log_key_pinned: snapshot.policy.log_key.map(|k| hex::encode(k.to_bytes())),
        size: snapshot.tree.len(),
        root: hex::encode(snapshot.tree.root()),
        undecodable_entries: (0u64..)
            .zip(&snapshot.entries)
            .filter(|(_, e)| e.decoded.is_err())
            .map(|(i, _)| i)
            .collect(),
        checkpoint,
        witnesses,
        quorum: QuorumView { required, cosigned, met: latest.is_some() && cosigned >= required },
        verdict,
    }
}

/// Renders the head page.
pub fn head_html(frame: &Frame, view: &HeadView) -> Markup {
    page(
        frame,
        "Ledger head",
        "/",
        html! {
            h1 { "Ledger head" }
            section class={ "verdict " (verdict_class(&view.verdict.status)) } {
                h2 { "Verdict: " (view.verdict.status) }
                @if let Some(reason) = &view.verdict.reason {
                    p { "No verdict: " (reason) ". Pass " code { "--log-key HEX" } ", the log's key obtained independently." }
                }
                @if let Some(checked) = view.verdict.checkpoints_checked {
                    p { "The whole ledger was audited as " code { "pdc audit verify" } " does: " (view.size) " entries, "
                        (checked) " checkpoints, under the pinned log key and witnesses." }
                }
                @if let Some([first, end]) = view.verdict.unsealed {
                    p { "Entries " a href={ "/entries/" (first) } { (first) } " to " (end - 1) " are not covered by a checkpoint "
                        "sealed under the pinned keys and witness quorum"
                        @if let Some(size) = view.verdict.sealed_size { " (the last sealed one has size " (size) ")" }
                        ": nothing vouches for them but the party that shows them." }
                }
                @if !view.verdict.failures.is_empty() {
                    table {
                        thead { tr { th { "rule" } th { "entries" } th { "checkpoints" } th { "what is wrong" } } }
                        tbody {
                            @for failure in &view.verdict.failures {
                                tr {
                                    td { code { (failure.rule.code()) } }
                                    td { @for (i, entry) in failure.entries.iter().enumerate() {
                                        @if i > 0 { ", " } a href={ "/entries/" (entry) } { (entry) } } }
                                    td { (join(&failure.checkpoints)) }
                                    td { (failure.message) }
                                }
                            }
                        }
                    }
                }
            }
            table class="facts" {
                tr { th { "source" } td { (view.source) } }
                tr { th { "origin" } td { code { (view.origin) } } }
                tr { th { "size" } td { (view.size) " entries" } }
                tr { th { "root (re-derived)" } td { code { (view.root) } } }
                tr { th { "log key" } td { code { (view.log_key_name) } " " code { (view.log_key_named) }
                    @match &view.log_key_pinned {
                        Some(pinned) if *pinned == view.log_key_named => " (pinned)",
                        Some(_) => " — NOT the pinned key",
                        None => " (named by the ledger, not pinned)",
                    } } }
                @if !view.undecodable_entries.is_empty() {
                    tr { th { "undecodable entries" } td { @for entry in &view.undecodable_entries {
                        a href={ "/entries/" (entry) } { (entry) } " " } } }
                }
            }
            h2 { "Latest checkpoint" }
            @match &view.checkpoint {
                None => p { "No checkpoint: nothing vouches for these entries but the party that shows them." },
                Some(c) => table class="facts" {
                    tr { th { "size" } td { (c.size) @if c.unsealed_entries > 0 { " (" (c.unsealed_entries) " later entries not sealed yet)" } } }
                    tr { th { "root" } td { code { (c.root) } } }
                    tr { th { "made" } td { (c.made) ", " (c.age) " ago" } }
                    tr { th { "log signature" } td {
                        @match &c.log_signature {
                            None => "none by the log's key name",
                            Some(s) => {
                                (if s.valid { "valid" } else { "INVALID" }) " under the " (s.checked_against) " · "
                                code { (s.name) } " key hash " code { (s.key_hash) } br; code class="wrap" { (s.signature) }
                            }
                        }
                    } }
                },
            }
            h2 { "Witnesses" }
            p class={ "quorum " (if view.quorum.met { "met" } else { "unmet" }) } {
                "Quorum " (if view.quorum.met { "met" } else { "NOT met" }) ": " (view.quorum.cosigned) " of "
                (view.quorum.required) " required co-signatures by pinned witnesses on the latest checkpoint."
            }
            @if view.witnesses.is_empty() {
                p { "No witness is pinned (--witness NAME=HEX) or named by the ledger." }
            } @else {
                table {
                    thead { tr { th { "witness" } th { "key" } th { "pinned" } th { "latest checkpoint" } th { "last co-signed" } th { "co-signature" } } }
                    tbody { @for w in &view.witnesses {
                        tr {
                            td { code { (w.name) } }
                            td { code { (short_hex(&w.key)) } }
                            td { (if w.pinned { "yes" } else { "no (named by the ledger)" }) }
                            td { (if w.cosigned_latest { "co-signed" } else { "not co-signed" }) }
                            td { @match (w.last_cosigned_size, &w.age) {
                                (Some(size), Some(age)) => { "size " (size) ", " (age) " ago" },
                                _ => "never",
                            } }
                            td { @if let Some(signature) = &w.signature { code class="wrap" { (signature) } } }
                        }
                    } }
                }
            }
        },
    )
}

/// An entry as the explorer lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EntryRow {
    /// Its index.
    pub index: u64,
    /// Its kind, or `undecodable`.
    pub kind: String,
    /// The study it names.
    pub study: Option<String>,
    /// The round it names.
    pub round: Option<u32>,
    /// The parties it names.
    pub parties: Vec<String>,
    /// A one-line summary.
    pub summary: String,
    /// Its leaf hash, hex.
    pub leaf_hash: String,
}

/// The entry explorer: the entries matching a query, a page at a time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EntryListView {
    /// The query.
    pub query: EntryQuery,
    /// How many entries match.
    pub matches: usize,
    /// The page shown (from 0).
    pub page: usize,
    /// The entries on it.
    pub entries: Vec<EntryRow>,
}

/// Builds the explorer's view of `query`, page `page`.
pub fn entry_list(snapshot: &Snapshot, query: EntryQuery, page: usize) -> EntryListView {
    let mut matches = 0;
    let mut entries = Vec::new();
    let first = page.saturating_mul(ENTRIES_PER_PAGE);
    for (index, loaded) in (0u64..).zip(&snapshot.entries) {
        let leaf_hex = hex::encode(loaded.leaf_hash);
        let decoded = loaded.decoded.as_ref().ok();
        if !query.matches(index, &leaf_hex, decoded) {
            continue;
        }
        if matches >= first && entries.len() < ENTRIES_PER_PAGE {
            entries.push(EntryRow {
                index,
                kind: decoded.map_or("undecodable", |e| e.kind()).into(),
                study: decoded.and_then(|e| e.study_id()).map(str::to_owned),
                round: decoded.and_then(model::round_of),
                parties: decoded.map(model::parties_of).unwrap_or_default(),
                summary: match &loaded.decoded {
                    Ok(entry) => model::summary(entry),
                    Err(error) => error.clone(),
                },
                leaf_hash: leaf_hex,
            });
        }
        matches += 1;
    }
    EntryListView { query, matches, page, entries }
}

/// Renders the explorer.
pub fn entry_list_html(frame: &Frame, view: &EntryListView) -> Markup {
    let q = &view.query;
    let pages = view.matches.div_ceil(ENTRIES_PER_PAGE);
    page(
        frame,
        "Entries",
        "/entries",
        html! {
            h1 { "Entries" }
            form method="get" action="/entries" class="search" {
                label { "search " input type="search" name="q" value=[q.q.as_deref()] placeholder="index, hash, study or hospital"; }
                label { "hash " input type="text" name="hash" value=[q.hash.as_deref()]; }
                label { "study " input type="text" name="study" value=[q.study.as_deref()]; }
                label { "round " input type="number" name="round" min="0" value=[q.round]; }
                label { "hospital " input type="text" name="pdc" value=[q.pdc.as_deref()]; }
                button type="submit" { "Search" }
            }
            p { (view.matches) " matching entries" @if pages > 1 { ", page " (view.page + 1) " of " (pages) } "." }
            (entry_table(&view.entries))
            @if view.page + 1 < pages {
                p { a href=(page_link(q, view.page + 1)) { "next page" } }
            }
        },
    )
}

fn page_link(query: &EntryQuery, page: usize) -> String {
    let mut parts = Vec::new();
    let mut add = |name: &str, value: Option<String>| {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            parts.push(format!("{name}={}", percent_encode(&value)));
        }
    };
    add("q", query.q.clone());
    add("hash", query.hash.clone());
    add("study", query.study.clone());
    add("round", query.round.map(|r| r.to_string()));
    add("pdc", query.pdc.clone());
    add("page", Some(page.to_string()));
    format!("/entries?{}", parts.join("&"))
}

/// The deep link of a study; its id is percent-encoded, so that any id links to its own page.
fn study_href(id: &str) -> String {
    format!("/studies/{}", percent_encode(id))
}

/// The link to a member's section of the hospitals page.
fn member_href(id: &str) -> String {
    format!("/hospitals#{}", percent_encode(id))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn entry_table(rows: &[EntryRow]) -> Markup {
    html! {
        table class="entries" {
            thead { tr { th { "#" } th { "kind" } th { "study" } th { "round" } th { "summary" } } }
            tbody { @for row in rows {
                tr {
                    td { a href={ "/entries/" (row.index) } { (row.index) } }
                    td { (row.kind) }
                    td { @if let Some(study) = &row.study { a href=(study_href(study)) { (study) } } }
                    td { @if let Some(round) = row.round { (round) } }
                    td { (row.summary) }
                }
            } }
        }
    }
}

/// An inclusion proof of an entry against the latest checkpoint, checked by the server.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProofView {
    /// `verified`, `failed`, `not_sealed` (the entry is after the latest checkpoint) or `no_checkpoint`.
    pub status: String,
    /// What was checked, in a sentence.
    pub detail: String,
    /// The checkpoint's size.
    pub checkpoint_size: Option<u64>,
    /// The checkpoint's root, hex.
    pub checkpoint_root: Option<String>,
    /// The proof's hashes, hex, leaf to root.
    pub hashes: Vec<String>,
}

/// One entry, decoded, with its bytes and its inclusion proof.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EntryView {
    /// Its index.
    pub index: u64,
    /// Its kind, or `undecodable`.
    pub kind: String,
    /// A one-line summary, or why it does not decode.
    pub summary: String,
    /// Its leaf hash, hex.
    pub leaf_hash: String,
    /// Its decoded fields (none when it does not decode).
    pub fields: Vec<Field>,
    /// Its bytes, hex.
    pub raw: String,
    /// Its inclusion proof.
    pub proof: ProofView,
    /// The offline command that re-checks the proof.
    pub command: String,
}

/// Builds entry `index`'s view, `None` beyond the log.
pub fn entry(snapshot: &Snapshot, index: u64) -> Option<EntryView> {
    let loaded = snapshot.entries.get(usize::try_from(index).ok()?)?;
    let mut command = format!("pdc audit prove --entry {index} {}", snapshot.source_flag);
    // The same trust policy as the page's, so that the offline check accepts exactly what the server accepted.
    if let Some(key) = snapshot.policy.log_key {
        command.push_str(&format!(" --log-key {}", hex::encode(key.to_bytes())));
    }
    for (name, key) in &snapshot.policy.witnesses {
        command.push_str(&format!(" --witness {name}={}", hex::encode(key.to_bytes())));
    }
    if let Some(quorum) = snapshot.policy.quorum {
        command.push_str(&format!(" --quorum {quorum}"));
    }
    Some(EntryView {
        index,
        kind: loaded.decoded.as_ref().map_or("undecodable", |e| e.kind()).into(),
        summary: match &loaded.decoded {
            Ok(entry) => model::summary(entry),
            Err(error) => error.clone(),
        },
        leaf_hash: hex::encode(loaded.leaf_hash),
        fields: loaded.decoded.as_ref().map(model::fields).unwrap_or_default(),
        raw: hex::encode(&loaded.bytes),
        proof: proof(snapshot, index),
        command,
    })
}

fn proof(snapshot: &Snapshot, index: u64) -> ProofView {
    let Some(signed) = snapshot.latest_checkpoint() else {
        return ProofView {
            status: "no_checkpoint".into(),
            detail: "The ledger has no checkpoint to prove the entry against.".into(),
            checkpoint_size: None,
            checkpoint_root: None,
            hashes: Vec::new(),
        };
    };
    let checkpoint = &signed.checkpoint;
    let mut view = ProofView {
        status: String::new(),
        detail: String::new(),
        checkpoint_size: Some(checkpoint.size),
        checkpoint_root: Some(hex::encode(checkpoint.root)),
        hashes: Vec::new(),
    };
    if index >= checkpoint.size {
        view.status = "not_sealed".into();
        view.detail = format!(
            "Entry {index} is after the latest checkpoint (size {}): no checkpoint vouches for it yet.",
            checkpoint.size
        );
        return view;
    }
    let claimed = &snapshot.claimed;
    let (key, whose) = match snapshot.policy.log_key {
        Some(key) => (key, "the pinned log key"),
        None => (claimed.log_key, "the log key the ledger names (not pinned)"),
    };
    let signature = signed.verify(&claimed.log_key_name, &key);
    let leaves = snapshot.tree.leaf_hashes();
    let Some(covered) = usize::try_from(checkpoint.size).ok().and_then(|size| leaves.get(..size)) else {
        view.status = "failed".into();
        view.detail =
            format!("The checkpoint states size {} but the ledger has {} entries.", checkpoint.size, leaves.len());
        return view;
    };
    let hashes = merkle::inclusion_proof(index, covered);
    view.hashes = hashes.iter().map(hex::encode).collect();
    let leaf = &snapshot.entries[index as usize].leaf_hash;
    let inclusion = merkle::verify_inclusion(index, checkpoint.size, leaf, &hashes, &checkpoint.root);
    match (inclusion, signature) {
        (Ok(()), Ok(())) => {
            view.status = "verified".into();
            view.detail = format!(
                "Entry {index} is included in the checkpoint of size {}, whose signature verifies under {whose}.",
                checkpoint.size
            );
        }
        (Err(error), _) => {
            view.status = "failed".into();
            view.detail =
                format!("Entry {index} is NOT proven in the checkpoint of size {}: {error}.", checkpoint.size);
        }
        (Ok(()), Err(error)) => {
            view.status = "failed".into();
            view.detail = format!(
                "The proof reaches the checkpoint's root, but the checkpoint's signature does not verify under {whose}: {error}."
            );
        }
    }
    view
}

/// Renders an entry.
pub fn entry_html(frame: &Frame, view: &EntryView) -> Markup {
    page(
        frame,
        &format!("Entry {}", view.index),
        "/entries",
        html! {
            h1 { "Entry " (view.index) ": " (view.kind) }
            p { (view.summary) }
            nav class="pager" {
                @if view.index > 0 { a href={ "/entries/" (view.index - 1) } { "← " (view.index - 1) } " " }
                a href={ "/entries/" (view.index + 1) } { (view.index + 1) " →" }
            }
            table class="facts" {
                tr { th { "leaf hash" } td { code { (view.leaf_hash) } } }
                @for field in &view.fields {
                    tr { th { (field.name) } td { (field_value(field)) } }
                }
            }
            h2 { "Inclusion proof" }
            p class={ "proof " (view.proof.status) } { (view.proof.detail) }
            @if let (Some(size), Some(root)) = (view.proof.checkpoint_size, &view.proof.checkpoint_root) {
                p { "Checkpoint of size " (size) ", root " code { (root) } }
            }
            @if !view.proof.hashes.is_empty() {
                ol class="hashes" { @for hash in &view.proof.hashes { li { code { (hash) } } } }
            }
            p { "Check it offline, without this server:" }
            pre { code { (view.command) } }
            h2 { "Raw bytes" }
            pre class="wrap" { code { (view.raw) } }
        },
    )
}

fn field_value(field: &Field) -> Markup {
    html! {
        @match field.kind {
            FieldKind::Study => a href=(study_href(&field.value)) { (field.value) },
            FieldKind::Party => a href=(member_href(&field.value)) { (field.value) },
            FieldKind::Hash | FieldKind::Key => a href={ "/entries?hash=" (field.value) } { code { (field.value) } },
            FieldKind::Signature => code class="wrap" { (field.value) },
            _ => (field.value),
        }
    }
}

/// Renders the studies list.
pub fn studies_html(frame: &Frame, studies: &[StudySummary]) -> Markup {
    page(
        frame,
        "Studies",
        "/studies",
        html! {
            h1 { "Studies" }
            @if studies.is_empty() { p { "No study was created in this ledger." } }
            @else {
                table {
                    thead { tr { th { "study" } th { "state" } th { "researcher" } th { "rounds aggregated" }
                        th { "consenting hospitals" } th { "manifest hash" } } }
                    tbody { @for s in studies {
                        tr {
                            td { a href=(study_href(&s.id)) { (s.id) } }
                            td { (s.state) }
                            td { (s.researcher.as_deref().unwrap_or("—")) }
                            td { (s.rounds_aggregated) }
                            td { (s.consenting) }
                            td { code { (short_hex(&s.manifest_hash)) } }
                        }
                    } }
                }
            }
        },
    )
}

/// A study's page: the study and its consents.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StudyPage {
    /// The study and its rounds.
    pub study: StudyView,
    /// Its consents and revocations.
    pub consents: Vec<ConsentRow>,
}

/// Renders a study.
pub fn study_html(frame: &Frame, view: &StudyPage) -> Markup {
    let study = &view.study;
    let s = &study.summary;
    page(
        frame,
        &format!("Study {}", s.id),
        "/studies",
        html! {
            h1 { "Study " (s.id) }
            table class="facts" {
                tr { th { "state" } td { (s.state) } }
                tr { th { "manifest hash" } td { a href={ "/entries/" (s.created_entry) } { code { (s.manifest_hash) } } } }
                tr { th { "researcher" } td { (s.researcher.as_deref().unwrap_or("no signed manifest")) } }
                tr { th { "consenting hospitals" } td { (s.consenting) } }
                @if let Some(model) = &study.final_model { tr { th { "latest model" } td { code { (model) } } } }
            }
            h2 { "Lifecycle" }
            ol { @for step in &study.lifecycle {
                li { a href={ "/entries/" (step.entry) } { "#" (step.entry) } " " (step.what)
                    @if let Some(ms) = step.sealed_at_ms { " · sealed " (utc(ms)) } }
            } }
            h2 { "Validation metrics" }
            @if study.metrics.is_empty() { p { "No round was aggregated yet." } }
            @for (name, values) in &study.metrics {
                @let series = [Series { name: name.clone(), points: values.iter().map(|&(r, v)| (f64::from(r), v)).collect() }];
                figure { (svg::line_chart(&format!("{name} per round"), "round", name, &series, None))
                    figcaption { (name) " on the validation set after each round" } }
            }
            h2 { "Rounds" }
            @if study.rounds.is_empty() { p { "No round was opened yet." } }
            @for round in &study.rounds {
                section class="round" id={ "round-" (round.round) } {
                    h3 { a href={ "/entries/" (round.opened_entry) } { (round.headline) } }
                    p { "Model sent " code { (short_hex(&round.model_sent)) }
                        @if let Some(model) = &round.model_produced { " · produced " code { (short_hex(model)) } }
                        @if let Some(entry) = round.aggregated_entry { " · " a href={ "/entries/" (entry) } { "aggregate #" (entry) } }
                        @for (name, value) in &round.metrics { " · " (name) " " (short_number(*value)) } }
                    @if !round.contributions.is_empty() {
                        table {
                            thead { tr { th { "hospital" } th { "examples" } th { "train loss" } th { "update" } th { "in aggregate" } } }
                            tbody { @for c in &round.contributions {
                                tr {
                                    td { a href={ "/entries/" (c.entry) } { (c.pdc) } }
                                    td { (c.n_examples) }
                                    td { (short_number(c.train_loss)) }
                                    td { code { (short_hex(&c.update_hash)) } }
                                    td { (if c.aggregated { "yes" } else if round.aggregated_entry.is_some() { "left out (flagged)" } else { "pending" }) }
                                }
                            } }
                        }
                    }
                    @for r in &round.rejections {
                        p class="flag" { "Rejected: " a href={ "/entries/" (r.entry) } { (r.pdc) } " — " (r.reason) }
                    }
                    @if !round.dropped.is_empty() {
                        p class="flag" { "Dropped out: " (round.dropped.join(", ")) }
                    }
                }
            }
            h2 { "Consents" }
            (consent_table(&view.consents, false))
        },
    )
}

fn consent_table(rows: &[ConsentRow], show_study: bool) -> Markup {
    html! {
        @if rows.is_empty() { p { "No consent was recorded." } }
        @else {
            table {
                thead { tr { @if show_study { th { "study" } } th { "hospital" } th { "action" } th { "conditions" }
                    th { "signed by key" } th { "signature" } th { "sealed" } } }
                tbody { @for row in rows {
                    tr {
                        @if show_study { td { a href=(study_href(&row.study)) { (row.study) } } }
                        td { a href=(member_href(&row.pdc)) { (row.pdc) } }
                        td { a href={ "/entries/" (row.entry) } { (row.action) } }
                        td { @if row.conditions.is_empty() { "none" } @else { (row.conditions.join("; ")) } }
                        td { @match &row.signed_by_key { Some(key) => code { (short_hex(key)) }, None => "no registered key" } }
                        td class=(if row.signature_valid { "ok" } else { "bad" }) { (if row.signature_valid { "valid" } else { "INVALID" }) }
                        td { @match row.sealed_at_ms { Some(ms) => (utc(ms)), None => "not sealed yet" } }
                    }
                } }
            }
        }
    }
}

/// Renders the consent register.
pub fn consents_html(frame: &Frame, rows: &[ConsentRow]) -> Markup {
    page(
        frame,
        "Consents",
        "/consents",
        html! {
            h1 { "Consent register" }
            p { "Every grant and revocation, in log order, each checked against the key its hospital had registered at "
                "that point of the log. Entries carry no clock of their own: a consent was given by the time the first "
                "checkpoint covering it was made." }
            (consent_table(rows, true))
        },
    )
}

/// Renders the privacy page.
pub fn privacy_html(frame: &Frame, view: &PrivacyView) -> Markup {
    page(
        frame,
        "Privacy",
        "/privacy",
        html! {
            h1 { "Privacy" }
            p { "Each hospital's cumulative ε after each spend, over every study, against the budget it declared." }
            @for h in &view.hospitals {
                section id={ "privacy-" (h.pdc) } {
                    h2 { (h.pdc) }
                    @match &h.budget {
                        Some(b) => p { "Budget ε " (b.epsilon) " at δ " (b.delta) " for " code { (b.dataset) } " ("
                            a href={ "/entries/" (b.entry) } { "#" (b.entry) } ")" },
                        None => p class="flag" { "No budget declared: every spend is outside a budget." },
                    }
                    @if !h.spends.is_empty() {
                        @let series = [Series { name: format!("{} ε", h.pdc), points: (1u32..).zip(&h.spends).map(|(i, s)| (f64::from(i), s.epsilon)).collect() }];
                        @let budget = h.budget.as_ref().map(|b| Reference { label: format!("budget ε {}", b.epsilon), y: b.epsilon });
                        figure { (svg::line_chart(&format!("cumulative ε of {}", h.pdc), "spend", "ε", &series, budget.as_ref())) }
                        table {
                            thead { tr { th { "#" } th { "spend" } th { "study" } th { "round" } th { "cumulative ε" } th { "δ" } th { "budget" } } }
                            tbody { @for (i, s) in (1u32..).zip(&h.spends) {
                                tr {
                                    td { (i) }
                                    td { a href={ "/entries/" (s.entry) } { (s.what) } }
                                    td { (s.scope) }
                                    td { @if let Some(r) = s.round { (r) } }
                                    td { (short_number(s.epsilon)) }
                                    td { (s.delta) }
                                    td class=(if s.outside_budget { "bad" } else { "ok" }) { (if s.outside_budget { "OUTSIDE" } else { "within" }) }
                                }
                            } }
                        }
                    }
                }
            }
            h2 { "Mechanisms" }
            @if view.mechanisms.is_empty() && view.central.is_empty() { p { "No differentially private release was recorded." } }
            @if !view.mechanisms.is_empty() {
                h3 { "Local DP-SGD, per contribution" }
                table {
                    thead { tr { th { "study" } th { "round" } th { "hospital" } th { "clip C" } th { "σ" } th { "q" } th { "steps" } th { "cumulative ε" } } }
                    tbody { @for m in &view.mechanisms {
                        tr { td { (m.study) } td { (m.round) } td { a href={ "/entries/" (m.entry) } { (m.pdc) } }
                            td { (m.clip_norm) } td { (m.noise_multiplier) } td { (m.sampling_rate) } td { (m.steps) } td { (short_number(m.epsilon)) } }
                    } }
                }
            }
            @if !view.central.is_empty() {
                h3 { "Central DP-FedAvg, per round" }
                table {
                    thead { tr { th { "study" } th { "round" } th { "clip S" } th { "noise σ" } th { "study ε" } th { "δ" } } }
                    tbody { @for c in &view.central {
                        tr { td { (c.study) } td { a href={ "/entries/" (c.entry) } { (c.round) } } td { (c.clip_norm) }
                            td { (c.noise_std) } td { (short_number(c.epsilon)) } td { (c.delta) } }
                    } }
                }
            }
            h2 { "Rounds without differential privacy" }
            @if view.rounds_without_dp.is_empty() { p { "Every aggregated round was differentially private." } }
            @else {
                p class="flag" { (view.rounds_without_dp.len()) " aggregated rounds had neither a local DP claim nor a central DP release:" }
                ul { @for r in &view.rounds_without_dp {
                    li { a href={ (study_href(&r.study)) "#round-" (r.round) } { (r.study) " round " (r.round) } " ("
                        a href={ "/entries/" (r.entry) } { "#" (r.entry) } ")" }
                } }
            }
        },
    )
}

/// Renders the rewards page.
pub fn rewards_html(frame: &Frame, studies: &[StudyRewards]) -> Markup {
    page(
        frame,
        "Rewards",
        "/rewards",
        html! {
            h1 { "Contributions and rewards" }
            p { "After each aggregated round the coordinator values every hospital's contribution: the utility of a "
                "coalition is the validation score of the model averaged from its members' updates, and a hospital's "
                "utility is its Shapley value, its average marginal gain over the coalitions (exactly, or sampled with "
                "the recorded seed). The round's budget is split in proportion to the positive utilities; a round with "
                "no positive utility carries its budget over. Each round's payments must add up to its budget." }
            @if studies.is_empty() { p { "No utility or reward was recorded." } }
            @for s in studies {
                section id={ "rewards-" (s.study) } {
                    h2 { a href=(study_href(&s.study)) { (s.study) } }
                    @let columns: Vec<String> = s.rounds.iter().map(|r| format!("round {}", r.round)).collect();
                    figure { (svg::heatmap(&format!("utilities of {}", s.study), &s.hospitals, &columns, &s.utilities))
                        figcaption { "Utility per hospital and round" } }
                    table {
                        thead { tr { th { "round" } th { "method" } th { "budget" } @for h in &s.hospitals { th { (h) } } th { "paid" } th { "reconciles" } } }
                        tbody {
                            @for r in &s.rounds {
                                tr {
                                    td { @match r.allotted_entry { Some(e) => a href={ "/entries/" (e) } { (r.round) }, None => (r.round) } }
                                    td { (r.method.as_deref().unwrap_or("—")) @if let Some(seed) = r.seed { " (seed " (seed) ")" } }
                                    td { @match r.budget { Some(b) => { (short_number(b)) @if r.carried_over { " carried over" } }, None => "—" } }
                                    @for h in &s.hospitals {
                                        td { @match r.payments.iter().find(|(p, _)| p == h) { Some((_, a)) => (short_number(*a)), None => "—" } }
                                    }
                                    td { (short_number(r.paid)) }
                                    td class=(if r.reconciles { "ok" } else { "bad" }) { (if r.reconciles { "yes" } else { "NO" }) }
                                }
                            }
                            tr class="total" { td { "total" } td {} td {} @for t in &s.totals { td { (short_number(*t)) } } td {} td {} }
                        }
                    }
                }
            }
        },
    )
}

/// Renders the hospitals page.
pub fn hospitals_html(frame: &Frame, members: &[HospitalView]) -> Markup {
    page(
        frame,
        "Hospitals",
        "/hospitals",
        html! {
            h1 { "Members" }
            @if members.is_empty() { p { "No member registered in this ledger." } }
            @for m in members {
                section id=(m.id) {
                    h2 { (m.id) " · " (m.role) }
                    table class="facts" {
                        tr { th { "current key" } td { @match &m.key { Some(k) => code { (k) }, None => "none (revoked)" } } }
                        tr { th { "keys" } td { ul { @for k in &m.keys {
                            li { a href={ "/entries/" (k.entry) } { (k.what) } " " code { (short_hex(&k.key)) }
                                @if let Some(reason) = &k.reason { ": " (reason) } }
                        } } } }
                        tr { th { "consents to" } td { @if m.consented.is_empty() { "—" } @else { (m.consented.join(", ")) } } }
                        tr { th { "rounds joined" } td { (m.rounds_joined.len())
                            @if !m.rounds_joined.is_empty() { " (" (m.rounds_joined.iter().map(|(s, r)| format!("{s} {r}")).collect::<Vec<_>>().join(", ")) ")" } } }
                        tr { th { "last seen" } td { @match m.last_seen_entry {
                            Some(e) => { a href={ "/entries/" (e) } { "#" (e) } @match m.last_seen_ms { Some(ms) => { " · sealed " (utc(ms)) ", " (age(ms, frame.now_ms)) " ago" }, None => " · not sealed yet" } },
                            None => "—",
                        } } }
                    }
                }
            }
        },
    )
}

/// Renders a page that says what went wrong: an unknown path or entry, or a malformed query.
pub fn problem_html(frame: &Frame, title: &str, what: &str) -> Markup {
    page(frame, title, "", html! { h1 { (title) } p { (what) } })
}

const NAV: [(&str, &str); 7] = [
    ("/", "Head"),
    ("/studies", "Studies"),
    ("/entries", "Entries"),
    ("/hospitals", "Hospitals"),
    ("/privacy", "Privacy"),
    ("/consents", "Consents"),
    ("/rewards", "Rewards"),
];

fn page(frame: &Frame, title: &str, section: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(seconds) = frame.refresh_seconds { meta http-equiv="refresh" content=(seconds); }
                title { (title) " · pdc dashboard" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                header {
                    nav { @for (href, label) in NAV {
                        a href=(href) class=[(href == section).then_some("here")] { (label) } " "
                    } }
                }
                main { (body) }
                footer { "Read-only view of the " (frame.source) ", as of " (utc(frame.now_ms))
                    @if let Some(seconds) = frame.refresh_seconds { ", refreshed every " (seconds) " s" }
                    ". Every page is also JSON: add " code { "?format=json" } "." }
            }
        }
    }
}

/// The verdict's colour: green for PASS, red for FAIL, amber for anything that is neither.
fn verdict_class(status: &str) -> &'static str {
    match status {
        "PASS" => "pass",
        "FAIL" => "fail",
        _ => "unavailable",
    }
}

fn short_hex(hex: &str) -> String {
    hex.chars().take(16).collect()
}

fn join(values: &[u64]) -> String {
    values.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// The stylesheet, served at `/style.css` (the CSP allows styles from the server itself only).
pub const STYLE: &str = include_str!("style.css");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_percent_encode_ids_and_queries() {
        assert_eq!(study_href("sepsis-2026"), "/studies/sepsis-2026");
        assert_eq!(study_href("a b/c?d#e"), "/studies/a%20b%2Fc%3Fd%23e");
        assert_eq!(member_href("h 1"), "/hospitals#h%201");
        let query = EntryQuery { q: Some("ε & co".into()), round: Some(2), ..Default::default() };
        assert_eq!(page_link(&query, 3), "/entries?q=%CE%B5%20%26%20co&round=2&page=3");
    }
}
