//! The encrypted model this member recomputed (or, outside the quorum, fetched) last, kept on
//! its own disk under its digest.
//! The next round builds on it (its base), so a member that holds it need not fetch it from
//! the coordinator again: at 10M values that is 210 MB fewer per member and round, each byte
//! of which would otherwise be encrypted, sent and hashed three times.
//!
//! This is a cache looked up by digest: which digest a round builds on is decided by the
//! member's verified model chain (`HeldModel`), never by what is here. Only a ciphertext whose
//! digest this member computed itself is kept, and a kept file is hashed again when it is
//! taken: a file damaged on disk (a crash between the write and the disk) is dropped and the
//! ciphertext fetched as before.
//!
//! The member's own latest contribution is kept here too (in its own directory), for the same
//! reason: the recomputation of its round adds it from disk, checked as it is read, instead of
//! fetching back what it uploaded.

use std::io::Write;
use std::path::{Path, PathBuf};

use protocol::audit::entry::Digest;
use protocol::he::{Ciphertext, CiphertextShape};
use protocol::round::message::CHUNK_BYTES;
use protocol::round::{TermStream, WholeStream};
use protocol::wire::{BoundCiphertext, DecodeLimits};
use runtime::bulk::BulkWriter;

/// Binds `recomputed` to its digest and, if that is `expected`, keeps it in `dir` under it and
/// gives it back bound; `None` for another digest. Files under other names go, except `also`
/// (the model this round builds on, which a retried request of the same round needs again).
/// Writing and hashing are one pass; a failed write costs only the next round's fetch.
pub fn keep_if(
    dir: &Path,
    recomputed: Ciphertext,
    expected: &Digest,
    also: Option<&Digest>,
) -> Option<BoundCiphertext> {
    let temporary = temporary(dir);
    let file = std::fs::create_dir_all(dir).and_then(|()| std::fs::File::create(&temporary));
    let mut out = match file {
        Ok(file) => BulkWriter::new(file),
        Err(e) => return unkept(&e, &temporary, BoundCiphertext::new(recomputed), expected),
    };
    // Hashed to the end whatever the disk does (the first write error is kept): the binding
    // is needed either way.
    let mut failure = None;
    let bound = BoundCiphertext::streamed(recomputed, |piece| {
        if failure.is_none()
            && let Err(e) = out.write_all(piece)
        {
            failure = Some(e);
        }
    });
    if let Some(e) = failure.or_else(|| out.flush().err()) {
        return unkept(&e, &temporary, bound, expected);
    }
    drop(out);
    if bound.digest().0 != *expected {
        let _ = std::fs::remove_file(&temporary);
        return None;
    }
    if let Err(e) = std::fs::rename(&temporary, path(dir, expected)) {
        return unkept(&e, &temporary, bound, expected);
    }
    let keep: Vec<PathBuf> = std::iter::once(expected)
        .chain(also)
        .map(|d| path(dir, d))
        .collect();
    if let Ok(files) = std::fs::read_dir(dir) {
        for file in files.flatten() {
            let name = file.path();
            // Another worker's file in progress has a name starting with a dot.
            let in_progress = file.file_name().to_string_lossy().starts_with('.');
            if !keep.contains(&name) && !in_progress {
                let _ = std::fs::remove_file(name);
            }
        }
    }
    Some(bound)
}

/// The binding when the model could not be kept: the next round fetches it instead.
fn unkept(
    e: &std::io::Error,
    temporary: &Path,
    bound: BoundCiphertext,
    expected: &Digest,
) -> Option<BoundCiphertext> {
    tracing::warn!(error = %e, "the recomputed model could not be kept; the next round fetches it");
    let _ = std::fs::remove_file(temporary);
    (bound.digest().0 == *expected).then_some(bound)
}

/// A name in `dir` for a file being written: two contributions can be kept at once (a
/// restarted coordinator opens a round while an earlier round's upload is retried).
fn temporary(dir: &Path) -> PathBuf {
    runtime::files::temporary_in(dir, "held")
}

