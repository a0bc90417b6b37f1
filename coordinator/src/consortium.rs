//! The consortium file: the federation's members with their roles and Ed25519 keys, and how its changes become
//! ledger entries.
//!
//! `consortium.toml` lists every party the coordinator deals with:
//!
//! ```toml
//! [[members]]
//! id = "hospital-a"
//! role = "hospital"            # coordinator, hospital, researcher, auditor or witness
//! public_key = "9f1c…"         # 64 hex digits: the Ed25519 key `pdc keygen` printed
//! certificate = "hospital-a.crt"  # optional: trusted for mutual TLS; must certify `public_key`
//! ```
//!
//! The coordinator records the file on the ledger when it starts (and when it reloads it): a
//! `ConsortiumRecorded` with the file's SHA3-256, then the changes since the membership on record, computed by
//! [`Membership::changes`]: a new member is a `MemberRegistered`; a member whose key (or role) changed is a
//! `KeyRevoked` of the old key followed by a `MemberRegistered` of the new one; a member no longer listed is a
//! `KeyRevoked`. A revoked key can never come back. Parsing and the diff are pure; only [`Consortium::load`]
//! reads a file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use pdc_ledger::certificate::{certificates_from_pem, certified_key};
use pdc_ledger::entry::{Entry, Role};
use pdc_ledger::{Hash, PublicKey, sha3_256};
use serde::Deserialize;

use crate::{Error, Result};

/// Longest member id, as for PDC ids.
const MAX_MEMBER_ID_LEN: usize = 64;

/// One member of the consortium.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// Its id, unique in the consortium (a hospital's is its PDC id).
    pub id: String,
    /// What it does.
    pub role: Role,
    /// Its Ed25519 identity key.
    pub key: PublicKey,
    /// Its certificate (PEM), trusted for mutual TLS, when the file names one.
    pub certificate_pem: Option<Vec<u8>>,
}

/// A parsed and checked consortium file.
#[derive(Clone, Debug, PartialEq)]
pub struct Consortium {
    /// SHA3-256 of the file's bytes.
    pub file_hash: Hash,
    /// The members, by id.
    pub members: BTreeMap<String, Member>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSection {
    #[serde(default)]
    members: Vec<MemberSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberSection {
    id: String,
    role: String,
    public_key: String,
    #[serde(default)]
    certificate: Option<PathBuf>,
}

fn invalid(detail: String) -> Error {
    Error::InvalidConsortium(detail)
}

impl Consortium {
    /// Reads and checks the consortium file at `path`; certificates are relative to its folder.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let read_certificate = |file: &Path| {
            let file = base.join(file);
            std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))
        };
        Self::parse(&bytes, read_certificate).map_err(|e| match e {
            Error::InvalidConsortium(detail) => invalid(format!("{}: {detail}", path.display())),
            other => other,
        })
    }

    /// Parses and checks the file's `bytes`; `read_certificate` returns the PEM a member's `certificate` names.
    ///
    /// Refused: anything but UTF-8 TOML with `[[members]]` tables of `id`, `role`, `public_key` and optional
    /// `certificate`; an empty list; an id that is not 1 to 64 letters, digits, `-`, `_` or `.`; an id or key
    /// listed twice; an unknown role; a key that is not 32 bytes of hex or not a valid Ed25519 key; a certificate
    /// that cannot be read, does not parse, or certifies another key.
    pub fn parse(bytes: &[u8], read_certificate: impl Fn(&Path) -> Result<Vec<u8>, String>) -> Result<Self> {
        let text = std::str::from_utf8(bytes).map_err(|e| invalid(format!("not UTF-8: {e}")))?;
        let file: FileSection = toml::from_str(text).map_err(|e| invalid(e.message().to_owned()))?;
        if file.members.is_empty() {
            return Err(invalid("lists no [[members]]".into()));
        }
        let mut members = BTreeMap::new();
        let mut keys: BTreeMap<[u8; 32], String> = BTreeMap::new();
        for section in file.members {
            let id = section.id;
            let valid_id = !id.is_empty()
                && id.len() <= MAX_MEMBER_ID_LEN
                && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid_id {
                return Err(invalid(format!(
                    "member id `{id}`: use 1 to {MAX_MEMBER_ID_LEN} letters, digits, '-', '_' or '.'"
                )));
            }
            let role = Role::from_name(&section.role).ok_or_else(|| {
                invalid(format!(
                    "member {id}: unknown role `{}` (coordinator, hospital, researcher, auditor or witness)",
                    section.role
                ))
            })?;
            let key_bytes = hex::decode(&section.public_key)
                .map_err(|e| invalid(format!("member {id}: public_key is not hex: {e}")))?;
            let key = PublicKey::from_bytes(&key_bytes)
                .map_err(|e| invalid(format!("member {id}: public_key is not an Ed25519 key: {e}")))?;
            if let Some(other) = keys.insert(key.to_bytes(), id.clone()) {
                return Err(invalid(format!("members {other} and {id} list the same public key")));
            }
            let certificate_pem = match &section.certificate {
                None => None,
                Some(file) => {
                    let pem = read_certificate(file).map_err(|e| invalid(format!("member {id}: certificate {e}")))?;
                    let chain = certificates_from_pem(&pem)
                        .map_err(|e| invalid(format!("member {id}: certificate {}: {e}", file.display())))?;
                    let certified = certified_key(&chain[0])
                        .map_err(|e| invalid(format!("member {id}: certificate {}: {e}", file.display())))?;
                    if certified != key {
                        return Err(invalid(format!(
                            "member {id}: certificate {} certifies key {}, not its public_key {}",
                            file.display(),
                            hex::encode(certified.to_bytes()),
                            section.public_key
                        )));
                    }
                    Some(pem)
                }
            };
            let member = Member { id: id.clone(), role, key, certificate_pem };
            if members.insert(id.clone(), member).is_some() {
                return Err(invalid(format!("member {id} is listed twice")));
            }
        }
        Ok(Self { file_hash: sha3_256(bytes), members })
    }

    /// Every member certificate the file names, concatenated (PEM), for the TLS server to trust.
    pub fn certificates_pem(&self) -> Vec<u8> {
        let mut pem = Vec::new();
        for certificate in self.members.values().filter_map(|member| member.certificate_pem.as_ref()) {
            pem.extend_from_slice(certificate);
            pem.push(b'\n');
        }
        pem
    }

    /// The member whose key is `key`, if any.
    pub fn member_by_key(&self, key: &PublicKey) -> Option<&Member> {
        self.members.values().find(|member| member.key == *key)
    }
}

