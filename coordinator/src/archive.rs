//! The update archive: every accepted update, stored by its SHA3-256 id, so rounds can be aggregated as a
//! stream and replayed later.
//!
//! An upload is written to a temporary file while it arrives, with its hash, finiteness and norm checked piece by
//! piece; only a complete, valid upload is renamed to its id. Nothing of an update is ever held whole in memory.
//!
//! An upload whose stream breaks stays on disk as the PDC's partial upload ([`PartialUploads`]): the prefix the
//! coordinator acknowledged, with the running SHA3-256 and norm of that prefix, so the PDC can resume from there.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pdc_ledger::Hash;
use pdc_ledger::hash::StreamHasher;

use crate::{Error, Result};

/// Updates stored under a directory as `<id>.f32` files of little-endian `f32`.
#[derive(Debug, Clone)]
pub struct UpdateArchive {
    dir: PathBuf,
}

impl UpdateArchive {
    /// Opens (creating) the archive in `dir`. Partial uploads left by an earlier process are deleted: the
    /// record of what was acknowledged lived in that process.
    pub fn open(dir: &Path) -> Result<Self> {
        let incoming = dir.join("incoming");
        std::fs::create_dir_all(&incoming).map_err(Error::Archive)?;
        for entry in std::fs::read_dir(&incoming).map_err(Error::Archive)? {
            let path = entry.map_err(Error::Archive)?.path();
            if path.extension().is_some_and(|extension| extension == "part") {
                std::fs::remove_file(&path).map_err(Error::Archive)?;
            }
        }
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
        self.store_hashed(&id, values)?;
        Ok(id)
    }

