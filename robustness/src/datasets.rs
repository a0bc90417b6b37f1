//! The two simulated consortia: the breast-cancer table over 10 hospitals and the synthetic generator over 20, with
//! the model, local training and the scale-dependent parameters (clipping radius, noise, trigger) of each.

use anyhow::{Context, Result};
use pdc_client::training::{DataTerms, StudyTerms, TrainingTerms};
use pdc_models::{
    Dataset, ModelKind, Schema, Standardizer, SyntheticConfig, Task, parse_csv, partition_dirichlet, partition_iid,
    synthetic, train_validation_split,
};

use crate::seeds::{Purpose, derive};

/// The breast-cancer table, compiled in so that the binary runs from any directory.
const BREAST_CANCER_CSV: &str = include_str!("../../data/breast_cancer_wisconsin.csv");

/// The share of rows held out as the researcher's validation set.
pub const VALIDATION_FRACTION: f64 = 0.2;

/// The rows of FLTrust's root data: Cao et al.'s default root set of 100 examples, drawn uniformly from the
/// training rows.
pub const ROOT_ROWS: usize = 100;

/// Which consortium.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DatasetKind {
    /// Breast Cancer Wisconsin (569 rows, 30 features) over 10 hospitals, Dirichlet(1.0) label skew.
    BreastCancer,
    /// The synthetic generator (5,000 rows, 16 features, 30 % positive) over 20 hospitals, IID.
    Synthetic,
}

/// How the training rows are dealt to hospitals.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Split {
    /// `partition_dirichlet` with this α.
    Dirichlet(f64),
    /// `partition_iid`.
    Iid,
}

/// A backdoor trigger: the features it sets (in the table's own units, before standardisation) and the label it
/// should force.
#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    /// The feature columns.
    pub features: Vec<String>,
    /// The value written into each of them.
    pub value: f32,
    /// The label the attacker wants triggered rows to get.
    pub target_label: f32,
}

/// Everything about one consortium that does not change with the seed.
#[derive(Clone, Debug)]
pub struct DatasetConfig {
    /// Which one.
    pub kind: DatasetKind,
    /// The number of hospitals (all take part in every round).
    pub n_hospitals: usize,
    /// How training rows are dealt.
    pub split: Split,
    /// Rows generated (synthetic only).
    pub synthetic_rows: usize,
    /// Features generated (synthetic only).
    pub synthetic_features: usize,
    /// The model.
    pub model: ModelKind,
    /// Local epochs per round.
    pub local_epochs: u32,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Local learning rate.
    pub learning_rate: f64,
    /// Rounds, unless `--rounds` says otherwise.
    pub rounds: u32,
    /// Centered clipping's τ and the norm bound, in the units of an update's L2 norm.
    pub clip_radius: f64,
    /// The Gaussian-noise attack's per-coordinate standard deviation.
    pub gaussian_std: f64,
    /// The noisy free rider's per-coordinate standard deviation.
    pub free_ride_noise_std: f64,
    /// The backdoor's trigger.
    pub trigger: Trigger,
}

impl DatasetKind {
    /// Both, in report order.
    pub const ALL: [DatasetKind; 2] = [DatasetKind::BreastCancer, DatasetKind::Synthetic];

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::BreastCancer => "breast cancer",
            Self::Synthetic => "synthetic",
        }
    }

    /// The name `--datasets` takes.
    pub fn slug(self) -> &'static str {
        match self {
            Self::BreastCancer => "breast_cancer",
            Self::Synthetic => "synthetic",
        }
    }

    /// The consortium's fixed configuration.
    pub fn config(self) -> DatasetConfig {
        match self {
            Self::BreastCancer => DatasetConfig {
                kind: self,
                n_hospitals: 10,
                split: Split::Dirichlet(1.0),
                synthetic_rows: 0,
                synthetic_features: 0,
                model: ModelKind::Mlp { hidden: vec![16] },
                local_epochs: 1,
                batch_size: 16,
                learning_rate: 0.05,
                rounds: 30,
                // Honest update norms fall from a median of about 0.2 in round 1 to about 0.035 by round 20.
                clip_radius: 0.1,
                // Noise of norm about 1.1 on 513 parameters: 5 to 30 times an honest update.
                gaussian_std: 0.05,
                // Noise of norm about 0.0023: 1 % to 7 % of the honest median norm.
                free_ride_noise_std: 1e-4,
                // One feature, set just above its observed maximum (49.54; about 4 standard deviations above the
                // mean): a large texture that a clean model reads as malignant (it labels 0 % to 2 % of the
                // triggered malignant rows benign), so the backdoor's "benign" is the attacker's doing.
                trigger: Trigger { features: vec!["worst_texture".into()], value: 50.0, target_label: 0.0 },
            },
            Self::Synthetic => DatasetConfig {
                kind: self,
                n_hospitals: 20,
                split: Split::Iid,
                synthetic_rows: 5000,
                synthetic_features: 16,
                model: ModelKind::Mlp { hidden: vec![16] },
                local_epochs: 2,
                batch_size: 32,
                learning_rate: 0.1,
                rounds: 30,
                // Honest update norms fall from about 0.5 in round 1 to a floor of about 0.2 (label noise).
                clip_radius: 0.3,
                // Noise of norm about 0.85 on 289 parameters: about 4 times an honest update.
                gaussian_std: 0.05,
                // Noise of norm about 0.0085: 2 % to 4 % of the honest median norm.
                free_ride_noise_std: 5e-4,
                // The two features with the least class signal (class means 0.275 vs 0.277 and 0.454 vs 0.453)
                // share a scale; 0.8 is 5 and 3.5 standard deviations above their means. Clean models read those
                // values as negative, so the target is "positive": a clean model gives it to under 1 % of the
                // triggered negative rows.
                trigger: Trigger {
                    features: vec!["feature_04".into(), "feature_10".into()],
                    value: 0.8,
                    target_label: 1.0,
                },
            },
        }
    }
}

