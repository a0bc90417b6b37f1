//! The update archive: every accepted update, stored by its SHA3-256 id, so rounds can be aggregated as a
//! stream and replayed later.
//!
//! An upload is written to a temporary file while it arrives, with its hash, finiteness and norm checked piece by
//! piece; only a complete, valid upload is renamed to its id. Nothing of an update is ever held whole in memory.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use pdc_ledger::Hash;
use pdc_ledger::hash::StreamHasher;

use crate::{Error, Result};

/// Updates stored under a directory as `<id>.f32` files of little-endian `f32`.
#[derive(Debug, Clone)]
pub struct UpdateArchive {
    dir: PathBuf,
}

impl UpdateArchive {
    /// Opens (creating) the archive in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("incoming")).map_err(Error::Archive)?;
        Ok(Self { dir: dir.to_owned() })
    }

    /// Opens an existing archive for reading only (an auditor's copy), creating nothing.
    pub fn open_read_only(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Archive(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is not an update archive folder", dir.display()),
            )));
        }
        Ok(Self { dir: dir.to_owned() })
    }

    fn path(&self, id: &Hash) -> PathBuf {
        self.dir.join(format!("{}.f32", hex::encode(id)))
    }

    /// Starts receiving an update of `n_parameters` from `pdc_id`.
    pub fn begin(&self, pdc_id: &str, n_parameters: u64, max_norm: f64) -> Result<IncomingUpdate> {
        let unique: u64 = rand_suffix();
        let temp = self.dir.join("incoming").join(format!("{unique:016x}.part"));
        let file = File::create(&temp).map_err(Error::Archive)?;
        Ok(IncomingUpdate {
            pdc_id: pdc_id.to_owned(),
            temp,
            file: Some(BufWriter::new(file)),
            hasher: StreamHasher::new(),
            expected_bytes: n_parameters.saturating_mul(4),
            received_bytes: 0,
            squared_norm: 0.0,
            max_norm,
            final_path: None,
        })
    }

    /// Whether the update with this id is archived.
    pub fn contains(&self, id: &Hash) -> bool {
        self.path(id).is_file()
    }

    /// Stores `values` (a coordinator-made release, such as a central DP round's noisy mean) under their hash,
    /// durably, and returns the hash.
    pub fn store(&self, values: &[f32]) -> Result<Hash> {
        let id = pdc_ledger::hash::parameters_hash(values);
        let temp = self.dir.join("incoming").join(format!("{:016x}.part", rand_suffix()));
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&temp)?;
            file.write_all(&pdc_ledger::hash::f32_bytes(values))?;
            file.sync_all()?;
            std::fs::rename(&temp, self.path(&id))
        };
        write().map_err(Error::Archive)?;
        Ok(id)
    }

    /// Reads the update `id` in pieces of at most `piece_len` values, calling `visit(offset, values)` for each.
    pub fn read_pieces(
        &self,
        id: &Hash,
        piece_len: usize,
        mut visit: impl FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let file = File::open(self.path(id)).map_err(Error::Archive)?;
        let mut reader = BufReader::new(file);
        let mut bytes = vec![0u8; piece_len.max(1) * 4];
        let mut values = Vec::with_capacity(piece_len.max(1));
        let mut offset = 0;
        loop {
            let filled = read_full(&mut reader, &mut bytes).map_err(Error::Archive)?;
            if filled == 0 {
                return Ok(());
            }
            if filled % 4 != 0 {
                return Err(Error::Archive(std::io::Error::other(format!("update {} is truncated", hex::encode(id)))));
            }
            values.clear();
            values.extend(bytes[..filled].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
            visit(offset, &values)?;
            offset += values.len();
        }
    }

    /// Reads the whole update `id`.
    pub fn read(&self, id: &Hash) -> Result<Vec<f32>> {
        let mut all = Vec::new();
        self.read_pieces(id, 1 << 16, |_, values| {
            all.extend_from_slice(values);
            Ok(())
        })?;
        Ok(all)
    }
}

fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let pid = u64::from(std::process::id());
    (pid << 40) ^ NEXT.fetch_add(1, Ordering::Relaxed)
}

/// An update being received. Dropping it unfinished deletes what was written.
#[derive(Debug)]
pub struct IncomingUpdate {
    pdc_id: String,
    temp: PathBuf,
    file: Option<BufWriter<File>>,
    hasher: StreamHasher,
    expected_bytes: u64,
    received_bytes: u64,
    squared_norm: f64,
    max_norm: f64,
    final_path: Option<PathBuf>,
}

impl IncomingUpdate {
    /// Appends the piece of the upload that starts at byte `offset`.
    pub fn append(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let invalid = |detail: String| Error::InvalidUpdate { pdc_id: self.pdc_id.clone(), detail };
        if offset != self.received_bytes {
            return Err(invalid(format!("chunk at offset {offset}, expected offset {}", self.received_bytes)));
        }
        if !data.len().is_multiple_of(4) {
            return Err(invalid(format!("chunk of {} bytes is not a whole number of f32 values", data.len())));
        }
        let end = self.received_bytes + data.len() as u64;
        if end > self.expected_bytes {
            return Err(invalid(format!("update is longer than the {} parameters announced", self.expected_bytes / 4)));
        }
        for (i, bytes) in data.chunks_exact(4).enumerate() {
            let value = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            if !value.is_finite() {
                let index = self.received_bytes / 4 + i as u64;
                return Err(invalid(format!("parameter {index} is not finite ({value})")));
            }
            self.squared_norm += f64::from(value) * f64::from(value);
        }
        self.hasher.update(data);
        self.file.as_mut().expect("open until finished").write_all(data).map_err(Error::Archive)?;
        self.received_bytes = end;
        Ok(())
    }