    /// Stores `values` under `id`, which the caller computed as their [`parameters_hash`] already (a round's
    /// model, whose hash the ledger records): a model of hundreds of MB is not hashed twice.
    ///
    /// [`parameters_hash`]: pdc_ledger::hash::parameters_hash
    pub(crate) fn store_hashed(&self, id: &Hash, values: &[f32]) -> Result<()> {
        let temp = self.dir.join("incoming").join(format!("{:016x}.part", rand_suffix()));
        let write = || -> std::io::Result<()> {
            let mut file = BufWriter::new(File::create(&temp)?);
            // In pieces: a model of hundreds of MB is not copied whole to bytes.
            for piece in values.chunks(16 * 1024) {
                file.write_all(&pdc_ledger::hash::f32_bytes(piece))?;
            }
            file.into_inner().map_err(std::io::IntoInnerError::into_error)?.sync_all()?;
            std::fs::rename(&temp, self.path(id))
        };
        write().map_err(Error::Archive)
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

    /// Opens the update `id` for reading in consecutive pieces (see [`UpdateReader::read_piece`]).
    pub fn reader(&self, id: &Hash) -> Result<UpdateReader> {
        let file = File::open(self.path(id)).map_err(Error::Archive)?;
        Ok(UpdateReader { file, id: *id, bytes: Vec::new() })
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

/// An archived update read front to back in pieces, so several can be read side by side with one piece of each
/// in memory.
#[derive(Debug)]
pub struct UpdateReader {
    file: File,
    id: Hash,
    bytes: Vec<u8>,
}

impl UpdateReader {
    /// Replaces `values` by the next `len` values of the update; an update that ends before them is an error.
    pub fn read_piece(&mut self, len: usize, values: &mut Vec<f32>) -> Result<()> {
        self.bytes.resize(len * 4, 0);
        let filled = read_full(&mut self.file, &mut self.bytes).map_err(Error::Archive)?;
        if filled != self.bytes.len() {
            return Err(Error::Archive(std::io::Error::other(format!("update {} is truncated", hex::encode(self.id)))));
        }
        values.clear();
        values.extend(self.bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        Ok(())
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
    /// Appends the piece of the upload that starts at byte `offset`. With `running_hash`, the SHA3-256 of the
    /// whole upload so far (this piece included) must equal it. A refused piece changes nothing: the upload stays
    /// at the length, hash and norm it had.
    ///
    /// Transport faults (an offset that leaves a gap or overlaps, a piece that is not whole `f32` values or runs
    /// past the declared length, a wrong running hash) are [`Error::InvalidArgument`] or [`Error::TooLarge`]; a
    /// value that is not finite is [`Error::InvalidUpdate`], a fault of the update itself.
    pub fn append(&mut self, offset: u64, data: &[u8], running_hash: Option<&[u8]>) -> Result<()> {
        if offset != self.received_bytes {
            let fault = if offset < self.received_bytes { "overlaps the acknowledged bytes" } else { "leaves a gap" };
            return Err(Error::InvalidArgument {
                field: "chunk.offset",
                detail: format!("chunk at offset {offset} {fault}: expected offset {}", self.received_bytes),
            });
        }
        if !data.len().is_multiple_of(4) {
            return Err(Error::InvalidArgument {
                field: "chunk.data",
                detail: format!("chunk of {} bytes is not a whole number of f32 values", data.len()),
            });
        }
        let end = self.received_bytes + data.len() as u64;
        if end > self.expected_bytes {
            return Err(Error::TooLarge(format!(
                "chunk at offset {offset} runs to byte {end}, past the {} bytes ({} parameters) announced",
                self.expected_bytes,
                self.expected_bytes / 4
            )));
        }
        // Accumulated on a copy, in the same order as ever, so a refused piece leaves the norm as it was.
        let mut squared_norm = self.squared_norm;
        for (i, bytes) in data.chunks_exact(4).enumerate() {
            let value = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            if !value.is_finite() {
                let index = self.received_bytes / 4 + i as u64;
                return Err(Error::InvalidUpdate {
                    pdc_id: self.pdc_id.clone(),
                    detail: format!("parameter {index} is not finite ({value})"),
                });
            }
            squared_norm += f64::from(value) * f64::from(value);
        }
        let mut hasher = self.hasher.clone();
        hasher.update(data);
        if let Some(expected) = running_hash {
            let actual = hasher.clone().finish();
            if expected != actual.as_slice() {
                return Err(Error::InvalidArgument {
                    field: "chunk.running_hash",
                    detail: format!(
                        "the hash of bytes 0..{end} is {}, the chunk says {}",
                        hex::encode(actual),
                        hex::encode(expected)
                    ),
                });
            }
        }
        self.file.as_mut().expect("open until finished").write_all(data).map_err(Error::Archive)?;
        self.hasher = hasher;
        self.squared_norm = squared_norm;
        self.received_bytes = end;
        Ok(())
    }

    /// What has been acknowledged: the length and SHA3-256 of the prefix received, and the declared length.
    pub fn progress(&self) -> (u64, Hash, u64) {
        (self.received_bytes, self.hasher.clone().finish(), self.expected_bytes)
    }

    /// Writes what is buffered to the partial file, so the acknowledged prefix is on disk while no stream is open.
    fn flush(&mut self) -> Result<()> {
        self.file.as_mut().map_or(Ok(()), |file| file.flush()).map_err(Error::Archive)
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

/// Which upload a partial upload belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadKey {
    /// The study.
    pub study_id: String,
    /// The round.
    pub round: u32,
    /// The sender.
    pub pdc_id: String,
    /// The update's signed SHA3-256.
    pub update_hash: Hash,
}

/// What the coordinator has acknowledged of an upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadProgress {
    /// Bytes written and acknowledged: a resume starts here.
    pub acknowledged_bytes: u64,
    /// SHA3-256 of those bytes.
    pub running_hash: Hash,
    /// The declared length of the update, in bytes; 0 when there is no partial upload.
    pub total_bytes: u64,
    /// Whether a stream still holds the upload.
    pub receiving: bool,
}

/// Uploads in progress or broken off, at most one per PDC, each at most its declared size (the study's model):
/// disk use is bounded by PDCs × model size. A partial upload lives until it completes, until its PDC starts
/// another, or until [`PartialUploads::remove`] (the coordinator removes those whose round is no longer open).
#[derive(Debug, Default)]
pub struct PartialUploads {
    by_pdc: Mutex<HashMap<String, Arc<PartialUpload>>>,
    next_owner: AtomicU64,
}

#[derive(Debug)]
struct PartialUpload {
    key: UploadKey,
    held: Mutex<Held>,
}

#[derive(Debug)]
struct Held {
    /// The stream allowed to append: the one that started or last resumed the upload.
    owner: u64,
    receiving: bool,
    /// `None` once finished or discarded; dropping the upload deletes its file.
    upload: Option<IncomingUpdate>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock is a bug; the state it left is still the best there is.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PartialUploads {
    /// Starts (`resume_offset` 0) or resumes the upload `key` of `n_parameters` values.
    ///
    /// A fresh start replaces the PDC's partial upload, if any. A resume needs the PDC's partial upload to be of
    /// the same study, round and update and to have acknowledged exactly `resume_offset` bytes; the stream that
    /// held it, if one still does, is refused from then on.
    pub fn start(
        &self,
        archive: &UpdateArchive,
        key: UploadKey,
        n_parameters: u64,
        max_norm: f64,
        resume_offset: u64,
    ) -> Result<UploadStream> {
        let owner = self.next_owner.fetch_add(1, Ordering::Relaxed);
        let mut by_pdc = lock(&self.by_pdc);
        if resume_offset == 0 {
            let upload = archive.begin(&key.pdc_id, n_parameters, max_norm)?;
            let held = Mutex::new(Held { owner, receiving: true, upload: Some(upload) });
            let slot = Arc::new(PartialUpload { key: key.clone(), held });
            if let Some(previous) = by_pdc.insert(key.pdc_id, Arc::clone(&slot)) {
                // Its file goes now, even if a stream still holds it.
                lock(&previous.held).upload = None;
            }
            return Ok(UploadStream { slot, owner });
        }
        let no_partial = || {
            Error::FailedPrecondition(format!(
                "no partial upload of update {} for round {} of study {} from {} to resume; upload from offset 0",
                hex::encode(key.update_hash),
                key.round,
                key.study_id,
                key.pdc_id
            ))
        };
        let slot = by_pdc.get(&key.pdc_id).filter(|slot| slot.key == key).ok_or_else(no_partial)?;
        let mut held = lock(&slot.held);
        let acknowledged = held.upload.as_ref().ok_or_else(no_partial)?.received_bytes;
        if acknowledged != resume_offset {
            return Err(Error::FailedPrecondition(format!(
                "cannot resume at byte {resume_offset}: the coordinator acknowledged {acknowledged} bytes of update {}",
                hex::encode(key.update_hash)
            )));
        }
        held.owner = owner;
        held.receiving = true;
        drop(held);
        Ok(UploadStream { slot: Arc::clone(slot), owner })
    }

    /// What is acknowledged of `key`; nothing (0 bytes, the hash of the empty string) without a partial upload.
    pub fn status(&self, key: &UploadKey) -> UploadProgress {
        let by_pdc = lock(&self.by_pdc);
        let progress = by_pdc.get(&key.pdc_id).filter(|slot| &slot.key == key).and_then(|slot| {
            let held = lock(&slot.held);
            let (acknowledged_bytes, running_hash, total_bytes) = held.upload.as_ref()?.progress();
            Some(UploadProgress { acknowledged_bytes, running_hash, total_bytes, receiving: held.receiving })
        });
        progress.unwrap_or_else(|| UploadProgress {
            acknowledged_bytes: 0,
            running_hash: StreamHasher::new().finish(),
            total_bytes: 0,
            receiving: false,
        })
    }

    /// The keys of every partial upload.
    pub fn keys(&self) -> Vec<UploadKey> {
        lock(&self.by_pdc).values().map(|slot| slot.key.clone()).collect()
    }

    /// Deletes the partial uploads with these keys (a stream still holding one is refused from then on).
    pub fn remove(&self, keys: &[UploadKey]) {
        let mut by_pdc = lock(&self.by_pdc);
        for key in keys {
            if by_pdc.get(&key.pdc_id).is_some_and(|slot| &slot.key == key) {
                let slot = by_pdc.remove(&key.pdc_id).expect("present");
                lock(&slot.held).upload = None;
            }
        }
    }

    /// Completes `stream`'s upload (see [`IncomingUpdate::finish`]); whatever the outcome, the partial upload is
    /// gone afterwards.
    pub fn finish(&self, stream: UploadStream, archive: &UpdateArchive, expected_hash: &Hash) -> Result<Hash> {
        let upload = self.take(&stream)?;
        upload.finish(archive, expected_hash)
    }

    /// Deletes `stream`'s upload: its content was refused.
    pub fn discard(&self, stream: UploadStream) {
        let _ = self.take(&stream);
    }

    fn take(&self, stream: &UploadStream) -> Result<IncomingUpdate> {
        let mut by_pdc = lock(&self.by_pdc);
        if by_pdc.get(&stream.slot.key.pdc_id).is_some_and(|slot| Arc::ptr_eq(slot, &stream.slot)) {
            by_pdc.remove(&stream.slot.key.pdc_id);
        }
        let mut held = lock(&stream.slot.held);
        stream.check_owner(&held)?;
        held.upload.take().ok_or_else(UploadStream::gone)
    }
}

/// One stream's hold on a partial upload. Dropping it leaves the partial upload on disk for a resume.
#[derive(Debug)]
pub struct UploadStream {
    slot: Arc<PartialUpload>,
    owner: u64,
}

impl UploadStream {
    /// Appends a chunk (see [`IncomingUpdate::append`]).
    pub fn append(&self, offset: u64, data: &[u8], running_hash: Option<&[u8]>) -> Result<()> {
        let mut held = lock(&self.slot.held);
        self.check_owner(&held)?;
        held.upload.as_mut().ok_or_else(Self::gone)?.append(offset, data, running_hash)
    }

    fn check_owner(&self, held: &Held) -> Result<()> {
        if held.owner == self.owner {
            Ok(())
        } else {
            Err(Error::FailedPrecondition(
                "a newer stream resumed this upload; this one may not write to it any more".into(),
            ))
        }
    }

    fn gone() -> Error {
        Error::FailedPrecondition(
            "the partial upload was deleted (its round closed, or another upload replaced it)".into(),
        )
    }
}

impl Drop for UploadStream {
    fn drop(&mut self) {
        let mut held = lock(&self.slot.held);
        if held.owner == self.owner {
            held.receiving = false;
            if let Some(upload) = held.upload.as_mut()
                && let Err(error) = upload.flush()
            {
                // The buffered tail is lost; so is the upload, since its file no longer matches its hash.
                tracing::warn!(%error, "cannot keep a partial upload");
                held.upload = None;
            }
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
            incoming.append((i * chunk) as u64, piece, None)?;
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
        short.append(0, &f32_bytes(&[1.0, 2.0]), None).unwrap();
        let error = short.finish(&archive, &[0; 32]).unwrap_err().to_string();
        assert!(error.contains("update has 2 parameters, the study's model has 3"), "{error}");

        let mut gap = archive.begin("p", 3, 1e6).unwrap();
        assert!(
            gap.append(4, &f32_bytes(&[1.0]), None)
                .unwrap_err()
                .to_string()
                .contains("leaves a gap: expected offset 0")
        );

        let mut long = archive.begin("p", 1, 1e6).unwrap();
        let error = long.append(0, &f32_bytes(&[1.0, 2.0]), None).unwrap_err();
        assert!(matches!(error, Error::TooLarge(_)) && error.to_string().contains("past the 4 bytes"), "{error}");

        let mut wrong_hash = archive.begin("p", 1, 1e6).unwrap();
        wrong_hash.append(0, &f32_bytes(&[1.0]), None).unwrap();
        assert!(wrong_hash.finish(&archive, &[0; 32]).unwrap_err().to_string().contains("does not match"));

        let mut too_big = archive.begin("p", 1, 1.0).unwrap();
        too_big.append(0, &f32_bytes(&[3.0]), None).unwrap();
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

    fn key(pdc_id: &str, values: &[f32]) -> UploadKey {
        UploadKey { study_id: "s".into(), round: 1, pdc_id: pdc_id.into(), update_hash: parameters_hash(values) }
    }

    fn prefix_hash(bytes: &[u8]) -> Hash {
        pdc_ledger::sha3_256(bytes)
    }

    #[test]
    fn a_refused_chunk_changes_nothing_and_running_hashes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let archive = UpdateArchive::open(dir.path()).unwrap();
        let values = [1.0f32, 2.0, 3.0, 4.0];
        let bytes = f32_bytes(&values);
        let mut incoming = archive.begin("p", 4, 1e6).unwrap();
        incoming.append(0, &bytes[..8], Some(&prefix_hash(&bytes[..8]))).unwrap();
        let before = incoming.progress();
        // Overlap, wrong running hash, a NaN after good values: each refused, none counted.
        let overlap = incoming.append(4, &bytes[4..12], None).unwrap_err().to_string();
        assert!(overlap.contains("chunk at offset 4 overlaps the acknowledged bytes: expected offset 8"), "{overlap}");
        let wrong = incoming.append(8, &bytes[8..], Some(&[0; 32])).unwrap_err().to_string();
        assert!(wrong.starts_with("invalid chunk.running_hash: the hash of bytes 0..16 is"), "{wrong}");
        let nan = incoming.append(8, &f32_bytes(&[100.0, f32::NAN]), None).unwrap_err().to_string();
        assert!(nan.contains("parameter 3 is not finite"), "{nan}");
        assert_eq!(incoming.progress(), before);
        assert_eq!(incoming.norm(), 5f64.sqrt(), "the refused 100.0 is not in the norm");
        incoming.append(8, &bytes[8..], Some(&prefix_hash(&bytes))).unwrap();
        assert_eq!(incoming.finish(&archive, &parameters_hash(&values)).unwrap(), parameters_hash(&values));
    }

    #[test]
    fn a_broken_upload_resumes_from_what_was_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let archive = UpdateArchive::open(dir.path()).unwrap();
        let partials = PartialUploads::default();
        let values: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let bytes = f32_bytes(&values);
        let stream = partials.start(&archive, key("a", &values), 6, 1e6, 0).unwrap();
        stream.append(0, &bytes[..8], None).unwrap();
        assert!(partials.status(&key("a", &values)).receiving);
        drop(stream);
        let status = partials.status(&key("a", &values));
        let expected = UploadProgress {
            acknowledged_bytes: 8,
            running_hash: prefix_hash(&bytes[..8]),
            total_bytes: 24,
            receiving: false,
        };
        assert_eq!(status, expected);
        // Another PDC, another update, another offset: refused, and the partial upload is as it was.
        let refused = partials.start(&archive, key("b", &values), 6, 1e6, 8).unwrap_err().to_string();
        assert!(refused.starts_with("no partial upload of update") && refused.contains("from b"), "{refused}");
        let other = key("a", &[9.0]);
        assert!(partials.start(&archive, other.clone(), 6, 1e6, 8).is_err());
        assert_eq!(partials.status(&other).acknowledged_bytes, 0);
        let refused = partials.start(&archive, key("a", &values), 6, 1e6, 12).unwrap_err().to_string();
        assert!(refused.contains("acknowledged 8 bytes"), "{refused}");
        assert_eq!(partials.status(&key("a", &values)), expected);

        let first = partials.start(&archive, key("a", &values), 6, 1e6, 8).unwrap();
        // A second resume takes over: the first stream may no longer write.
        let second = partials.start(&archive, key("a", &values), 6, 1e6, 8).unwrap();
        assert!(first.append(8, &bytes[8..12], None).unwrap_err().to_string().contains("a newer stream resumed"));
        drop(first);
        assert!(partials.status(&key("a", &values)).receiving, "the second stream still holds it");
        second.append(8, &bytes[8..], Some(&prefix_hash(&bytes))).unwrap();
        let id = partials.finish(second, &archive, &parameters_hash(&values)).unwrap();
        assert_eq!(archive.read(&id).unwrap(), values);
        assert_eq!(partials.status(&key("a", &values)).total_bytes, 0, "gone once complete");
        assert_eq!(std::fs::read_dir(dir.path().join("incoming")).unwrap().count(), 0);
    }

    #[test]
    fn partial_uploads_are_one_per_pdc_and_removed_with_their_round() {
        let dir = tempfile::tempdir().unwrap();
        let archive = UpdateArchive::open(dir.path()).unwrap();
        let partials = PartialUploads::default();
        let incoming = || std::fs::read_dir(dir.path().join("incoming")).unwrap().count();
        let (one, two) = ([1.0f32, 2.0], [3.0f32, 4.0]);
        let stream = partials.start(&archive, key("a", &one), 2, 1e6, 0).unwrap();
        stream.append(0, &f32_bytes(&one[..1]), None).unwrap();
        drop(stream);
        let stream = partials.start(&archive, key("a", &two), 2, 1e6, 0).unwrap();
        stream.append(0, &f32_bytes(&two[..1]), None).unwrap();
        drop(stream);
        assert_eq!(partials.keys(), [key("a", &two)], "a new upload replaces the PDC's partial one");
        assert_eq!(incoming(), 1);
        let held = partials.start(&archive, key("b", &one), 2, 1e6, 0).unwrap();
        assert_eq!(incoming(), 2);
        partials.remove(&[key("a", &two), key("b", &one)]);
        assert!(partials.keys().is_empty());
        assert_eq!(incoming(), 0, "deleted even while a stream holds one");
        assert!(held.append(0, &f32_bytes(&one), None).unwrap_err().to_string().contains("was deleted"));

        // A restarted coordinator has no record of what was acknowledged: leftovers go.
        let stream = partials.start(&archive, key("c", &one), 2, 1e6, 0).unwrap();
        stream.append(0, &f32_bytes(&one[..1]), None).unwrap();
        drop(stream);
        std::mem::forget(partials);
        assert_eq!(incoming(), 1);
        UpdateArchive::open(dir.path()).unwrap();
        assert_eq!(incoming(), 0);
    }

    #[test]
    fn readers_read_consecutive_pieces_and_refuse_a_truncated_update() {
        let dir = tempfile::tempdir().unwrap();
        let archive = UpdateArchive::open(dir.path()).unwrap();
        let values: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let id = archive.store(&values).unwrap();
        let mut reader = archive.reader(&id).unwrap();
        let mut piece = Vec::new();
        reader.read_piece(4, &mut piece).unwrap();
        assert_eq!(piece, values[..4]);
        reader.read_piece(4, &mut piece).unwrap();
        assert_eq!(piece, values[4..8]);
        assert!(reader.read_piece(4, &mut piece).unwrap_err().to_string().contains("is truncated"));
    }
}
