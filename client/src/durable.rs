//! The PDC's own state files (its spend record, its consent record) written so that a crash leaves the old file or
//! the new one, never half of one.

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes` durably: written whole to a temporary file beside it and synced, renamed over it,
/// then its folder synced so that the rename itself survives a crash.
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = path.with_extension("json.tmp");
    let mut out = File::create(&temp)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    std::fs::rename(&temp, path)?;
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(folder)?.sync_all()
}