/// Clears what a process that stopped mid-write left: its temporary files.
pub fn clear_after_restart(held: &Path) {
    let leftovers = std::fs::read_dir(held)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|f| f.file_name().to_string_lossy().starts_with('.'));
    for file in leftovers {
        let _ = std::fs::remove_file(file.path());
    }
}

/// The kept ciphertext of `digest`, if this member holds it intact: read in pieces, hashed and
/// decoded in one pass, and bound to the digest it hashed to.
pub fn load(
    dir: &Path,
    digest: &Digest,
    shape: CiphertextShape,
    limits: DecodeLimits,
) -> Option<BoundCiphertext> {
    let path = path(dir, digest);
    let file = runtime::bulk::open(&path).ok()?;
    let mut stream = WholeStream::new(shape, *digest, limits);
    let read = read_in_pieces(&file, |piece| stream.push::<std::io::Error>(piece).is_ok());
    let loaded = read
        .then(|| stream.finish::<std::io::Error>().ok())
        .flatten();
    if loaded.is_none() {
        tracing::warn!(path = %path.display(), "a kept model was damaged on disk; fetching it");
        let _ = std::fs::remove_file(&path);
    }
    loaded
}

/// Keeps a ciphertext this member encoded and hashed itself in `dir`, where it is then the
/// only one: its own latest contribution (so that recomputing the round's aggregate need not
/// fetch it back), or the encryption of its stepped model under a server optimizer (the next
/// round's base).
pub fn keep_only(dir: &Path, digest: &Digest, bytes: &[u8]) -> std::io::Result<()> {
    clear_but_in_progress(dir)?;
    let temporary = temporary(dir);
    let mut out = BulkWriter::new(std::fs::File::create(&temporary)?);
    out.write_all(bytes)?;
    out.finish()?;
    std::fs::rename(&temporary, path(dir, digest))
}

/// A ciphertext's encoding kept in a file, with what an upload offers of it: an upload reads
/// its chunks from the file instead of holding its 20 or so bytes per value in memory. It
/// reads them through `file`, opened when the encoding was kept, so that a later contribution
/// kept in the same directory (which removes this file's name) cannot cut the upload short.
#[derive(Debug)]
pub struct KeptEncoding {
    pub path: PathBuf,
    pub file: std::sync::Arc<std::fs::File>,
    pub digest: Digest,
    pub length: u64,
}

/// Chunk `index` of the `length`-byte encoding kept in `file`.
pub fn read_chunk(file: &std::fs::File, length: u64, index: usize) -> std::io::Result<Vec<u8>> {
    let start = (index * CHUNK_BYTES) as u64;
    let end = (start + CHUNK_BYTES as u64).min(length);
    runtime::bulk::read_exact_at(file, start, end.saturating_sub(start) as usize)
}

/// Encodes `ciphertext` into `dir`, where it is then the only file, hashing it on the way: one
/// pass, and the encoding never whole in memory. On a write
/// error the ciphertext comes back, so that the caller can still upload it from memory.
pub fn keep_encoding(dir: &Path, ciphertext: Ciphertext) -> Result<KeptEncoding, KeepFailed> {
    let temporary = temporary(dir);
    // Opened for reading too: the upload reads its chunks through this handle.
    let file = clear_but_in_progress(dir).and_then(|()| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temporary)
    });
    let mut out = match file {
        Ok(file) => BulkWriter::new(file),
        Err(error) => {
            return Err(KeepFailed {
                error,
                ciphertext: BoundCiphertext::new(ciphertext),
            });
        }
    };
    let mut length = 0u64;
    let mut failure = None;
    let bound = BoundCiphertext::streamed(ciphertext, |piece| {
        length += piece.len() as u64;
        if failure.is_none()
            && let Err(e) = out.write_all(piece)
        {
            failure = Some(e);
        }
    });
    let digest = bound.digest().0;
    let kept = match failure.or_else(|| out.flush().err()) {
        Some(error) => Err(error),
        None => out.finish().and_then(|file| {
            runtime::bulk::read_past_cache(&file);
            std::fs::rename(&temporary, path(dir, &digest))?;
            Ok(file)
        }),
    };
    let file = match kept {
        Ok(file) => file,
        Err(error) => {
            let _ = std::fs::remove_file(&temporary);
            return Err(KeepFailed {
                error,
                ciphertext: bound,
            });
        }
    };
    Ok(KeptEncoding {
        path: path(dir, &digest),
        file: std::sync::Arc::new(file),
        digest,
        length,
    })
}

