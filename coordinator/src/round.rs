//! The round state machine of one study: events in, actions out, time passed in.
//!
//! It does no I/O and reads no clock, in the manner of raft-rs's `RawNode`: the edge feeds it what happened
//! (a tick with the PDCs now available, an accepted update, a failure report, the end of an aggregation) with the
//! current time in milliseconds, and carries out the actions it returns (send tasks, aggregate, announce).
//! Everything it decides is a function of its inputs, so a round can be replayed from a transcript.

use std::collections::{BTreeMap, BTreeSet};

use pdc_ledger::Hash;

use crate::{Error, Result};

/// The rules of participation for one study.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundPolicy {
    /// Rounds in the study.
    pub rounds: u32,
    /// Fewest PDCs a round opens with, and fewest updates it closes with at its deadline.
    pub min_participants: usize,
    /// Most PDCs selected for a round.
    pub max_participants: usize,
    /// The share of the available PDCs selected for a round (FedAvg's client fraction C), in `(0, 1]`: a round
    /// takes `⌈fraction × available⌉` of them, but never fewer than `min_participants` nor more than
    /// `max_participants`.
    pub fraction: f64,
    /// How long a round stays open, in milliseconds.
    pub deadline_ms: u64,
    /// A round that times out with too few updates is tried again; after this many failed attempts in a row
    /// the study fails.
    pub max_attempts: u32,
    /// Seeds the choice of participants when more PDCs are available than `max_participants`.
    pub seed: u64,
}

/// The lifecycle state of a study.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Created, not started.
    Created,
    /// Running, waiting for enough PDCs to open the next round.
    Waiting,
    /// A round is open for updates.
    Open,
    /// A round is closed and its aggregate is being computed.
    Aggregating,
    /// Every round is done.
    Finished,
    /// Stopped by its researcher.
    Stopped {
        /// Why.
        reason: String,
    },
    /// Could not go on.
    Failed {
        /// Why.
        reason: String,
    },
}

/// An update the coordinator has received, checked and archived.
#[derive(Clone, Debug, PartialEq)]
pub struct AcceptedUpdate {
    /// Its FedAvg weight.
    pub n_examples: u64,
    /// Its id in the archive.
    pub update_hash: Hash,
}

/// What happened, as the edge reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The researcher started the study.
    Start,
    /// The researcher stopped the study.
    Stop {
        /// Why.
        reason: String,
    },
    /// Time passed; `available` are the PDCs that could take a task now (registered, consented, connected).
    Tick {
        /// Available PDCs, in any order.
        available: Vec<String>,
    },
    /// A participant's update passed every check and is archived.
    UpdateAccepted {
        /// The round it was trained for.
        round: u32,
        /// The sender.
        pdc_id: String,
        /// The update.
        update: AcceptedUpdate,
    },
    /// A participant will not deliver (it said so, or its update was rejected).
    ParticipantFailed {
        /// The round.
        round: u32,
        /// The participant.
        pdc_id: String,
        /// Why.
        reason: String,
    },
    /// The edge finished aggregating `round`.
    Aggregated {
        /// The round.
        round: u32,
    },
}

/// What the edge must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send round `round`'s task to each participant.
    OpenRound {
        /// The round, from 1.
        round: u32,
        /// Which attempt at this round, from 1.
        attempt: u32,
        /// The selected PDCs, sorted.
        participants: Vec<String>,
        /// When the round closes, in the caller's milliseconds.
        deadline_ms: u64,
    },
    /// Aggregate these updates, in this order, into the next global model; then report [`Event::Aggregated`].
    Aggregate {
        /// The round.
        round: u32,
        /// The contributions in aggregation order (sorted by PDC id).
        contributions: Vec<(String, AcceptedUpdate)>,
    },
    /// The round closed with too few updates and will be tried again.
    RoundAbandoned {
        /// The round.
        round: u32,
        /// Why.
        reason: String,
    },
    /// The study is finished, stopped or failed; see [`RoundMachine::phase`].
    Ended,
}

