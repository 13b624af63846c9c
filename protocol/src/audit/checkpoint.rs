//! C2SP checkpoints (c2sp.org/tlog-checkpoint): origin, tree size and root hash, signed by the
//! log as a note and cosigned by witnesses.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::merkle::Hash;
use super::note::{Note, NoteError, NoteSigner, NoteVerifier};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: three lines, no extensions.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// Parses the note text strictly: exactly origin, decimal size without leading zeros, and a
    /// base64 root of 32 bytes in canonical form.
    pub fn parse_text(text: &str) -> Result<Self, NoteError> {
        let malformed = |why: &str| NoteError::Malformed(format!("checkpoint: {why}"));
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| malformed("text must end with a newline"))?;
        let lines: Vec<&str> = body.split('\n').collect();
        let [origin, size, root] = lines.as_slice() else {
            return Err(malformed("expected exactly origin, size and root lines"));
        };
        if origin.is_empty() || origin.contains(' ') || origin.contains('+') {
            return Err(malformed("bad origin"));
        }
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(malformed("size must be a decimal without leading zeros"));
        }
        let size: u64 = size.parse().map_err(|_| malformed("size out of range"))?;
        let root_bytes = STANDARD
            .decode(root)
            .map_err(|_| malformed("root is not base64"))?;
        let root: Hash = root_bytes
            .as_slice()
            .try_into()
            .map_err(|_| malformed("root must be 32 bytes"))?;
        let checkpoint = Self {
            origin: (*origin).to_owned(),
            size,
            root,
        };
        if checkpoint.text() != text {
            return Err(malformed("not in canonical form"));
        }
        Ok(checkpoint)
    }

    /// The checkpoint signed by the log.
    pub fn sign(&self, log: &NoteSigner) -> Note {
        let text = self.text();
        Note {
            signatures: vec![log.sign(&text)],
            text,
        }
    }
}

/// A parsed checkpoint note with every signature verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub note: Note,
    /// Names of the witnesses whose cosignatures verified.
    pub cosigners: Vec<String>,
}

impl SignedCheckpoint {
    /// Parses and verifies a checkpoint note: the log's signature must be present and valid,
    /// and every other line must be a valid cosignature by a known witness.
    pub fn open(
        bytes: &[u8],
        log: &NoteVerifier,
        witnesses: &[NoteVerifier],
    ) -> Result<Self, NoteError> {
        let note = Note::parse(bytes)?;
        let checkpoint = Checkpoint::parse_text(&note.text)?;
        let mut known = witnesses.to_vec();
        known.push(log.clone());
        let signed = note.verify_all(&known)?;
        if !signed.contains(&log) {
            return Err(NoteError::MissingSignature(log.name().to_owned()));
        }
        let cosigners = signed
            .iter()
            .filter(|v| *v != &log)
            .map(|v| v.name().to_owned())
            .collect();
        Ok(Self {
            checkpoint,
            note,
            cosigners,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_canonical_and_strict() {
        let checkpoint = Checkpoint {
            origin: "quorate.example/log".into(),
            size: 20852163,
            root: [7; 32],
        };
        let text = checkpoint.text();
        assert_eq!(Checkpoint::parse_text(&text).unwrap(), checkpoint);
        for bad in [
            text.replace("20852163", "020852163"),
            text.replace("20852163", "-1"),
            text.trim_end().to_owned(),
            format!("{text}extension\n"),
            text.replace("quorate.example/log", "quorate example"),
        ] {
            assert!(Checkpoint::parse_text(&bad).is_err(), "{bad:?}");
        }
    }
}
