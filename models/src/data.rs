//! Tabular datasets in memory and their loading from CSV files with precise, located errors.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which CSV columns a model reads: the features, in model order, and the label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    /// The feature columns, in the order the model sees them.
    pub features: Vec<String>,
    /// The label column.
    pub label: String,
}

/// A table of numeric features and one label per row, held row-major.
///
/// The fields are public for cheap access; [`Dataset::from_parts`] and [`Dataset::validate`]
/// check that they fit together. Every function of this crate that consumes a dataset validates
/// it first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    /// The feature names; their count is the number of features.
    pub feature_names: Vec<String>,
    /// The feature values, row-major: `n_rows x n_features`.
    pub features: Vec<f32>,
    /// The labels, one per row.
    pub labels: Vec<f32>,
}

impl Schema {
    /// Checks that the schema names at least one feature, no name twice, and not the label as a
    /// feature.
    pub fn validate(&self) -> Result<()> {
        if self.features.is_empty() {
            return Err(Error::InvalidSchema { reason: "no feature columns".to_owned() });
        }
        let mut seen = HashMap::new();
        for name in &self.features {
            if seen.insert(name.as_str(), ()).is_some() {
                return Err(Error::InvalidSchema { reason: format!("feature `{name}` is listed twice") });
            }
        }
        if seen.contains_key(self.label.as_str()) {
            return Err(Error::InvalidSchema { reason: format!("label `{}` is also listed as a feature", self.label) });
        }
        Ok(())
    }
}

impl Dataset {
    /// Builds a dataset after checking that the parts fit together and hold only finite values.
    pub fn from_parts(feature_names: Vec<String>, features: Vec<f32>, labels: Vec<f32>) -> Result<Dataset> {
        let dataset = Dataset { feature_names, features, labels };
        dataset.validate()?;
        Ok(dataset)
    }

    /// Checks that there is at least one feature, that `features` holds `n_rows x n_features`
    /// values, and that every feature and label is finite.
    pub fn validate(&self) -> Result<()> {
        let n_features = self.n_features();
        if n_features == 0 {
            return Err(Error::InvalidDataset { reason: "no features".to_owned() });
        }
        if self.features.len() != self.labels.len() * n_features {
            return Err(Error::InvalidDataset {
                reason: format!(
                    "{} feature values for {} labels and {} features; expected {}",
                    self.features.len(),
                    self.labels.len(),
                    n_features,
                    self.labels.len() * n_features
                ),
            });
        }
        if let Some(index) = self.features.iter().position(|value| !value.is_finite()) {
            return Err(Error::NonFiniteFeature {
                row: index / n_features,
                feature: self.feature_names[index % n_features].clone(),
                value: self.features[index],
            });
        }
        if let Some(row) = self.labels.iter().position(|value| !value.is_finite()) {
            return Err(Error::NonFiniteLabel { row, value: self.labels[row] });
        }
        Ok(())
    }

    /// The number of rows.
    pub fn n_rows(&self) -> usize {
        self.labels.len()
    }

    /// The number of features per row.
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    /// The features of row `index`.
    ///
    /// # Panics
    ///
    /// Panics if `index >= self.n_rows()`, like slice indexing.
    pub fn row(&self, index: usize) -> &[f32] {
        let n_features = self.n_features();
        &self.features[index * n_features..(index + 1) * n_features]
    }

    /// A new dataset with the given rows, in the given order (repeats allowed).
    ///
    /// # Panics
    ///
    /// Panics if an index is out of range, like slice indexing.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut features = Vec::with_capacity(indices.len() * self.n_features());
        for &index in indices {
            features.extend_from_slice(self.row(index));
        }
        Dataset {
            feature_names: self.feature_names.clone(),
            features,
            labels: indices.iter().map(|&index| self.labels[index]).collect(),
        }
    }

    /// Whether every label is 0 or 1.
    pub fn has_binary_labels(&self) -> bool {
        self.labels.iter().all(|&label| label == 0.0 || label == 1.0)
    }

    /// The number of rows labelled 1.
    pub fn positive_count(&self) -> usize {
        self.labels.iter().filter(|&&label| label == 1.0).count()
    }

    /// The number of rows labelled 0 and 1, in that order; other labels are not counted.
    pub fn label_counts(&self) -> [usize; 2] {
        let negatives = self.labels.iter().filter(|&&label| label == 0.0).count();
        [negatives, self.positive_count()]
    }

    /// Checks that every label is 0 or 1, naming the first that is not.
    pub fn check_binary_labels(&self) -> Result<()> {
        match self.labels.iter().position(|&label| label != 0.0 && label != 1.0) {
            Some(row) => Err(Error::NonBinaryLabel { row, value: self.labels[row] }),
            None => Ok(()),
        }
    }
}

