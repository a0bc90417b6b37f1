//! The benchmark's matrix: attacks × defences × attacker shares per dataset, and how each cell's attack and
//! aggregation table are built. A defence the coordinator would refuse for the cell's participant count is planned
//! as "n/a" with the coordinator's own reason, never dropped.

use pdc_client::attack::Attack;
use pdc_coordinator::aggregation::AnomalyConfig;
use pdc_coordinator::aggregation::rule::{AggregationConfig, OptimizerKind, RuleKind};

use crate::datasets::{DatasetConfig, DatasetKind};
use crate::seeds::{Purpose, derive};

/// The attacks of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttackKind {
    /// Everyone honest.
    None,
    /// Every label flipped.
    LabelFlip,
    /// The delta negated.
    SignFlip,
    /// The delta negated and multiplied by 4.
    SignFlipX4,
    /// Gaussian noise added to the delta.
    GaussianNoise,
    /// A trigger on poisoned rows, the delta boosted (model replacement).
    Backdoor,
    /// A Little Is Enough, with Baruch et al.'s `z_max`.
    Alie,
    /// Inner product manipulation, ε = 0.1.
    Ipm,
    /// The global model sent back unchanged.
    FreeRide,
    /// The global model plus a little noise.
    FreeRideNoisy,
}

impl AttackKind {
    /// Every attack, in report order.
    pub const ALL: [AttackKind; 10] = [
        Self::None,
        Self::LabelFlip,
        Self::SignFlip,
        Self::SignFlipX4,
        Self::GaussianNoise,
        Self::Backdoor,
        Self::Alie,
        Self::Ipm,
        Self::FreeRide,
        Self::FreeRideNoisy,
    ];

    /// The name tables use.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::LabelFlip => "label flip",
            Self::SignFlip => "sign flip ×1",
            Self::SignFlipX4 => "sign flip ×4",
            Self::GaussianNoise => "Gaussian noise",
            Self::Backdoor => "backdoor + boost",
            Self::Alie => "ALIE",
            Self::Ipm => "IPM",
            Self::FreeRide => "free ride (echo)",
            Self::FreeRideNoisy => "free ride (noise)",
        }
    }

    /// The name `--attacks` takes.
    pub fn slug(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::LabelFlip => "label_flip",
            Self::SignFlip => "sign_flip",
            Self::SignFlipX4 => "sign_flip_x4",
            Self::GaussianNoise => "gaussian_noise",
            Self::Backdoor => "backdoor",
            Self::Alie => "alie",
            Self::Ipm => "ipm",
            Self::FreeRide => "free_ride",
            Self::FreeRideNoisy => "free_ride_noisy",
        }
    }

    /// Whether the attackers are free riders rather than poisoners.
    pub fn is_free_riding(self) -> bool {
        matches!(self, Self::FreeRide | Self::FreeRideNoisy)
    }

    /// The attack hospital `hospital` runs in a round of `n_participants` of which `n_attackers` collude, or
    /// `None` for [`AttackKind::None`].
    pub fn attack(
        self,
        dataset: &DatasetConfig,
        n_participants: usize,
        n_attackers: usize,
        seed: u64,
        hospital: usize,
    ) -> Option<Attack> {
        let attack_seed = derive(seed, Purpose::Attack, hospital as u64);
        let attack = match self {
            Self::None => return None,
            Self::LabelFlip => Attack::LabelFlip { fraction: 1.0, seed: attack_seed },
            Self::SignFlip => Attack::SignFlip { scale: 1.0 },
            Self::SignFlipX4 => Attack::SignFlip { scale: 4.0 },
            Self::GaussianNoise => Attack::GaussianNoise { std: dataset.gaussian_std, seed: attack_seed },
            Self::Backdoor => Attack::Backdoor {
                features: dataset.trigger.features.clone(),
                trigger_value: dataset.trigger.value,
                target_label: dataset.trigger.target_label,
                poison_fraction: BACKDOOR_POISON_FRACTION,
                boost: backdoor_boost(n_participants, n_attackers),
                seed: attack_seed,
            },
            Self::Alie => Attack::Alie {
                z: None,
                n_pdcs: Some(n_participants),
                n_attackers: Some(n_attackers),
                benign_runs: 5,
                seed: attack_seed,
            },
            Self::Ipm => Attack::Ipm { epsilon: IPM_EPSILON, benign_runs: 5, seed: attack_seed },
            Self::FreeRide => Attack::FreeRide { noise_std: 0.0, seed: attack_seed },
            Self::FreeRideNoisy => Attack::FreeRide { noise_std: dataset.free_ride_noise_std, seed: attack_seed },
        };
        Some(attack)
    }
}

