//! `hospital.toml`: who the PDC is, where its data is, and which studies it agrees to join.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::attack::Attack;
use crate::{Error, Result};

/// A hospital's configuration (see `examples/hospital-a.toml`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HospitalConfig {
    /// The PDC's id, unique in the consortium.
    pub pdc_id: String,
    /// The coordinator's URL, e.g. `http://127.0.0.1:50051`.
    pub coordinator: String,
    /// The PDC's Ed25519 key file (created on first start); relative to the config file.
    pub key_file: PathBuf,
    /// The local table (CSV with a header); relative to the config file. It never leaves the PDC.
    pub data: PathBuf,
    /// Which studies to consent to.
    #[serde(default)]
    pub consent: ConsentPolicy,
    /// Reconnection back-off.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Failure injection for tests and drills.
    #[serde(default)]
    pub simulate: Simulation,
    /// Misbehaviour for robustness tests and benchmarks (the `[attack]` table); absent for an honest hospital.
    #[serde(default)]
    pub attack: Option<Attack>,
    /// The differential-privacy budget of the local table. With it the PDC joins only studies that train with
    /// local DP; without it, only studies that do not.
    #[serde(default)]
    pub privacy: Option<PrivacyConfig>,
    /// TLS to the coordinator (then an `https://` URL), with the PDC's own certificate; without it the
    /// connection is plaintext (for loopback demos and tests).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How model downloads and update uploads are compressed, chunk by chunk: `"none"` (the default) or
    /// `"zstd"`, which pays when updates are sparse or low-entropy and the link is slow.
    #[serde(default)]
    pub compression: Compression,
}

/// Chunk compression of model and update transfers.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Raw little-endian `f32` bytes.
    #[default]
    None,
    /// Each chunk one zstd frame.
    Zstd,
}

/// `[tls]`: whom to trust, and the certificate that proves the PDC's identity (mutual TLS).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The coordinator's certificate, or the CA that issued it (PEM); relative to the config file.
    pub ca: PathBuf,
    /// The PDC's certificate (PEM, from `pdc keygen`), which must certify the key in `key_file`: that key is the
    /// TLS key. Relative to the config file.
    pub cert: PathBuf,
    /// The name to check the coordinator's certificate for, when it is not the URL's host.
    #[serde(default)]
    pub domain: Option<String>,
}

/// `[privacy]`: the most the PDC will ever spend on its table, over every study, and where it keeps its spend.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    /// The table's name, as declared on the ledger with the budget.
    pub dataset: String,
    /// The budget's ε.
    pub epsilon: f64,
    /// The budget's δ.
    pub delta: f64,
    /// The spend file; relative to the config file. Defaults to `<pdc_id>.spend.json` next to it.
    #[serde(default)]
    pub spend_file: Option<PathBuf>,
    /// The most ε the PDC pays to answer one researcher's feasibility query (noisy cohort counts, asked before a
    /// study exists); absent, it declines every such query. Feature summaries for a study's federated
    /// standardisation are governed by the study's manifest the PDC consented to, not by this.
    #[serde(default)]
    pub feasibility_epsilon: Option<f64>,
}

