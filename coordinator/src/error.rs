//! The coordinator's error type, and the one place where domain errors become gRPC statuses.

/// Errors of the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The study manifest is not valid TOML, names unknown settings, or holds impossible values.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// The validation set could not be used.
    #[error("invalid validation set: {0}")]
    InvalidValidationSet(#[source] pdc_models::Error),
    /// A request field is malformed.
    #[error("invalid {field}: {detail}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// An update does not fit the study's model or holds values that are not allowed.
    #[error("invalid update from {pdc_id}: {detail}")]
    InvalidUpdate {
        /// The sender.
        pdc_id: String,
        /// What is wrong with it.
        detail: String,
    },
    /// No study has this id.
    #[error("unknown study {0}")]
    UnknownStudy(String),
    /// No open feasibility query has this id (it may have timed out).
    #[error("no open feasibility query {0:?} (it may have timed out)")]
    UnknownQuery(String),
    /// The PDC is not registered.
    #[error("PDC {0} is not registered")]
    UnknownPdc(String),
    /// The same study or update exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request does not fit the study's or round's current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller could not be authenticated.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is authenticated but not allowed to do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A message or stream exceeded a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The update archive could not be read or written.
    #[error("update archive: {0}")]
    Archive(#[source] std::io::Error),
    /// The ledger could not be read or written; the change it was to record did not happen.
    #[error("ledger: {0}")]
    Ledger(String),
    /// The durable study state (RocksDB) could not be read or written, or what it holds does not match the ledger.
    #[error("study state: {0}")]
    State(String),
    /// The consortium file is unreadable, malformed, or contradicts the membership on the ledger.
    #[error("invalid consortium file: {0}")]
    InvalidConsortium(String),
    /// A model could not be trained or evaluated.
    #[error(transparent)]
    Model(#[from] pdc_models::Error),
}

/// The coordinator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        to_status(&error)
    }
}

/// Maps a domain error to the gRPC status the caller sees. `Internal` is reserved for faults of the
/// coordinator itself (a failing disk), never for a caller's mistake.
pub fn to_status(error: &Error) -> tonic::Status {
    use tonic::Code;
    let code = match error {
        Error::InvalidManifest(_)
        | Error::InvalidValidationSet(_)
        | Error::InvalidArgument { .. }
        | Error::InvalidUpdate { .. }
        | Error::InvalidConsortium(_) => Code::InvalidArgument,
        Error::UnknownStudy(_) | Error::UnknownQuery(_) => Code::NotFound,
        Error::UnknownPdc(_) | Error::Unauthenticated(_) => Code::Unauthenticated,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::TooLarge(_) => Code::ResourceExhausted,
        Error::Archive(_) | Error::Model(_) | Error::Ledger(_) | Error::State(_) => Code::Internal,
    };
    tonic::Status::new(code, error.to_string())
}
