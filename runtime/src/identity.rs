//! Identities: the keys that say who a member or the coordinator is. A member has a signing
//! key (its log entries and ceremony messages), a witness key (its checkpoint cosignatures)
//! and a network key (its libp2p PeerId); the coordinator has a signing key, a log key (its
//! checkpoints) and a network key. One key per purpose, as signed-note keys require.

use ed25519_dalek::SigningKey;
use libp2p_identity::{Keypair, PeerId};
use protocol::bytes::{Reader, Writer};
use protocol::consortium::{CoordinatorEntry, MemberEntry};
use protocol::seal::{SealError, SealKind, open, seal};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

/// What the identity is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Member,
    Coordinator,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("the identity file is malformed: {0}")]
    Malformed(String),
    #[error("invalid name {0:?}: use letters, digits, '-', '_' and '.'")]
    Name(String),
}

pub struct Identity {
    pub role: Role,
    pub name: String,
    pub signing: SigningKey,
    /// The witness key of a member, or the log key of the coordinator.
    pub second: SigningKey,
    network: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Identity({:?} {}, {}, <redacted>)",
            self.role,
            self.name,
            self.peer_id()
        )
    }
}

const IDENTITY_VERSION: u8 = 1;

impl Identity {
    pub fn generate<R: RngCore + CryptoRng>(
        role: Role,
        name: &str,
        rng: &mut R,
    ) -> Result<Self, IdentityError> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(IdentityError::Name(name.to_owned()));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        let signing = SigningKey::from_bytes(&seed);
        rng.fill_bytes(seed.as_mut());
        let second = SigningKey::from_bytes(&seed);
        let mut network = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(network.as_mut());
        Ok(Self {
            role,
            name: name.to_owned(),
            signing,
            second,
            network,
        })
    }

    pub fn keypair(&self) -> Keypair {
        let mut secret = *self.network;
        Keypair::ed25519_from_bytes(&mut secret).expect("32 bytes are a valid ed25519 secret")
    }

    pub fn peer_id(&self) -> PeerId {
        self.keypair().public().to_peer_id()
    }

    /// The member's public entry for the consortium file.
    pub fn member_entry(&self, address: &str) -> MemberEntry {
        MemberEntry {
            name: self.name.clone(),
            signing_key: hex::encode(self.signing.verifying_key().to_bytes()),
            witness_key: hex::encode(self.second.verifying_key().to_bytes()),
            peer_id: self.peer_id().to_string(),
            address: address.to_owned(),
        }
    }

    /// The coordinator's public entry for the consortium file.
    pub fn coordinator_entry(&self, address: &str) -> CoordinatorEntry {
        CoordinatorEntry {
            name: self.name.clone(),
            signing_key: hex::encode(self.signing.verifying_key().to_bytes()),
            log_key: hex::encode(self.second.verifying_key().to_bytes()),
            peer_id: self.peer_id().to_string(),
            address: address.to_owned(),
        }
    }

    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::default();
        w.u8(IDENTITY_VERSION)
            .u8(match self.role {
                Role::Member => 1,
                Role::Coordinator => 2,
            })
            .string(&self.name)
            .bytes(self.signing.as_bytes())
            .bytes(self.second.as_bytes())
            .bytes(self.network.as_ref());
        Zeroizing::new(w.into_bytes())
    }

    fn decode(bytes: &[u8]) -> Result<Self, IdentityError> {
        let malformed = |e: protocol::bytes::ReadError| IdentityError::Malformed(e.to_string());
        let mut r = Reader::new(bytes);
        let version = r.u8("version").map_err(malformed)?;
        if version != IDENTITY_VERSION {
            return Err(IdentityError::Malformed(format!("version {version}")));
        }
        let role = match r.u8("role").map_err(malformed)? {
            1 => Role::Member,
            2 => Role::Coordinator,
            other => return Err(IdentityError::Malformed(format!("role {other}"))),
        };
        let name = r.string("name", 64).map_err(malformed)?;
        let signing = Zeroizing::new(r.array::<32>("signing key").map_err(malformed)?);
        let second = Zeroizing::new(r.array::<32>("second key").map_err(malformed)?);
        let network = Zeroizing::new(r.array::<32>("network key").map_err(malformed)?);
        r.finish("identity").map_err(malformed)?;
        Ok(Self {
            role,
            name,
            signing: SigningKey::from_bytes(&signing),
            second: SigningKey::from_bytes(&second),
            network,
        })
    }

    /// The identity sealed under `passphrase`; the role, name and PeerId stay readable.
    pub fn seal<R: RngCore + CryptoRng>(
        &self,
        passphrase: &[u8],
        rng: &mut R,
    ) -> Result<Vec<u8>, IdentityError> {
        let metadata = format!("{:?} {} {}", self.role, self.name, self.peer_id());
        Ok(seal(
            SealKind::Identity,
            metadata.as_bytes(),
            &self.encode(),
            passphrase,
            rng,
        )?)
    }

    pub fn open(bytes: &[u8], passphrase: &[u8]) -> Result<Self, IdentityError> {
        let (_, plaintext) = open(bytes, SealKind::Identity, passphrase)?;
        Self::decode(&plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn identities_seal_and_open() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let identity = Identity::generate(Role::Member, "hospital-a", &mut rng).unwrap();
        let sealed = identity.seal(b"passphrase", &mut rng).unwrap();
        let opened = Identity::open(&sealed, b"passphrase").unwrap();
        assert_eq!(opened.peer_id(), identity.peer_id());
        assert_eq!(opened.signing.to_bytes(), identity.signing.to_bytes());
        assert_eq!(
            opened.member_entry("/ip4/127.0.0.1/tcp/1"),
            identity.member_entry("/ip4/127.0.0.1/tcp/1")
        );
        assert!(Identity::open(&sealed, b"other").is_err());
        assert!(!format!("{identity:?}").contains(&hex::encode(identity.signing.to_bytes())));
        assert!(Identity::generate(Role::Member, "has space", &mut rng).is_err());
    }
}