/// The share of a backdoor attacker's rows that carry the trigger.
pub const BACKDOOR_POISON_FRACTION: f64 = 0.3;

/// IPM's ε: the crate's default, Xie et al.'s setting against median- and Krum-type rules.
pub const IPM_EPSILON: f64 = 0.1;

/// Model replacement (Bagdasaryan et al.): with `m` of `n` equally weighted participants attacking, boosting each
/// delta by `n / m` makes the attackers' share of the average equal to their own update.
pub fn backdoor_boost(n_participants: usize, n_attackers: usize) -> f64 {
    n_participants as f64 / n_attackers.max(1) as f64
}

/// The aggregation rules of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleChoice {
    /// Weighted FedAvg.
    FedAvg,
    /// Coordinate median.
    Median,
    /// Trimmed mean, β = f / n.
    TrimmedMean,
    /// Krum.
    Krum,
    /// Multi-Krum, m = n − f.
    MultiKrum,
    /// Bulyan.
    Bulyan,
    /// Centered clipping from the previous round's aggregate (as the coordinator runs it), τ from the dataset.
    CenteredClipping,
    /// Norm bound, then weighted FedAvg.
    NormBound,
    /// FLTrust against the server's update on the study's root data.
    FlTrust,
}

impl RuleChoice {
    /// Every rule, in report order.
    pub const ALL: [RuleChoice; 9] = [
        Self::FedAvg,
        Self::Median,
        Self::TrimmedMean,
        Self::Krum,
        Self::MultiKrum,
        Self::Bulyan,
        Self::CenteredClipping,
        Self::NormBound,
        Self::FlTrust,
    ];

    fn kind(self) -> RuleKind {
        match self {
            Self::FedAvg => RuleKind::FedAvg,
            Self::Median => RuleKind::Median,
            Self::TrimmedMean => RuleKind::TrimmedMean,
            Self::Krum => RuleKind::Krum,
            Self::MultiKrum => RuleKind::MultiKrum,
            Self::Bulyan => RuleKind::Bulyan,
            Self::CenteredClipping => RuleKind::CenteredClipping,
            Self::NormBound => RuleKind::NormBound,
            Self::FlTrust => RuleKind::FlTrust,
        }
    }
}

/// A rule, optionally with the anomaly check leaving flagged updates out before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Defence {
    /// The rule.
    pub rule: RuleChoice,
    /// `anomaly.exclude_flagged = true`.
    pub exclude_flagged: bool,
}

impl Defence {
    /// A rule alone.
    pub const fn plain(rule: RuleChoice) -> Self {
        Self { rule, exclude_flagged: false }
    }

    /// A rule behind the anomaly check.
    pub const fn excluding(rule: RuleChoice) -> Self {
        Self { rule, exclude_flagged: true }
    }

    /// The name tables use: the manifest's rule name, with `+anomaly` when flagged updates are left out.
    pub fn name(self) -> String {
        let rule = self.rule.kind().name();
        if self.exclude_flagged { format!("{rule}+anomaly") } else { rule.to_owned() }
    }

