//! The malicious coordinator of the adversarial test: it holds the coordinator's keys and, colluding,
//! every other member's, forges their entries and cosignatures, and serves member-a's fetches.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use protocol::audit::entry::{Body, Digest, Entry, SignedEntry};
use protocol::audit::log::LogState;
use protocol::audit::note::{COSIGNATURE_V1, NoteSigner};
use protocol::he::{Ciphertext, EncryptionKey};
use protocol::round::RoundPlan;
use protocol::round::message::{Request, Response};
use protocol::wire::{DecodeLimits, encode_ciphertext, encoded_digest};
use rand::SeedableRng;
use runtime::identity::Identity;
use runtime::transport::Handle;

pub const VALUES: u32 = 300;

pub struct Harness {
    pub dir: PathBuf,
    pub log: LogState,
    pub coordinator: Identity,
    pub members: Vec<Identity>,
    pub log_signer: NoteSigner,
    pub blobs: Arc<Mutex<HashMap<Digest, Vec<u8>>>>,
    /// Entries member-a asked to append (contributions, releases, incidents).
    pub appended: Arc<Mutex<Vec<SignedEntry>>>,
    /// How many of `appended` earlier expectations have looked at.
    pub seen: usize,
    pub handle: Handle,
    pub node_peer: libp2p_identity::PeerId,
    pub key: EncryptionKey,
    pub plan: RoundPlan,
}

pub fn rehearse(dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args([
            "ceremony",
            "rehearse",
            "--members",
            "5",
            "--threshold",
            "3",
            "--out",
        ])
        .arg(dir)
        .env_remove("QUORATE_PASSPHRASE")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.join("member-a/node.toml");
    let mut table: toml::Table = std::fs::read_to_string(&config).unwrap().parse().unwrap();
    table["plan"]
        .as_table_mut()
        .unwrap()
        .insert("values".into(), toml::Value::Integer(i64::from(VALUES)));
    std::fs::write(&config, toml::to_string(&table).unwrap()).unwrap();
}

pub use runtime::clock::now_ms;

impl Harness {
    pub fn member_key(&self, m: usize) -> &SigningKey {
        &self.members[m].signing
    }

    pub fn append_as(&mut self, key: &SigningKey, body: Body, payload: Option<Digest>) -> u64 {
        let author = key.verifying_key().to_bytes();
        let references = match &body {
            Body::RoundClose { contributions, .. } => contributions.clone(),
            Body::DecryptionRequest { close, .. } => vec![*close],
            _ => vec![],
        };
        let entry = Entry::new(
            self.log.origin(),
            key,
            self.log.next_sequence(&author),
            now_ms(),
            body,
        )
        .referencing(references)
        .with_payload(payload)
        .sign(key);
        self.log.append(entry).unwrap()
    }

    pub fn coordinator_append(&mut self, body: Body, payload: Option<Digest>) -> u64 {
        let key = self.coordinator.signing.clone();
        self.append_as(&key, body, payload)
    }

    /// Witness (member-a cosigns; members b, c, d are forged) and publish for action.
    pub async fn publish(&mut self) {
        let note = self.log.checkpoint().sign(&self.log_signer);
        let request = Request::Witness {
            from: 0,
            entries: self.log.leaves().to_vec(),
            note: note.encode().into_bytes(),
        };
        let response = self.handle.call(self.node_peer, &request).await.unwrap();
        let Response::Cosigned { line, .. } = response else {
            panic!("member-a did not cosign an honest checkpoint: {response:?}");
        };
        let mut note = note;
        note.signatures
            .push(protocol::audit::note::SignatureLine::parse(&line).unwrap());
        for m in 1..4 {
            let witness = NoteSigner::new(
                &self.members[m].name,
                COSIGNATURE_V1,
                self.members[m].second.clone(),
            )
            .unwrap();
            note.signatures
                .push(witness.cosign(&note.text, now_ms() / 1000));
        }
        let act = Request::Act {
            note: note.encode().into_bytes(),
        };
        let response = self.handle.call(self.node_peer, &act).await.unwrap();
        assert_eq!(
            response,
            Response::Ok,
            "member-a refused a quorum checkpoint"
        );
    }