/// Loads the schema's columns from a CSV file with a header line.
///
/// See [`read_csv`] for the format and the errors; they name `path`.
pub fn load_csv(path: &Path, schema: &Schema) -> Result<Dataset> {
    let source_name = path.display().to_string();
    let file = File::open(path).map_err(|source| Error::Io { source_name: source_name.clone(), source })?;
    read_csv(file, &source_name, schema)
}

/// Parses the schema's columns from CSV text with a header line.
///
/// See [`read_csv`] for the format and the errors; they name `source_name`.
///
/// # Example
///
/// ```
/// use pdc_models::{parse_csv, Schema};
///
/// let schema = Schema { features: vec!["age".into(), "bmi".into()], label: "outcome".into() };
/// let data = parse_csv("id,bmi,age,outcome\n7,22.5,61,1\n8,30.1,45,0\n", "inline", &schema)?;
/// assert_eq!(data.row(0), &[61.0, 22.5]);
/// assert_eq!(data.labels, vec![1.0, 0.0]);
///
/// let error = parse_csv("age,bmi,outcome\n61,n/a,1\n", "inline", &schema).unwrap_err();
/// assert_eq!(error.to_string(), "inline, line 2, column `bmi`: `n/a` is not a number");
/// # Ok::<(), pdc_models::Error>(())
/// ```
pub fn parse_csv(text: &str, source_name: &str, schema: &Schema) -> Result<Dataset> {
    read_csv(text.as_bytes(), source_name, schema)
}

/// Reads the schema's columns from CSV data with a header line.
///
/// Columns are found by header name, so their order does not matter and extra columns are
/// ignored. Fields are trimmed of surrounding whitespace; blank lines are skipped. Every row must
/// have as many fields as the header, and every feature and label field must be a finite number.
/// Errors name `source_name`, the 1-based line (the header is line 1) and the column.
pub fn read_csv(reader: impl Read, source_name: &str, schema: &Schema) -> Result<Dataset> {
    schema.validate()?;
    let mut columns = schema.features.clone();
    columns.push(schema.label.clone());
    let values = read_columns(reader, source_name, &columns)?;
    let n_features = schema.features.len();
    let mut features = Vec::with_capacity(values.len() / columns.len() * n_features);
    let mut labels = Vec::with_capacity(values.len() / columns.len());
    for row in values.chunks_exact(columns.len()) {
        features.extend_from_slice(&row[..n_features]);
        labels.push(row[n_features]);
    }
    Dataset::from_parts(schema.features.clone(), features, labels)
}

impl Dataset {
    /// Loads one column of a CSV file with a header line (a label column, say): its values in row order.
    ///
    /// Only that column is parsed, so no other cell of the table can make it fail or appear in its error. The
    /// format and the errors are those of [`read_csv`].
    pub fn load_column(path: &Path, column: &str) -> Result<Vec<f32>> {
        let source_name = path.display().to_string();
        let file = File::open(path).map_err(|source| Error::Io { source_name: source_name.clone(), source })?;
        read_columns(file, &source_name, &[column.to_owned()])
    }
}

/// The named columns' values, row-major: every field of those columns must be a finite number; no other field is
/// parsed (only each row's field count is checked against the header).
fn read_columns(reader: impl Read, source_name: &str, names: &[String]) -> Result<Vec<f32>> {
    let mut reader =
        csv::ReaderBuilder::new().has_headers(false).flexible(true).trim(csv::Trim::All).from_reader(reader);
    let mut records = reader.records();
    let csv_error = |error: csv::Error| {
        let line = error.position().map_or(0, csv::Position::line);
        let message = error.to_string();
        match error.into_kind() {
            csv::ErrorKind::Io(source) => Error::Io { source_name: source_name.to_owned(), source },
            _ => Error::MalformedCsv { source_name: source_name.to_owned(), line, message },
        }
    };

    let header = match records.next() {
        Some(record) => record.map_err(csv_error)?,
        None => {
            return Err(Error::EmptyCsv { source_name: source_name.to_owned() });
        }
    };
    let header_line = line_of(&header);
    let columns = ColumnMap::new(&header, header_line, source_name, names)?;

    let mut values = Vec::new();
    let mut n_rows = 0usize;
    for record in records {
        let record = record.map_err(csv_error)?;
        let line = line_of(&record);
        if record.len() != header.len() {
            return Err(Error::FieldCount {
                source_name: source_name.to_owned(),
                line,
                expected: header.len(),
                actual: record.len(),
            });
        }
        for (&index, name) in columns.indices.iter().zip(names) {
            values.push(parse_field(&record[index], source_name, line, name)?);
        }
        n_rows += 1;
    }
    if n_rows == 0 {
        return Err(Error::NoRows { source_name: source_name.to_owned() });
    }
    Ok(values)
}

/// Where the named columns sit in the header.
struct ColumnMap {
    indices: Vec<usize>,
}