    /// The `[aggregation]` table for a round of `n` participants sized for `f` Byzantine ones. The anomaly
    /// thresholds are the study defaults.
    pub fn config(self, dataset: &DatasetConfig, n: usize, f: usize) -> AggregationConfig {
        let mut config = AggregationConfig { rule: self.rule.kind(), ..AggregationConfig::default() };
        match self.rule {
            RuleChoice::FedAvg | RuleChoice::Median | RuleChoice::FlTrust => {}
            RuleChoice::TrimmedMean => config.beta = Some(f as f64 / n as f64),
            RuleChoice::Krum | RuleChoice::MultiKrum | RuleChoice::Bulyan => config.f = Some(f),
            RuleChoice::CenteredClipping => config.tau = Some(dataset.clip_radius),
            RuleChoice::NormBound => config.max_norm = Some(dataset.clip_radius),
        }
        config.anomaly = AnomalyConfig { exclude_flagged: self.exclude_flagged, ..AnomalyConfig::default() };
        config
    }
}

/// A server optimiser on top of every defence's rule, for tuning runs (the default matrix has none). Parameters
/// left out take the coordinator's defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServerOptimizerChoice {
    /// The optimiser.
    pub kind: OptimizerKind,
    /// `server_learning_rate`.
    pub learning_rate: Option<f64>,
    /// `server_momentum` (FedAvgM).
    pub momentum: Option<f64>,
}

impl ServerOptimizerChoice {
    /// Whether this is the default: no server optimiser and no parameters.
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }

    /// Writes the choice into a defence's `[aggregation]` table.
    pub fn apply(&self, config: &mut AggregationConfig) {
        config.server_optimizer = self.kind;
        config.server_learning_rate = self.learning_rate;
        config.server_momentum = self.momentum;
    }

    /// Checks the choice as the coordinator checks a manifest, on a FedAvg table, and returns its reason if it is
    /// refused (e.g. a momentum for an optimiser without one).
    pub fn validate(&self, n_hospitals: usize) -> Result<(), String> {
        let mut config = AggregationConfig::default();
        self.apply(&mut config);
        config.validate(n_hospitals).map_err(|error| format!("the server optimiser is refused: {error}"))
    }

    /// How the report names it, e.g. `fedavgm (server_learning_rate 1, server_momentum 0.9)`; the parameters shown
    /// are the ones given.
    pub fn describe(&self) -> String {
        let mut given = Vec::new();
        if let Some(rate) = self.learning_rate {
            given.push(format!("server_learning_rate {rate}"));
        }
        if let Some(momentum) = self.momentum {
            given.push(format!("server_momentum {momentum}"));
        }
        if given.is_empty() { self.kind.name().to_owned() } else { format!("{} ({})", self.kind, given.join(", ")) }
    }
}

/// The defences of the default matrix: every rule, then the anomaly check in front of FedAvg, the trimmed mean and
/// Multi-Krum.
pub fn default_defences() -> Vec<Defence> {
    let mut defences: Vec<Defence> = RuleChoice::ALL.iter().map(|&rule| Defence::plain(rule)).collect();
    defences.extend([RuleChoice::FedAvg, RuleChoice::TrimmedMean, RuleChoice::MultiKrum].map(Defence::excluding));
    defences
}

/// The Byzantine count rules are sized for in a cell with `attacker_percent` attackers among `n`: the cell's own
/// attacker count, and for the attack-free column the 20 % configuration a study would deploy.
pub fn assumed_byzantine(n: usize, attacker_percent: u32) -> usize {
    attackers_for(n, if attacker_percent == 0 { 20 } else { attacker_percent })
}

/// The number of attackers among `n` at `attacker_percent` (rounded to the nearest hospital).
pub fn attackers_for(n: usize, attacker_percent: u32) -> usize {
    (n * attacker_percent as usize + 50) / 100
}

/// One cell of the matrix (before seeds).
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    /// The consortium.
    pub dataset: DatasetKind,
    /// Attackers, in percent of the hospitals.
    pub attacker_percent: u32,
    /// The attack (`None` exactly when `attacker_percent` is 0).
    pub attack: AttackKind,
    /// The defence.
    pub defence: Defence,
    /// The aggregation table, or why the coordinator refuses it.
    pub plan: Plan,
}