/// Where a study's rounds stood, for [`RoundMachine::resume`].
#[derive(Clone, Debug, PartialEq)]
pub enum Resume {
    /// Started and waiting to open round `completed + 1`.
    Waiting {
        /// Rounds aggregated so far.
        completed: u32,
        /// Attempts at the next round that were abandoned.
        attempts: u32,
    },
    /// A round is open.
    Open {
        /// The round.
        round: u32,
        /// Which attempt at it.
        attempt: u32,
        /// Its participants.
        participants: Vec<String>,
        /// When it closes, in the caller's milliseconds.
        deadline_ms: u64,
    },
    /// A round's aggregate is recorded; its end is yet to be handled.
    Aggregating {
        /// The round.
        round: u32,
    },
    /// The study ended.
    Ended {
        /// The last round it reached.
        round: u32,
        /// Finished, stopped or failed.
        phase: Phase,
    },
}

#[derive(Clone, Debug)]
struct OpenRound {
    attempt: u32,
    participants: BTreeSet<String>,
    deadline_ms: u64,
    received: BTreeMap<String, AcceptedUpdate>,
    failed: BTreeMap<String, String>,
}

/// The state machine of one study's rounds.
#[derive(Clone, Debug)]
pub struct RoundMachine {
    policy: RoundPolicy,
    phase: Phase,
    /// The round open or being aggregated, or the last completed one.
    round: u32,
    attempt: u32,
    open: Option<OpenRound>,
}

impl RoundMachine {
    /// A machine for a created, not yet started study.
    pub fn new(policy: RoundPolicy) -> Self {
        Self { policy, phase: Phase::Created, round: 0, attempt: 0, open: None }
    }

    /// A machine resumed where a restarted coordinator's records left it (see [`crate::recovery`]):
    ///
    /// - [`Resume::Waiting`]: started, `completed` rounds aggregated, `attempts` failed attempts at the next;
    /// - [`Resume::Open`]: `round` open again for its recorded participants until `deadline_ms`, with none of its
    ///   updates received yet (the caller feeds the recorded ones back as [`Event::UpdateAccepted`]);
    /// - [`Resume::Aggregating`]: `round` was aggregated and recorded but its end not yet handled (the caller feeds
    ///   [`Event::Aggregated`] once the ledger is sealed);
    /// - [`Resume::Ended`]: the study ended in `phase` after `round`.
    pub fn resume(policy: RoundPolicy, resume: Resume) -> Self {
        let mut machine = Self::new(policy);
        match resume {
            Resume::Waiting { completed, attempts } => {
                machine.phase = Phase::Waiting;
                machine.round = completed;
                machine.attempt = attempts;
            }
            Resume::Open { round, attempt, participants, deadline_ms } => {
                machine.phase = Phase::Open;
                machine.round = round;
                machine.attempt = attempt;
                machine.open = Some(OpenRound {
                    attempt,
                    participants: participants.into_iter().collect(),
                    deadline_ms,
                    received: BTreeMap::new(),
                    failed: BTreeMap::new(),
                });
            }
            Resume::Aggregating { round } => {
                machine.phase = Phase::Aggregating;
                machine.round = round;
            }
            Resume::Ended { round, phase } => {
                machine.phase = phase;
                machine.round = round;
            }
        }
        machine
    }

    /// The study's lifecycle state.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The round open or being aggregated, or else the last completed one (0 before the first).
    pub fn round(&self) -> u32 {
        self.round
    }

    /// The participants of the open round.
    pub fn participants(&self) -> Vec<String> {
        self.open.as_ref().map(|open| open.participants.iter().cloned().collect()).unwrap_or_default()
    }

    /// Updates accepted so far in the open round.
    pub fn received(&self) -> usize {
        self.open.as_ref().map_or(0, |open| open.received.len())
    }

    /// Whether `pdc_id` may upload an update for `round` now, and if not, why.
    pub fn check_update(&self, pdc_id: &str, round: u32) -> Result<()> {
        let open = match (&self.phase, &self.open) {
            (Phase::Open, Some(open)) => open,
            (Phase::Created, _) => return Err(Error::FailedPrecondition("the study has not started".into())),
            (Phase::Finished | Phase::Stopped { .. } | Phase::Failed { .. }, _) => {
                return Err(Error::FailedPrecondition("the study has ended".into()));
            }
            _ => return Err(Error::FailedPrecondition(format!("round {round} is closed"))),
        };
        if round != self.round {
            let when = if round < self.round { "closed" } else { "not open" };
            return Err(Error::FailedPrecondition(format!("round {round} is {when}; round {} is open", self.round)));
        }
        if !open.participants.contains(pdc_id) {
            return Err(Error::PermissionDenied(format!("{pdc_id} is not a participant of round {round}")));
        }
        if open.received.contains_key(pdc_id) {
            return Err(Error::AlreadyExists(format!("{pdc_id} already submitted an update for round {round}")));
        }
        if let Some(reason) = open.failed.get(pdc_id) {
            return Err(Error::FailedPrecondition(format!("{pdc_id} was dropped from round {round}: {reason}")));
        }
        Ok(())
    }