impl ColumnMap {
    fn new(header: &csv::StringRecord, line: u64, source_name: &str, names: &[String]) -> Result<ColumnMap> {
        let mut positions: HashMap<&str, Vec<usize>> = HashMap::new();
        for (index, name) in header.iter().enumerate() {
            // A UTF-8 byte-order mark, as spreadsheet exports write it, is not part of the name.
            let name = if index == 0 { name.trim_start_matches('\u{feff}') } else { name };
            positions.entry(name).or_default().push(index);
        }
        let find = |column: &str| match positions.get(column).map(Vec::as_slice) {
            Some([index]) => Ok(*index),
            Some(_) => {
                Err(Error::DuplicateColumn { source_name: source_name.to_owned(), line, column: column.to_owned() })
            }
            None => Err(Error::MissingColumn { source_name: source_name.to_owned(), line, column: column.to_owned() }),
        };
        Ok(ColumnMap { indices: names.iter().map(|name| find(name)).collect::<Result<_>>()? })
    }
}

fn line_of(record: &csv::StringRecord) -> u64 {
    record.position().map_or(0, csv::Position::line)
}

fn parse_field(text: &str, source_name: &str, line: u64, column: &str) -> Result<f32> {
    if text.is_empty() {
        return Err(Error::MissingValue { source_name: source_name.to_owned(), line, column: column.to_owned() });
    }
    let value: f32 = text.parse().map_err(|_| Error::NotNumeric {
        source_name: source_name.to_owned(),
        line,
        column: column.to_owned(),
        value: text.to_owned(),
    })?;
    if !value.is_finite() {
        return Err(Error::NonFiniteValue {
            source_name: source_name.to_owned(),
            line,
            column: column.to_owned(),
            value: text.to_owned(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn schema() -> Schema {
        Schema { features: vec!["a".to_owned(), "b".to_owned()], label: "y".to_owned() }
    }

    fn error_of(text: &str) -> String {
        parse_csv(text, "ward.csv", &schema()).unwrap_err().to_string()
    }

    #[test]
    fn columns_are_found_by_name_and_extras_ignored() {
        let data = parse_csv(" y , note, b,a\n1, x ,2.5,-3\n0,,1e-3, 4\n", "t", &schema()).unwrap();
        assert_eq!(data.feature_names, vec!["a", "b"]);
        assert_eq!(data.features, vec![-3.0, 2.5, 4.0, 0.001]);
        assert_eq!(data.labels, vec![1.0, 0.0]);
        assert_eq!(data.n_rows(), 2);
        assert_eq!(data.row(1), &[4.0, 0.001]);
    }

    #[test]
    fn a_byte_order_mark_and_blank_lines_are_tolerated() {
        let data = parse_csv("\u{feff}a,b,y\n\n1,2,0\n", "t", &schema()).unwrap();
        assert_eq!(data.features, vec![1.0, 2.0]);
    }

    #[test]
    fn a_missing_column_is_named() {
        assert_eq!(error_of("a,c,y\n1,2,0\n"), "ward.csv, line 1: the header has no column `b`");
        assert_eq!(error_of("a,b\n1,2\n"), "ward.csv, line 1: the header has no column `y`");
    }

    #[test]
    fn a_duplicated_column_is_named() {
        assert_eq!(error_of("a,b,a,y\n1,2,3,0\n"), "ward.csv, line 1: column `a` appears more than once in the header");
    }

    #[test]
    fn a_row_with_the_wrong_field_count_is_located() {
        assert_eq!(error_of("a,b,y\n1,2,0\n1,2\n"), "ward.csv, line 3: expected 3 fields as in the header, found 2");
        assert_eq!(error_of("a,b,y\n1,2,0,9\n"), "ward.csv, line 2: expected 3 fields as in the header, found 4");
    }

    #[test]
    fn a_non_numeric_value_is_located() {
        assert_eq!(error_of("a,b,y\n1,2,0\n1,2,0\n1,abc,1\n"), "ward.csv, line 4, column `b`: `abc` is not a number");
        assert_eq!(error_of("a,b,y\n1,2,yes\n"), "ward.csv, line 2, column `y`: `yes` is not a number");
    }

    #[test]
    fn a_missing_value_is_located() {
        assert_eq!(error_of("a,b,y\n1,2,0\n, 2,0\n"), "ward.csv, line 3, column `a`: the value is missing");
    }

    #[test]
    fn non_finite_values_are_located() {
        for (text, value) in [("nan", "nan"), ("inf", "inf"), ("-Infinity", "-Infinity"), ("1e39", "1e39")] {
            assert_eq!(
                error_of(&format!("a,b,y\n1,2,0\n1,{text},0\n")),
                format!("ward.csv, line 3, column `b`: `{value}` is not a finite 32-bit number")
            );
        }
    }

    #[test]
    fn line_numbers_count_quoted_newlines() {
        assert_eq!(
            error_of("a,b,y,note\n1,2,0,\"two\nlines\"\n1,x,0,ok\n"),
            "ward.csv, line 4, column `b`: `x` is not a number"
        );
    }

    #[test]
    fn empty_files_and_files_without_rows_are_errors() {
        assert_eq!(error_of(""), "ward.csv: the file is empty; expected a header line naming the columns");
        assert_eq!(error_of("a,b,y\n"), "ward.csv: the file has a header but no data rows");
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let error = read_csv(&b"a,b,y\n1,\xff,0\n"[..], "ward.csv", &schema()).unwrap_err();
        assert!(matches!(error, Error::MalformedCsv { line: 2, .. }), "{error}");
    }

    #[test]
    fn invalid_schemas_are_rejected() {
        let mut bad = schema();
        bad.features.push("a".to_owned());
        assert!(parse_csv("a,b,y\n1,2,0\n", "t", &bad).unwrap_err().to_string().contains("`a` is listed twice"));
        bad.features = vec!["y".to_owned()];
        assert!(matches!(parse_csv("y\n1\n", "t", &bad), Err(Error::InvalidSchema { .. })));
    }

    #[test]
    fn only_the_named_columns_are_parsed() {
        // A note column with free text, and a cell that is no number in a column the schema does not name.
        let text = "a,b,y,note,extra\n1,2,0,Jane Doe,x\n3,4,1,\"ward 3, bed 2\",\n";
        let data = parse_csv(text, "t", &schema()).unwrap();
        assert_eq!((data.features, data.labels), (vec![1.0, 2.0, 3.0, 4.0], vec![0.0, 1.0]));
        let mut file = tempfile::NamedTempFile::new().unwrap();
        write!(file, "{text}").unwrap();
        assert_eq!(Dataset::load_column(file.path(), "y").unwrap(), vec![0.0, 1.0]);
        assert_eq!(Dataset::load_column(file.path(), "b").unwrap(), vec![2.0, 4.0]);
        let error = Dataset::load_column(file.path(), "note").unwrap_err();
        assert!(matches!(&error, Error::NotNumeric { line: 2, .. }), "{error}");
        let error = Dataset::load_column(file.path(), "absent").unwrap_err();
        assert!(matches!(&error, Error::MissingColumn { .. }), "{error}");
    }

    #[test]
    fn load_csv_names_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "a,b,y\n1,2,0\n3,x,1").unwrap();
        let error = load_csv(file.path(), &schema()).unwrap_err().to_string();
        assert_eq!(error, format!("{}, line 3, column `b`: `x` is not a number", file.path().display()));
        let missing = file.path().with_extension("absent");
        let error = load_csv(&missing, &schema()).unwrap_err();
        assert!(matches!(error, Error::Io { .. }));
        assert!(error.to_string().starts_with(&missing.display().to_string()));
    }

    #[test]
    fn from_parts_checks_shape_and_finiteness() {
        let names = vec!["a".to_owned(), "b".to_owned()];
        assert!(Dataset::from_parts(names.clone(), vec![1.0, 2.0, 3.0], vec![0.0, 1.0]).is_err());
        let error = Dataset::from_parts(names.clone(), vec![1.0, 2.0, 3.0, f32::INFINITY], vec![0.0, 1.0]).unwrap_err();
        assert_eq!(error.to_string(), "row 1, feature `b`: value inf is not finite");
        let error = Dataset::from_parts(names.clone(), vec![1.0, 2.0], vec![f32::NAN]).unwrap_err();
        assert!(matches!(error, Error::NonFiniteLabel { row: 0, .. }));
        assert!(Dataset::from_parts(vec![], vec![], vec![]).is_err());
        let data = Dataset::from_parts(names, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], vec![0.0, 1.0, 1.0]).unwrap();
        let picked = data.subset(&[2, 0]);
        assert_eq!(picked.features, vec![5.0, 6.0, 1.0, 2.0]);
        assert_eq!(picked.labels, vec![1.0, 0.0]);
        assert_eq!(data.positive_count(), 2);
        assert_eq!(data.label_counts(), [1, 2]);
        assert!(data.has_binary_labels());
    }

    #[test]
    fn the_bundled_datasets_load() {
        let root = crate::test_data::data_dir();
        let cancer = load_csv(&root.join("breast_cancer_wisconsin.csv"), &crate::test_data::cancer_schema()).unwrap();
        assert_eq!((cancer.n_rows(), cancer.n_features()), (569, 30));
        assert_eq!(cancer.label_counts(), [357, 212]);
        let diabetes = load_csv(&root.join("diabetes_progression.csv"), &crate::test_data::diabetes_schema()).unwrap();
        assert_eq!((diabetes.n_rows(), diabetes.n_features()), (442, 10));
    }
}