/// Which studies a PDC consents to, automatically, and the conditions it signs with its consent. A study must
/// match every rule that is set; either way, the PDC consents only when its table has every column the study
/// needs.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsentPolicy {
    /// Study names to join; empty means every study whose schema the local table satisfies.
    #[serde(default)]
    pub studies: Vec<String>,
    /// Model kinds to join (`logistic_regression`, `mlp`); empty means any.
    #[serde(default)]
    pub model_kinds: Vec<String>,
    /// The most ε a study may cost this PDC: only local-DP studies whose `[privacy] target_epsilon` is at most
    /// this are joined, and the consent carries it as its `max_epsilon` (the coordinator holds the study to it).
    #[serde(default)]
    pub max_epsilon: Option<f64>,
    /// The consent covers rounds 1 to this (its `max_rounds`).
    #[serde(default)]
    pub max_rounds: Option<u32>,
    /// The consent lapses this many hours after it is given (its expiry).
    #[serde(default)]
    pub expires_after_hours: Option<u64>,
    /// Whether a PDC that declares a privacy budget (`[privacy]`) joins studies that train without local DP. Off by
    /// default: such a PDC joins only local-DP studies, so that a study without `[privacy]` (or a coordinator that
    /// strips it) never gets an update that is not private. Set it only for a table whose rows need no DP for
    /// some studies; those studies then train without spending the budget.
    #[serde(default)]
    pub allow_non_private: bool,
    /// Only studies whose manifest is signed by one of these researchers: id = Ed25519 public key (64 hex
    /// digits), as the consortium file lists them. Empty means any researcher (or none).
    #[serde(default)]
    pub researchers: std::collections::BTreeMap<String, String>,
}

/// What the policy looks at in a listed study.
#[derive(Clone, Debug)]
pub struct StudyOffer<'a> {
    /// The manifest's name.
    pub name: &'a str,
    /// The model kind (`logistic_regression`, `mlp`).
    pub model_kind: &'a str,
    /// The manifest's `[privacy] target_epsilon`, if it trains with local DP and states one.
    pub target_epsilon: Option<f64>,
    /// Whether the study trains with local DP.
    pub local_dp: bool,
    /// Whether this PDC declared a privacy budget for its table (a `[privacy]` table in its config).
    pub budget_declared: bool,
    /// The SHA3-256 of the manifest text the PDC read.
    pub manifest_hash: pdc_ledger::Hash,
    /// The researcher the listing names, and its signature over the manifest.
    pub researcher: Option<(&'a str, &'a [u8])>,
}

impl ConsentPolicy {
    /// Whether to consent to `offer`, and with which conditions (`now_ms`: Unix milliseconds, for the expiry); an
    /// error says which rule declines it.
    pub fn decide(
        &self,
        offer: &StudyOffer<'_>,
        now_ms: u64,
    ) -> std::result::Result<Option<pdc_ledger::signing::ConsentConditions>, String> {
        if !self.studies.is_empty() && !self.studies.iter().any(|name| name == offer.name) {
            return Err("not in this hospital's consent policy".into());
        }
        if !self.model_kinds.is_empty() && !self.model_kinds.iter().any(|kind| kind == offer.model_kind) {
            return Err(format!("model kind {} is not among the policy's {:?}", offer.model_kind, self.model_kinds));
        }
        // DP fails closed: a table with a budget joins a study without local DP only when the policy says so, and
        // a local-DP study needs a budget to charge.
        match (offer.local_dp, offer.budget_declared) {
            (true, false) => return Err("the study trains with local DP and this PDC declared no budget".into()),
            (false, true) if !self.allow_non_private => {
                return Err("this PDC's table has a privacy budget; it joins only local-DP studies \
                            (consent.allow_non_private is not set)"
                    .into());
            }
            _ => {}
        }
        if let Some(cap) = self.max_epsilon {
            match (offer.local_dp, offer.target_epsilon) {
                (false, _) => return Err(format!("the policy caps ε at {cap}, and the study trains without local DP")),
                (true, None) => return Err(format!("the policy caps ε at {cap}, and the study states no target ε")),
                (true, Some(target)) if target > cap => {
                    return Err(format!("the study's target ε = {target} is above the policy's cap of {cap}"));
                }
                _ => {}
            }
        }
        if !self.researchers.is_empty() {
            let Some((researcher, signature)) = offer.researcher else {
                return Err("the policy names researchers, and the study is signed by none".into());
            };
            let Some(key) = self.researchers.get(researcher) else {
                return Err(format!("researcher {researcher} is not among the policy's researchers"));
            };
            let key = hex::decode(key)
                .ok()
                .and_then(|bytes| pdc_ledger::PublicKey::from_bytes(&bytes).ok())
                .ok_or_else(|| format!("the policy's key of researcher {researcher} is not an Ed25519 key"))?;
            let message = pdc_ledger::signing::manifest_message(researcher, &offer.manifest_hash);
            key.verify(&message, signature, researcher)
                .map_err(|e| format!("the manifest's signature by {researcher} does not verify: {e}"))?;
        }
        let conditions = pdc_ledger::signing::ConsentConditions {
            max_rounds: self.max_rounds,
            max_epsilon: self.max_epsilon,
            expires_at_ms: self.expires_after_hours.map(|hours| now_ms.saturating_add(hours.saturating_mul(3_600_000))),
        };
        Ok((!conditions.is_empty()).then_some(conditions))
    }
}