    pub fn contribution(&mut self, round: u64, member: usize, seed: u64) -> (u64, Digest) {
        let budget = self
            .plan
            .budget(protocol::he::ThresholdConfig::new(5, 3).unwrap())
            .unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let values: Vec<i64> = (0..VALUES as i64).map(|i| i - 150).collect();
        let bytes = encode_ciphertext(&self.key.encrypt(&values, &budget, &mut rng).unwrap());
        let digest = encoded_digest(&bytes).0;
        self.blobs.lock().unwrap().insert(digest, bytes);
        let key = self.member_key(member).clone();
        let leaf = self.append_as(
            &key,
            Body::Contribution {
                round,
                ciphertext: digest,
                samples: 100,
            },
            Some(digest),
        );
        (leaf, digest)
    }

    /// The honest aggregate of `terms` on top of nothing (the first rounds decrypt nothing).
    pub fn aggregate(&self, terms: &[(Digest, i64)]) -> Digest {
        let budget = self
            .plan
            .budget(protocol::he::ThresholdConfig::new(5, 3).unwrap())
            .unwrap();
        let mut acc =
            Ciphertext::zero(budget.ciphertext_shape_under(VALUES as usize, self.key.secrets()));
        let blobs = self.blobs.lock().unwrap().clone();
        protocol::round::policy::aggregate(&mut acc, terms, DecodeLimits::default(), |d| {
            blobs.get(d).cloned().ok_or("missing")
        })
        .unwrap();
        let bytes = encode_ciphertext(&acc);
        let digest = encoded_digest(&bytes).0;
        self.blobs.lock().unwrap().insert(digest, bytes);
        digest
    }

    /// Forged contributions to `round` by `members` (100 samples each), and their honest
    /// weighted aggregate.
    pub fn contributions(
        &mut self,
        round: u64,
        members: std::ops::Range<usize>,
        seed: u64,
    ) -> (Vec<(u64, Digest)>, Digest) {
        let contributions: Vec<(u64, Digest)> = members
            .map(|m| self.contribution(round, m, seed + m as u64))
            .collect();
        let weights = self.plan.weights(&vec![100; contributions.len()]).unwrap();
        let terms: Vec<(Digest, i64)> = contributions.iter().map(|c| c.1).zip(weights).collect();
        let aggregate = self.aggregate(&terms);
        (contributions, aggregate)
    }

    pub fn close(&mut self, round: u64, contributions: &[(u64, Digest)], aggregate: Digest) -> u64 {
        let base = self.log.rounds().unwrap().base();
        self.coordinator_append(
            Body::RoundClose {
                round,
                base,
                contributions: contributions.iter().map(|c| c.0).collect(),
                aggregate,
            },
            Some(aggregate),
        )
    }

    pub fn open_round(&mut self, round: u64) -> u64 {
        let plan = self.plan.digest();
        let base = self.log.rounds().unwrap().base();
        self.coordinator_append(
            Body::RoundOpen {
                round,
                model: [0; 32],
                base,
                deadline_ms: now_ms() + 60_000,
                // Only the forged members are expected: member-a is not asked to contribute.
                expected: 0b01110,
            },
            Some(plan),
        )
    }

    pub fn request(&mut self, round: u64, close: u64, ciphertext: Digest, attempt: u8) -> u64 {
        self.coordinator_append(
            Body::DecryptionRequest {
                round,
                close,
                ciphertext,
                quorum: 0b00111,
                attempt,
                seed: if attempt == 0 { [0; 32] } else { [attempt; 32] },
            },
            Some(ciphertext),
        )
    }

    /// Waits until member-a appended, since the previous expectation, an entry matching
    /// `pred`.
    pub async fn expect_appended(&mut self, what: &str, pred: impl Fn(&Body) -> bool) {
        for _ in 0..300 {
            let appended = self.appended.lock().unwrap().clone();
            if appended[self.seen..].iter().any(|e| pred(&e.entry.body)) {
                self.seen = appended.len();
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(self.dir.join("member-a/log")).unwrap_or_default();
        panic!("member-a never logged {what}\n{log}");
    }

    pub fn released(&self) -> usize {
        self.appended
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e.entry.body, Body::ShareReleased { .. }))
            .count()
    }
}

pub fn incident(code: u16) -> impl Fn(&Body) -> bool {
    move |b| matches!(b, Body::Incident { code: c, .. } if *c == code)
}