    /// Feeds one event at time `now_ms` and returns what to do.
    pub fn handle(&mut self, now_ms: u64, event: Event) -> Result<Vec<Action>> {
        match event {
            Event::Start => {
                if self.phase != Phase::Created {
                    return Err(Error::FailedPrecondition(format!("cannot start a study that is {:?}", self.phase)));
                }
                self.phase = Phase::Waiting;
                Ok(Vec::new())
            }
            Event::Stop { reason } => {
                if self.is_ended() {
                    return Err(Error::FailedPrecondition("the study has ended".into()));
                }
                self.open = None;
                self.phase = Phase::Stopped { reason };
                Ok(vec![Action::Ended])
            }
            Event::Tick { available } => Ok(self.tick(now_ms, available)),
            Event::UpdateAccepted { round, pdc_id, update } => {
                self.check_update(&pdc_id, round)?;
                let open = self.open.as_mut().expect("check_update saw an open round");
                open.received.insert(pdc_id, update);
                Ok(self.close_if_complete())
            }
            Event::ParticipantFailed { round, pdc_id, reason } => {
                self.check_update(&pdc_id, round)?;
                let open = self.open.as_mut().expect("check_update saw an open round");
                open.failed.insert(pdc_id, reason);
                Ok(self.close_if_complete())
            }
            Event::Aggregated { round } => {
                if self.phase != Phase::Aggregating || round != self.round {
                    return Err(Error::FailedPrecondition(format!("round {round} is not being aggregated")));
                }
                if self.round >= self.policy.rounds {
                    self.phase = Phase::Finished;
                    Ok(vec![Action::Ended])
                } else {
                    self.phase = Phase::Waiting;
                    Ok(Vec::new())
                }
            }
        }
    }

    fn is_ended(&self) -> bool {
        matches!(self.phase, Phase::Finished | Phase::Stopped { .. } | Phase::Failed { .. })
    }

    fn tick(&mut self, now_ms: u64, mut available: Vec<String>) -> Vec<Action> {
        match self.phase {
            Phase::Waiting => {
                available.sort();
                available.dedup();
                if available.len() < self.policy.min_participants {
                    return Vec::new();
                }
                let next = self.round + 1;
                let participants = self.select(next, available);
                let deadline_ms = now_ms.saturating_add(self.policy.deadline_ms);
                self.round = next;
                self.attempt += 1;
                self.open = Some(OpenRound {
                    attempt: self.attempt,
                    participants: participants.iter().cloned().collect(),
                    deadline_ms,
                    received: BTreeMap::new(),
                    failed: BTreeMap::new(),
                });
                self.phase = Phase::Open;
                vec![Action::OpenRound { round: next, attempt: self.attempt, participants, deadline_ms }]
            }
            Phase::Open => {
                let open = self.open.as_ref().expect("an open phase has an open round");
                if now_ms < open.deadline_ms {
                    return Vec::new();
                }
                let received = open.received.len();
                if received >= self.policy.min_participants {
                    self.close()
                } else {
                    self.abandon(format!(
                        "deadline passed with {received} of the {} updates needed",
                        self.policy.min_participants
                    ))
                }
            }
            _ => Vec::new(),
        }
    }

    /// Picks [`Self::selection_size`] of the sorted `available` PDCs: all of them when few enough, else those
    /// ranked first by a hash of (seed, round, id), so selection rotates between rounds and is reproducible.
    fn select(&self, round: u32, available: Vec<String>) -> Vec<String> {
        let size = self.selection_size(available.len());
        if available.len() <= size {
            return available;
        }
        let mut ranked: Vec<(Hash, String)> = available
            .into_iter()
            .map(|id| {
                let mut key = self.policy.seed.to_le_bytes().to_vec();
                key.extend_from_slice(&round.to_le_bytes());
                key.extend_from_slice(id.as_bytes());
                (pdc_ledger::sha3_256(&key), id)
            })
            .collect();
        ranked.sort();
        let mut chosen: Vec<String> = ranked.into_iter().take(size).map(|(_, id)| id).collect();
        chosen.sort();
        chosen
    }

