//! The Merkle tree against the transparency-dev test vectors (all of them, valid and
//! tampered) and against an independent computation on random trees.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use protocol::audit::merkle::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn vector_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            vector_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

fn bytes(value: &Value) -> Vec<u8> {
    STANDARD.decode(value.as_str().unwrap()).unwrap()
}

fn run_vector(kind: &str, v: &Value) -> Result<(), MerkleError> {
    let proof: Vec<Vec<u8>> = v["proof"]
        .as_array()
        .map(|items| items.iter().map(bytes).collect())
        .unwrap_or_default();
    let proof: Vec<&[u8]> = proof.iter().map(Vec::as_slice).collect();
    let n = |field: &str| v[field].as_u64().unwrap();
    match kind {
        "inclusion" => verify_inclusion(
            n("leafIdx"),
            n("treeSize"),
            &bytes(&v["leafHash"]),
            &proof,
            &bytes(&v["root"]),
        ),
        "subtreeinclusion" => verify_subtree_inclusion(
            n("leafIdx"),
            n("start"),
            n("end"),
            &bytes(&v["leafHash"]),
            &proof,
            &bytes(&v["root"]),
        ),
        "consistency" => verify_consistency(
            n("size1"),
            n("size2"),
            &proof,
            &bytes(&v["root1"]),
            &bytes(&v["root2"]),
        ),
        "subtreeconsistency" => verify_subtree_consistency(
            n("start"),
            n("end"),
            n("size"),
            &proof,
            &bytes(&v["root1"]),
            &bytes(&v["root2"]),
        ),
        other => panic!("unknown vector kind {other}"),
    }
}

#[test]
fn all_transparency_dev_vectors_pass() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/transparency-dev-merkle/testdata");
    let mut files = Vec::new();
    vector_files(&base, &mut files);
    files.sort();
    assert_eq!(files.len(), 518, "the vector set is incomplete");
    let (mut accepted, mut rejected, mut failures) = (0, 0, Vec::new());
    for file in &files {
        let kind = file
            .strip_prefix(&base)
            .unwrap()
            .iter()
            .next()
            .unwrap()
            .to_str()
            .unwrap();
        let vector: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let want_err = vector["wantErr"].as_bool().unwrap();
        let result = run_vector(kind, &vector);
        match (&result, want_err) {
            (Ok(()), false) => accepted += 1,
            (Err(_), true) => rejected += 1,
            _ => failures.push(format!(
                "{}: {result:?} (wantErr {want_err})",
                file.display()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!((accepted, rejected), (36, 482));
}

/// An independent root computation: hash level by level, promoting a lone last node, which
/// RFC 6962's recursive definition is equivalent to.
fn level_by_level_root(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return empty_root();
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| {
                if pair.len() == 2 {
                    node_hash(&pair[0], &pair[1])
                } else {
                    pair[0]
                }
            })
            .collect();
    }
    level[0]
}

#[test]
fn random_trees_agree_with_an_independent_computation_and_their_proofs_verify() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    for _ in 0..60 {
        let size = rng.gen_range(1..300usize);
        let leaves: Vec<Hash> = (0..size)
            .map(|i| leaf_hash(&(i as u64 * 7919).to_le_bytes()))
            .collect();
        let tree_root = root(&leaves);
        assert_eq!(tree_root, level_by_level_root(&leaves), "size {size}");
        for _ in 0..5 {
            let index = rng.gen_range(0..size);
            let proof = inclusion_proof(&leaves, index).unwrap();
            let refs: Vec<&[u8]> = proof.iter().map(|h| h.as_slice()).collect();
            verify_inclusion(index as u64, size as u64, &leaves[index], &refs, &tree_root).unwrap();
            let wrong = leaf_hash(b"not in the tree");
            assert!(
                verify_inclusion(index as u64, size as u64, &wrong, &refs, &tree_root).is_err()
            );

            let old_size = rng.gen_range(1..=size);
            let old_root = root(&leaves[..old_size]);
            let proof = consistency_proof(&leaves, old_size).unwrap();
            let refs: Vec<&[u8]> = proof.iter().map(|h| h.as_slice()).collect();
            verify_consistency(old_size as u64, size as u64, &refs, &old_root, &tree_root).unwrap();
            if old_size < size {
                let forked = root(&leaves[1..=old_size]);
                assert!(
                    verify_consistency(old_size as u64, size as u64, &refs, &forked, &tree_root)
                        .is_err()
                );
            }
        }
    }
}
