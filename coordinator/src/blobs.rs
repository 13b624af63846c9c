//! Content-addressed storage for ciphertexts: each is a file named by its encoding's digest
//! (`protocol::wire::digest`), written under a temporary name and renamed into place once
//! complete and checked, so a crash never leaves a partial blob under a real name. Uploads
//! stream to disk chunk by chunk; nothing holds a whole contribution in memory.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use protocol::audit::entry::Digest;
use protocol::he::Ciphertext;
use protocol::round::message::{CHUNK_BYTES, MAX_CHUNKS};
use protocol::wire::digest::{EncodingHasher, encoding_digest};
use runtime::bulk::BulkWriter;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no ciphertext {0} is stored")]
    Missing(String),
    #[error("upload of {digest}: {reason}")]
    Upload { digest: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl BlobStore {
    pub fn open(dir: &Path) -> Result<Self, BlobError> {
        // What a stopped process was receiving is gone with it: its part-files go too.
        let _ = std::fs::remove_dir_all(dir.join("incoming"));
        std::fs::create_dir_all(dir.join("incoming")).map_err(io(dir))?;
        // Chunk digests kept beside each blob by version 1 of the round messages: unused now.
        for file in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
            if file.file_name().to_string_lossy().ends_with(".chunks") {
                let _ = std::fs::remove_file(file.path());
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(hex::encode(digest))
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).exists()
    }

    /// Stores `bytes` under their digest (durably) and returns it.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest, BlobError> {
        let digest: Digest = encoding_digest(bytes);
        let path = self.path(&digest);
        if !path.exists() {
            let temp = self.temp_path("put", &digest);
            let file = std::fs::File::create(&temp).map_err(io(&temp))?;
            let mut out = BulkWriter::new(file);
            out.write_all(bytes).map_err(io(&temp))?;
            out.finish()
                .and_then(|file| file.sync_all())
                .map_err(io(&temp))?;
            std::fs::rename(&temp, &path).map_err(io(&path))?;
        }
        Ok(digest)
    }

    /// Stores the encoding of `ciphertext` under its digest (durably), written as it is encoded
    /// and hashed: the encoding is never whole in memory, so an aggregate
    /// costs one encrypted model, not two.
    pub fn put_ciphertext(&self, ciphertext: &Ciphertext) -> Result<Digest, BlobError> {
        // The digest is known only at the end: written under a temporary name first.
        let temp = self.temp_path("put", &[0; 32]);
        let written = self.write_encoding(ciphertext, &temp);
        let digest = match written {
            Ok(written) => written,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        };
        let path = self.path(&digest);
        if path.exists() {
            let _ = std::fs::remove_file(&temp);
        } else {
            std::fs::rename(&temp, &path).map_err(io(&path))?;
        }
        Ok(digest)
    }

    fn write_encoding(&self, ciphertext: &Ciphertext, temp: &Path) -> Result<Digest, BlobError> {
        let file = std::fs::File::create(temp).map_err(io(temp))?;
        let mut out = BulkWriter::new(file);
        let digest = protocol::wire::stream_ciphertext(ciphertext, |piece| out.write_all(piece))
            .map_err(io(temp))?;
        let file = out.finish().map_err(io(temp))?;
        file.sync_all().map_err(io(temp))?;
        Ok(digest.0)
    }

    /// Drops a stored blob (one that was refused after upload).
    pub fn remove(&self, digest: &Digest) {
        let _ = std::fs::remove_file(self.path(digest));
    }

    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, BlobError> {
        let path = self.path(digest);
        if !path.exists() {
            return Err(BlobError::Missing(hex::encode(digest)));
        }
        std::fs::read(&path).map_err(io(&path))
    }

    /// The first `size` bytes of a stored blob (fewer if it is shorter) and its length.
    pub fn head(&self, digest: &Digest, size: usize) -> Result<(Vec<u8>, u64), BlobError> {
        let path = self.path(digest);
        let file =
            std::fs::File::open(&path).map_err(|_| BlobError::Missing(hex::encode(digest)))?;
        let length = file.metadata().map_err(io(&path))?.len();
        let mut head = Vec::with_capacity(size);
        file.take(size as u64)
            .read_to_end(&mut head)
            .map_err(io(&path))?;
        Ok((head, length))
    }

    /// Adds `weight` times the stored ciphertext `digest` into `acc`, read in pieces of
    /// [`CHUNK_BYTES`] and checked against the digest on the way: no buffer of its size.
    pub fn add_into(
        &self,
        acc: &mut Ciphertext,
        digest: &Digest,
        weight: i64,
        limits: protocol::wire::DecodeLimits,
    ) -> Result<(), protocol::round::policy::AggregateError<BlobError>> {
        use protocol::round::policy::AggregateError;
        let path = self.path(digest);
        let read = |source| AggregateError::Read {
            digest: *digest,
            source,
        };
        let file = runtime::bulk::open(&path)
            .map_err(|_| read(BlobError::Missing(hex::encode(digest))))?;
        let mut term = protocol::round::TermStream::new(acc, *digest, weight, limits);
        let mut refused = None;
        runtime::bulk::read_in_pieces(&file, |piece| match term.push(piece) {
            Ok(()) => true,
            Err(e) => {
                refused = Some(e);
                false
            }
        })
        .map_err(|e| read(io(&path)(e)))?;
        if let Some(e) = refused {
            return Err(e);
        }
        term.finish()
    }

    /// The stored ciphertext `digest`, under a key of `expected_secrets` secrets, read in
    /// pieces and checked against the digest on the way (a term of weight 1 onto zero of the
    /// shape its header names): the file is never whole in memory beside it.
    pub fn read_ciphertext(
        &self,
        digest: &Digest,
        expected_secrets: usize,
        limits: protocol::wire::DecodeLimits,
    ) -> Result<Ciphertext, protocol::round::policy::AggregateError<BlobError>> {
        use protocol::round::policy::AggregateError;
        let (head, _) = self
            .head(
                digest,
                protocol::wire::ciphertext_header_len(expected_secrets),
            )
            .map_err(|source| AggregateError::Read {
                digest: *digest,
                source,
            })?;
        let shape = protocol::wire::decode_ciphertext_header(&head, limits).map_err(|source| {
            AggregateError::Decode {
                digest: *digest,
                source,
            }
        })?;
        let mut ciphertext = Ciphertext::zero(shape);
        self.add_into(&mut ciphertext, digest, 1, limits)?;
        Ok(ciphertext)
    }

    /// Chunk `index` of a stored blob, with the blob's length.
    pub fn read_chunk(&self, digest: &Digest, index: u32) -> Result<(u64, Vec<u8>), BlobError> {
        let path = self.path(digest);
        let file =
            runtime::bulk::open(&path).map_err(|_| BlobError::Missing(hex::encode(digest)))?;
        let length = file.metadata().map_err(io(&path))?.len();
        let start = u64::from(index) * CHUNK_BYTES as u64;
        if start >= length.max(1) {
            return Err(BlobError::Missing(format!(
                "{} chunk {index}",
                hex::encode(digest)
            )));
        }
        let size = (length - start).min(CHUNK_BYTES as u64) as usize;
        let bytes = runtime::bulk::read_exact_at(&file, start, size).map_err(io(&path))?;
        Ok((length, bytes))
    }

    fn temp_path(&self, what: &str, digest: &Digest) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir.join("incoming").join(format!(
            "{what}-{}-{}-{unique}",
            hex::encode(digest),
            std::process::id()
        ))
    }

    /// Starts receiving the blob `digest` of `length` bytes in chunks of [`CHUNK_BYTES`].
    pub fn begin_upload(&self, digest: Digest, length: u64) -> Result<Upload, BlobError> {
        let count = length.div_ceil(CHUNK_BYTES as u64);
        if count == 0 || count > MAX_CHUNKS {
            return Err(BlobError::Upload {
                digest: hex::encode(digest),
                reason: format!(
                    "{length} bytes: an upload is 1 to {MAX_CHUNKS} chunks of {CHUNK_BYTES} bytes"
                ),
            });
        }
        // Its own file: members upload the same server step's ciphertext at once, and each
        // upload lands by an atomic rename of identical bytes.
        let path = self.temp_path("upload", &digest);
        let file = std::fs::File::create(&path).map_err(io(&path))?;
        Ok(Upload {
            digest,
            length,
            count: count as u32,
            next: 0,
            hasher: EncodingHasher::new(),
            file: BulkWriter::new(file),
            path,
        })
    }

    /// Moves a completed, checked upload into place.
    pub fn finish_upload(&self, upload: Upload) -> Result<Digest, BlobError> {
        let digest = upload.digest;
        upload.file.get_ref().sync_all().map_err(io(&upload.path))?;
        let target = self.path(&digest);
        std::fs::rename(&upload.path, &target).map_err(io(&target))?;
        Ok(digest)
    }
}