/// The membership as the ledger records it: each member's role and current key, the revoked keys, and the hash of
/// the last consortium file recorded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Membership {
    members: BTreeMap<String, (Role, [u8; 32])>,
    revoked: BTreeMap<[u8; 32], String>,
    last_file: Option<Hash>,
}

impl Membership {
    /// Reads the membership from the ledger's entries, in log order.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Self {
        let mut membership = Self::default();
        for entry in entries {
            match entry {
                Entry::MemberRegistered { pdc_id, role, public_key } => {
                    membership.members.insert(pdc_id.clone(), (*role, *public_key));
                }
                Entry::KeyRotated { pdc_id, new_key, .. } => {
                    if let Some((_, key)) = membership.members.get_mut(pdc_id) {
                        *key = *new_key;
                    }
                }
                Entry::KeyRevoked { pdc_id, key, .. } => {
                    membership.members.remove(pdc_id);
                    membership.revoked.insert(*key, pdc_id.clone());
                }
                Entry::ConsortiumRecorded { file_hash, .. } => membership.last_file = Some(*file_hash),
                _ => {}
            }
        }
        membership
    }

    /// The current members of `role`, by id, with their keys.
    pub fn with_role(&self, role: Role) -> impl Iterator<Item = (&str, [u8; 32])> + '_ {
        self.members.iter().filter(move |(_, (r, _))| *r == role).map(|(id, (_, key))| (id.as_str(), *key))
    }

    /// The entries that bring the recorded membership to `consortium`'s: none when the file was recorded already
    /// and nothing differs; otherwise a `ConsortiumRecorded`, then the registrations and revocations (by member
    /// id). Refused: a listed key that was revoked, or that another member holds on the ledger, and a role change
    /// that keeps the key (a role changes only with a new key, since the old one is revoked).
    pub fn changes(&self, consortium: &Consortium) -> Result<Vec<Entry>> {
        let short = &hex::encode(consortium.file_hash)[..16];
        let mut changes = Vec::new();
        for member in consortium.members.values() {
            let key = member.key.to_bytes();
            if let Some(holder) = self.revoked.get(&key) {
                return Err(invalid(format!(
                    "member {}: its key {} was revoked on the ledger (as {holder}'s) and may not come back; give it a \
                     new key",
                    member.id,
                    hex::encode(key)
                )));
            }
            if let Some((holder, _)) = self.members.iter().find(|(id, (_, k))| *k == key && **id != member.id) {
                return Err(invalid(format!(
                    "member {}: its key {} is {holder}'s on the ledger",
                    member.id,
                    hex::encode(key)
                )));
            }
            let register = Entry::MemberRegistered { pdc_id: member.id.clone(), role: member.role, public_key: key };
            match self.members.get(&member.id) {
                None => changes.push(register),
                Some((role, recorded)) if *recorded == key && *role == member.role => {}
                Some((role, recorded)) if *recorded == key => {
                    return Err(invalid(format!(
                        "member {} changes role from {} to {} with the same key; a role changes only with a new key",
                        member.id,
                        role.name(),
                        member.role.name()
                    )));
                }
                Some((_, recorded)) => {
                    changes.push(Entry::KeyRevoked {
                        pdc_id: member.id.clone(),
                        key: *recorded,
                        reason: format!("replaced in consortium file {short}"),
                    });
                    changes.push(register);
                }
            }
        }
        let listed: BTreeSet<&String> = consortium.members.keys().collect();
        for (id, (_, key)) in &self.members {
            if !listed.contains(id) {
                changes.push(Entry::KeyRevoked {
                    pdc_id: id.clone(),
                    key: *key,
                    reason: format!("not in consortium file {short}"),
                });
            }
        }
        if changes.is_empty() && self.last_file == Some(consortium.file_hash) {
            return Ok(changes);
        }
        let members = u32::try_from(consortium.members.len()).unwrap_or(u32::MAX);
        changes.insert(0, Entry::ConsortiumRecorded { file_hash: consortium.file_hash, members });
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use pdc_ledger::Identity;
    use pdc_ledger::certificate::self_signed;

    use super::*;

    fn key(seed: u8) -> String {
        hex::encode(Identity::from_seed([seed; 32]).public_key().to_bytes())
    }

    fn member(id: &str, role: &str, seed: u8) -> String {
        format!("[[members]]\nid = \"{id}\"\nrole = \"{role}\"\npublic_key = \"{}\"\n", key(seed))
    }

    fn parse(text: &str) -> Result<Consortium> {
        Consortium::parse(text.as_bytes(), |path| Err(format!("{}: not found", path.display())))
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_file_parses_and_every_malformed_one_is_refused_with_its_reason() {
        let text = member("hospital-a", "hospital", 1) + &member("alice", "researcher", 2);
        let consortium = parse(&text).unwrap();
        assert_eq!(consortium.members.len(), 2);
        assert_eq!(consortium.members["alice"].role, Role::Researcher);
        assert_eq!(consortium.file_hash, sha3_256(text.as_bytes()));
        let alice = Identity::from_seed([2; 32]).public_key();
        assert_eq!(consortium.member_by_key(&alice).unwrap().id, "alice");

        assert!(error("").contains("lists no [[members]]"));
        assert!(error("members = 3").starts_with("invalid consortium file: invalid type"));
        assert!(error(&(member("a", "hospital", 1) + "colour = \"red\"\n")).contains("unknown field `colour`"));
        assert!(error(&member("../a", "hospital", 1)).contains("member id `../a`"));
        assert!(error(&member("a", "nurse", 1)).contains("member a: unknown role `nurse`"));
        let bad_hex = member("a", "hospital", 1).replace(&key(1), "zz");
        assert!(error(&bad_hex).contains("member a: public_key is not hex"));
        let short = member("a", "hospital", 1).replace(&key(1), "abcd");
        assert!(error(&short).contains("member a: public_key is not an Ed25519 key"));
        assert!(error(&(member("a", "hospital", 1) + &member("a", "auditor", 2))).contains("member a is listed twice"));
        let same_key = member("a", "hospital", 1) + &member("b", "auditor", 1);
        assert!(error(&same_key).contains("members a and b list the same public key"));
        let with_cert = member("a", "hospital", 1) + "certificate = \"a.crt\"\n";
        assert!(error(&with_cert).contains("member a: certificate a.crt: not found"));
        assert!(Consortium::parse(&[0xff], |_| Ok(Vec::new())).unwrap_err().to_string().contains("not UTF-8"));
    }

    #[test]
    fn a_certificate_must_certify_the_member_key() {
        let identity = Identity::from_seed([1; 32]);
        let pem = self_signed(&identity, "a", Role::Hospital, &[]).unwrap().pem;
        let other = self_signed(&Identity::from_seed([3; 32]), "a", Role::Hospital, &[]).unwrap().pem;
        let text = member("a", "hospital", 1) + "certificate = \"a.crt\"\n";
        let consortium = Consortium::parse(text.as_bytes(), |_| Ok(pem.clone().into_bytes())).unwrap();
        assert_eq!(consortium.certificates_pem(), format!("{pem}\n").into_bytes());
        let error = Consortium::parse(text.as_bytes(), |_| Ok(other.clone().into_bytes())).unwrap_err().to_string();
        assert!(error.contains("member a: certificate a.crt certifies key"), "{error}");
        let error = Consortium::parse(text.as_bytes(), |_| Ok(b"junk".to_vec())).unwrap_err().to_string();
        assert!(error.contains("member a: certificate a.crt:"), "{error}");
    }

    #[test]
    fn changes_are_additions_rotations_and_revocations_and_a_revoked_key_never_returns() {
        let first = parse(&(member("a", "hospital", 1) + &member("r", "researcher", 2))).unwrap();
        let changes = Membership::default().changes(&first).unwrap();
        let kinds: Vec<&str> = changes.iter().map(Entry::kind).collect();
        assert_eq!(kinds, ["ConsortiumRecorded", "MemberRegistered", "MemberRegistered"]);
        let recorded = Membership::from_entries(&changes);
        assert!(recorded.changes(&first).unwrap().is_empty(), "recording the same file again changes nothing");

        // a gets a new key, r leaves, z joins.
        let second = parse(&(member("a", "hospital", 3) + &member("z", "auditor", 4))).unwrap();
        let changes = recorded.changes(&second).unwrap();
        let described: Vec<String> = changes
            .iter()
            .map(|entry| match entry {
                Entry::ConsortiumRecorded { members, .. } => format!("file of {members}"),
                Entry::MemberRegistered { pdc_id, role, .. } => format!("register {pdc_id} {}", role.name()),
                Entry::KeyRevoked { pdc_id, reason, .. } => format!("revoke {pdc_id}: {}", &reason[..12]),
                other => other.kind().to_owned(),
            })
            .collect();
        assert_eq!(
            described,
            [
                "file of 2",
                "revoke a: replaced in ",
                "register a hospital",
                "register z auditor",
                "revoke r: not in conso"
            ]
        );
        let Entry::KeyRevoked { key, .. } = &changes[1] else { unreachable!() };
        assert_eq!(hex::encode(key), self::key(1), "the revoked key is the recorded one");

        let mut history = Membership::default().changes(&first).unwrap();
        history.extend(changes);
        let now = Membership::from_entries(&history);
        let back = parse(&(member("a", "hospital", 1) + &member("z", "auditor", 4))).unwrap();
        let error = now.changes(&back).unwrap_err().to_string();
        assert!(error.contains("member a: its key") && error.contains("was revoked on the ledger"), "{error}");
        let taken = parse(&(member("a", "hospital", 3) + &member("y", "auditor", 3).replace("auditor", "witness")));
        assert!(taken.unwrap_err().to_string().contains("list the same public key"));
        let stolen = parse(&(member("a", "hospital", 5) + &member("y", "witness", 4))).unwrap();
        let error = now.changes(&stolen).unwrap_err().to_string();
        assert!(error.contains("member y: its key") && error.contains("is z's on the ledger"), "{error}");
        let promoted = parse(&(member("a", "researcher", 3) + &member("z", "auditor", 4))).unwrap();
        let error = now.changes(&promoted).unwrap_err().to_string();
        assert!(error.contains("changes role from hospital to researcher with the same key"), "{error}");
    }
}
