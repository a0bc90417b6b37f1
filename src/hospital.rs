//! `pdc hospital`: runs a PDC agent, or (`pdc hospital budget`) shows what its table has spent of its privacy
//! budget, per study and round, read from the PDC's own spend file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};

#[derive(clap::Subcommand)]
pub enum HospitalCommand {
    /// Replaces the PDC's signing key, recorded on the ledger with the old key's signature.
    RotateKey {
        /// The hospital's config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Shows the table's privacy budget and what each study and round spent of it.
    Budget {
        /// The hospital's config file.
        #[arg(long)]
        config: PathBuf,
        /// Prints every round, not only each study's total.
        #[arg(long)]
        rounds: bool,
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: HospitalCommand) -> anyhow::Result<()> {
    let (config, rounds, json) = match command {
        HospitalCommand::RotateKey { config } => {
            let config = pdc_client::HospitalConfig::load(&config)?;
            let key = pdc_client::agent::rotate_key(&config).await?;
            println!("{}: key rotated; new public key {}", config.pdc_id, hex::encode(key.to_bytes()));
            return Ok(());
        }
        HospitalCommand::Budget { config, rounds, json } => (config, rounds, json),
    };
    let config = pdc_client::HospitalConfig::load(&config)?;
    let Some(privacy) = &config.privacy else {
        bail!("{} declares no privacy budget (no [privacy] table)", config.pdc_id);
    };
    let path = privacy.spend_file.clone().context("the spend file is resolved on load")?;
    if !path.exists() {
        println!(
            "{}: dataset {:?}, budget ε = {} at δ = {}; nothing spent yet ({} does not exist)",
            config.pdc_id,
            privacy.dataset,
            privacy.epsilon,
            privacy.delta,
            path.display()
        );
        return Ok(());
    }
    let store = pdc_client::spend::SpendStore::load(&path)?;
    let limit = store.limit();
    if json {
        let value = serde_json::json!({
            "pdc_id": config.pdc_id,
            "dataset": store.dataset(),
            "budget": { "epsilon": limit.epsilon(), "delta": limit.delta() },
            "spent_epsilon": store.spent(),
            "remaining_epsilon": (limit.epsilon() - store.spent()).max(0.0),
            "releases": store.events(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "{}: dataset {:?}, budget ε = {} at δ = {}: spent ε = {:.4}, remaining {:.4}",
        config.pdc_id,
        store.dataset(),
        limit.epsilon(),
        limit.delta(),
        store.spent(),
        (limit.epsilon() - store.spent()).max(0.0)
    );
    // ε is not additive: each study's share is the rise in the table's cumulative ε over its rounds.
    // Per study (or feasibility query): DP-SGD rounds, statistics releases (round 0) and the ε they added.
    let mut studies: BTreeMap<&str, (u32, u32, f64)> = BTreeMap::new();
    let mut previous = 0.0;
    if rounds {
        println!("  {:<32} {:>5} {:>8} {:>8} {:>6} {:>10}", "study", "round", "q", "σ", "steps", "ε after");
    }
    for event in store.events() {
        let study = studies.entry(&event.study_id).or_default();
        if event.round == 0 {
            study.1 += 1;
        } else {
            study.0 += 1;
        }
        study.2 += event.epsilon_after - previous;
        previous = event.epsilon_after;
        if rounds {
            let round = if event.round == 0 { "stats".to_owned() } else { event.round.to_string() };
            println!(
                "  {:<32} {:>5} {:>8.4} {:>8.4} {:>6} {:>10.4}",
                event.study_id, round, event.sampling_rate, event.noise_multiplier, event.steps, event.epsilon_after
            );
        }
    }
    println!("  {:<32} {:>7} {:>10} {:>12}", "study", "rounds", "statistics", "ε added");
    for (study_id, (rounds, releases, added)) in studies {
        println!("  {study_id:<32} {rounds:>7} {releases:>10} {added:>12.4}");
    }
    Ok(())
}