/// A ciphertext arriving chunk by chunk, in order, each chunk's size checked on arrival and the
/// whole against its digest once the last is in. Nothing is logged or stored under the digest
/// before that.
#[derive(Debug)]
pub struct Upload {
    pub digest: Digest,
    length: u64,
    count: u32,
    next: u32,
    hasher: EncodingHasher,
    file: BulkWriter,
    path: PathBuf,
}

/// An upload abandoned part way (refused, replaced by another offer, its member gone) leaves no
/// part-file behind; a finished one was renamed away already.
impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Upload {
    /// Writes chunk `index`; returns true when the upload is complete and its whole digest
    /// checked.
    pub fn write(&mut self, index: u32, bytes: &[u8]) -> Result<bool, BlobError> {
        let reason = |reason: String| BlobError::Upload {
            digest: hex::encode(self.digest),
            reason,
        };
        if index != self.next {
            return Err(reason(format!(
                "chunk {index} arrived, expected {}",
                self.next
            )));
        }
        if index >= self.count {
            return Err(reason(format!(
                "chunk {index} arrived, but the offer was of {} chunks",
                self.count
            )));
        }
        let last = index + 1 == self.count;
        let expected = if last {
            self.length - u64::from(index) * CHUNK_BYTES as u64
        } else {
            CHUNK_BYTES as u64
        };
        if bytes.len() as u64 != expected {
            return Err(reason(format!(
                "chunk {index} holds {} bytes, not {expected}",
                bytes.len()
            )));
        }
        self.file.write_all(bytes).map_err(io(&self.path))?;
        self.hasher.update(bytes);
        self.next += 1;
        if !last {
            return Ok(false);
        }
        self.file.flush().map_err(io(&self.path))?;
        let written = self.file.len();
        let digest: Digest = std::mem::take(&mut self.hasher).finalize();
        if written != self.length {
            return Err(reason(format!(
                "{written} bytes were written of the {} offered",
                self.length
            )));
        }
        if digest != self.digest {
            return Err(reason(
                "the assembled ciphertext does not match its digest".into(),
            ));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ciphertexts at 2^40 with bodies in bits 72..112.
    fn shape(values: usize) -> protocol::he::CiphertextShape {
        protocol::he::CiphertextShape {
            values,
            delta_bits: 40,
            body_window: protocol::he::Window::new(72, 5).unwrap(),
            secrets: 1,
        }
    }

    #[test]
    fn a_ciphertext_stored_as_it_is_encoded_is_the_blob_of_its_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        // 60 bins: 11 MB, three chunks, the last one partly filled.
        let values = protocol::he::POLYNOMIAL_SIZE * 60;
        let mut bytes = protocol::wire::encode_ciphertext(&Ciphertext::zero(shape(values)));
        let header = protocol::wire::ciphertext_header_len(1);
        for (i, byte) in bytes[header..].iter_mut().enumerate() {
            *byte = (i % 239) as u8;
        }
        let limits = protocol::wire::DecodeLimits::default();
        let ciphertext = protocol::wire::decode_ciphertext(&bytes, limits).unwrap();
        let digest = store.put_ciphertext(&ciphertext).unwrap();
        assert_eq!(digest, protocol::wire::encoded_digest(&bytes).0);
        assert_eq!(store.read(&digest).unwrap(), bytes);
        let chunks: Vec<&[u8]> = bytes.chunks(CHUNK_BYTES).collect();
        assert_eq!(chunks.len(), 3);
        for (index, expected) in chunks.iter().enumerate() {
            let (length, chunk) = store.read_chunk(&digest, index as u32).unwrap();
            assert_eq!(length, bytes.len() as u64);
            assert_eq!(chunk, *expected);
        }
        // Stored again: the same blob, and nothing left in `incoming/`.
        assert_eq!(store.put_ciphertext(&ciphertext).unwrap(), digest);
        assert_eq!(
            std::fs::read_dir(dir.path().join("incoming"))
                .unwrap()
                .count(),
            0
        );
        // Read back (a retry re-randomises it): the same ciphertext, checked on the way.
        assert_eq!(
            store.read_ciphertext(&digest, 1, limits).unwrap(),
            ciphertext
        );
    }

    #[test]
    fn an_upload_takes_chunks_of_the_offered_sizes_in_order_and_lands_only_if_the_whole_matches() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..CHUNK_BYTES + 10).map(|i| (i % 251) as u8).collect();
        let digest: Digest = encoding_digest(&bytes);
        let (first, last) = bytes.split_at(CHUNK_BYTES);
        let mut upload = store.begin_upload(digest, bytes.len() as u64).unwrap();
        for (index, chunk, why) in [
            (1, last, "arrived, expected 0"),
            (0, &first[1..], "holds 4194303 bytes, not 4194304"),
            (2, last, "arrived, expected 0"),
        ] {
            let err = upload.write(index, chunk).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
        assert!(!upload.write(0, first).unwrap());
        let err = upload.write(1, &bytes[CHUNK_BYTES - 1..]).unwrap_err();
        assert!(err.to_string().contains("holds 11 bytes, not 10"), "{err}");
        assert!(upload.write(1, last).unwrap());
        let err = upload.write(2, last).unwrap_err();
        assert!(
            err.to_string().contains("the offer was of 2 chunks"),
            "{err}"
        );
        assert_eq!(store.finish_upload(upload).unwrap(), digest);
        assert_eq!(store.read(&digest).unwrap(), bytes);
        // The same sizes with one byte changed: refused at the end, and nothing stored.
        let mut other = store.begin_upload([9; 32], bytes.len() as u64).unwrap();
        other.write(0, first).unwrap();
        let err = other.write(1, last).unwrap_err();
        assert!(
            err.to_string().contains("does not match its digest"),
            "{err}"
        );
        assert!(!store.contains(&[9; 32]));
        // A chunk-digest file a version-1 coordinator kept beside a blob goes when the store
        // opens; the blob stays.
        let side = dir.path().join(format!("{}.chunks", hex::encode(digest)));
        std::fs::write(&side, [0u8; 64]).unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        assert!(!side.exists());
        assert_eq!(store.read(&digest).unwrap(), bytes);
        // No chunks, or more than a message stream may carry: refused at the offer.
        for length in [0, MAX_CHUNKS * CHUNK_BYTES as u64 + 1] {
            let err = store.begin_upload(digest, length).unwrap_err();
            assert!(err.to_string().contains("1 to 1024 chunks"), "{err}");
        }
    }

    #[test]
    fn a_stored_aggregate_damaged_on_disk_is_refused_naming_its_digest() {
        use protocol::round::policy::AggregateError;
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let ciphertext = Ciphertext::zero(shape(protocol::he::POLYNOMIAL_SIZE + 3));
        let digest = store.put_ciphertext(&ciphertext).unwrap();
        let limits = protocol::wire::DecodeLimits::default();
        let path = store.path(&digest);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = store.read_ciphertext(&digest, 1, limits).unwrap_err();
        assert!(
            matches!(err, AggregateError::Digest { digest: d } if d == digest),
            "{err}"
        );
        // Gone altogether: a read error naming it.
        std::fs::remove_file(&path).unwrap();
        let err = store.read_ciphertext(&digest, 1, limits).unwrap_err();
        assert!(
            matches!(err, AggregateError::Read { digest: d, .. } if d == digest),
            "{err}"
        );
        // A plan of fewer values refuses the header before anything is allocated.
        let other = store.put_ciphertext(&ciphertext).unwrap();
        let few = protocol::wire::DecodeLimits { max_values: 10 };
        let err = store.read_ciphertext(&other, 1, few).unwrap_err();
        assert!(matches!(err, AggregateError::Decode { .. }), "{err}");
    }
}
