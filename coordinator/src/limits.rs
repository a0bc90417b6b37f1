//! The coordinator's limits: every cap on what a request may make it hold or compute, in one place.
//!
//! A coordinator that a consortium runs for months must survive every request any party can send. The caps here
//! are the `[limits]` table of `coordinator.toml` (see `examples/coordinator.toml`). Manifest caps are checked
//! by [`crate::manifest::limit_exceeded`] before anything of a study is allocated, at `CreateStudy` and again on
//! every restart (a stored study over them is left out, not fatal); transport caps are applied by
//! [`crate::server`] to every connection and request.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// `[limits]`: the caps a coordinator puts on manifests and connections. Every key is optional; the defaults
/// suit a coordinator with a few GiB of memory serving studies of clinical-table models.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The largest manifest text, in bytes.
    pub max_manifest_bytes: usize,
    /// The most parameters a study's model may have.
    pub max_parameters: u64,
    /// The most parameters a round may make the coordinator hold at once, as
    /// [`crate::manifest::Manifest::round_parameters`] estimates them: plain FedAvg streams (two models and a
    /// 4 MiB piece of each update), but any other rule, a server optimiser, central DP or rewards hold every
    /// update of the round, `participants.max` × the model.
    pub max_round_parameters: u64,
    /// The most hidden layers an MLP may have.
    pub max_layers: usize,
    /// The widest hidden layer.
    pub max_hidden_width: usize,
    /// The most feature columns a study may use.
    pub max_features: usize,
    /// The most rows of a validation set, which the coordinator evaluates every model on (and FLTrust trains on).
    pub max_validation_rows: usize,
    /// The most rounds a study may ask for.
    pub max_rounds: u32,
    /// The largest `participants.max`.
    pub max_participants: usize,
    /// The largest `valuation.gtg.max_permutations` (each permutation evaluates up to one model per participant).
    pub max_gtg_permutations: usize,
    /// The largest `valuation.exact_limit`: exact Shapley evaluates 2^n coalition models.
    pub max_exact_shapley_participants: usize,
    /// The most epochs the coordinator trains its own update for in an FLTrust study (`training.local_epochs`).
    pub max_server_epochs: u32,
    /// Seconds a unary call (and the wait for an upload's reply) may take before it is ended with
    /// `DeadlineExceeded`; feasibility queries get their own timeout on top. Server streams (`WaitTasks`, model
    /// downloads, `WatchStudy`, ledger entries) are not cut: the deadline covers only the wait for their first
    /// response, and an upload's body is bounded by `first_message_timeout_ms` and its chunks' own checks.
    pub request_timeout_secs: u64,
    /// Milliseconds the first message of a client stream (an upload's header) may take to arrive; a stream
    /// without one by then ends with `DeadlineExceeded` and leaves nothing behind.
    pub first_message_timeout_ms: u64,
    /// Seconds between HTTP/2 keep-alive pings on an idle connection, so a vanished peer is noticed.
    pub keepalive_interval_secs: u64,
    /// Seconds a keep-alive ping may go unanswered before the connection is closed.
    pub keepalive_timeout_secs: u64,
    /// HTTP/2 streams one connection may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// Requests one connection may have in its handlers at once; more are refused with `ResourceExhausted`.
    /// A server stream counts only until its first response, so long task streams do not hold a slot.
    pub max_requests_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_manifest_bytes: 64 << 10,
            max_parameters: 50_000_000,
            // 2 GB of `f32`.
            max_round_parameters: 500_000_000,
            max_layers: 64,
            max_hidden_width: 4096,
            max_features: 10_000,
            max_validation_rows: 100_000,
            max_rounds: 100_000,
            max_participants: 1_000,
            max_gtg_permutations: 5_000,
            // 4,096 coalitions a round; the valuation's own default is 10.
            max_exact_shapley_participants: 12,
            max_server_epochs: 100,
            request_timeout_secs: 120,
            first_message_timeout_ms: 10_000,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 20,
            max_concurrent_streams: 256,
            max_requests_per_connection: 64,
        }
    }
}

impl Limits {
    /// Checks that every limit lets something through: a zero cap would refuse every study or every call.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the `limits.…` key.
    pub fn validate(&self) -> Result<()> {
        let zero = [
            ("limits.max_manifest_bytes", self.max_manifest_bytes as u64),
            ("limits.max_parameters", self.max_parameters),
            ("limits.max_round_parameters", self.max_round_parameters),
            ("limits.max_layers", self.max_layers as u64),
            ("limits.max_hidden_width", self.max_hidden_width as u64),
            ("limits.max_features", self.max_features as u64),
            ("limits.max_validation_rows", self.max_validation_rows as u64),
            ("limits.max_rounds", u64::from(self.max_rounds)),
            ("limits.max_participants", self.max_participants as u64),
            ("limits.max_gtg_permutations", self.max_gtg_permutations as u64),
            ("limits.max_server_epochs", u64::from(self.max_server_epochs)),
            ("limits.request_timeout_secs", self.request_timeout_secs),
            ("limits.first_message_timeout_ms", self.first_message_timeout_ms),
            ("limits.keepalive_interval_secs", self.keepalive_interval_secs),
            ("limits.keepalive_timeout_secs", self.keepalive_timeout_secs),
            ("limits.max_concurrent_streams", u64::from(self.max_concurrent_streams)),
            ("limits.max_requests_per_connection", self.max_requests_per_connection as u64),
        ];
        if let Some((field, _)) = zero.iter().find(|(_, value)| *value == 0) {
            return Err(Error::InvalidArgument { field, detail: "must be at least 1".into() });
        }
        let hard = crate::valuation::EXACT_HARD_LIMIT;
        if self.max_exact_shapley_participants > hard {
            return Err(Error::InvalidArgument {
                field: "limits.max_exact_shapley_participants",
                detail: format!(
                    "{} is above exact Shapley's hard limit of {hard}",
                    self.max_exact_shapley_participants
                ),
            });
        }
        Ok(())
    }

    /// [`Limits::request_timeout_secs`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// [`Limits::first_message_timeout_ms`] as a duration.
    pub fn first_message_timeout(&self) -> Duration {
        Duration::from_millis(self.first_message_timeout_ms)
    }
}

/// `n` with its digits grouped by thousands (`134,183,895,044`), as limit refusals print counts.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(134_183_895_044), "134,183,895,044");
        assert_eq!(grouped(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn the_defaults_validate_and_a_zero_cap_is_named() {
        Limits::default().validate().unwrap();
        let limits: Limits = toml::from_str("max_parameters = 0").unwrap();
        assert_eq!(limits.validate().unwrap_err().to_string(), "invalid limits.max_parameters: must be at least 1");
        let limits: Limits = toml::from_str("max_exact_shapley_participants = 21").unwrap();
        assert!(limits.validate().unwrap_err().to_string().contains("hard limit of 20"));
        // Unknown keys are errors, so a typo never silently keeps a default.
        let typo = toml::from_str::<Limits>("max_paramters = 10").unwrap_err().to_string();
        assert!(typo.contains("unknown field `max_paramters`"), "{typo}");
    }
}
