//! A malicious coordinator against a real node process. The harness holds the coordinator's
//! keys and, colluding, every other member's keys (so it can forge their contributions and
//! witness cosignatures); it asks member-a for decryptions the release policy forbids and
//! shows it a forked log. The node must refuse each, log an incident, and release nothing;
//! an honest request at the end shows that the refusals come from the policy.
//! Strangers cannot connect, and garbage is refused without harm.

mod adversary;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::audit::entry::{Body, Digest, SignedEntry};
use protocol::audit::log::LogState;
use protocol::audit::note::{ED25519, NoteSigner};
use protocol::consortium::Consortium;
use protocol::round::RoundPlan;
use protocol::round::message::{CHUNK_BYTES, MAX_MESSAGE_BYTES, Request, Response};
use runtime::identity::{Identity, Role};
use runtime::transport::{self, Event, TransportConfig};

use adversary::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malicious_coordinator_gets_no_share_and_every_attempt_is_logged() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("consortium");
    rehearse(&dir);
    let passphrase = std::fs::read_to_string(dir.join("passphrase")).unwrap();
    let passphrase = passphrase.lines().next().unwrap().as_bytes().to_vec();
    let open = |path: PathBuf| Identity::open(&std::fs::read(path).unwrap(), &passphrase).unwrap();
    let coordinator = open(dir.join("coordinator/identity"));
    let members: Vec<Identity> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|m| open(dir.join(format!("member-{m}/identity"))))
        .collect();
    let consortium =
        Consortium::parse(&std::fs::read_to_string(dir.join("consortium.toml")).unwrap()).unwrap();
    let transcript = keyceremony::transcript::Transcript::decode(
        &std::fs::read(dir.join("transcript")).unwrap(),
    )
    .unwrap();
    let key = keyceremony::transcript::verify(&transcript)
        .unwrap()
        .public_key
        .prepare();
    // The ceremony's log, as the rehearsal left it.
    let store = coordinator::store::LogStore::open(&dir.join("coordinator/log-store")).unwrap();
    let origin = consortium.log_origin();
    let log = LogState::restore(&origin, store.leaves().unwrap()).unwrap();
    drop(store);
    let peers = transport::consortium_peers(&consortium).unwrap();
    let (handle, mut events) = transport::spawn(
        coordinator.keypair(),
        TransportConfig {
            protocol: protocol::round::message::PROTOCOL,
            max_message: MAX_MESSAGE_BYTES,
            request_timeout: Duration::from_secs(60),
            listen: peers[0].1.clone(),
            peers: peers[1..].to_vec(),
        },
    )
    .unwrap();
    let node_peer = peers[1].0;
    let log_signer = NoteSigner::new(&origin, ED25519, coordinator.second.clone()).unwrap();
    let mut h = Harness {
        dir: dir.clone(),
        log,
        coordinator,
        members,
        log_signer,
        blobs: Arc::default(),
        appended: Arc::default(),
        seen: 0,
        handle,
        node_peer,
        key,
        plan: RoundPlan {
            values: VALUES,
            ..RoundPlan::default()
        },
    };
    // The responder: serves fetches, and appends member-a's entries to a shared log copy.
    let shared_log = Arc::new(Mutex::new(h.log.clone()));
    {
        let (blobs, appended, shared_log) =
            (h.blobs.clone(), h.appended.clone(), shared_log.clone());
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let Event::Request { bytes, reply, .. } = event else {
                    continue;
                };
                let (blobs, appended, shared_log) =
                    (blobs.clone(), appended.clone(), shared_log.clone());
                tokio::spawn(async move {
                    transport::answer(bytes, reply, |request| async move {
                        match request {
                            Request::Fetch { ciphertext, index } => {
                                let Some(bytes) = blobs.lock().unwrap().get(&ciphertext).cloned()
                                else {
                                    return Response::Refused {
                                        reason: "unknown".into(),
                                    };
                                };
                                let start = index as usize * CHUNK_BYTES;
                                let end = (start + CHUNK_BYTES).min(bytes.len());
                                Response::Data {
                                    length: bytes.len() as u64,
                                    bytes: bytes[start..end].to_vec(),
                                }
                            }
                            Request::Append { entry } => {
                                let entry = SignedEntry::open(&entry).unwrap();
                                let leaf = shared_log.lock().unwrap().append(entry.clone());
                                appended.lock().unwrap().push(entry);
                                match leaf {
                                    Ok(leaf) => Response::Appended { leaf },
                                    Err(e) => Response::Refused {
                                        reason: e.to_string(),
                                    },
                                }
                            }
                            other => Response::Refused {
                                reason: format!("not served: {}", other.kind_name()),
                            },
                        }
                    })
                    .await;
                });
            }
        });
    }
    // Member b, honest here, only listens: member-a must tell it of every incident directly,
    // not only through the coordinator, which could drop them.
    let heard_by_b: Arc<Mutex<Vec<SignedEntry>>> = Arc::default();
    let (_b_handle, mut b_events) = transport::spawn(
        h.members[1].keypair(),
        TransportConfig {
            protocol: protocol::round::message::PROTOCOL,
            max_message: MAX_MESSAGE_BYTES,
            request_timeout: Duration::from_secs(60),
            listen: peers[2].1.clone(),
            peers: vec![peers[1].clone()],
        },
    )
    .unwrap();
    {
        let heard = heard_by_b.clone();
        tokio::spawn(async move {
            while let Some(event) = b_events.recv().await {
                let Event::Request { bytes, reply, .. } = event else {
                    continue;
                };
                let heard = heard.clone();
                transport::answer(bytes, reply, |request| async move {
                    if let Request::Incident { entry } = request {
                        heard
                            .lock()
                            .unwrap()
                            .push(SignedEntry::open(&entry).unwrap());
                    }
                    Response::Ok
                })
                .await;
            }
        });
    }
    let mut node: Child = Command::new(env!("CARGO_BIN_EXE_quorate"))
        .args(["node", "run", "--config"])
        .arg(dir.join("member-a/node.toml"))
        .env_remove("QUORATE_PASSPHRASE")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("member-a/log")).unwrap())
        .spawn()
        .unwrap();
    // Wait for member-a to be reachable.
    let mut reachable = false;
    for _ in 0..100 {
        let probe = Request::Act { note: vec![] };
        if h.handle.call(h.node_peer, &probe).await.is_ok() {
            reachable = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reachable, "member-a never came up");

    // Keeps the harness's log in step with what member-a appended through the responder.
    macro_rules! sync {
        () => {
            h.log = shared_log.lock().unwrap().clone();
        };
    }
    macro_rules! publish {
        () => {
            *shared_log.lock().unwrap() = h.log.clone();
            h.publish().await;
        };
    }

    // Round 1: four forged contributions, an honest close.
    h.open_round(1);
    let (c, aggregate) = h.contributions(1, 1..5, 0);
    let close1 = h.close(1, &c, aggregate);
    // 1. A single contribution as the target.
    h.request(1, close1, c[0].1, 0);
    publish!();
    h.expect_appended("a refusal of a single contribution (108)", incident(108))
        .await;
    sync!();
    // 2. A retry whose ciphertext is not the logged aggregate re-randomised from the logged seed.
    h.request(1, close1, [0x5a; 32], 1);
    publish!();
    h.expect_appended(
        "a refusal of a ciphertext it cannot recompute (113)",
        incident(113),
    )
    .await;
    sync!();

    // Round 2: a close whose aggregate is not the weighted sum of the logged contributions.
    h.open_round(2);
    let (c2, _) = h.contributions(2, 1..5, 10);
    let skewed: Vec<(Digest, i64)> = c2.iter().map(|x| x.1).zip([4096, 0, 0, 0]).collect();
    let bogus = h.aggregate(&skewed);
    let close2 = h.close(2, &c2, bogus);
    h.request(2, close2, bogus, 0);
    publish!();
    h.expect_appended(
        "a refusal of an aggregate that is not the logged weighted sum (113)",
        incident(113),
    )
    .await;
    sync!();

    // Round 3: a close naming an aggregate member-a computed and kept itself (round 1's, kept
    // when it recomputed round 1 for the retry above), over other contributions. The kept copy
    // is a cache for the model a round builds on; a coordinator-named aggregate is always
    // recomputed from the logged contributions.
    h.open_round(3);
    let (c3, _) = h.contributions(3, 1..5, 15);
    let close3 = h.close(3, &c3, aggregate);
    h.request(3, close3, aggregate, 0);
    publish!();
    h.expect_appended(
        "a refusal of a kept aggregate named for other contributions (113)",
        incident(113),
    )
    .await;
    sync!();

    // Round 4: fewer than k_min contributions.
    h.open_round(4);
    let (c4, agg4) = h.contributions(4, 1..3, 20);
    let close4 = h.close(4, &c4, agg4);
    h.request(4, close4, agg4, 0);
    publish!();
    h.expect_appended("a refusal below k_min (106)", incident(106))
        .await;
    sync!();

    // Round 5: a request naming the close of another round (a second close of one round, or
    // a close over a subset, never reaches the log: the round rules refuse it, see
    // protocol/src/round/attacks.rs).
    h.open_round(5);
    let (c5, agg5) = h.contributions(5, 1..5, 30);
    h.close(5, &c5, agg5);

    // An old round again, once round 5 is open.
    h.request(1, close1, [0x6b; 32], 2);
    publish!();
    h.expect_appended("a refusal of an old round (110)", incident(110))
        .await;
    sync!();

    // A forked log: entry 1 replaced by a differently signed one.
    let mut forked = h.log.leaves().to_vec();
    let original = SignedEntry::open(&forked[1]).unwrap();
    let mut changed = original.entry.clone();
    changed.claimed_time_ms += 1;
    let signer = h
        .members
        .iter()
        .find(|m| m.signing.verifying_key().to_bytes() == changed.author)
        .map(|m| m.signing.clone())
        .unwrap();
    forked[1] = changed.sign(&signer).leaf().to_vec();
    let note = h.log.checkpoint().sign(&h.log_signer);
    let response = h
        .handle
        .call(
            h.node_peer,
            &Request::Witness {
                from: 0,
                entries: forked,
                note: note.encode().into_bytes(),
            },
        )
        .await
        .unwrap();
    assert!(matches!(response, Response::Refused { .. }), "{response:?}");
    h.expect_appended("a fork incident (200)", incident(200))
        .await;
    sync!();

    assert_eq!(
        h.released(),
        0,
        "member-a released a share to a malicious request"
    );

    // Round 6, honest: member-a releases, so the refusals above were the policy's doing.
    h.open_round(6);
    let (c6, agg6) = h.contributions(6, 1..5, 40);
    let close6 = h.close(6, &c6, agg6);
    let request6 = h.request(6, close6, agg6, 0);
    publish!();
    h.expect_appended(
        "a share release for the honest request",
        |b| matches!(b, Body::ShareReleased { ciphertext, .. } if *ciphertext == agg6),
    )
    .await;
    assert_eq!(h.released(), 1);
    sync!();

    // Attack 1, key extraction through an unverified base. Colluders b and c log their releases
    // of round 6 but send member-a nothing, so the log's chain moves to round 6's aggregate,
    // which member-a never combined. Round 7 closes on a crafted ciphertext Y; member-a, in its
    // quorum, refuses (it does not hold the model round 7 builds on); colluder b logs a release
    // of Y; and the coordinator opens round 8 on Y, so that members would release
    // Y + contributions and decrypt the key into the model's message bits.
    for m in [1, 2] {
        let key = h.member_key(m).clone();
        h.append_as(
            &key,
            Body::ShareReleased {
                request: request6,
                ciphertext: agg6,
                share: [m as u8; 32],
            },
            None,
        );
    }
    h.open_round(7);
    let (c7, _) = h.contributions(7, 1..5, 50);
    let crafted: Digest = [0x59; 32];
    let close7 = h.close(7, &c7, crafted);
    let request7 = h.request(7, close7, crafted, 0);
    publish!();
    h.expect_appended(
        "a refusal of a round built on a model it did not verify (114)",
        incident(114),
    )
    .await;
    sync!();
    let key = h.member_key(1).clone();
    h.append_as(
        &key,
        Body::ShareReleased {
            request: request7,
            ciphertext: crafted,
            share: [1; 32],
        },
        None,
    );
    publish!();
    // Round 8 on Y breaks the log's round rules, so it is written past them, and the
    // checkpoint over it is shown to member-a for cosigning.
    let open8 = h
        .log
        .draft(
            &h.coordinator.signing,
            now_ms(),
            Body::RoundOpen {
                round: 8,
                model: [0; 32],
                base: crafted,
                deadline_ms: now_ms() + 60_000,
                expected: 0b11111,
            },
        )
        .with_payload(Some(h.plan.digest()))
        .sign(&h.coordinator.signing);
    let mut leaves = h.log.leaves().to_vec();
    leaves.push(open8.leaf().to_vec());
    let hashes: Vec<_> = leaves
        .iter()
        .map(|l| protocol::audit::merkle::leaf_hash(l))
        .collect();
    let note = protocol::audit::checkpoint::Checkpoint {
        origin: h.log.origin().to_owned(),
        size: leaves.len() as u64,
        root: protocol::audit::merkle::root(&hashes),
    }
    .sign(&h.log_signer);
    let response = h
        .handle
        .call(
            h.node_peer,
            &Request::Witness {
                from: 0,
                entries: leaves,
                note: note.encode().into_bytes(),
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(&response, Response::Refused { reason } if reason.contains("names base")),
        "{response:?}"
    );
    h.expect_appended("a round-rule incident (203)", incident(203))
        .await;
    assert_eq!(
        h.released(),
        1,
        "member-a released a share for a crafted aggregate"
    );

    // Member b heard of every refusal from member-a itself, as signed incident entries (each
    // sent once the append through the coordinator returned, so wait for the last ones).
    let wanted = [108, 113, 106, 110, 200, 114, 203];
    let mut codes: Vec<u16> = Vec::new();
    for _ in 0..100 {
        codes = heard_by_b
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.entry.author == h.members[0].signing.verifying_key().to_bytes())
            .filter_map(|e| match e.entry.body {
                Body::Incident { code, .. } => Some(code),
                _ => None,
            })
            .collect();
        if wanted.iter().all(|c| codes.contains(c)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for code in wanted {
        assert!(
            codes.contains(&code),
            "member b never heard incident {code}: {codes:?}"
        );
    }

    // A stranger cannot be heard, and garbage is refused without harm.
    let stranger = Identity::generate(Role::Member, "stranger", &mut rand::rngs::OsRng).unwrap();
    let (stranger_handle, _stranger_events) = transport::spawn(
        stranger.keypair(),
        TransportConfig {
            protocol: protocol::round::message::PROTOCOL,
            max_message: MAX_MESSAGE_BYTES,
            request_timeout: Duration::from_secs(5),
            listen: "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
            peers: vec![peers[1].clone()],
        },
    )
    .unwrap();
    let heard = stranger_handle
        .call(h.node_peer, &Request::Act { note: vec![] })
        .await;
    assert!(heard.is_err(), "a stranger was answered: {heard:?}");
    for garbage in [
        vec![],
        vec![0u8; 10],
        b"QRND\x01\x00\x00".to_vec(),
        vec![0xff; 100_000],
    ] {
        let answer = h.handle.request(h.node_peer, garbage).await.unwrap();
        let (_, response) = Response::decode(&answer).unwrap();
        assert!(matches!(response, Response::Refused { .. }), "{response:?}");
    }
    let mut truncated = Request::Act {
        note: b"x".to_vec(),
    }
    .encode(9);
    truncated.pop();
    let (_, response) =
        Response::decode(&h.handle.request(h.node_peer, truncated).await.unwrap()).unwrap();
    assert!(matches!(response, Response::Refused { .. }));
    // The node is still up and answering.
    assert!(
        h.handle
            .call(h.node_peer, &Request::Act { note: vec![] })
            .await
            .is_ok()
    );

    node.kill().unwrap();
    node.wait().unwrap();
    // Nothing but the honest ciphertext is in member-a's ledger.
    let ledger = node::state_store::StateStore::open(&dir.join("member-a/node-store")).unwrap();
    for digest in [
        c[0].1, [0x5a; 32], bogus, agg4, agg5, [0x6b; 32], aggregate, crafted,
    ] {
        assert_eq!(ledger.released(&digest).unwrap(), None);
    }
    assert!(ledger.released(&agg6).unwrap().is_some());
}
