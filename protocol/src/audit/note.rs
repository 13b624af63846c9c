//! C2SP signed notes (c2sp.org/signed-note) with Ed25519 signatures, and the timestamped
//! Ed25519 cosignatures of c2sp.org/tlog-cosignature.
//!
//! A note is UTF-8 text ending in a newline, a blank line, and signature lines
//! `— <key name> <base64(key id || signature)>`. The key id is the first four bytes of
//! SHA-256(name || "\n" || signature type || public key).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Signature type of plain Ed25519 note signatures.
pub const ED25519: u8 = 0x01;
/// Signature type of timestamped Ed25519 witness cosignatures.
pub const COSIGNATURE_V1: u8 = 0x04;
/// A verifier must accept at least 16 signatures; a note with more than this is refused.
pub const MAX_SIGNATURES: usize = 100;
/// Largest note accepted, signatures included.
pub const MAX_NOTE_BYTES: usize = 1 << 16;

const SIGNATURE_PREFIX: &str = "\u{2014} ";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed note: {0}")]
    Malformed(String),
    #[error("invalid key name {0:?}")]
    BadKeyName(String),
    #[error("malformed verifier key {0:?}")]
    BadVerifierKey(String),
    #[error("signature by {name} does not verify")]
    BadSignature { name: String },
    #[error("signature by unknown key {name} ({key_id:08x})")]
    UnknownKey { name: String, key_id: u32 },
    #[error("the note carries no valid signature by {0}")]
    MissingSignature(String),
}

fn check_key_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(NoteError::BadKeyName(name.to_owned()));
    }
    Ok(())
}

pub fn key_id(name: &str, signature_type: u8, public_key: &[u8; 32]) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([signature_type]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A named public key of one signature type, as in a C2SP verifier key string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    signature_type: u8,
    key: VerifyingKey,
    id: u32,
}

impl NoteVerifier {
    pub fn new(name: &str, signature_type: u8, key: VerifyingKey) -> Result<Self, NoteError> {
        check_key_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            signature_type,
            id: key_id(name, signature_type, key.as_bytes()),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.id
    }

    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    pub fn signature_type(&self) -> u8 {
        self.signature_type
    }

    /// `<name>+<key id hex>+<base64(type || public key)>`.
    pub fn to_vkey(&self) -> String {
        let mut typed = vec![self.signature_type];
        typed.extend_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.id, STANDARD.encode(typed))
    }

    pub fn parse_vkey(vkey: &str) -> Result<Self, NoteError> {
        let bad = || NoteError::BadVerifierKey(vkey.to_owned());
        let mut parts = vkey.split('+');
        let (Some(name), Some(id), Some(key), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let typed = STANDARD.decode(key).map_err(|_| bad())?;
        if typed.len() != 33 || id.len() != 8 {
            return Err(bad());
        }
        let public: [u8; 32] = typed[1..].try_into().map_err(|_| bad())?;
        let key = VerifyingKey::from_bytes(&public).map_err(|_| bad())?;
        let verifier = Self::new(name, typed[0], key)?;
        if format!("{:08x}", verifier.id) != id {
            return Err(bad());
        }
        Ok(verifier)
    }

    /// Verifies a signature line made by this key over `text`.
    pub fn verify(&self, text: &str, line: &SignatureLine) -> Result<(), NoteError> {
        let bad = || NoteError::BadSignature {
            name: self.name.clone(),
        };
        if line.name != self.name || line.key_id != self.id {
            return Err(bad());
        }
        match self.signature_type {
            ED25519 => {
                let signature = Signature::from_slice(&line.signature).map_err(|_| bad())?;
                self.key
                    .verify_strict(text.as_bytes(), &signature)
                    .map_err(|_| bad())
            }
            COSIGNATURE_V1 => {
                if line.signature.len() != 72 {
                    return Err(bad());
                }
                let timestamp =
                    u64::from_be_bytes(line.signature[..8].try_into().map_err(|_| bad())?);
                let signature = Signature::from_slice(&line.signature[8..]).map_err(|_| bad())?;
                self.key
                    .verify_strict(cosignature_message(text, timestamp).as_bytes(), &signature)
                    .map_err(|_| bad())
            }
            _ => Err(bad()),
        }
    }
}

