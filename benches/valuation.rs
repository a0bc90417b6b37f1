//! Valuation time per round for n = 5, 10, 20 and 50 hospitals with an MLP (hidden [16]) on the 30 breast-cancer
//! features — exact Shapley for n ≤ 10, GTG-Shapley beyond — beside the cost of one coalition evaluation (FedAvg of
//! all n updates, applied to the global model and evaluated on the validation set) measured in the same run
//! (`cargo bench --bench valuation`).

// criterion's macros generate public functions without docs.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use pdc_coordinator::rewards::{
    CoalitionGame, RoundInput, RoundUpdate, UtilityMetric, ValuationSettings, round_seed, value_round,
};
use pdc_models::{Dataset, ModelKind, ModelSpec, Schema, Standardizer, Task, TrainConfig};

const BREAST_CANCER_CSV: &str = include_str!("../data/breast_cancer_wisconsin.csv");

const HOSPITALS: [usize; 4] = [5, 10, 20, 50];

/// A first round of a study: the global model and every hospital's update after one local epoch.
struct Round {
    spec: ModelSpec,
    global: Vec<f32>,
    validation: Dataset,
    ids: Vec<String>,
    n_examples: Vec<u64>,
    deltas: Vec<Vec<f32>>,
}

impl Round {
    fn new(n_hospitals: usize) -> Self {
        let header: Vec<String> = BREAST_CANCER_CSV.lines().next().unwrap().split(',').map(str::to_owned).collect();
        let schema = Schema {
            features: header.iter().filter(|&name| name != "malignant").cloned().collect(),
            label: "malignant".into(),
        };
        let table = pdc_models::parse_csv(BREAST_CANCER_CSV, "breast_cancer_wisconsin.csv", &schema).unwrap();
        let (mut train, mut validation) = pdc_models::train_validation_split(&table, 0.2, 1).unwrap();
        let standardizer = Standardizer::fit(&validation);
        standardizer.apply(&mut train).unwrap();
        standardizer.apply(&mut validation).unwrap();

        let spec = ModelSpec {
            kind: ModelKind::Mlp { hidden: vec![16] },
            n_features: train.n_features(),
            task: Task::BinaryClassification,
        };
        let global = spec.init_parameters(1);
        let parts = pdc_models::partition_iid(&train, n_hospitals, 1).unwrap();
        let mut deltas = Vec::new();
        let mut n_examples = Vec::new();
        for (index, part) in parts.iter().enumerate() {
            let config =
                TrainConfig { epochs: 1, batch_size: 16, learning_rate: 0.1, seed: index as u64, proximal_mu: 0.0 };
            let trained = pdc_models::train_local(&spec, &global, part, &config).unwrap();
            deltas.push(trained.parameters.iter().zip(&global).map(|(t, g)| t - g).collect());
            n_examples.push(trained.n_examples as u64);
        }
        let ids = (0..n_hospitals).map(|index| format!("hospital-{index:02}")).collect();
        Self { spec, global, validation, ids, n_examples, deltas }
    }

    fn updates(&self) -> Vec<RoundUpdate<'_>> {
        (0..self.ids.len())
            .map(|index| RoundUpdate {
                pdc_id: &self.ids[index],
                n_examples: self.n_examples[index],
                delta: &self.deltas[index],
                flagged: false,
            })
            .collect()
    }
}

fn valuation(c: &mut Criterion) {
    let settings = ValuationSettings::default();
    let mut group = c.benchmark_group("valuation_mlp16");
    group.sample_size(10);
    for n in HOSPITALS {
        let round = Round::new(n);
        let updates = round.updates();
        let input = RoundInput {
            round: 0,
            seed: round_seed(1, 0),
            spec: &round.spec,
            global: &round.global,
            validation: &round.validation,
            updates: &updates,
            settings: &settings,
            aggregator: None,
            budget: 100.0,
            carried_in: 0.0,
        };
        let outcome = value_round(&input).unwrap();
        eprintln!(
            "n = {n}: {} with {} evaluations ({} permutations), v(∅) {:.4} → v(N) {:.4}",
            outcome.method, outcome.evaluations, outcome.permutations, outcome.empty_value, outcome.grand_value
        );

        // Baseline: what every coalition evaluation costs at most (the grand coalition aggregates all n updates).
        let everyone: Vec<usize> = (0..n).collect();
        let game =
            CoalitionGame::new(&round.spec, &round.global, &round.validation, UtilityMetric::Auroc, &updates).unwrap();
        group.bench_with_input(BenchmarkId::new("one_coalition_evaluation", n), &everyone, |b, everyone| {
            b.iter(|| black_box(game.evaluate(everyone).unwrap()))
        });
        group.bench_with_input(BenchmarkId::new("value_round", n), &input, |b, input| {
            b.iter(|| black_box(value_round(input).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, valuation);
criterion_main!(benches);