/// Whether a cell runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// It runs with this table.
    Run(Box<AggregationConfig>),
    /// The coordinator's study validation refuses the table for this participant count.
    NotApplicable(String),
}

/// A part of a matrix to run, for quick runs while tuning: each axis given keeps only the values listed (by their
/// `slug`s, shares in percent, defences by their table names such as `multi_krum+anomaly`); `None` keeps the
/// whole axis. The attack `none` stands for the attack-free scenario at 0 %.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    /// `--datasets`.
    pub datasets: Option<Vec<String>>,
    /// `--shares`.
    pub shares: Option<Vec<String>>,
    /// `--attacks`.
    pub attacks: Option<Vec<String>>,
    /// `--defences`.
    pub defences: Option<Vec<String>>,
}

impl Filter {
    /// Whether it keeps the whole matrix.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// What to run.
#[derive(Clone, Debug, PartialEq)]
pub struct MatrixSpec {
    /// The consortia.
    pub datasets: Vec<DatasetKind>,
    /// Attacker shares in percent; 0 runs only the attack-free scenario, the others every attack but `None`.
    pub attacker_percents: Vec<u32>,
    /// The attacks for shares above 0.
    pub attacks: Vec<AttackKind>,
    /// The defences.
    pub defences: Vec<Defence>,
    /// The server optimiser on top of every defence (none in the default matrix).
    pub server: ServerOptimizerChoice,
    /// Multi-Krum's `m` for every Multi-Krum defence, for sweeps between Krum (1) and the default n − f; `None`
    /// keeps the default.
    pub multi_krum_m: Option<usize>,
}

impl MatrixSpec {
    /// The full matrix of the report.
    pub fn default_matrix() -> Self {
        Self {
            datasets: DatasetKind::ALL.to_vec(),
            attacker_percents: vec![0, 20, 40],
            attacks: AttackKind::ALL.iter().copied().filter(|&attack| attack != AttackKind::None).collect(),
            defences: default_defences(),
            server: ServerOptimizerChoice::default(),
            multi_krum_m: None,
        }
    }

    /// A tiny matrix for CI smoke runs: both datasets, three attacks, three defences (Bulyan to show a refusal).
    pub fn quick() -> Self {
        Self {
            datasets: DatasetKind::ALL.to_vec(),
            attacker_percents: vec![0, 20],
            attacks: vec![AttackKind::SignFlip, AttackKind::Backdoor, AttackKind::FreeRide],
            defences: vec![
                Defence::plain(RuleChoice::FedAvg),
                Defence::plain(RuleChoice::TrimmedMean),
                Defence::plain(RuleChoice::Bulyan),
            ],
            server: ServerOptimizerChoice::default(),
            multi_krum_m: None,
        }
    }

    /// The part of this matrix that `filter` keeps: every axis the filter names is cut down to the values it
    /// lists, in this matrix's order. Fails on a name this matrix does not have, listing the ones it does.
    pub fn filtered(&self, filter: &Filter) -> Result<Self, String> {
        fn keep<T: Copy>(
            axis: &str,
            all: &[T],
            wanted: &Option<Vec<String>>,
            name: impl Fn(T) -> String,
        ) -> Result<Vec<T>, String> {
            let Some(wanted) = wanted else { return Ok(all.to_vec()) };
            for value in wanted {
                if !all.iter().any(|&item| name(item) == *value) {
                    let names: Vec<String> = all.iter().map(|&item| name(item)).collect();
                    return Err(format!("`--{axis}` has no `{value}`; it takes {}", names.join(", ")));
                }
            }
            Ok(all.iter().copied().filter(|&item| wanted.contains(&name(item))).collect())
        }
        let mut attacks = self.attacks.clone();
        attacks.insert(0, AttackKind::None);
        let attacks = keep("attacks", &attacks, &filter.attacks, |attack| attack.slug().to_owned())?;
        let mut attacker_percents =
            keep("shares", &self.attacker_percents, &filter.shares, |percent| percent.to_string())?;
        if filter.attacks.is_some() && !attacks.contains(&AttackKind::None) {
            attacker_percents.retain(|&percent| percent > 0);
        }
        Ok(Self {
            datasets: keep("datasets", &self.datasets, &filter.datasets, |dataset| dataset.slug().to_owned())?,
            attacker_percents,
            attacks: attacks.into_iter().filter(|&attack| attack != AttackKind::None).collect(),
            defences: keep("defences", &self.defences, &filter.defences, Defence::name)?,
            server: self.server,
            multi_krum_m: self.multi_krum_m,
        })
    }

