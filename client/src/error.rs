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
    /// The PDC will not answer a statistics query, by its own policy or because it cannot.
    #[error("statistics query {scope}: {detail}")]
    Declined {
        /// The study or feasibility query asked.
        scope: String,
        /// Why.
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

impl Error {
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