    /// Completes the upload: checks its length, hash and norm, and stores it under its id.
    pub fn finish(mut self, archive: &UpdateArchive, expected_hash: &Hash) -> Result<Hash> {
        let invalid = |detail: String| Error::InvalidUpdate { pdc_id: self.pdc_id.clone(), detail };
        if self.received_bytes != self.expected_bytes {
            return Err(invalid(format!(
                "update has {} parameters, the study's model has {}",
                self.received_bytes / 4,
                self.expected_bytes / 4
            )));
        }
        let hash = std::mem::take(&mut self.hasher).finish();
        if &hash != expected_hash {
            return Err(invalid(format!(
                "content hash {} does not match the signed hash {}",
                hex::encode(hash),
                hex::encode(expected_hash)
            )));
        }
        let norm = self.squared_norm.sqrt();
        if norm > self.max_norm {
            return Err(invalid(format!("update norm {norm:.3} exceeds the bound {}", self.max_norm)));
        }
        let file = self.file.take().expect("open until finished");
        let file = file.into_inner().map_err(|e| Error::Archive(e.into_error()))?;
        file.sync_all().map_err(Error::Archive)?;
        let path = archive.path(&hash);
        std::fs::rename(&self.temp, &path).map_err(Error::Archive)?;
        self.final_path = Some(path);
        Ok(hash)
    }

    /// The L2 norm of what was received so far.
    pub fn norm(&self) -> f64 {
        self.squared_norm.sqrt()
    }
}

impl Drop for IncomingUpdate {
    fn drop(&mut self) {
        if self.final_path.is_none() {
            // An abandoned or rejected upload leaves nothing behind.
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use pdc_ledger::hash::{f32_bytes, parameters_hash};

    use super::*;

    fn upload(archive: &UpdateArchive, values: &[f32], chunk: usize) -> Result<Hash> {
        let bytes = f32_bytes(values);
        let mut incoming = archive.begin("p", values.len() as u64, 1e6)?;
        for (i, piece) in bytes.chunks(chunk).enumerate() {
            incoming.append((i * chunk) as u64, piece)?;
        }
        incoming.finish(archive, &parameters_hash(values))
    }

    #[test]
    fn an_update_round_trips_through_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let archive = UpdateArchive::open(dir.path()).unwrap();
        let values: Vec<f32> = (0..1000).map(|i| (i as f32).sin()).collect();
        let id = upload(&archive, &values, 64).unwrap();
        assert!(archive.contains(&id));
        assert_eq!(archive.read(&id).unwrap(), values);
        let mut pieces = Vec::new();
        archive
            .read_pieces(&id, 300, |offset, piece| {
                pieces.push((offset, piece.len()));
                Ok(())
            })
            .unwrap();
        assert_eq!(pieces, vec![(0, 300), (300, 300), (600, 300), (900, 100)]);
    }

    #[test]
    fn bad_uploads_are_refused_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let archive = UpdateArchive::open(dir.path()).unwrap();
        let error = upload(&archive, &[1.0, f32::NAN, 2.0], 4).unwrap_err().to_string();
        assert!(error.contains("parameter 1 is not finite"), "{error}");

        let mut short = archive.begin("p", 3, 1e6).unwrap();
        short.append(0, &f32_bytes(&[1.0, 2.0])).unwrap();
        let error = short.finish(&archive, &[0; 32]).unwrap_err().to_string();
        assert!(error.contains("update has 2 parameters, the study's model has 3"), "{error}");

        let mut gap = archive.begin("p", 3, 1e6).unwrap();
        assert!(gap.append(4, &f32_bytes(&[1.0])).unwrap_err().to_string().contains("expected offset 0"));

        let mut long = archive.begin("p", 1, 1e6).unwrap();
        assert!(long.append(0, &f32_bytes(&[1.0, 2.0])).unwrap_err().to_string().contains("longer"));

        let mut wrong_hash = archive.begin("p", 1, 1e6).unwrap();
        wrong_hash.append(0, &f32_bytes(&[1.0])).unwrap();
        assert!(wrong_hash.finish(&archive, &[0; 32]).unwrap_err().to_string().contains("does not match"));

        let mut too_big = archive.begin("p", 1, 1.0).unwrap();
        too_big.append(0, &f32_bytes(&[3.0])).unwrap();
        let error = too_big.finish(&archive, &parameters_hash(&[3.0])).unwrap_err().to_string();
        assert!(error.contains("norm 3.000 exceeds the bound 1"), "{error}");

        // Uploads still being received keep their partial files; dropped ones leave nothing.
        assert_eq!(std::fs::read_dir(dir.path().join("incoming")).unwrap().count(), 2);
        drop((gap, long));
        let leftovers = std::fs::read_dir(dir.path().join("incoming")).unwrap().count();
        assert_eq!(leftovers, 0);
        let archived = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(archived, 1, "only the incoming folder");
    }
}