    /// Every cell, dataset by dataset, share by share, attack by attack, defence by defence.
    pub fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for &dataset in &self.datasets {
            let config = dataset.config();
            let n = config.n_hospitals;
            for &attacker_percent in &self.attacker_percents {
                let attacks = if attacker_percent == 0 { vec![AttackKind::None] } else { self.attacks.clone() };
                for attack in attacks {
                    for &defence in &self.defences {
                        let mut table = defence.config(&config, n, assumed_byzantine(n, attacker_percent));
                        self.server.apply(&mut table);
                        if defence.rule == RuleChoice::MultiKrum {
                            table.m = self.multi_krum_m.or(table.m);
                        }
                        let plan = match table.validate(n) {
                            Ok(()) => Plan::Run(Box::new(table)),
                            Err(error) => Plan::NotApplicable(error.to_string()),
                        };
                        cells.push(Cell { dataset, attacker_percent, attack, defence, plan });
                    }
                }
            }
        }
        cells
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_round_to_hospitals_and_rules_are_sized_for_twenty_percent_without_attackers() {
        assert_eq!([attackers_for(10, 0), attackers_for(10, 20), attackers_for(10, 40)], [0, 2, 4]);
        assert_eq!([attackers_for(20, 20), attackers_for(20, 40)], [4, 8]);
        assert_eq!(attackers_for(7, 20), 1);
        assert_eq!(assumed_byzantine(10, 0), 2);
        assert_eq!(assumed_byzantine(20, 40), 8);
    }

