//! Tests of the entry encoding: golden bytes, round trips, every flipped byte refused.
use super::*;

pub(crate) fn sample_bodies() -> Vec<Body> {
    vec![
        Body::Membership(Membership {
            name: "consortium".into(),
            parameter_set: "quorate-rlwe128-v1".into(),
            threshold: 2,
            k_min: 2,
            accept_small_aggregates: true,
            witness_quorum: 3,
            coordinator: CoordinatorKeys {
                name: "coordinator.example".into(),
                signing_key: [2; 32],
                log_key: [3; 32],
                peer_id: "peer-c".into(),
                address: "/ip4/127.0.0.1/tcp/1".into(),
            },
            members: vec![Member {
                name: "hospital-a".into(),
                signing_key: [4; 32],
                witness_key: [5; 32],
                peer_id: "peer-a".into(),
                address: "/ip4/127.0.0.1/tcp/2".into(),
            }],
            approvals: vec![[6; 64]],
        }),
        Body::CeremonyStep {
            ceremony: [7; 32],
            phase: 3,
            artefact: [8; 32],
        },
        Body::RoundOpen {
            round: 1,
            model: [9; 32],
            base: [18; 32],
            deadline_ms: 10,
            expected: 0b111,
        },
        Body::Contribution {
            round: 1,
            ciphertext: [10; 32],
            samples: 100,
        },
        Body::RoundClose {
            round: 1,
            base: [18; 32],
            contributions: vec![3, 4, 5],
            aggregate: [11; 32],
        },
        Body::DecryptionRequest {
            round: 1,
            close: 6,
            ciphertext: [11; 32],
            quorum: 0b011,
            attempt: 0,
            seed: [0; 32],
        },
        Body::ShareReleased {
            request: 7,
            ciphertext: [11; 32],
            share: [12; 32],
        },
        Body::DecryptionResult {
            request: 7,
            ciphertext: [11; 32],
            model: [13; 32],
        },
        Body::ConfigChange {
            consortium: [14; 32],
            description: "add a member".into(),
        },
        Body::Incident {
            code: 3,
            evidence: [15; 32],
            description: "refused a single contribution".into(),
        },
        Body::ServerStep {
            request: 7,
            model: [16; 32],
            state: [17; 32],
            base: [18; 32],
        },
    ]
}

/// An entry of every field set, by `key`.
fn sample_entry(key: &SigningKey, sequence: u64, body: Body) -> Entry {
    Entry {
        origin: "quorate.example/log".into(),
        config_epoch: 1,
        author: key.verifying_key().to_bytes(),
        sequence,
        subject: [16; 32],
        references: vec![0, 2],
        payload: Some([17; 32]),
        claimed_time_ms: 1_700_000_000_000,
        body,
    }
}

/// Golden bytes of every kind of entry (format version 2), signed with a fixed key.
#[test]
fn golden_entries() {
    let key = SigningKey::from_bytes(&[42; 32]);
    let mut record = String::new();
    for (sequence, body) in sample_bodies().into_iter().enumerate() {
        let name = body.kind_name();
        let signed = sample_entry(&key, sequence as u64, body).sign(&key);
        record.push_str(&format!("{name}:\n"));
        for line in signed.leaf().chunks(48) {
            record.push_str(&format!("  {}\n", hex::encode(line)));
        }
    }
    insta::assert_snapshot!(record);
}

#[test]
fn every_kind_round_trips_and_every_flip_is_caught() {
    let key = SigningKey::from_bytes(&[42; 32]);
    for (sequence, body) in sample_bodies().into_iter().enumerate() {
        let entry = sample_entry(&key, sequence as u64, body);
        let signed = entry.clone().sign(&key);
        let opened = SignedEntry::open(signed.leaf()).unwrap();
        assert_eq!(opened.entry, entry);
        for index in 0..signed.leaf().len() {
            let mut leaf = signed.leaf().to_vec();
            leaf[index] ^= 0x10;
            assert!(
                SignedEntry::open(&leaf).is_err(),
                "flip at {index} accepted"
            );
        }
        assert!(SignedEntry::open(&signed.leaf()[..signed.leaf().len() - 1]).is_err());
    }
}
