//! Crash safety: a child process appending through group commit from several threads, and checkpointing as it
//! goes, is killed with SIGKILL at random moments; after every kill the log opens, extends its last checkpoint
//! consistently, and holds every entry it acknowledged.
//!
//! The child is this same test binary, re-run with [`CHILD_DIR`] set and this test as the only filter.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use pdc_ledger::audit::{self, AuditKeys};
use pdc_ledger::checkpoint::SignedCheckpoint;
use pdc_ledger::log::SharedLog;
use pdc_ledger::merkle;
use pdc_ledger::store::{RocksDbStore, Store};

use crate::support::{LOG_KEY, ORIGIN, log_identity};

/// Set in the child: the database directory.
const CHILD_DIR: &str = "PDC_LEDGER_CRASH_CHILD_DIR";
/// Set in the child: which run it is, so its entries differ from every earlier run's.
const CHILD_RUN: &str = "PDC_LEDGER_CRASH_CHILD_RUN";
const TEST_NAME: &str = "crash::a_log_killed_at_random_keeps_every_acknowledged_entry";
const KILLS: u64 = 24;
const APPENDERS: u64 = 6;
/// The child checkpoints after every this many of its checkpointing thread's own appends.
const CHECKPOINT_EVERY: u64 = 10;

fn entry_bytes(run: u64, thread: u64, sequence: u64) -> Vec<u8> {
    format!("run {run} thread {thread} entry {sequence}").into_bytes()
}

#[test]
fn a_log_killed_at_random_keeps_every_acknowledged_entry() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let run = std::env::var(CHILD_RUN).ok().and_then(|run| run.parse().ok()).expect("child run number");
        child(Path::new(&dir), run);
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary");
    let mut rng = StdRng::seed_from_u64(0xdead_10c5);
    let mut acknowledged: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut last_acknowledged_checkpoint = 0u64;
    let mut runs_with_acks = 0;
    let started = Instant::now();
    for run in 0..KILLS {
        let mut child = Command::new(&exe)
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads", "1"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_RUN, run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("child stdout");
        let (lines_tx, lines) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The kill comes at a random moment after the child's first acknowledged append, so that a loaded machine
        // (a slow start) cannot turn a run into one that acknowledged nothing.
        let mut seen = Vec::new();
        let appending = loop {
            match lines.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => {
                    let first_ack = line.starts_with("ack ");
                    seen.push(line);
                    if first_ack {
                        break true;
                    }
                }
                Err(_) => break false,
            }
        };
        if !appending {
            let _ = child.kill();
            panic!("run {run}: the child never acknowledged an append");
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("reap the child");
        // Killed, not exited: a child that failed on its own would otherwise go unnoticed.
        assert_eq!(status.signal(), Some(9), "run {run}: the child ended with {status} before it was killed");
        reader.join().expect("reader thread");

        let mut acks = 0;
        for line in seen.into_iter().chain(lines.try_iter()) {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields[..] {
                ["ack", index, thread, sequence] => {
                    let (index, thread, sequence) = (number(index), number(thread), number(sequence));
                    let bytes = entry_bytes(run, thread, sequence);
                    if let Some(earlier) = acknowledged.insert(index, bytes.clone()) {
                        panic!("index {index} acknowledged twice: {earlier:?} and {bytes:?}");
                    }
                    acks += 1;
                }
                ["checkpoint", size] => last_acknowledged_checkpoint = last_acknowledged_checkpoint.max(number(size)),
                _ => {}
            }
        }
        if acks > 0 {
            runs_with_acks += 1;
        }
        check_recovered(dir.path(), &acknowledged, last_acknowledged_checkpoint, run);
    }
    eprintln!(
        "{KILLS} kills in {:?}: {} entries acknowledged, last acknowledged checkpoint at size {last_acknowledged_checkpoint}",
        started.elapsed(),
        acknowledged.len()
    );
    assert!(runs_with_acks >= 20, "only {runs_with_acks} of {KILLS} runs acknowledged anything");
    assert!(acknowledged.len() >= 200, "only {} entries acknowledged in all", acknowledged.len());
    assert!(last_acknowledged_checkpoint > 0, "no checkpoint was ever acknowledged");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}

