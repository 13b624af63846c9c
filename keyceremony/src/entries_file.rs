//! The `ceremony-entries` file a member's ceremony run leaves: its signed audit-log entries,
//! one per phase, each as a 4-byte little-endian length and the entry's bytes. The coordinator
//! (and a rehearsal playing it) appends them after the membership manifest. One reader for
//! every caller, which refuses a truncated file and trailing bytes alike.

use protocol::audit::entry::{EntryError, MAX_ENTRY_BYTES, SignedEntry};

/// Why a ceremony-entries file is refused; the offset is where the bad part starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntriesFileError {
    #[error("truncated at byte {offset}: {missing} more bytes announced than present")]
    Truncated { offset: usize, missing: usize },
    #[error(
        "the entry at byte {offset} announces {length} bytes, over the limit of {MAX_ENTRY_BYTES}"
    )]
    TooLarge { offset: usize, length: usize },
    #[error("the entry at byte {offset}: {source}")]
    Entry { offset: usize, source: EntryError },
}

/// Encodes `entries` as a ceremony-entries file.
pub fn encode(entries: &[SignedEntry]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in entries {
        bytes.extend_from_slice(&(entry.leaf().len() as u32).to_le_bytes());
        bytes.extend_from_slice(entry.leaf());
    }
    bytes
}

/// Decodes a ceremony-entries file, checking each entry's encoding and signature.
pub fn decode(bytes: &[u8]) -> Result<Vec<SignedEntry>, EntriesFileError> {
    let mut entries = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let Some(prefix) = rest.get(..4) else {
            return Err(EntriesFileError::Truncated {
                offset,
                missing: 4 - rest.len(),
            });
        };
        let length = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if length > MAX_ENTRY_BYTES {
            return Err(EntriesFileError::TooLarge { offset, length });
        }
        let Some(leaf) = rest.get(4..4 + length) else {
            return Err(EntriesFileError::Truncated {
                offset,
                missing: 4 + length - rest.len(),
            });
        };
        let entry =
            SignedEntry::open(leaf).map_err(|source| EntriesFileError::Entry { offset, source })?;
        entries.push(entry);
        offset += 4 + length;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::audit::entry::{Body, Entry};

    fn entry(sequence: u64) -> SignedEntry {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        Entry::new(
            "quorate/test",
            &key,
            sequence,
            1,
            Body::CeremonyStep {
                ceremony: [2; 32],
                phase: sequence as u8,
                artefact: [3; 32],
            },
        )
        .about([1; 32])
        .sign(&key)
    }

    #[test]
    fn entries_round_trip_and_truncation_or_trailing_bytes_are_refused_with_the_offset() {
        let entries = vec![entry(0), entry(1), entry(2)];
        let bytes = encode(&entries);
        assert_eq!(decode(&bytes).unwrap(), entries);
        assert_eq!(decode(&[]).unwrap(), Vec::<SignedEntry>::new());
        let second = 4 + entries[0].leaf().len();
        // Every cut but at an entry's end is refused (one reader used to drop 1 to 3 bytes).
        for cut in 1..bytes.len() {
            let at_boundary = entries
                .iter()
                .scan(0, |end, e| {
                    *end += 4 + e.leaf().len();
                    Some(*end)
                })
                .any(|end| end == cut);
            assert_eq!(decode(&bytes[..cut]).is_ok(), at_boundary, "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(&[0, 0]);
        assert!(matches!(
            decode(&trailing),
            Err(EntriesFileError::Truncated { offset, missing: 2 }) if offset == bytes.len()
        ));
        let mut flipped = bytes.clone();
        flipped[second + 10] ^= 1;
        assert!(matches!(
            decode(&flipped),
            Err(EntriesFileError::Entry { offset, .. }) if offset == second
        ));
        let mut huge = bytes.clone();
        huge[second..second + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&huge),
            Err(EntriesFileError::TooLarge { offset, .. }) if offset == second
        ));
    }
}