    /// How many of `available` PDCs a round takes: `⌈fraction × available⌉` within `[min, max]`.
    fn selection_size(&self, available: usize) -> usize {
        let wanted = (self.policy.fraction * available as f64).ceil() as usize;
        wanted.clamp(self.policy.min_participants, self.policy.max_participants.max(self.policy.min_participants))
    }

    fn close_if_complete(&mut self) -> Vec<Action> {
        let open = self.open.as_ref().expect("called with an open round");
        if open.received.len() + open.failed.len() < open.participants.len() {
            return Vec::new();
        }
        if open.received.len() >= self.policy.min_participants {
            self.close()
        } else {
            let reason = format!(
                "every participant answered but only {} of the {} updates needed arrived",
                open.received.len(),
                self.policy.min_participants
            );
            self.abandon(reason)
        }
    }

    fn close(&mut self) -> Vec<Action> {
        let open = self.open.take().expect("called with an open round");
        self.phase = Phase::Aggregating;
        self.attempt = 0;
        vec![Action::Aggregate { round: self.round, contributions: open.received.into_iter().collect() }]
    }

    fn abandon(&mut self, reason: String) -> Vec<Action> {
        let open = self.open.take().expect("called with an open round");
        let round = self.round;
        self.round -= 1;
        let mut actions = vec![Action::RoundAbandoned { round, reason: reason.clone() }];
        if open.attempt >= self.policy.max_attempts {
            self.phase =
                Phase::Failed { reason: format!("round {round} failed {} times; last: {reason}", open.attempt) };
            actions.push(Action::Ended);
        } else {
            self.phase = Phase::Waiting;
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RoundPolicy {
        RoundPolicy {
            rounds: 2,
            min_participants: 2,
            max_participants: 3,
            fraction: 1.0,
            deadline_ms: 1_000,
            max_attempts: 2,
            seed: 1,
        }
    }

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn update(n: u64) -> AcceptedUpdate {
        AcceptedUpdate { n_examples: n, update_hash: [n as u8; 32] }
    }

    fn accept(machine: &mut RoundMachine, now: u64, round: u32, pdc: &str) -> Vec<Action> {
        machine.handle(now, Event::UpdateAccepted { round, pdc_id: pdc.into(), update: update(10) }).unwrap()
    }

    #[test]
    fn a_resumed_machine_goes_on_where_it_was() {
        // An open round resumed with its participants: the recorded updates close it as before.
        let open = Resume::Open { round: 2, attempt: 1, participants: ids(&["a", "b"]), deadline_ms: 500 };
        let mut machine = RoundMachine::resume(policy(), open);
        assert_eq!((machine.phase(), machine.round(), machine.participants()), (&Phase::Open, 2, ids(&["a", "b"])));
        assert!(machine.check_update("c", 2).is_err() && machine.check_update("a", 1).is_err());
        assert!(accept(&mut machine, 0, 2, "a").is_empty());
        assert!(matches!(accept(&mut machine, 0, 2, "b")[..], [Action::Aggregate { round: 2, .. }]));
        // An aggregated last round ends the study when its end is handled.
        let mut machine = RoundMachine::resume(policy(), Resume::Aggregating { round: 2 });
        assert_eq!(machine.handle(0, Event::Aggregated { round: 2 }).unwrap(), vec![Action::Ended]);
        assert_eq!(machine.phase(), &Phase::Finished);
        // A waiting machine opens the next round; one more abandoned attempt fails the study (max_attempts 2).
        let mut machine = RoundMachine::resume(policy(), Resume::Waiting { completed: 1, attempts: 1 });
        let actions = machine.handle(10, Event::Tick { available: ids(&["a", "b"]) }).unwrap();
        assert_eq!(
            actions,
            vec![Action::OpenRound { round: 2, attempt: 2, participants: ids(&["a", "b"]), deadline_ms: 1_010 }]
        );
        let actions = machine.handle(2_000, Event::Tick { available: ids(&["a", "b"]) }).unwrap();
        assert!(matches!(actions.last(), Some(Action::Ended)), "{actions:?}");
        assert!(matches!(machine.phase(), Phase::Failed { .. }));
        // An ended study stays ended.
        let ended = Resume::Ended { round: 1, phase: Phase::Stopped { reason: "r".into() } };
        let mut machine = RoundMachine::resume(policy(), ended);
        assert!(machine.handle(0, Event::Start).is_err() && machine.check_update("a", 2).is_err());
    }

    #[test]
    fn a_study_runs_its_rounds_and_finishes() {
        let mut machine = RoundMachine::new(policy());
        machine.handle(0, Event::Start).unwrap();
        // Too few PDCs: nothing opens.
        assert!(machine.handle(1, Event::Tick { available: ids(&["a"]) }).unwrap().is_empty());
        let actions = machine.handle(2, Event::Tick { available: ids(&["b", "a"]) }).unwrap();
        assert_eq!(
            actions,
            vec![Action::OpenRound { round: 1, attempt: 1, participants: ids(&["a", "b"]), deadline_ms: 1_002 }]
        );
        assert!(accept(&mut machine, 3, 1, "b").is_empty());
        let actions = accept(&mut machine, 4, 1, "a");
        assert_eq!(
            actions,
            vec![Action::Aggregate {
                round: 1,
                contributions: vec![("a".into(), update(10)), ("b".into(), update(10))]
            }]
        );
        assert_eq!(machine.phase(), &Phase::Aggregating);
        assert!(machine.handle(5, Event::Aggregated { round: 1 }).unwrap().is_empty());
        machine.handle(6, Event::Tick { available: ids(&["a", "b"]) }).unwrap();
        accept(&mut machine, 7, 2, "a");
        accept(&mut machine, 8, 2, "b");
        assert_eq!(machine.handle(9, Event::Aggregated { round: 2 }).unwrap(), vec![Action::Ended]);
        assert_eq!(machine.phase(), &Phase::Finished);
    }

    #[test]
    fn a_silent_participant_does_not_stop_the_round_at_its_deadline() {
        let mut machine = RoundMachine::new(policy());
        machine.handle(0, Event::Start).unwrap();
        machine.handle(0, Event::Tick { available: ids(&["a", "b", "c"]) }).unwrap();
        accept(&mut machine, 10, 1, "a");
        accept(&mut machine, 20, 1, "b");
        // "c" stays silent: nothing happens before the deadline, the round closes with a and b at it.
        assert!(machine.handle(999, Event::Tick { available: vec![] }).unwrap().is_empty());
        let actions = machine.handle(1_000, Event::Tick { available: vec![] }).unwrap();
        assert!(matches!(&actions[..], [Action::Aggregate { round: 1, contributions }] if contributions.len() == 2));
    }

    #[test]
    fn too_few_updates_abandon_the_round_then_fail_the_study() {
        let mut machine = RoundMachine::new(policy());
        machine.handle(0, Event::Start).unwrap();
        machine.handle(0, Event::Tick { available: ids(&["a", "b"]) }).unwrap();
        accept(&mut machine, 1, 1, "a");
        let actions = machine.handle(1_000, Event::Tick { available: vec![] }).unwrap();
        assert!(matches!(&actions[..], [Action::RoundAbandoned { round: 1, .. }]));
        assert_eq!(machine.round(), 0);
        // The second attempt at round 1 fails the same way, and the study fails.
        let actions = machine.handle(1_001, Event::Tick { available: ids(&["a", "b"]) }).unwrap();
        assert!(matches!(&actions[..], [Action::OpenRound { round: 1, attempt: 2, .. }]));
        let actions = machine
            .handle(1_002, Event::ParticipantFailed { round: 1, pdc_id: "a".into(), reason: "crash".into() })
            .unwrap();
        assert!(actions.is_empty());
        let actions = machine
            .handle(1_003, Event::ParticipantFailed { round: 1, pdc_id: "b".into(), reason: "crash".into() })
            .unwrap();
        assert!(matches!(&actions[..], [Action::RoundAbandoned { .. }, Action::Ended]));
        assert!(matches!(machine.phase(), Phase::Failed { .. }));
    }

    #[test]
    fn out_of_round_duplicate_and_outsider_updates_are_refused_and_change_nothing() {
        let mut machine = RoundMachine::new(policy());
        assert!(machine.check_update("a", 1).unwrap_err().to_string().contains("not started"));
        machine.handle(0, Event::Start).unwrap();
        machine.handle(0, Event::Tick { available: ids(&["a", "b", "c"]) }).unwrap();
        accept(&mut machine, 1, 1, "a");
        let refusals = [
            ("a", 1, "already submitted"),
            ("b", 2, "round 2 is not open"),
            ("b", 0, "round 0 is closed"),
            ("z", 1, "z is not a participant of round 1"),
        ];
        for (pdc, round, expected) in refusals {
            let error = machine
                .handle(2, Event::UpdateAccepted { round, pdc_id: pdc.into(), update: update(1) })
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{pdc} {round}: {error}");
        }
        assert_eq!(machine.phase(), &Phase::Open);
        accept(&mut machine, 3, 1, "b");
        let actions = accept(&mut machine, 4, 1, "c");
        assert!(matches!(&actions[..], [Action::Aggregate { contributions, .. }] if contributions.len() == 3));
        // After the round closed, a late update is refused as closed.
        assert!(machine.check_update("a", 1).unwrap_err().to_string().contains("round 1 is closed"));
    }

    #[test]
    fn selection_is_capped_reproducible_and_rotates() {
        let mut policy = policy();
        policy.rounds = 10;
        policy.max_participants = 2;
        let available = ids(&["a", "b", "c", "d", "e"]);
        let mut machine = RoundMachine::new(policy.clone());
        machine.handle(0, Event::Start).unwrap();
        let mut chosen = Vec::new();
        for round in 1..=5 {
            let actions = machine.handle(0, Event::Tick { available: available.clone() }).unwrap();
            let [Action::OpenRound { participants, .. }] = &actions[..] else { panic!("{actions:?}") };
            assert_eq!(participants.len(), 2);
            chosen.push(participants.clone());
            for pdc in participants {
                accept(&mut machine, 0, round, pdc);
            }
            machine.handle(0, Event::Aggregated { round }).unwrap();
        }
        let distinct: BTreeSet<_> = chosen.iter().flatten().collect();
        assert!(distinct.len() > 2, "selection never rotated: {chosen:?}");
        // The same seed chooses the same PDCs.
        let again = RoundMachine::new(policy).select(1, available);
        assert_eq!(again, chosen[0]);
    }

    #[test]
    fn a_fraction_selects_its_share_of_the_available_within_min_and_max() {
        let mut policy = policy();
        policy.max_participants = 10;
        policy.fraction = 0.3;
        let machine = RoundMachine::new(policy);
        // ⌈0.3 × 10⌉ = 3; ⌈0.3 × 3⌉ = 1 is raised to the minimum 2; ⌈0.3 × 40⌉ = 12 is capped at 10.
        assert_eq!(machine.selection_size(10), 3);
        assert_eq!(machine.selection_size(3), 2);
        assert_eq!(machine.selection_size(40), 10);
        let available: Vec<String> = (0..10).map(|i| format!("h{i}")).collect();
        let chosen = machine.select(1, available.clone());
        assert_eq!(chosen.len(), 3);
        assert!(chosen.windows(2).all(|w| w[0] < w[1]) && chosen.iter().all(|id| available.contains(id)));
        assert_ne!(machine.select(2, available.clone()), chosen, "the sample rotates between rounds");
        assert_eq!(machine.select(1, available), chosen, "and is reproducible");
    }

    #[test]
    fn stop_ends_the_study_and_start_twice_is_refused() {
        let mut machine = RoundMachine::new(policy());
        machine.handle(0, Event::Start).unwrap();
        assert!(machine.handle(0, Event::Start).is_err());
        machine.handle(0, Event::Tick { available: ids(&["a", "b"]) }).unwrap();
        assert_eq!(machine.handle(1, Event::Stop { reason: "done".into() }).unwrap(), vec![Action::Ended]);
        assert!(machine.check_update("a", 1).is_err());
        assert!(machine.handle(2, Event::Stop { reason: "again".into() }).is_err());
    }
}