/// The message a witness signs: a header naming the time, then the whole checkpoint text.
fn cosignature_message(text: &str, timestamp: u64) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{text}")
}

/// A private key that signs notes (type 0x01) or cosigns checkpoints (type 0x04).
pub struct NoteSigner {
    verifier: NoteVerifier,
    key: SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NoteSigner({}, <redacted>)", self.verifier.to_vkey())
    }
}

impl NoteSigner {
    pub fn new(name: &str, signature_type: u8, key: SigningKey) -> Result<Self, NoteError> {
        Ok(Self {
            verifier: NoteVerifier::new(name, signature_type, key.verifying_key())?,
            key,
        })
    }

    pub fn verifier(&self) -> &NoteVerifier {
        &self.verifier
    }

    /// Signs `text` as a note signature (type 0x01).
    pub fn sign(&self, text: &str) -> SignatureLine {
        debug_assert_eq!(self.verifier.signature_type, ED25519);
        SignatureLine {
            name: self.verifier.name.clone(),
            key_id: self.verifier.id,
            signature: self.key.sign(text.as_bytes()).to_bytes().to_vec(),
        }
    }

    /// Cosigns checkpoint `text` at `timestamp` (seconds since the epoch; type 0x04).
    pub fn cosign(&self, text: &str, timestamp: u64) -> SignatureLine {
        debug_assert_eq!(self.verifier.signature_type, COSIGNATURE_V1);
        let signature = self
            .key
            .sign(cosignature_message(text, timestamp).as_bytes());
        let mut bytes = timestamp.to_be_bytes().to_vec();
        bytes.extend_from_slice(&signature.to_bytes());
        SignatureLine {
            name: self.verifier.name.clone(),
            key_id: self.verifier.id,
            signature: bytes,
        }
    }
}

/// One `— name base64(...)` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureLine {
    pub name: String,
    pub key_id: u32,
    /// The signature bytes after the key id (for cosignatures: timestamp then signature).
    pub signature: Vec<u8>,
}

impl SignatureLine {
    pub fn encode(&self) -> String {
        let mut bytes = self.key_id.to_be_bytes().to_vec();
        bytes.extend_from_slice(&self.signature);
        format!(
            "{SIGNATURE_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(bytes)
        )
    }

    /// Parses one line, without its newline.
    pub fn parse(line: &str) -> Result<Self, NoteError> {
        let malformed = || NoteError::Malformed(format!("bad signature line {line:?}"));
        let rest = line.strip_prefix(SIGNATURE_PREFIX).ok_or_else(malformed)?;
        let (name, encoded) = rest.split_once(' ').ok_or_else(malformed)?;
        check_key_name(name)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| malformed())?;
        if bytes.len() < 5 || STANDARD.encode(&bytes) != encoded {
            return Err(malformed());
        }
        Ok(Self {
            name: name.to_owned(),
            key_id: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            signature: bytes[4..].to_vec(),
        })
    }

    /// The timestamp of a cosignature line.
    pub fn cosignature_time(&self) -> Option<u64> {
        if self.signature.len() != 72 {
            return None;
        }
        Some(u64::from_be_bytes(self.signature[..8].try_into().ok()?))
    }
}

/// A signed note: text and signature lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub text: String,
    pub signatures: Vec<SignatureLine>,
}

impl Note {
    pub fn encode(&self) -> String {
        let mut out = self.text.clone();
        out.push('\n');
        for line in &self.signatures {
            out.push_str(&line.encode());
        }
        out
    }