/// A ciphertext that could not be kept on disk, and why.
#[derive(Debug)]
pub struct KeepFailed {
    pub error: std::io::Error,
    pub ciphertext: BoundCiphertext,
}

/// Removes every file of `dir` but those in progress (their names start with a dot).
fn clear_but_in_progress(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if let Ok(files) = std::fs::read_dir(dir) {
        for file in files.flatten() {
            if !file.file_name().to_string_lossy().starts_with('.') {
                let _ = std::fs::remove_file(file.path());
            }
        }
    }
    Ok(())
}

/// What adding a kept file as a term did.
#[derive(Debug)]
pub enum Kept {
    /// Not kept here: the accumulator, untouched.
    Missing(Ciphertext),
    Added(Ciphertext),
    /// The file was not the ciphertext of its name (damaged on disk): it is removed, and the
    /// accumulator, which holds part of it, is gone.
    Damaged,
}

/// Adds `weight` times the kept ciphertext of `digest` in `dir` into `acc`, read in pieces and
/// checked against the digest on the way, as a fetched one is.
pub fn add_kept(
    dir: &Path,
    mut acc: Ciphertext,
    digest: &Digest,
    weight: i64,
    limits: DecodeLimits,
) -> Kept {
    let path = path(dir, digest);
    let Ok(file) = runtime::bulk::open(&path) else {
        return Kept::Missing(acc);
    };
    let mut stream = TermStream::new(&mut acc, *digest, weight, limits);
    let read = read_in_pieces(&file, |piece| stream.push::<std::io::Error>(piece).is_ok());
    if read && stream.finish::<std::io::Error>().is_ok() {
        return Kept::Added(acc);
    }
    tracing::warn!(path = %path.display(), "a kept ciphertext was damaged on disk; fetching it");
    let _ = std::fs::remove_file(&path);
    Kept::Damaged
}

/// Hands the whole of `file` to `push` in pieces of 4 MiB; false at a read error or at the
/// first piece `push` refuses.
fn read_in_pieces(file: &std::fs::File, push: impl FnMut(&[u8]) -> bool) -> bool {
    runtime::bulk::read_in_pieces(file, push).unwrap_or(false)
}

