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

    /// A noise multiplier for a one-shot DP release was NaN, infinite, zero or negative.
    #[error("a DP release needs a finite, positive noise multiplier, got {noise_multiplier}")]
    NonPositiveNoiseMultiplier {
        /// The rejected noise multiplier.
        noise_multiplier: f64,
    },

    /// A feature's clamping bounds were not finite, not increasing, or too close or too far apart to be usable.
    #[error(
        "feature bounds must be finite with lower < upper and a finite, non-zero half-width, \
         got [{lower}, {upper}]"
    )]
    InvalidFeatureBounds {
        /// The rejected lower bound.
        lower: f64,
        /// The rejected upper bound.
        upper: f64,
    },

    /// A feature summary was asked for with no features.
    #[error("a feature summary needs at least one feature")]
    NoFeatures,

    /// A row of a feature table had a different number of values from the number of feature bounds.
    #[error("row {row} has {found} values, expected one per feature ({expected})")]
    RowLengthMismatch {
        /// Position of the offending row.
        row: usize,
        /// The number of features (bounds).
        expected: usize,
        /// The row's length.
        found: usize,
    },

    /// A feature value was NaN or infinite.
    #[error("feature {feature} of row {row} is not finite ({value})")]
    NonFiniteFeature {
        /// Position of the offending row.
        row: usize,
        /// Position of the offending feature in the row.
        feature: usize,
        /// The offending value.
        value: f64,
    },

    /// A table had more rows than a release can sum exactly.
    #[error("{rows} rows is more than the {max_rows} a DP statistic can sum exactly")]
    TooManyRows {
        /// The number of rows given.
        rows: usize,
        /// The most rows a release accepts.
        max_rows: u64,
    },

    /// A binary label was neither 0 nor 1.
    #[error("label at index {index} must be 0 or 1, got {value}")]
    InvalidLabel {
        /// Position of the offending label.
        index: usize,
        /// The offending label.
        value: f64,
    },

    /// Feature summaries were to be combined, but none were given.
    #[error("no feature summaries to combine")]
    NoSummaries,

    /// A feature summary covered a different number of features from the first one.
    #[error("summary {summary} has {found} features, but the first summary has {expected}")]
    FeatureCountMismatch {
        /// Position of the offending summary.
        summary: usize,
        /// The first summary's number of features.
        expected: usize,
        /// The offending summary's number of features.
        found: usize,
    },

    /// A feature summary clamped a feature to different bounds from the first one, so their sums cannot be pooled.
    #[error(
        "summary {summary} clamps feature {feature} to [{found_lower}, {found_upper}], but the first summary \
         clamps it to [{expected_lower}, {expected_upper}]"
    )]
    FeatureBoundsMismatch {
        /// Position of the offending summary.
        summary: usize,
        /// Position of the feature whose bounds differ.
        feature: usize,
        /// The first summary's lower bound.
        expected_lower: f64,
        /// The first summary's upper bound.
        expected_upper: f64,
        /// The offending summary's lower bound.
        found_lower: f64,
        /// The offending summary's upper bound.
        found_upper: f64,
    },

    /// A deserialised DP release was internally inconsistent (lengths, non-finite values, parameters).
    #[error("malformed DP release: {reason}")]
    MalformedRelease {
        /// What is wrong with it.
        reason: String,
    },

    /// A central-DP clip norm was infinite: the noise is proportional to it, so it must be finite.
    #[error("central DP needs a finite clip norm (its noise is proportional to it), got {clip_norm}")]
    ClipNormNotFinite {
        /// The rejected clip norm.
        clip_norm: f64,
    },

    /// An adaptive-clipping target quantile was outside the open interval `(0, 1)`.
    #[error("the target quantile of adaptive clipping must be in (0, 1), got {target_quantile}")]
    InvalidTargetQuantile {
        /// The rejected quantile.
        target_quantile: f64,
    },

    /// An adaptive-clipping learning rate was NaN, infinite, zero or negative.
    #[error("the clip-norm learning rate must be finite and positive, got {learning_rate}")]
    InvalidClipLearningRate {
        /// The rejected learning rate.
        learning_rate: f64,
    },

    /// An adaptive-clipping count noise multiplier was NaN, infinite, zero or negative.
    #[error(
        "the count noise multiplier of adaptive clipping must be finite and positive, got {count_noise_multiplier}"
    )]
    InvalidCountNoiseMultiplier {
        /// The rejected count noise multiplier.
        count_noise_multiplier: f64,
    },

    /// Adaptive clipping's count noise would spend all of the privacy budget meant for the whole round.
    ///
    /// The update noise multiplier is `(z⁻² − (2σ_b)⁻²)^(−1/2)`, which exists only when `2σ_b > z`.
    #[error(
        "adaptive clipping with noise multiplier {noise_multiplier} needs a count noise multiplier above \
         {noise_multiplier}/2, got {count_noise_multiplier}"
    )]
    CountNoiseTooSmall {
        /// The round's total noise multiplier z.
        noise_multiplier: f64,
        /// The rejected count noise multiplier σ_b.
        count_noise_multiplier: f64,
    },

    /// A central-DP round was asked to aggregate no updates.
    #[error("no updates to aggregate")]
    NoUpdates,

    /// An update had a different length from the first one.
    #[error("update {update} has {found} values, but the first update has {expected}")]
    UpdateLengthMismatch {
        /// Position of the offending update.
        update: usize,
        /// The first update's length.
        expected: usize,
        /// The offending update's length.
        found: usize,
    },

    /// An update held a NaN or infinite value.
    #[error("value {index} of update {update} is not finite ({value})")]
    NonFiniteUpdate {
        /// Position of the offending update.
        update: usize,
        /// Position of the offending value in the update.
        index: usize,
        /// The offending value.
        value: f32,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
