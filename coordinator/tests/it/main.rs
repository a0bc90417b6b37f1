//! Integration tests of the coordinator's cores: FedAvg against centralised training with real models, and the
//! aggregation rules and server optimisers against Flower's own outputs.

mod flower;

use pdc_coordinator::aggregation::{FedAvg, apply_delta};
use pdc_models::{ModelKind, ModelSpec, Schema, Standardizer, Task, TrainConfig};

fn breast_cancer() -> (pdc_models::Dataset, pdc_models::Dataset) {
    // From the directory cargo names at run time: the compile-time one is gone if the build cache is shared with a
    // clone elsewhere.
    let path = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR when it runs tests"),
    )
    .join("../data/breast_cancer_wisconsin.csv");
    let text = std::fs::read_to_string(path).unwrap();
    let header: Vec<String> = text.lines().next().unwrap().split(',').map(str::to_owned).collect();
    let schema = Schema { features: header[..header.len() - 1].to_vec(), label: "malignant".into() };
    let table = pdc_models::parse_csv(&text, "breast_cancer_wisconsin.csv", &schema).unwrap();
    let (mut train, mut validation) = pdc_models::train_validation_split(&table, 0.2, 11).unwrap();
    let standardizer = Standardizer::fit(&validation);
    standardizer.apply(&mut train).unwrap();
    standardizer.apply(&mut validation).unwrap();
    (train, validation)
}

/// FedAvg with three hospitals holding the same data reaches the AUROC of centralised training of the same
/// model for the same number of epochs, within 0.01.
#[test]
fn fedavg_on_identical_data_matches_centralised_training() {
    let (train, validation) = breast_cancer();
    let spec = ModelSpec {
        kind: ModelKind::Mlp { hidden: vec![16] },
        n_features: train.n_features(),
        task: Task::BinaryClassification,
    };
    let initial = spec.init_parameters(5);
    let (rounds, local_epochs) = (5u32, 2u32);
    let config = |epochs, seed| TrainConfig { epochs, batch_size: 16, learning_rate: 0.05, seed, proximal_mu: 0.0 };

    let central = pdc_models::train_local(&spec, &initial, &train, &config(rounds * local_epochs, 1)).unwrap();
    let central_auroc = pdc_models::evaluate(&spec, &central.parameters, &validation).unwrap().auroc.unwrap();

    let mut global = initial.clone();
    for round in 0..rounds {
        let mut average = FedAvg::new(global.len());
        for hospital in 0..3u64 {
            // Each hospital shuffles with its own seed, as the coordinator's per-PDC training seeds do.
            let seed = 100 * u64::from(round) + hospital;
            let outcome = pdc_models::train_local(&spec, &global, &train, &config(local_epochs, seed)).unwrap();
            let delta: Vec<f32> = outcome.parameters.iter().zip(&global).map(|(t, g)| t - g).collect();
            average.add(outcome.n_examples as f64, &delta).unwrap();
        }
        global = apply_delta(&global, &average.finish().unwrap()).unwrap();
    }
    let federated_auroc = pdc_models::evaluate(&spec, &global, &validation).unwrap().auroc.unwrap();
    assert!(central_auroc > 0.95, "centralised AUROC {central_auroc}");
    assert!(
        (federated_auroc - central_auroc).abs() <= 0.01,
        "federated {federated_auroc} vs centralised {central_auroc}"
    );
}

/// The same inputs in the same order give the same model, bit for bit: an auditor can replay a round.
#[test]
fn aggregation_is_reproducible_bit_for_bit() {
    let updates: Vec<Vec<f32>> = (0..5).map(|u| (0..1000).map(|i| ((i * 7 + u * 13) as f32).sin()).collect()).collect();
    let run = || {
        let mut average = FedAvg::new(1000);
        for (weight, update) in updates.iter().enumerate() {
            average.add(weight as f64 + 1.0, update).unwrap();
        }
        pdc_ledger::hash::parameters_hash(&average.finish().unwrap())
    };
    assert_eq!(run(), run());
}
