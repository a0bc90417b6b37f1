//! `pdc data split`: splits a table into a researcher's validation set and N hospital tables, for trying pdc
//! out with separate processes (the demo does the same in memory).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use pdc_models::{Dataset, Schema};

#[derive(clap::Args)]
pub struct SplitArgs {
    /// The table to split (CSV with a header).
    #[arg(long)]
    input: PathBuf,
    /// The label column.
    #[arg(long)]
    label: String,
    /// Number of hospital tables.
    #[arg(long, default_value_t = 3)]
    hospitals: usize,
    /// Share of rows kept as the researcher's validation set.
    #[arg(long, default_value_t = 0.2)]
    validation_fraction: f64,
    /// Dirichlet concentration of the label skew; omit for an IID split.
    #[arg(long)]
    alpha: Option<f64>,
    /// Seed of the split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output folder: validation.csv and hospital-a.csv, hospital-b.csv, …
    #[arg(long)]
    out: PathBuf,
}

pub fn split(args: SplitArgs) -> anyhow::Result<()> {
    if args.hospitals == 0 || args.hospitals > 26 {
        bail!("--hospitals must be between 1 and 26");
    }
    let text = std::fs::read_to_string(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?;
    let header: Vec<String> = text.lines().next().unwrap_or("").split(',').map(|c| c.trim().to_owned()).collect();
    let schema = Schema { features: header.iter().filter(|c| **c != args.label).cloned().collect(), label: args.label };
    let table = pdc_models::parse_csv(&text, &args.input.display().to_string(), &schema)?;
    let (train, validation) = pdc_models::train_validation_split(&table, args.validation_fraction, args.seed)?;
    let parts = match args.alpha {
        Some(alpha) => pdc_models::partition_dirichlet(&train, args.hospitals, alpha, args.seed)?,
        None => pdc_models::partition_iid(&train, args.hospitals, args.seed)?,
    };
    write_csv(&args.out.join("validation.csv"), &validation, &schema)?;
    println!("validation.csv: {} rows", validation.n_rows());
    for (index, part) in parts.iter().enumerate() {
        let name = hospital_name(index);
        write_csv(&args.out.join(format!("{name}.csv")), part, &schema)?;
        println!("{name}.csv: {} rows", part.n_rows());
    }
    Ok(())
}

/// `hospital-a`, `hospital-b`, …
pub fn hospital_name(index: usize) -> String {
    let letter = char::from(b'a' + (index % 26) as u8);
    if index < 26 { format!("hospital-{letter}") } else { format!("hospital-{letter}{}", index / 26) }
}

/// Writes a table as CSV with the schema's columns (features, then label).
pub fn write_csv(path: &Path, data: &Dataset, schema: &Schema) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut text = schema.features.join(",");
    text.push(',');
    text.push_str(&schema.label);
    text.push('\n');
    for row in 0..data.n_rows() {
        for value in data.row(row) {
            write!(text, "{value},")?;
        }
        writeln!(text, "{}", data.labels[row])?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