/// Reopens the log after a kill and checks it against what the children acknowledged.
fn check_recovered(dir: &Path, acknowledged: &BTreeMap<u64, Vec<u8>>, acknowledged_checkpoint: u64, run: u64) {
    let store = RocksDbStore::open(dir).unwrap_or_else(|e| panic!("run {run}: the log does not reopen: {e}"));
    let size = store.size();
    if let Some((&last, _)) = acknowledged.last_key_value() {
        assert!(last < size, "run {run}: entry {last} was acknowledged but the log has {size} entries");
    }
    for (&index, bytes) in acknowledged {
        assert_eq!(&store.entry(index).expect("entry"), bytes, "run {run}: acknowledged entry {index}");
    }
    let keys = AuditKeys { witnesses: Vec::new(), quorum: 0, ..crate::support::keys() };
    let failures = audit::verify_latest_checkpoint(&store, &keys);
    assert!(failures.is_empty(), "run {run}: {failures:?}");
    let Some((checkpoint_size, note)) = store.latest_checkpoint().expect("latest checkpoint") else {
        assert_eq!(acknowledged_checkpoint, 0, "run {run}: an acknowledged checkpoint is missing");
        return;
    };
    assert!(checkpoint_size >= acknowledged_checkpoint, "run {run}: checkpoint {acknowledged_checkpoint} is missing");
    let signed = SignedCheckpoint::parse(std::str::from_utf8(&note).expect("UTF-8")).expect("note");
    signed.verify(LOG_KEY, &log_identity().public_key()).expect("log signature");
    assert_eq!(signed.checkpoint.size, checkpoint_size);
    assert_eq!(store.root_at(checkpoint_size).expect("root"), signed.checkpoint.root, "run {run}");
    let proof = store.consistency_proof(checkpoint_size, size).expect("consistency proof");
    merkle::verify_consistency(checkpoint_size, size, &signed.checkpoint.root, &store.root().expect("root"), &proof)
        .unwrap_or_else(|e| panic!("run {run}: the log does not extend its checkpoint: {e}"));
}

fn number(text: &str) -> u64 {
    text.parse().unwrap_or_else(|_| panic!("not a number: {text:?}"))
}

/// The child: appends from several threads until killed, printing each index once its append returned.
fn child(dir: &Path, run: u64) -> ! {
    let store = RocksDbStore::open(dir).expect("child opens the log");
    let log = Arc::new(SharedLog::new(Box::new(store)));
    // The harness has printed "test <name> ... " without a newline; start a line of our own.
    say("\nready");
    let threads: Vec<_> = (0..APPENDERS)
        .map(|thread| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for sequence in 0.. {
                    let index = log.append(entry_bytes(run, thread, sequence)).expect("append");
                    say(&format!("ack {index} {thread} {sequence}"));
                    if thread == 0 && sequence % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1 {
                        let checkpoint = log.prepare_checkpoint(ORIGIN, 1_767_000_000_000 + run).expect("prepare");
                        let signed = checkpoint.sign(LOG_KEY, &log_identity()).expect("sign");
                        log.put_checkpoint(&signed).expect("store the checkpoint");
                        say(&format!("checkpoint {}", checkpoint.size));
                    }
                }
            })
        })
        .collect();
    // Should the parent die without killing it, the child stops on its own.
    std::thread::sleep(Duration::from_secs(30));
    drop(threads);
    std::process::exit(3);
}

/// Writes one line to stdout and flushes it, bypassing the test harness's output capture.
fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(format!("{line}\n").as_bytes()).expect("stdout");
    stdout.flush().expect("flush stdout");
}