    #[test]
    fn the_default_matrix_has_every_combination_once() {
        let spec = MatrixSpec::default_matrix();
        let cells = spec.cells();
        // Per dataset: the attack-free row plus 9 attacks at each of 20 % and 40 %, times 12 defences.
        assert_eq!(cells.len(), 2 * (1 + 9 * 2) * 12);
        assert!(cells.iter().all(|cell| (cell.attacker_percent == 0) == (cell.attack == AttackKind::None)));
        let mut keys: Vec<_> =
            cells.iter().map(|cell| (cell.dataset, cell.attacker_percent, cell.attack, cell.defence)).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), cells.len());
    }

    #[test]
    fn refused_combinations_are_planned_as_not_applicable_with_the_coordinators_reason() {
        let cells = MatrixSpec::default_matrix().cells();
        let plan = |dataset, percent, rule| {
            &cells
                .iter()
                .find(|cell| {
                    cell.dataset == dataset
                        && cell.attacker_percent == percent
                        && cell.defence == Defence::plain(rule)
                        && (percent == 0 || cell.attack == AttackKind::SignFlip)
                })
                .unwrap()
                .plan
        };
        // Ten hospitals: Bulyan with f = 2 needs 11, Krum with f = 4 needs 11; twenty: Bulyan with f = 8 needs 35.
        let refused = [
            (DatasetKind::BreastCancer, 0, RuleChoice::Bulyan, "needs at least 4f + 3 = 11 participants"),
            (DatasetKind::BreastCancer, 20, RuleChoice::Bulyan, "needs at least 4f + 3 = 11 participants"),
            (DatasetKind::BreastCancer, 40, RuleChoice::Bulyan, "needs at least 4f + 3 = 19 participants"),
            (DatasetKind::BreastCancer, 40, RuleChoice::Krum, "needs at least 2f + 3 = 11 participants"),
            (DatasetKind::BreastCancer, 40, RuleChoice::MultiKrum, "needs at least 2f + 3 = 11 participants"),
            (DatasetKind::Synthetic, 40, RuleChoice::Bulyan, "needs at least 4f + 3 = 35 participants"),
        ];
        for (dataset, percent, rule, reason) in refused {
            match plan(dataset, percent, rule) {
                Plan::NotApplicable(why) => assert!(why.contains(reason), "{dataset:?} {percent} {rule:?}: {why}"),
                Plan::Run(_) => panic!("{dataset:?} {percent} {rule:?} should be refused"),
            }
        }
        for (dataset, percent, rule) in [
            (DatasetKind::BreastCancer, 20, RuleChoice::Krum),
            (DatasetKind::BreastCancer, 40, RuleChoice::TrimmedMean),
            (DatasetKind::Synthetic, 20, RuleChoice::Bulyan),
            (DatasetKind::Synthetic, 40, RuleChoice::MultiKrum),
            (DatasetKind::BreastCancer, 40, RuleChoice::FlTrust),
        ] {
            assert!(matches!(plan(dataset, percent, rule), Plan::Run(_)), "{dataset:?} {percent} {rule:?}");
        }
        let not_applicable = cells.iter().filter(|cell| matches!(cell.plan, Plan::NotApplicable(_))).count();
        // Bulyan at 0/20/40 % and Krum, Multi-Krum and Multi-Krum+anomaly at 40 % on ten hospitals; Bulyan at
        // 40 % on twenty.
        assert_eq!(not_applicable, 1 + 9 + 9 + 3 * 9 + 9);
    }

    #[test]
    fn tables_carry_the_parameters_for_the_cell() {
        let dataset = DatasetKind::BreastCancer.config();
        let trimmed = Defence::plain(RuleChoice::TrimmedMean).config(&dataset, 10, 4);
        assert_eq!((trimmed.rule, trimmed.beta), (RuleKind::TrimmedMean, Some(0.4)));
        let krum = Defence::excluding(RuleChoice::MultiKrum).config(&dataset, 10, 2);
        assert_eq!((krum.rule, krum.f, krum.m), (RuleKind::MultiKrum, Some(2), None));
        assert!(krum.anomaly.exclude_flagged);
        assert_eq!(Defence::excluding(RuleChoice::MultiKrum).name(), "multi_krum+anomaly");
        let clipping = Defence::plain(RuleChoice::CenteredClipping).config(&dataset, 10, 2);
        assert_eq!(clipping.tau, Some(dataset.clip_radius));
        assert!(Defence::plain(RuleChoice::FedAvg).config(&dataset, 10, 2).is_default());
    }

    #[test]
    fn attacks_are_built_from_the_dataset_and_the_cell() {
        let dataset = DatasetKind::BreastCancer.config();
        assert_eq!(AttackKind::None.attack(&dataset, 10, 0, 1, 0), None);
        match AttackKind::Backdoor.attack(&dataset, 10, 2, 1, 3).unwrap() {
            Attack::Backdoor { boost, poison_fraction, features, .. } => {
                assert_eq!((boost, poison_fraction), (5.0, BACKDOOR_POISON_FRACTION));
                assert_eq!(features, dataset.trigger.features);
            }
            other => panic!("{other:?}"),
        }
        match AttackKind::Alie.attack(&dataset, 10, 4, 1, 3).unwrap() {
            Attack::Alie { n_pdcs, n_attackers, .. } => assert_eq!((n_pdcs, n_attackers), (Some(10), Some(4))),
            other => panic!("{other:?}"),
        }
        for attack in AttackKind::ALL {
            if let Some(built) = attack.attack(&dataset, 10, 2, 1, 0) {
                assert_eq!(built.validate(), Ok(()), "{attack:?}");
            }
        }
        // Two hospitals get different attack seeds.
        assert_ne!(
            AttackKind::GaussianNoise.attack(&dataset, 10, 2, 1, 0),
            AttackKind::GaussianNoise.attack(&dataset, 10, 2, 1, 1)
        );
    }
}
