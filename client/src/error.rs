//! The hospital agent's error type.

/// Errors of the hospital agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file is unreadable or invalid.
    #[error("config {path}: {detail}")]
    Config {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The identity key could not be loaded.
    #[error(transparent)]
    Identity(#[from] pdc_ledger::Error),
    /// Local data or training failed.
    #[error(transparent)]
    Model(#[from] pdc_models::Error),
    /// A task from the coordinator is unusable.
    #[error("task for study {study_id} round {round}: {detail}")]
    BadTask {
        /// The study.
        study_id: String,
        /// The round.
        round: u32,
        /// What is wrong.
        detail: String,
    },
    /// The configured attack simulation is invalid or does not fit the study's data.
    #[error("simulated attack: {0}")]
    Attack(String),
    /// The privacy spend file is unreadable, inconsistent or cannot be written.
    #[error("spend file {path}: {detail}")]
    Spend {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A round would take the table past its privacy budget; the PDC does not train.
    #[error("study {study_id} round {round}: {detail}")]
    BudgetExhausted {
        /// The study.
        study_id: String,
        /// The round.
        round: u32,
        /// The figures.
        detail: String,
    },
    /// The PDC will not answer a statistics query, by its own policy.
    #[error("statistics query {scope}: {detail}")]
    Declined {
        /// The study or feasibility query asked.
        scope: String,
        /// Why, from the hospital's settings and the query alone, never from its table: it is sent with the
        /// [`FailureCategory::Declined`] category (a table that cannot answer is [`Error::TaskRefused`]).
        detail: String,
    },
    /// The agent refuses a task or query it was sent (not consented, another manifest, outside the consent's
    /// conditions, sizes that do not fit, local data that does not fit); nothing was trained or spent.
    #[error("task for {study_id} round {round} refused ({category}): {detail}")]
    TaskRefused {
        /// The study or query.
        study_id: String,
        /// The round (0 for a statistics query).
        round: u32,
        /// What the coordinator is told.
        category: FailureCategory,
        /// Why, for the hospital's own log only: it may name the table's columns, lines or values.
        detail: String,
    },
    /// The coordinator refused a call.
    #[error("coordinator refused {call}: {status}")]
    Refused {
        /// The RPC.
        call: &'static str,
        /// Its status.
        status: Box<tonic::Status>,
    },
    /// The coordinator could not be reached.
    #[error("cannot reach the coordinator at {endpoint}: {detail}")]
    Unreachable {
        /// Its address.
        endpoint: String,
        /// Why.
        detail: String,
    },
}

/// The hospital agent's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a PDC does not deliver what it was asked for, as the coordinator is told: a fixed category with a stable
/// string, never a detail of the local table (a cell value, a line, a column name, a count). The detail behind it
/// stays in the hospital's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureCategory {
    /// The study is not one this PDC consented to.
    NotConsented,
    /// The task's manifest is not the one the PDC signed its consent to.
    ManifestMismatch,
    /// The task is outside the consent's conditions or the study's rounds (a later round, an expired consent).
    OutsideConsent,
    /// The task would take this study's ε past the consent's `max_epsilon` or the study's `target_epsilon`.
    EpsilonCap,
    /// The task would take the table past its privacy budget.
    BudgetExhausted,
    /// The task, the model or the query is malformed or does not fit the consented manifest.
    InvalidTask,
    /// The local table cannot serve the study.
    LocalData,
    /// Training failed or was aborted (under DP-SGD, after its spend was charged).
    TrainingFailed,
    /// The hospital's policy does not answer this statistics query.
    Declined,
    /// Something on the PDC's side failed (its spend file, say).
    LocalError,
}

impl FailureCategory {
    /// The stable string the coordinator receives (and may put on the ledger).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotConsented => "not_consented",
            Self::ManifestMismatch => "manifest_mismatch",
            Self::OutsideConsent => "outside_consent",
            Self::EpsilonCap => "epsilon_cap",
            Self::BudgetExhausted => "budget_exhausted",
            Self::InvalidTask => "invalid_task",
            Self::LocalData => "local_data",
            Self::TrainingFailed => "training_failed",
            Self::Declined => "declined",
            Self::LocalError => "local_error",
        }
    }
}

impl std::fmt::Display for FailureCategory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// What the coordinator is told when this error ends a task or query.
    pub fn category(&self) -> FailureCategory {
        match self {
            Self::TaskRefused { category, .. } => *category,
            Self::BadTask { .. } => FailureCategory::InvalidTask,
            Self::BudgetExhausted { .. } => FailureCategory::BudgetExhausted,
            Self::Declined { .. } => FailureCategory::Declined,
            Self::Model(_) => FailureCategory::TrainingFailed,
            Self::Refused { call: "DownloadGlobalModel", .. } => FailureCategory::InvalidTask,
            Self::Config { .. }
            | Self::Identity(_)
            | Self::Attack(_)
            | Self::Spend { .. }
            | Self::Refused { .. }
            | Self::Unreachable { .. } => FailureCategory::LocalError,
        }
    }

    /// Whether the agent cannot go on at all: its configuration, key or spend file is unusable. Everything else
    /// the coordinator sends or refuses (an oversized or malformed response, a refused call) is logged and
    /// retried; it never ends the agent.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Config { .. } | Self::Identity(_) | Self::Spend { .. })
    }

    pub(crate) fn refused(call: &'static str, status: tonic::Status) -> Self {
        Self::Refused { call, status: Box::new(status) }
    }

    /// Whether trying again later may succeed (the coordinator was unreachable or unavailable), as opposed to a
    /// refusal that will not change by itself.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Refused { status, .. } => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
            ),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_have_stable_strings_and_never_carry_the_detail() {
        let strings: Vec<&str> = [
            FailureCategory::NotConsented,
            FailureCategory::ManifestMismatch,
            FailureCategory::OutsideConsent,
            FailureCategory::EpsilonCap,
            FailureCategory::BudgetExhausted,
            FailureCategory::InvalidTask,
            FailureCategory::LocalData,
            FailureCategory::TrainingFailed,
            FailureCategory::Declined,
            FailureCategory::LocalError,
        ]
        .into_iter()
        .map(FailureCategory::as_str)
        .collect();
        assert_eq!(
            strings,
            [
                "not_consented",
                "manifest_mismatch",
                "outside_consent",
                "epsilon_cap",
                "budget_exhausted",
                "invalid_task",
                "local_data",
                "training_failed",
                "declined",
                "local_error"
            ]
        );
        // A data error's category is its kind, whatever the cell it names.
        let cell = pdc_models::Error::NotNumeric {
            source_name: "ward.csv".into(),
            line: 7,
            column: "secret_column".into(),
            value: "Jane Doe".into(),
        };
        let refused = Error::TaskRefused {
            study_id: "s".into(),
            round: 1,
            category: FailureCategory::LocalData,
            detail: cell.to_string(),
        };
        assert_eq!(refused.category().to_string(), "local_data");
        assert_eq!(Error::Model(cell).category(), FailureCategory::TrainingFailed);
    }

    #[test]
    fn only_local_configuration_is_fatal() {
        let oversized = Error::refused("ListStudies", tonic::Status::out_of_range("decoded message length too large"));
        assert!(!oversized.is_fatal() && !oversized.is_transient());
        let refused = Error::refused("Register", tonic::Status::already_exists("registered with another key"));
        assert!(!refused.is_fatal());
        assert!(Error::Config { path: "h.toml".into(), detail: "bad".into() }.is_fatal());
        assert!(Error::Spend { path: "a.spend.json".into(), detail: "cannot write".into() }.is_fatal());
    }
}