/// Exponential back-off between reconnection attempts.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// First delay, milliseconds.
    #[serde(default = "default_initial_ms")]
    pub initial_ms: u64,
    /// Longest delay, milliseconds.
    #[serde(default = "default_max_ms")]
    pub max_ms: u64,
    /// How often to look for new studies, milliseconds.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { initial_ms: default_initial_ms(), max_ms: default_max_ms(), poll_ms: default_poll_ms() }
    }
}

fn default_initial_ms() -> u64 {
    200
}

fn default_max_ms() -> u64 {
    5_000
}

fn default_poll_ms() -> u64 {
    1_000
}

/// Failure injection.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Simulation {
    /// Abort the process (as if killed) when the task for this round arrives, before any update is sent.
    pub crash_at_round: Option<u32>,
}

impl HospitalConfig {
    /// Reads `path`, resolving relative paths against its folder.
    pub fn load(path: &Path) -> Result<Self> {
        let error = |detail: String| Error::Config { path: path.to_owned(), detail };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let mut config: Self = toml::from_str(&text).map_err(|e| error(e.message().to_owned()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.key_file = base.join(&config.key_file);
        config.data = base.join(&config.data);
        if let Some(tls) = &mut config.tls {
            tls.ca = base.join(&tls.ca);
            tls.cert = base.join(&tls.cert);
        }
        if let Some(privacy) = &mut config.privacy {
            let file = privacy.spend_file.clone().unwrap_or_else(|| format!("{}.spend.json", config.pdc_id).into());
            privacy.spend_file = Some(base.join(file));
        }
        config.check().map_err(error)?;
        Ok(config)
    }

    /// Checks values that TOML's types cannot.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.pdc_id.is_empty() {
            return Err("pdc_id is empty".into());
        }
        if !(self.coordinator.starts_with("http://") || self.coordinator.starts_with("https://")) {
            return Err(format!("coordinator `{}` must be an http:// or https:// URL", self.coordinator));
        }
        match (self.coordinator.starts_with("https://"), self.tls.is_some()) {
            (true, false) => return Err("an https:// coordinator needs a [tls] table (ca, cert)".into()),
            (false, true) => return Err("with [tls] the coordinator URL must be https://".into()),
            _ => {}
        }
        let consent = &self.consent;
        if let Some(cap) = consent.max_epsilon
            && !(cap.is_finite() && cap > 0.0)
        {
            return Err(format!("consent.max_epsilon = {cap} must be finite and positive"));
        }
        if consent.max_rounds == Some(0) || consent.expires_after_hours == Some(0) {
            return Err("consent.max_rounds and consent.expires_after_hours must be at least 1".into());
        }
        for kind in &consent.model_kinds {
            if !matches!(kind.as_str(), "logistic_regression" | "mlp") {
                return Err(format!("consent.model_kinds: unknown model kind `{kind}` (logistic_regression, mlp)"));
            }
        }
        for (researcher, key) in &consent.researchers {
            let valid = hex::decode(key).ok().is_some_and(|bytes| pdc_ledger::PublicKey::from_bytes(&bytes).is_ok());
            if !valid {
                return Err(format!("consent.researchers.{researcher}: not an Ed25519 public key in hex"));
            }
        }
        let retry = &self.retry;
        if retry.initial_ms == 0 || retry.max_ms < retry.initial_ms || retry.poll_ms == 0 {
            return Err("retry: need 0 < initial_ms <= max_ms and poll_ms > 0".into());
        }
        if let Some(attack) = &self.attack {
            attack.validate()?;
        }
        if let Some(privacy) = &self.privacy {
            if privacy.dataset.is_empty() || privacy.dataset.len() > 128 || privacy.dataset.contains('\0') {
                return Err("privacy.dataset must be 1 to 128 bytes without NUL".into());
            }
            pdc_privacy::PrivacyBudget::new(privacy.epsilon, privacy.delta).map_err(|e| format!("privacy: {e}"))?;
            if let Some(cap) = privacy.feasibility_epsilon
                && !(cap.is_finite() && cap > 0.0 && cap <= privacy.epsilon)
            {
                return Err(format!(
                    "privacy.feasibility_epsilon = {cap} must be positive and at most the budget's ε {}",
                    privacy.epsilon
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_the_config_folder_and_typos_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.toml");
        std::fs::write(
            &path,
            "pdc_id = \"a\"\ncoordinator = \"http://127.0.0.1:1\"\nkey_file = \"a.key\"\ndata = \"a.csv\"\n",
        )
        .unwrap();
        let config = HospitalConfig::load(&path).unwrap();
        assert_eq!(config.data, dir.path().join("a.csv"));
        assert_eq!(config.retry, RetryPolicy::default());

        std::fs::write(&path, "pdc_id = \"a\"\ncoordinater = \"x\"\n").unwrap();
        let error = HospitalConfig::load(&path).unwrap_err().to_string();
        assert!(error.contains("unknown field `coordinater`"), "{error}");
    }

    #[test]
    fn a_privacy_budget_is_checked_and_its_spend_file_defaults_next_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.toml");
        let base = "pdc_id = \"a\"\ncoordinator = \"http://127.0.0.1:1\"\nkey_file = \"a.key\"\ndata = \"a.csv\"\n";
        std::fs::write(&path, format!("{base}[privacy]\ndataset = \"icu\"\nepsilon = 8.0\ndelta = 1e-5\n")).unwrap();
        let privacy = HospitalConfig::load(&path).unwrap().privacy.unwrap();
        assert_eq!(privacy.spend_file, Some(dir.path().join("a.spend.json")));
        assert_eq!((privacy.dataset.as_str(), privacy.epsilon, privacy.delta), ("icu", 8.0, 1e-5));

        std::fs::write(&path, format!("{base}[privacy]\ndataset = \"icu\"\nepsilon = -1.0\ndelta = 1e-5\n")).unwrap();
        let error = HospitalConfig::load(&path).unwrap_err().to_string();
        assert!(error.contains("privacy: "), "{error}");
        std::fs::write(&path, format!("{base}[privacy]\ndataset = \"icu\"\nepsilon = 1.0\ndelta = 1.0\n")).unwrap();
        assert!(HospitalConfig::load(&path).is_err());
        let cap = |cap: &str| {
            format!("{base}[privacy]\ndataset = \"icu\"\nepsilon = 2.0\ndelta = 1e-5\nfeasibility_epsilon = {cap}\n")
        };
        std::fs::write(&path, cap("0.25")).unwrap();
        assert_eq!(HospitalConfig::load(&path).unwrap().privacy.unwrap().feasibility_epsilon, Some(0.25));
        std::fs::write(&path, cap("3.0")).unwrap();
        let error = HospitalConfig::load(&path).unwrap_err().to_string();
        assert!(error.contains("at most the budget's ε 2"), "{error}");
    }

    #[test]
    fn a_tls_table_resolves_its_paths_and_must_match_the_url_scheme() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.toml");
        let base = "pdc_id = \"a\"\nkey_file = \"a.key\"\ndata = \"a.csv\"\n";
        let tls = "[tls]\nca = \"coordinator.crt\"\ncert = \"a.crt\"\n";
        std::fs::write(&path, format!("coordinator = \"https://127.0.0.1:1\"\n{base}{tls}")).unwrap();
        let config = HospitalConfig::load(&path).unwrap();
        let expected =
            TlsConfig { ca: dir.path().join("coordinator.crt"), cert: dir.path().join("a.crt"), domain: None };
        assert_eq!(config.tls, Some(expected));

        std::fs::write(&path, format!("coordinator = \"http://127.0.0.1:1\"\n{base}{tls}")).unwrap();
        let error = HospitalConfig::load(&path).unwrap_err().to_string();
        assert!(error.ends_with("with [tls] the coordinator URL must be https://"), "{error}");
        std::fs::write(&path, format!("coordinator = \"https://127.0.0.1:1\"\n{base}")).unwrap();
        let error = HospitalConfig::load(&path).unwrap_err().to_string();
        assert!(error.ends_with("an https:// coordinator needs a [tls] table (ca, cert)"), "{error}");
    }

    #[test]
    fn an_attack_table_is_parsed_strictly_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.toml");
        let base = "pdc_id = \"a\"\ncoordinator = \"http://127.0.0.1:1\"\nkey_file = \"a.key\"\ndata = \"a.csv\"\n";
        std::fs::write(&path, base).unwrap();
        assert_eq!(HospitalConfig::load(&path).unwrap().attack, None);

        std::fs::write(&path, format!("{base}[attack]\nkind = \"sign_flip\"\nscale = 4.0\n")).unwrap();
        assert_eq!(HospitalConfig::load(&path).unwrap().attack, Some(Attack::SignFlip { scale: 4.0 }));

        std::fs::write(&path, format!("{base}[attack]\nkind = \"crash_mid_upload\"\nafter_bytes = 4096\n")).unwrap();
        let attack = HospitalConfig::load(&path).unwrap().attack.unwrap();
        assert_eq!(attack.crash_after_bytes(), Some(4096));

        std::fs::write(&path, format!("{base}[attack]\nkind = \"sign_flip\"\nfactor = 4.0\n")).unwrap();
        let error = HospitalConfig::load(&path).unwrap_err().to_string();
        assert!(error.contains("unknown field `factor`"), "{error}");

        std::fs::write(&path, format!("{base}[attack]\nkind = \"gaussian_noise\"\nstd = -1.0\n")).unwrap();
        let error = HospitalConfig::load(&path).unwrap_err().to_string();
        assert!(error.ends_with("attack.std must be finite and positive, got -1"), "{error}");

        std::fs::write(&path, format!("{base}[attack]\nkind = \"teleport\"\n")).unwrap();
        let error = HospitalConfig::load(&path).unwrap_err().to_string();
        assert!(error.contains("unknown variant `teleport`"), "{error}");
    }

    #[test]
    fn the_consent_policy_matches_kinds_caps_and_signed_researchers_and_sets_the_conditions() {
        let alice = pdc_ledger::Identity::from_seed([5; 32]);
        let hash = pdc_ledger::sha3_256(b"manifest");
        let signature = alice.sign(&pdc_ledger::signing::manifest_message("alice", &hash));
        let offer = StudyOffer {
            name: "sepsis",
            model_kind: "mlp",
            target_epsilon: Some(2.0),
            local_dp: true,
            budget_declared: true,
            manifest_hash: hash,
            researcher: Some(("alice", &signature[..])),
        };
        assert_eq!(ConsentPolicy::default().decide(&offer, 1_000), Ok(None), "the default joins unconditionally");

        let policy = ConsentPolicy {
            model_kinds: vec!["mlp".into()],
            max_epsilon: Some(3.0),
            max_rounds: Some(10),
            expires_after_hours: Some(2),
            researchers: [("alice".to_owned(), hex::encode(alice.public_key().to_bytes()))].into(),
            ..ConsentPolicy::default()
        };
        let conditions = policy.decide(&offer, 1_000).unwrap().unwrap();
        assert_eq!(conditions.max_rounds, Some(10));
        assert_eq!(conditions.max_epsilon, Some(3.0));
        assert_eq!(conditions.expires_at_ms, Some(1_000 + 2 * 3_600_000));

        let declined = |offer: StudyOffer<'_>| policy.decide(&offer, 1_000).unwrap_err();
        assert!(declined(StudyOffer { model_kind: "logistic_regression", ..offer.clone() }).contains("model kind"));
        assert!(declined(StudyOffer { target_epsilon: Some(4.0), ..offer.clone() }).contains("above the policy's cap"));
        assert!(declined(StudyOffer { target_epsilon: None, ..offer.clone() }).contains("states no target ε"));
        let plain = StudyOffer { local_dp: false, budget_declared: false, ..offer.clone() };
        assert!(declined(plain).contains("without local DP"));
        assert!(declined(StudyOffer { researcher: None, ..offer.clone() }).contains("signed by none"));
        let mallory = [0u8; 64];
        let forged = StudyOffer { researcher: Some(("alice", &mallory[..])), ..offer.clone() };
        assert!(declined(forged).contains("signature by alice does not verify"));
        let other = StudyOffer { researcher: Some(("bob", &signature[..])), ..offer.clone() };
        assert!(declined(other).contains("bob is not among the policy's researchers"));
        let tampered = StudyOffer { manifest_hash: [0; 32], ..offer.clone() };
        assert!(declined(tampered).contains("does not verify"));
        let named = ConsentPolicy { studies: vec!["other".into()], ..ConsentPolicy::default() };
        assert!(named.decide(&offer, 0).unwrap_err().contains("not in this hospital's consent policy"));
    }

    #[test]
    fn dp_fails_closed_unless_the_policy_allows_non_private_studies() {
        let offer = StudyOffer {
            name: "sepsis",
            model_kind: "logistic_regression",
            target_epsilon: None,
            local_dp: false,
            budget_declared: true,
            manifest_hash: [1; 32],
            researcher: None,
        };
        let strict = ConsentPolicy::default();
        let reason = strict.decide(&offer, 0).unwrap_err();
        assert!(reason.contains("joins only local-DP studies"), "{reason}");
        let relaxed = ConsentPolicy { allow_non_private: true, ..ConsentPolicy::default() };
        assert_eq!(relaxed.decide(&offer, 0), Ok(None));
        // A cap on ε still asks for local DP: allowing non-private studies does not lift it.
        let capped = ConsentPolicy { max_epsilon: Some(3.0), ..relaxed.clone() };
        assert!(capped.decide(&offer, 0).unwrap_err().contains("without local DP"));
        // Without a budget, a non-private study is joined and a private one is not.
        let no_budget = StudyOffer { budget_declared: false, ..offer.clone() };
        assert_eq!(strict.decide(&no_budget, 0), Ok(None));
        let private = StudyOffer { local_dp: true, ..no_budget };
        assert!(strict.decide(&private, 0).unwrap_err().contains("declared no budget"));
    }

    #[test]
    fn a_consent_policy_with_impossible_values_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.toml");
        let base = "pdc_id = \"a\"\ncoordinator = \"http://127.0.0.1:1\"\nkey_file = \"a.key\"\ndata = \"a.csv\"\n";
        for (table, fragment) in [
            ("max_epsilon = -1.0", "consent.max_epsilon = -1 must be finite and positive"),
            ("max_rounds = 0", "must be at least 1"),
            ("model_kinds = [\"cnn\"]", "unknown model kind `cnn`"),
            ("researchers = { alice = \"zz\" }", "consent.researchers.alice: not an Ed25519 public key"),
            ("colour = 1", "unknown field `colour`"),
        ] {
            std::fs::write(&path, format!("{base}[consent]\n{table}\n")).unwrap();
            let error = HospitalConfig::load(&path).unwrap_err().to_string();
            assert!(error.contains(fragment), "{table}: {error}");
        }
    }
}