    /// Parses a note strictly: valid UTF-8 without control characters other than newlines,
    /// text ending in a newline, at least one and at most [`MAX_SIGNATURES`] well-formed
    /// signature lines in canonical base64, and nothing after the last line.
    pub fn parse(bytes: &[u8]) -> Result<Self, NoteError> {
        if bytes.len() > MAX_NOTE_BYTES {
            return Err(NoteError::Malformed(format!(
                "{} bytes exceed the limit of {MAX_NOTE_BYTES}",
                bytes.len()
            )));
        }
        let note = std::str::from_utf8(bytes)
            .map_err(|_| NoteError::Malformed("not valid UTF-8".into()))?;
        if note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(NoteError::Malformed("control characters".into()));
        }
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| NoteError::Malformed("no blank line before the signatures".into()))?;
        let text = &note[..split + 1];
        let signatures = &note[split + 2..];
        if !signatures.ends_with('\n') {
            return Err(NoteError::Malformed(
                "signatures must end with a newline".into(),
            ));
        }
        let lines: Vec<&str> = signatures[..signatures.len() - 1].split('\n').collect();
        if lines.len() > MAX_SIGNATURES {
            return Err(NoteError::Malformed(format!(
                "{} signatures exceed the limit of {MAX_SIGNATURES}",
                lines.len()
            )));
        }
        let signatures = lines
            .into_iter()
            .map(SignatureLine::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            text: text.to_owned(),
            signatures,
        })
    }

    /// Checks every signature line strictly against `known`: a line from an unknown key or one
    /// that does not verify is an error (an auditor's export contains only known keys, so
    /// anything else is tampering). Returns the verifiers whose signatures are present, in
    /// line order, without duplicates.
    pub fn verify_all<'a>(
        &self,
        known: &'a [NoteVerifier],
    ) -> Result<Vec<&'a NoteVerifier>, NoteError> {
        let mut signed = Vec::new();
        for line in &self.signatures {
            let verifier = known
                .iter()
                .find(|v| v.name == line.name && v.id == line.key_id)
                .ok_or_else(|| NoteError::UnknownKey {
                    name: line.name.clone(),
                    key_id: line.key_id,
                })?;
            verifier.verify(&self.text, line)?;
            if signed
                .iter()
                .any(|v: &&NoteVerifier| v.id == verifier.id && v.name == verifier.name)
            {
                return Err(NoteError::Malformed(format!(
                    "{} signed twice",
                    verifier.name
                )));
            }
            signed.push(verifier);
        }
        Ok(signed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_matches_the_c2sp_example() {
        // From c2sp.org/signed-note: example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k
        let verifier = NoteVerifier::parse_vkey(
            "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        )
        .unwrap();
        assert_eq!(verifier.key_id(), 0x530d903a);
        assert_eq!(verifier.name(), "example.com/foo");
        assert_eq!(
            verifier.to_vkey(),
            "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
        );
        assert!(
            NoteVerifier::parse_vkey(
                "example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
            )
            .is_err()
        );
    }

    fn signer(name: &str, kind: u8, seed: u8) -> NoteSigner {
        NoteSigner::new(name, kind, SigningKey::from_bytes(&[seed; 32])).unwrap()
    }

    #[test]
    fn notes_round_trip_and_verify_strictly() {
        let log = signer("log.example/a", ED25519, 1);
        let witness = signer("witness.example/w", COSIGNATURE_V1, 2);
        let text = "log.example/a\n3\nAAAA\n".to_owned();
        let note = Note {
            signatures: vec![log.sign(&text), witness.cosign(&text, 1_700_000_000)],
            text,
        };
        let encoded = note.encode();
        assert!(encoded.contains("\n\n\u{2014} log.example/a "));
        let parsed = Note::parse(encoded.as_bytes()).unwrap();
        assert_eq!(parsed, note);
        let known = [log.verifier().clone(), witness.verifier().clone()];
        assert_eq!(parsed.verify_all(&known).unwrap().len(), 2);
        assert_eq!(parsed.signatures[1].cosignature_time(), Some(1_700_000_000));
        // Unknown keys are an error for an auditor, not silently skipped.
        assert!(matches!(
            parsed.verify_all(&known[..1]),
            Err(NoteError::UnknownKey { .. })
        ));
        // Every single-byte change is rejected by parsing or verification.
        for index in 0..encoded.len() {
            let mut bytes = encoded.clone().into_bytes();
            bytes[index] ^= 0x01;
            let verdict = Note::parse(&bytes).and_then(|n| n.verify_all(&known).map(|_| ()));
            assert!(verdict.is_err(), "flip at {index} went unnoticed");
        }
    }

    #[test]
    fn cosignature_message_follows_the_c2sp_layout() {
        assert_eq!(
            cosignature_message(
                "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
                1679315147
            ),
            "cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        );
    }
}
