//! The crate's single error type: every way a privacy primitive can refuse its input.

/// Errors returned by `pdc-privacy`.
///
/// Each variant names a domain failure and carries the offending value, so that a refused training round can be
/// explained without re-running it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A clipping norm was NaN, zero or negative (positive infinity is allowed and means "do not clip").
    #[error("clip norm must be positive (or +inf for no clipping), got {clip_norm}")]
    InvalidClipNorm {
        /// The rejected clipping norm.
        clip_norm: f64,
    },

    /// A vector handed to a checked clipping or noise function held a NaN or infinite entry.
    #[error("value at index {index} is not finite ({value})")]
    NonFiniteValue {
        /// Position of the first offending entry.
        index: usize,
        /// The offending entry.
        value: f32,
    },

    /// A noise standard deviation was NaN, infinite, zero or negative.
    #[error("noise standard deviation must be finite and positive, got {std_dev}")]
    InvalidStdDev {
        /// The rejected standard deviation.
        std_dev: f64,
    },

    /// The operating system could not provide entropy to seed the noise generator.
    #[error("could not seed the noise generator from the operating system: {reason}")]
    Entropy {
        /// The operating system's explanation.
        reason: String,
    },

    /// OpenDP refused to build or run a measurement.
    #[error("opendp: {message}")]
    OpenDp {
        /// OpenDP's error, rendered (its error type carries a backtrace and is neither `Clone` nor `PartialEq`).
        message: String,
    },

    /// A sampling rate was outside `[0, 1]` or NaN.
    #[error("sampling rate must be in [0, 1], got {sampling_rate}")]
    InvalidSamplingRate {
        /// The rejected sampling rate.
        sampling_rate: f64,
    },

    /// A noise multiplier was NaN, infinite or negative.
    #[error("noise multiplier must be finite and non-negative, got {noise_multiplier}")]
    InvalidNoiseMultiplier {
        /// The rejected noise multiplier.
        noise_multiplier: f64,
    },

    /// A δ was outside the open interval `(0, 1)`.
    #[error("delta must be in (0, 1), got {delta}")]
    InvalidDelta {
        /// The rejected δ.
        delta: f64,
    },

    /// An ε was NaN, infinite, zero or negative where a positive finite ε is required.
    #[error("epsilon must be finite and positive, got {epsilon}")]
    InvalidEpsilon {
        /// The rejected ε.
        epsilon: f64,
    },

    /// An RDP order was NaN, infinite or not greater than 1.
    #[error("RDP orders must be finite and greater than 1, got {order}")]
    InvalidOrder {
        /// The rejected order.
        order: f64,
    },

    /// An RDP accountant was given an empty list of orders.
    #[error("an RDP accountant needs at least one order")]
    NoOrders,

    /// An accountant was earlier asked to compose an event with invalid parameters, through an infallible method.
    ///
    /// The event may stand for privacy that was really spent, so the accountant can no longer vouch for any ε.
    #[error("the accountant refused an earlier event and can no longer report epsilon: {cause}")]
    AccountantPoisoned {
        /// Why the earlier event was refused.
        cause: Box<Error>,
    },

    /// No noise multiplier up to the search limit reached the target ε.
    #[error(
        "no noise multiplier up to {max_noise_multiplier} reaches epsilon {target_epsilon} \
         (delta {delta}, sampling rate {sampling_rate}, {steps} steps)"
    )]
    CalibrationFailed {
        /// The ε that was asked for.
        target_epsilon: f64,
        /// The δ at which ε was measured.
        delta: f64,
        /// The Poisson sampling rate.
        sampling_rate: f64,
        /// The number of steps.
        steps: u64,
        /// The largest noise multiplier tried.
        max_noise_multiplier: f64,
    },

    /// A spend would take a dataset past its privacy budget.
    #[error("spending would reach epsilon {required_epsilon}, over the budget of {budget_epsilon} (delta {delta})")]
    BudgetExceeded {
        /// The cumulative ε the dataset would reach.
        required_epsilon: f64,
        /// The dataset's ε budget.
        budget_epsilon: f64,
        /// The δ at which both are measured.
        delta: f64,
    },

    /// A restored budget claimed to have spent more than its limit, or a negative or non-finite amount.
    #[error("spent epsilon {spent_epsilon} is not within [0, {budget_epsilon}]")]
    InvalidSpend {
        /// The claimed spend.
        spent_epsilon: f64,
        /// The budget's ε limit.
        budget_epsilon: f64,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
