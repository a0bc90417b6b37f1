//! The crate's error type: one enum whose variants name the failure and where it happened.

/// Everything that can go wrong in `pdc-models`.
///
/// Data errors name the source (a file path or the name given to [`parse_csv`](crate::parse_csv)),
/// the 1-based line (the header is line 1) and the column, so that a hospital's data steward can
/// fix the file without reading code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data source could not be opened or read.
    #[error("{source_name}: cannot read: {source}")]
    Io {
        /// The file path or name of the source.
        source_name: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The CSV text has no header line.
    #[error("{source_name}: the file is empty; expected a header line naming the columns")]
    EmptyCsv {
        /// The file path or name of the source.
        source_name: String,
    },

    /// The CSV text has a header but no data rows.
    #[error("{source_name}: the file has a header but no data rows")]
    NoRows {
        /// The file path or name of the source.
        source_name: String,
    },

    /// A column named by the schema is absent from the header.
    #[error("{source_name}, line {line}: the header has no column `{column}`")]
    MissingColumn {
        /// The file path or name of the source.
        source_name: String,
        /// The line of the header (1 unless blank lines precede it).
        line: u64,
        /// The schema's name for the missing column.
        column: String,
    },

    /// A column named by the schema appears more than once in the header, so it is ambiguous.
    #[error("{source_name}, line {line}: column `{column}` appears more than once in the header")]
    DuplicateColumn {
        /// The file path or name of the source.
        source_name: String,
        /// The line of the header (1 unless blank lines precede it).
        line: u64,
        /// The repeated column name.
        column: String,
    },

    /// A row has a different number of fields from the header.
    #[error("{source_name}, line {line}: expected {expected} fields as in the header, found {actual}")]
    FieldCount {
        /// The file path or name of the source.
        source_name: String,
        /// The 1-based line on which the row starts.
        line: u64,
        /// The number of fields in the header.
        expected: usize,
        /// The number of fields in the row.
        actual: usize,
    },

    /// A field the schema needs is empty.
    #[error("{source_name}, line {line}, column `{column}`: the value is missing")]
    MissingValue {
        /// The file path or name of the source.
        source_name: String,
        /// The 1-based line on which the row starts.
        line: u64,
        /// The column name.
        column: String,
    },

    /// A field the schema needs is not a number.
    #[error("{source_name}, line {line}, column `{column}`: `{value}` is not a number")]
    NotNumeric {
        /// The file path or name of the source.
        source_name: String,
        /// The 1-based line on which the row starts.
        line: u64,
        /// The column name.
        column: String,
        /// The offending text.
        value: String,
    },

    /// A field the schema needs is a number but not a finite 32-bit float (NaN, infinite or out
    /// of range).
    #[error("{source_name}, line {line}, column `{column}`: `{value}` is not a finite 32-bit number")]
    NonFiniteValue {
        /// The file path or name of the source.
        source_name: String,
        /// The 1-based line on which the row starts.
        line: u64,
        /// The column name.
        column: String,
        /// The offending text.
        value: String,
    },

    /// The CSV text itself is malformed (for example not valid UTF-8).
    #[error("{source_name}, line {line}: malformed CSV: {message}")]
    MalformedCsv {
        /// The file path or name of the source.
        source_name: String,
        /// The 1-based line of the malformed record, 0 when the reader cannot tell.
        line: u64,
        /// The parser's description of the problem.
        message: String,
    },

    /// A [`Schema`](crate::Schema) is unusable (no features, repeated names, label among features).
    #[error("invalid schema: {reason}")]
    InvalidSchema {
        /// What is wrong with it.
        reason: String,
    },

    /// A [`Dataset`](crate::Dataset)'s parts do not fit together.
    #[error("invalid dataset: {reason}")]
    InvalidDataset {
        /// What is wrong with it.
        reason: String,
    },

    /// A feature value in a [`Dataset`](crate::Dataset) is NaN or infinite.
    #[error("row {row}, feature `{feature}`: value {value} is not finite")]
    NonFiniteFeature {
        /// The 0-based row index.
        row: usize,
        /// The feature name.
        feature: String,
        /// The offending value.
        value: f32,
    },

    /// A label in a [`Dataset`](crate::Dataset) is NaN or infinite.
    #[error("row {row}: label {value} is not finite")]
    NonFiniteLabel {
        /// The 0-based row index.
        row: usize,
        /// The offending value.
        value: f32,
    },

    /// A binary-classification label is neither 0 nor 1.
    #[error("row {row}: label {value} is not 0 or 1, as binary classification requires")]
    NonBinaryLabel {
        /// The 0-based row index.
        row: usize,
        /// The offending value.
        value: f32,
    },

    /// A dataset without rows was given where rows are needed.
    #[error("the dataset has no rows")]
    EmptyDataset,

    /// The data has a different number of features from the model or standardiser.
    #[error("the data has {actual} features but {expected} are expected")]
    FeatureCountMismatch {
        /// The number the model or standardiser was built for.
        expected: usize,
        /// The number in the data.
        actual: usize,
    },

    /// A [`ModelSpec`](crate::ModelSpec) cannot describe a model.
    #[error("invalid model spec: {reason}")]
    InvalidModelSpec {
        /// What is wrong with it.
        reason: String,
    },

    /// A flat parameter vector has the wrong length for its [`Layout`](crate::Layout).
    #[error("expected {expected} parameters for this model, got {actual}")]
    ParameterLength {
        /// The layout's parameter count.
        expected: usize,
        /// The vector's length.
        actual: usize,
    },

    /// A safetensors file could not be written, or read back into a model's layout.
    #[error("safetensors: {0}")]
    Safetensors(String),

    /// A parameter is NaN or infinite.
    #[error("parameter {index} (in tensor `{tensor}`) is not finite: {value}")]
    NonFiniteParameter {
        /// The name of the tensor holding it.
        tensor: String,
        /// The index in the flat parameter vector.
        index: usize,
        /// The offending value.
        value: f32,
    },

    /// An argument is out of its valid range.
    #[error("invalid {name}: {reason}")]
    InvalidArgument {
        /// The argument's name, as in the signature or configuration.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// Training produced a non-finite loss or parameters; a smaller learning rate or
    /// standardised features usually help.
    #[error(
        "training diverged at epoch {epoch}, step {step}: the loss is {loss}; \
         try a smaller learning rate or standardised features and labels"
    )]
    Diverged {
        /// The 1-based epoch.
        epoch: u32,
        /// The 1-based step (mini-batch) counted over all epochs.
        step: u64,
        /// The offending loss.
        loss: f64,
    },

    /// The last SGD update of training made a parameter NaN or infinite.
    #[error(
        "training diverged at epoch {epoch}, step {step}: the updated parameters are not finite; \
         try a smaller learning rate or standardised features and labels"
    )]
    DivergedParameters {
        /// The 1-based epoch.
        epoch: u32,
        /// The 1-based step (mini-batch) counted over all epochs.
        step: u64,
    },

    /// A per-example gradient of DP-SGD is NaN or infinite although the loss is finite, so it
    /// cannot be clipped; a smaller learning rate or standardised features usually help.
    #[error(
        "DP-SGD diverged at epoch {epoch}, step {step}: a per-example gradient is not finite; \
         try a smaller learning rate or standardised features and labels"
    )]
    NonFiniteGradient {
        /// The 1-based epoch.
        epoch: u32,
        /// The 1-based step counted over all epochs.
        step: u64,
    },

    /// A differential-privacy primitive refused (noise seeding, OpenDP's exact sampler).
    #[error("privacy: {0}")]
    Privacy(#[from] pdc_privacy::Error),

    /// The model's output for a row is NaN or infinite, so no metric can be computed.
    #[error("the model's output for row {row} is not finite ({value})")]
    NonFiniteOutput {
        /// The 0-based row index.
        row: usize,
        /// The offending output.
        value: f32,
    },

    /// The tensor backend reported a failure.
    #[error("tensor backend: {0}")]
    Backend(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