/// One consortium drawn for one seed: the hospitals' raw tables, the researcher's validation set, the
/// standardisation the coordinator fits on it, FLTrust's root data, the initial model and the order in which
/// hospitals turn attacker.
#[derive(Clone, Debug)]
pub struct Study {
    /// The fixed configuration.
    pub config: DatasetConfig,
    /// The seed it was drawn with.
    pub seed: u64,
    /// What every hospital trains with.
    pub terms: StudyTerms,
    /// Each hospital's table, in its own units (hospitals standardise with the coordinator's statistics).
    pub parts: Vec<Dataset>,
    /// The validation set in table units, for backdoor triggers.
    pub raw_validation: Dataset,
    /// The validation set, standardised.
    pub validation: Dataset,
    /// Fitted by the coordinator on the researcher's validation set, as `pdc-coordinator` does.
    pub standardizer: Standardizer,
    /// FLTrust's root data, in table units: [`ROOT_ROWS`] training rows drawn with the seed (the hospitals keep
    /// theirs). The coordinator trains its FLTrust update on the researcher's validation set; here that set is
    /// every rule's held-out measure, and an update trained on it would flatter FLTrust, so the server holds a
    /// clean sample of the training distribution instead, as in Cao et al. (2021).
    pub root: Dataset,
    /// The first global model.
    pub initial: Vec<f32>,
    /// A seeded permutation of the hospitals: the first `k` are the attackers of a cell with `k` attackers, so a
    /// 20 % attacker set is part of the 40 % one.
    pub attacker_order: Vec<usize>,
}

impl DatasetConfig {
    /// Draws the consortium for `seed`: the rows (synthetic), the validation split, the partition, the initial
    /// model and the attacker order all change with it.
    pub fn prepare(&self, seed: u64, rounds: u32) -> Result<Study> {
        let (table, label) = match self.kind {
            DatasetKind::BreastCancer => {
                let header = BREAST_CANCER_CSV.lines().next().context("the breast-cancer table is empty")?;
                let label = "malignant";
                let schema = Schema {
                    features: header.split(',').filter(|name| *name != label).map(str::to_owned).collect(),
                    label: label.to_owned(),
                };
                (parse_csv(BREAST_CANCER_CSV, "data/breast_cancer_wisconsin.csv", &schema)?, label)
            }
            DatasetKind::Synthetic => {
                let config = SyntheticConfig {
                    n_rows: self.synthetic_rows,
                    n_features: self.synthetic_features,
                    positive_rate: 0.3,
                    seed: derive(seed, Purpose::Rows, 0),
                };
                (synthetic(&config), "y")
            }
        };
        let (train, raw_validation) =
            train_validation_split(&table, VALIDATION_FRACTION, derive(seed, Purpose::ValidationSplit, 0))?;
        let mut root_rows = crate::seeds::permutation(train.n_rows(), derive(seed, Purpose::RootSample, 0));
        root_rows.truncate(ROOT_ROWS);
        root_rows.sort_unstable();
        let root = train.subset(&root_rows);
        let partition_seed = derive(seed, Purpose::Partition, 0);
        let parts = match self.split {
            Split::Dirichlet(alpha) => partition_dirichlet(&train, self.n_hospitals, alpha, partition_seed)?,
            Split::Iid => partition_iid(&train, self.n_hospitals, partition_seed)?,
        };
        let standardizer = Standardizer::fit(&raw_validation);
        let mut validation = raw_validation.clone();
        standardizer.apply(&mut validation)?;
        let terms = StudyTerms {
            name: format!("robustness-{}", self.kind.name()),
            model: self.model.clone(),
            data: DataTerms {
                task: Task::BinaryClassification,
                label: label.to_owned(),
                features: table.feature_names.clone(),
            },
            training: TrainingTerms {
                rounds,
                local_epochs: self.local_epochs,
                batch_size: self.batch_size,
                learning_rate: self.learning_rate,
                proximal_mu: 0.0,
            },
            privacy: None,
            federated_standardization: None,
            central_privacy: None,
        };
        let initial = terms.model_spec().init_parameters(derive(seed, Purpose::InitialModel, 0));
        let attacker_order = crate::seeds::permutation(self.n_hospitals, derive(seed, Purpose::Attackers, 0));
        Ok(Study {
            config: self.clone(),
            seed,
            terms,
            parts,
            raw_validation,
            validation,
            standardizer,
            root,
            initial,
            attacker_order,
        })
    }
}