fn path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join(hex::encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::wire::ciphertext_digest;

    /// Ciphertexts at 2^40 with bodies in bits 72..112.
    fn shape(values: usize) -> CiphertextShape {
        CiphertextShape {
            values,
            delta_bits: 40,
            body_window: protocol::he::Window::new(72, 5).unwrap(),
            secrets: 1,
        }
    }

    /// The kept model of `digest`, a ciphertext of `values` values at 2^40.
    fn find(dir: &Path, digest: &Digest, values: usize) -> Option<BoundCiphertext> {
        load(dir, digest, shape(values), DecodeLimits::default())
    }

    #[test]
    fn a_recomputed_model_is_kept_only_under_the_digest_expected_and_found_intact() {
        let dir = tempfile::tempdir().unwrap();
        let model = Ciphertext::zero(shape(3));
        let digest = ciphertext_digest(&model).0;
        // Another digest expected: not kept.
        assert_eq!(keep_if(dir.path(), model.clone(), &[7; 32], None), None);
        assert_eq!(find(dir.path(), &digest, 3), None);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let bound = keep_if(dir.path(), model.clone(), &digest, None).unwrap();
        assert_eq!(bound, BoundCiphertext::new(model.clone()));
        let found = find(dir.path(), &digest, 3).unwrap();
        assert_eq!(found, BoundCiphertext::new(model));
    }

    #[test]
    fn a_kept_model_damaged_on_disk_is_dropped_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let model = Ciphertext::zero(shape(3));
        let digest = ciphertext_digest(&model).0;
        assert!(keep_if(dir.path(), model, &digest, None).is_some());
        let path = dir.path().join(hex::encode(digest));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(find(dir.path(), &digest, 3), None);
        assert!(!path.exists());
    }

    #[test]
    fn keeping_a_model_drops_all_but_it_and_the_model_it_builds_on() {
        let dir = tempfile::tempdir().unwrap();
        let models: Vec<Ciphertext> = (1..=4).map(|n| Ciphertext::zero(shape(n))).collect();
        let digests: Vec<Digest> = models.iter().map(|m| ciphertext_digest(m).0).collect();
        let keep = |i: usize| {
            keep_if(
                dir.path(),
                models[i].clone(),
                &digests[i],
                Some(&digests[i - 1]),
            )
        };
        // Each kept model keeps the one before it (the model it builds on), and only it.
        assert!(keep(1).is_some());
        assert!(keep(2).is_some());
        assert!(find(dir.path(), &digests[1], 2).is_some());
        assert!(keep(3).is_some());
        assert!(find(dir.path(), &digests[1], 2).is_none());
        assert!(find(dir.path(), &digests[2], 3).is_some());
        assert!(find(dir.path(), &digests[3], 4).is_some());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_model_that_cannot_be_kept_is_still_bound_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let model = Ciphertext::zero(shape(3));
        let digest = ciphertext_digest(&model).0;
        // The held directory is a file: nothing can be written there.
        let blocked = dir.path().join("held");
        std::fs::write(&blocked, b"").unwrap();
        assert_eq!(
            keep_if(&blocked, model.clone(), &digest, None),
            Some(BoundCiphertext::new(model.clone()))
        );
        assert_eq!(keep_if(&blocked, model, &[7; 32], None), None);
    }

    #[test]
    fn a_kept_contribution_is_added_only_if_intact_and_a_damaged_one_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let limits = DecodeLimits::default();
        // A contribution with every byte after the header set: masks and bodies not zero.
        let mut bytes = protocol::wire::encode_ciphertext(&Ciphertext::zero(shape(3)));
        let header = protocol::wire::ciphertext_header_len(1);
        for (i, byte) in bytes[header..].iter_mut().enumerate() {
            *byte = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        let contribution = protocol::wire::decode_ciphertext(&bytes, limits).unwrap();
        let digest = ciphertext_digest(&contribution).0;
        let start = Ciphertext::zero(shape(3));
        assert!(matches!(
            add_kept(dir.path(), start.clone(), &digest, 5, limits),
            Kept::Missing(acc) if acc == start
        ));
        keep_only(dir.path(), &digest, &bytes).unwrap();
        let mut expected = start.clone();
        protocol::round::policy::aggregate(&mut expected, &[(digest, 5)], limits, |_| {
            Ok::<_, std::io::Error>(bytes.clone())
        })
        .unwrap();
        assert_ne!(expected, start);
        assert!(matches!(
            add_kept(dir.path(), start.clone(), &digest, 5, limits),
            Kept::Added(acc) if acc == expected
        ));
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        keep_only(dir.path(), &digest, &damaged).unwrap();
        assert!(matches!(
            add_kept(dir.path(), start.clone(), &digest, 5, limits),
            Kept::Damaged
        ));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "dropped");
    }

    #[test]
    fn an_encoding_kept_in_a_file_is_uploaded_from_it_chunk_by_chunk_as_if_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let contributed = dir.path().join("contributed");
        // 60 bins: 11 MB of encoding, three upload chunks, the last one partly filled.
        let values = protocol::he::POLYNOMIAL_SIZE * 60;
        let mut ciphertext = Ciphertext::zero(shape(values));
        let bytes = {
            let mut bytes = protocol::wire::encode_ciphertext(&ciphertext);
            let header = protocol::wire::ciphertext_header_len(1);
            for (i, byte) in bytes[header..].iter_mut().enumerate() {
                *byte = (i % 241) as u8;
            }
            ciphertext =
                protocol::wire::decode_ciphertext(&bytes, DecodeLimits::default()).unwrap();
            protocol::wire::encode_ciphertext(&ciphertext)
        };
        assert!(bytes.len() > 2 * CHUNK_BYTES, "{}", bytes.len());
        let earlier = contributed.join("earlier");
        std::fs::create_dir_all(&contributed).unwrap();
        std::fs::write(&earlier, b"last round's").unwrap();
        let kept = keep_encoding(&contributed, ciphertext).unwrap();
        assert_eq!(kept.digest, protocol::wire::encoded_digest(&bytes).0);
        assert_eq!(kept.length, bytes.len() as u64);
        let read: Vec<u8> = (0..bytes.len().div_ceil(CHUNK_BYTES))
            .flat_map(|i| read_chunk(&kept.file, kept.length, i).unwrap())
            .collect();
        assert_eq!(read, bytes);
        assert!(!earlier.exists(), "the only file kept");
        assert_eq!(std::fs::read_dir(&contributed).unwrap().count(), 1);
    }

    #[test]
    fn an_encoding_kept_while_another_is_still_uploading_leaves_that_upload_whole() {
        // A restarted coordinator can open a round while the upload of an earlier round's
        // contribution is retried: two contributions in flight, each keeping its encoding.
        let dir = tempfile::tempdir().unwrap();
        let contributed = dir.path().join("contributed");
        let encodings: Vec<(Ciphertext, Vec<u8>)> = (1..=2u8)
            .map(|n| {
                let values = protocol::he::POLYNOMIAL_SIZE * 8;
                let mut bytes = protocol::wire::encode_ciphertext(&Ciphertext::zero(shape(values)));
                let header = protocol::wire::ciphertext_header_len(1);
                for (i, byte) in bytes[header..].iter_mut().enumerate() {
                    *byte = (i % 239) as u8 ^ n;
                }
                let c = protocol::wire::decode_ciphertext(&bytes, DecodeLimits::default());
                (c.unwrap(), bytes)
            })
            .collect();
        let first = keep_encoding(&contributed, encodings[0].0.clone()).unwrap();
        let second = keep_encoding(&contributed, encodings[1].0.clone()).unwrap();
        for (kept, (_, bytes)) in [first, second].iter().zip(&encodings) {
            let read: Vec<u8> = (0..bytes.len().div_ceil(CHUNK_BYTES))
                .flat_map(|i| read_chunk(&kept.file, kept.length, i).unwrap())
                .collect();
            assert!(read == *bytes, "an upload reads what was kept");
        }
    }

    #[test]
    fn writers_in_one_directory_never_share_a_temporary_name() {
        let dir = Path::new("held");
        let names: std::collections::HashSet<PathBuf> = (0..4).map(|_| temporary(dir)).collect();
        assert_eq!(names.len(), 4);
        assert!(
            names
                .iter()
                .all(|n| n.file_name().unwrap().to_string_lossy().starts_with('.'))
        );
    }

    #[test]
    fn an_encoding_that_cannot_be_kept_gives_the_ciphertext_back() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("contributed");
        std::fs::write(&blocked, b"").unwrap();
        let ciphertext = Ciphertext::zero(shape(3));
        let failed = keep_encoding(&blocked, ciphertext.clone()).unwrap_err();
        assert_eq!(failed.ciphertext, BoundCiphertext::new(ciphertext));
    }

    #[test]
    fn a_restart_clears_half_written_models() {
        let dir = tempfile::tempdir().unwrap();
        let held = dir.path().join("held");
        std::fs::create_dir_all(&held).unwrap();
        let model = Ciphertext::zero(shape(3));
        let digest = ciphertext_digest(&model).0;
        assert!(keep_if(&held, model, &digest, None).is_some());
        std::fs::write(held.join(".held-7-0.part"), b"half").unwrap();
        clear_after_restart(&held);
        assert!(find(&held, &digest, 3).is_some(), "the kept model stays");
        assert_eq!(std::fs::read_dir(&held).unwrap().count(), 1);
    }
}
