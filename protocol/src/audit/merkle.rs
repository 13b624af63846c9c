//! RFC 6962 / RFC 9162 Merkle trees: hashing, proofs and their verification.
//!
//! Leaves are hashed as SHA-256(0x00 || data) and interior nodes as SHA-256(0x01 || l || r).
//! The verifiers follow RFC 9162 section 2.1.3 and 2.1.4 and take proof hashes as byte
//! slices, because untrusted input may hold hashes of any length: such proofs simply fail.
//! The subtree variants (from the Merkle tree certificates draft) verify a proof for the
//! aligned range [start, end) of leaves.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    #[error("leaf index {index} is outside the tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("a leaf hash must be 32 bytes, got {0}")]
    LeafHashLength(usize),
    #[error("the proof has {actual} hashes, expected {expected}")]
    ProofLength { expected: usize, actual: usize },
    #[error("sizes {0} and {1} do not describe a tree and one of its earlier versions")]
    BadSizes(u64, u64),
    #[error("a consistency proof from the empty tree is not defined")]
    FromEmptyTree,
    #[error("[{start}, {end}) is not a valid subtree")]
    InvalidSubtree { start: u64, end: u64 },
    #[error("the proof does not lead to the expected root")]
    RootMismatch,
}

pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(data);
    hasher.finalize().into()
}

pub fn node_hash(left: &[u8], right: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly smaller than `n` (n >= 2): where RFC 6962 splits a tree.
fn split_point(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// MTH(D[n]) over leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split_point(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// PATH(m, D[n]): the inclusion proof of leaf `index`.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Result<Vec<Hash>, MerkleError> {
    if index >= leaves.len() {
        return Err(MerkleError::IndexOutOfRange {
            index: index as u64,
            size: leaves.len() as u64,
        });
    }
    let mut proof = Vec::new();
    path(leaves, index, &mut proof);
    Ok(proof)
}

fn path(leaves: &[Hash], index: usize, proof: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let k = split_point(leaves.len());
    if index < k {
        path(&leaves[..k], index, proof);
        proof.push(root(&leaves[k..]));
    } else {
        path(&leaves[k..], index - k, proof);
        proof.push(root(&leaves[..k]));
    }
}

/// PROOF(m, D[n]): the consistency proof from the tree's first `old_size` leaves to all of it.
pub fn consistency_proof(leaves: &[Hash], old_size: usize) -> Result<Vec<Hash>, MerkleError> {
    if old_size == 0 {
        return Err(MerkleError::FromEmptyTree);
    }
    if old_size > leaves.len() {
        return Err(MerkleError::BadSizes(old_size as u64, leaves.len() as u64));
    }
    let mut proof = Vec::new();
    subproof(old_size, leaves, true, &mut proof);
    Ok(proof)
}

fn subproof(m: usize, leaves: &[Hash], complete: bool, proof: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            proof.push(root(leaves));
        }
        return;
    }
    let k = split_point(n);
    if m <= k {
        subproof(m, &leaves[..k], complete, proof);
        proof.push(root(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, proof);
        proof.push(root(&leaves[..k]));
    }
}

fn bit_length(x: u64) -> u32 {
    u64::BITS - x.leading_zeros()
}

/// Splits a proof for `index` in a tree of `size` into its inner part (below the point where
/// the path leaves the tree's right border) and its border part.
fn decompose(index: u64, size: u64) -> (usize, usize) {
    let inner = bit_length(index ^ (size - 1));
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    (inner as usize, border as usize)
}

fn chain_inner(mut seed: Hash, proof: &[&[u8]], index: u64) -> Hash {
    for (i, hash) in proof.iter().enumerate() {
        seed = if (index >> i) & 1 == 0 {
            node_hash(&seed, hash)
        } else {
            node_hash(hash, &seed)
        };
    }
    seed
}

fn chain_inner_right(mut seed: Hash, proof: &[&[u8]], index: u64) -> Hash {
    for (i, hash) in proof.iter().enumerate() {
        if (index >> i) & 1 == 1 {
            seed = node_hash(hash, &seed);
        }
    }
    seed
}

fn chain_border(mut seed: Hash, proof: &[&[u8]]) -> Hash {
    for hash in proof {
        seed = node_hash(hash, &seed);
    }
    seed
}

fn to_hash(bytes: &[u8]) -> Hash {
    // Hashes of the wrong length can never match a SHA-256 output; map them to a value that
    // cannot be produced by chaining (the comparison below uses the raw bytes anyway).
    let mut out = [0u8; 32];
    let n = bytes.len().min(32);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

fn expect_root(computed: &[u8], expected: &[u8]) -> Result<(), MerkleError> {
    if computed == expected {
        Ok(())
    } else {
        Err(MerkleError::RootMismatch)
    }
}

/// The root an inclusion proof leads to.
pub fn root_from_inclusion_proof(
    index: u64,
    size: u64,
    leaf: &[u8],
    proof: &[&[u8]],
) -> Result<Hash, MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    if leaf.len() != 32 {
        return Err(MerkleError::LeafHashLength(leaf.len()));
    }
    let (inner, border) = decompose(index, size);
    if proof.len() != inner + border {
        return Err(MerkleError::ProofLength {
            expected: inner + border,
            actual: proof.len(),
        });
    }
    let seed = chain_inner(to_hash(leaf), &proof[..inner], index);
    Ok(chain_border(seed, &proof[inner..]))
}

pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &[u8],
    proof: &[&[u8]],
    root: &[u8],
) -> Result<(), MerkleError> {
    expect_root(&root_from_inclusion_proof(index, size, leaf, proof)?, root)
}

pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    proof: &[&[u8]],
    old_root: &[u8],
    new_root: &[u8],
) -> Result<(), MerkleError> {
    if new_size < old_size {
        return Err(MerkleError::BadSizes(old_size, new_size));
    }
    if old_size == 0 {
        return Err(MerkleError::FromEmptyTree);
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(MerkleError::ProofLength {
                expected: 0,
                actual: proof.len(),
            });
        }
        return expect_root(old_root, new_root);
    }
    if proof.is_empty() {
        return Err(MerkleError::ProofLength {
            expected: 1,
            actual: 0,
        });
    }
    let computed = range_consistency(0, old_size, new_size, proof, old_root)?;
    expect_root(&computed, new_root)
}

fn check_subtree(start: u64, end: u64) -> Result<(), MerkleError> {
    let invalid = MerkleError::InvalidSubtree { start, end };
    if start > end {
        return Err(invalid);
    }
    if start == 0 || start == end {
        return Ok(());
    }
    let width = (end - start)
        .checked_next_power_of_two()
        .ok_or(invalid.clone())?;
    if start & (width - 1) != 0 {
        return Err(invalid);
    }
    Ok(())
}

pub fn verify_subtree_inclusion(
    index: u64,
    start: u64,
    end: u64,
    leaf: &[u8],
    proof: &[&[u8]],
    root: &[u8],
) -> Result<(), MerkleError> {
    check_subtree(start, end)?;
    if index < start || index >= end {
        return Err(MerkleError::IndexOutOfRange { index, size: end });
    }
    expect_root(
        &root_from_inclusion_proof(index - start, end - start, leaf, proof)?,
        root,
    )
}

pub fn verify_subtree_consistency(
    start: u64,
    end: u64,
    size: u64,
    proof: &[&[u8]],
    subtree_root: &[u8],
    root: &[u8],
) -> Result<(), MerkleError> {
    if start == end {
        if end > size {
            return Err(MerkleError::BadSizes(end, size));
        }
        if !proof.is_empty() {
            return Err(MerkleError::ProofLength {
                expected: 0,
                actual: proof.len(),
            });
        }
        return expect_root(subtree_root, &empty_root());
    }
    check_subtree(start, end)?;
    if size < end {
        return Err(MerkleError::BadSizes(end, size));
    }
    if start == 0 && end == size {
        if !proof.is_empty() {
            return Err(MerkleError::ProofLength {
                expected: 0,
                actual: proof.len(),
            });
        }
        return expect_root(subtree_root, root);
    }
    if proof.is_empty() {
        return Err(MerkleError::ProofLength {
            expected: 1,
            actual: 0,
        });
    }
    let computed = range_consistency(start, end, size, proof, subtree_root)?;
    expect_root(&computed, root)
}

/// The new root implied by a proof that the aligned range [start, end), whose root is
/// `range_root`, is part of the tree of `size` leaves (RFC 9162 consistency when start = 0).
/// Where the range is not a perfect subtree, its root is rebuilt from the proof and checked.
fn range_consistency(
    start: u64,
    end: u64,
    size: u64,
    proof: &[&[u8]],
    range_root: &[u8],
) -> Result<Hash, MerkleError> {
    let last = end - 1;
    if end == size {
        let level = bit_length(last ^ start);
        let expected = start.checked_shr(level).unwrap_or(0).count_ones() as usize;
        if proof.len() != expected {
            return Err(MerkleError::ProofLength {
                expected,
                actual: proof.len(),
            });
        }
        return Ok(chain_border(to_hash(range_root), proof));
    }
    let (fork, border) = decompose(last, size);
    let shift = (end - start).trailing_zeros() as usize;
    let inner = fork.saturating_sub(shift);
    let perfect = end - start == 1u64 << shift;
    let (seed, skip) = if perfect {
        (to_hash(range_root), 0)
    } else {
        (to_hash(proof[0]), 1)
    };
    if proof.len() != skip + inner + border {
        return Err(MerkleError::ProofLength {
            expected: skip + inner + border,
            actual: proof.len(),
        });
    }
    if !perfect && proof[0].len() != 32 {
        return Err(MerkleError::RootMismatch);
    }
    let rest = &proof[skip..];
    let mask = last >> shift;
    if !perfect {
        let height = bit_length(last ^ start) as usize;
        let inner_rebuild = height.min(fork) - shift;
        let border_rebuild = border
            .saturating_sub(last.checked_shr(height as u32).unwrap_or(0).count_ones() as usize);
        let rebuilt = chain_border(
            chain_inner_right(seed, &rest[..inner_rebuild], mask),
            &rest[inner..inner + border_rebuild],
        );
        expect_root(&rebuilt, range_root)?;
    }
    Ok(chain_border(
        chain_inner(seed, &rest[..inner], mask),
        &rest[inner..],
    ))
}
