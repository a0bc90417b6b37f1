//! `pdc keygen`: a party's Ed25519 identity (the key file every pdc party uses) and its self-signed TLS
//! certificate, whose public key is that identity key.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use pdc_ledger::Identity;
use pdc_ledger::entry::Role;

/// `pdc keygen --name N --role R [--out DIR] [--san NAME,…] [--force]`.
#[derive(clap::Args)]
pub struct KeygenArgs {
    /// The party's name: the certificate's common name and the files' stem (`<name>.key`, `<name>.crt`); for a
    /// hospital, its PDC id.
    #[arg(long)]
    name: String,
    /// The party's role: coordinator, hospital, researcher, auditor or witness.
    #[arg(long, value_parser = parse_role)]
    role: Role,
    /// The folder to write the files to (created when missing).
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// The DNS names and IP addresses the certificate is valid for as a server (repeat, or separate by commas).
    #[arg(long, value_delimiter = ',', default_values = ["localhost", "127.0.0.1"])]
    san: Vec<String>,
    /// Replace existing files (the old key is lost).
    #[arg(long)]
    force: bool,
}

fn parse_role(name: &str) -> Result<Role, String> {
    Role::from_name(name)
        .ok_or_else(|| format!("unknown role `{name}`: one of coordinator, hospital, researcher, auditor, witness"))
}

/// Writes `<out>/<name>.key` (the secret seed, hex, mode 0600) and `<out>/<name>.crt` (PEM), and prints the
/// public key.
pub fn run(args: KeygenArgs) -> anyhow::Result<()> {
    let valid_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if args.name.is_empty() || args.name.starts_with('.') || !args.name.chars().all(valid_name) {
        bail!("--name {:?} must be letters, digits, '-', '_' or '.', not starting with '.'", args.name);
    }
    let key_path = args.out.join(format!("{}.key", args.name));
    let cert_path = args.out.join(format!("{}.crt", args.name));
    if !args.force {
        for path in [&key_path, &cert_path] {
            if path.exists() {
                bail!("{} exists; pass --force to replace it (its key is then lost)", path.display());
            }
        }
    }
    // Everything that can fail on bad input happens before anything is written.
    let identity = Identity::generate();
    let certificate = pdc_ledger::certificate::self_signed(&identity, &args.name, args.role, &args.san)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    write(&key_path, args.force, |path| Ok(identity.write_new(path)?))?;
    write(&cert_path, args.force, |path| {
        std::fs::write(path, &certificate.pem).with_context(|| format!("cannot write {}", path.display()))
    })?;
    println!(
        "{} {} key {}\n  key file    {} (secret, mode 0600)\n  certificate {} (for {})",
        args.role.name(),
        args.name,
        hex::encode(identity.public_key().to_bytes()),
        key_path.display(),
        cert_path.display(),
        args.san.join(", ")
    );
    Ok(())
}

/// Writes a file through `write_to`: straight to a new `path`, or with `force` to a fresh temporary file first
/// that then replaces `path`, so an interrupted run leaves the old file or the new one, never half of one.
fn write(path: &Path, force: bool, write_to: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    if !force {
        return write_to(path);
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    match std::fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", temporary.display())),
    }
    write_to(&temporary)?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot replace {}", path.display()))
}
