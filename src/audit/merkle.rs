//! RFC 9162 (RFC 6962) Merkle tree math for the tamper-evident audit log.
//!
//! The audit log is a Merkle tree exactly as defined by RFC 9162 §2.1 (which
//! keeps RFC 6962's hashing), so that outside tools — Go's
//! `golang.org/x/mod/sumdb/tlog`, or any other RFC 9162 implementation — can
//! check our roots and proofs without trusting this code.
//!
//! Storage model: the log stores the hash of every *complete, aligned*
//! subtree, addressed by `(level, index)` where level `L`, index `K` covers
//! the leaves `[K·2^L, (K+1)·2^L)`. Every node of the RFC tree of any size is
//! either such a complete subtree or a "right edge" node whose hash folds a
//! handful of complete subtrees together, so roots and proofs need
//! O(log n) stored hashes and never rehash the log.
//!
//! Guarantees:
//! - [`leaf_hash`], [`node_hash`] and [`empty_root`] are the RFC 9162 hashes
//!   (domain-separated with the `0x00` / `0x01` prefixes).
//! - [`root`], [`inclusion_proof`] and [`consistency_proof`] produce exactly
//!   `MTH`, `PATH` and `PROOF` of RFC 9162 §2.1.1, §2.1.3.1 and §2.1.4.1, using
//!   at most about `2·log2(n) + 64` subtree lookups and no other reads.
//! - [`verify_inclusion`] and [`verify_consistency`] are the RFC 9162
//!   §2.1.3.2 and §2.1.4.2 verification algorithms; they are independent of
//!   the prover and reject proofs with extra or missing hashes.
//! - Nothing here panics on any input; invalid arguments are errors.

use ring::digest;

/// A SHA-256 hash: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// Domain-separation prefix for leaf hashes (RFC 9162 §2.1.1).
const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix for interior node hashes (RFC 9162 §2.1.1).
const NODE_PREFIX: u8 = 0x01;

/// SHA-256 over the concatenation of `parts`.
fn sha256(parts: &[&[u8]]) -> Hash {
    let mut context = digest::Context::new(&digest::SHA256);
    for part in parts {
        context.update(part);
    }
    let digest = context.finish();
    let mut out = [0u8; 32];
    // Invariant: a SHA-256 digest is always 32 bytes, so the lengths match
    // and `copy_from_slice` cannot panic.
    out.copy_from_slice(digest.as_ref());
    out
}

/// Hash of a log entry as a leaf: `SHA-256(0x00 ‖ entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    sha256(&[&[LEAF_PREFIX], entry])
}

/// Hash of an interior node: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[NODE_PREFIX], left, right])
}

/// Root of the empty tree: `SHA-256("")` (RFC 9162 §2.1.1).
pub fn empty_root() -> Hash {
    sha256(&[])
}

/// Read access to the hashes of complete, aligned subtrees.
///
/// The log backs this with its key-value store; [`MemoryTree`] backs it with
/// vectors. Implementations only ever get asked for subtrees that lie
/// entirely inside the tree size the caller passed to [`root`] or a prover,
/// so a store holding a tree of at least that size can always answer.
pub trait SubtreeHashes {
    /// Why a lookup failed (I/O error, missing entry, …).
    type Error;

    /// Hash of the complete subtree at `level` covering leaves
    /// `[index << level, (index + 1) << level)`.
    fn subtree(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// Why a proof could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError<E> {
    /// The leaf index is not smaller than the tree size, so the leaf is not
    /// in the tree.
    #[error("leaf index {index} is outside a tree of size {tree_size}")]
    IndexOutOfRange {
        /// The requested leaf index.
        index: u64,
        /// The tree size the proof was requested for.
        tree_size: u64,
    },
    /// A consistency proof was requested from a larger tree to a smaller one.
    #[error("old tree size {old_size} exceeds new tree size {new_size}")]
    SizeOrder {
        /// The requested old (earlier) tree size.
        old_size: u64,
        /// The requested new (later) tree size.
        new_size: u64,
    },
    /// The subtree store failed to return a hash.
    #[error("subtree hash lookup failed")]
    Store(#[source] E),
}

/// Why a proof did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The leaf index is not smaller than the tree size.
    #[error("leaf index {index} is outside a tree of size {tree_size}")]
    IndexOutOfRange {
        /// The claimed leaf index.
        index: u64,
        /// The claimed tree size.
        tree_size: u64,
    },
    /// The old tree size is larger than the new tree size.
    #[error("old tree size {old_size} exceeds new tree size {new_size}")]
    SizeOrder {
        /// The claimed old tree size.
        old_size: u64,
        /// The claimed new tree size.
        new_size: u64,
    },
    /// The proof has more or fewer hashes than the sizes require.
    #[error("proof has the wrong number of hashes for the given sizes")]
    WrongProofLength,
    /// The proof is well-formed but the recomputed root(s) differ from the
    /// given root(s).
    #[error("recomputed root does not match")]
    RootMismatch,
}

/// Largest power of two strictly smaller than `n` (the RFC's split point
/// `k`). Only called with `n >= 2`, where the result is in `[1, n)`.
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// `MTH(D[start:end])` for a range that is a node of some RFC tree, i.e.
/// `start < end` and `start` is a multiple of the smallest power of two
/// `>= end - start`.
///
/// Such a range splits into complete aligned subtrees of strictly decreasing
/// sizes (the set bits of `end - start`, largest first), and the RFC's
/// recursive split reproduces exactly that decomposition, so the hash is the
/// right fold `node(s1, node(s2, … node(s_{m-1}, s_m)))`. Costs one lookup per
/// set bit of `end - start`.
fn range_hash<S: SubtreeHashes + ?Sized>(store: &S, start: u64, end: u64) -> Result<Hash, S::Error> {
    debug_assert!(start < end);
    let len = end - start;
    debug_assert!(
        len.checked_next_power_of_two().map_or(start == 0, |p| start.is_multiple_of(p)),
        "range [{start}, {end}) is not a node of an RFC tree"
    );
    // Fold from the right: begin with the smallest subtree (lowest set bit);
    // `rest` holds the higher bits, which are also the offset of that
    // subtree from `start`.
    let level = len.trailing_zeros();
    let mut rest = len & (len - 1);
    let mut acc = store.subtree(level, (start + rest) >> level)?;
    while rest != 0 {
        let level = rest.trailing_zeros();
        rest &= rest - 1;
        let left = store.subtree(level, (start + rest) >> level)?;
        acc = node_hash(&left, &acc);
    }
    Ok(acc)
}

/// `MTH` of the first `tree_size` leaves (RFC 9162 §2.1.1), from at most
/// 64 subtree lookups (one per set bit of `tree_size`).
pub fn root<S: SubtreeHashes + ?Sized>(store: &S, tree_size: u64) -> Result<Hash, S::Error> {
    if tree_size == 0 {
        return Ok(empty_root());
    }
    range_hash(store, 0, tree_size)
}

/// The subtrees that become complete when a leaf is appended.
///
/// The new leaf gets index `tree_size_before`. Returns `(level, index, hash)`
/// for the leaf itself (level 0) and for every parent that the append
/// completes, lowest level first; `lookup(level, index)` is asked for the
/// stored left sibling at each step. Appending `n` leaves yields fewer than
/// `2n` entries in total (about two per append).
///
/// `tree_size_before` must be below `u64::MAX` (the new size must be
/// representable); this is not checked because no real log gets there, and
/// nothing panics if it does.
pub fn appended_subtrees<E>(
    tree_size_before: u64,
    leaf: Hash,
    mut lookup: impl FnMut(u32, u64) -> Result<Hash, E>,
) -> Result<Vec<(u32, u64, Hash)>, E> {
    let mut completed = vec![(0, tree_size_before, leaf)];
    let (mut level, mut index, mut hash) = (0u32, tree_size_before, leaf);
    // A node at odd index is a right child: its parent is now complete.
    while index & 1 == 1 {
        let left = lookup(level, index - 1)?;
        hash = node_hash(&left, &hash);
        level += 1;
        index >>= 1;
        completed.push((level, index, hash));
    }
    Ok(completed)
}

/// The right edge of a tree being built leaf by leaf: complete subtrees of
/// strictly decreasing size, as (level, index, hash). Its root is the
/// tree's root, and the next append needs nothing else.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Frontier {
    stack: Vec<(u32, u64, Hash)>,
}

impl Frontier {
    /// Adds leaf `index`; returns every subtree that became complete.
    pub fn push(&mut self, index: u64, leaf: Hash) -> Vec<(u32, u64, Hash)> {
        let mut completed = vec![(0, index, leaf)];
        let mut node = (0u32, index, leaf);
        while let Some(&(level, left_index, left)) = self.stack.last() {
            if level != node.0 {
                break;
            }
            self.stack.pop();
            node = (level + 1, left_index >> 1, node_hash(&left, &node.2));
            completed.push(node);
        }
        self.stack.push(node);
        completed
    }

    /// The frontier of a tree of `size` leaves from its stored hashes
    /// ([`Frontier::to_bytes`]), or `None` if they do not fit the size.
    pub fn of_bytes(size: u64, bytes: &[u8]) -> Option<Self> {
        let (hashes, rest) = bytes.as_chunks::<32>();
        if !rest.is_empty() || hashes.len() != size.count_ones() as usize {
            return None;
        }
        let stack = Self::decomposition(size).zip(hashes).map(|((level, index), hash)| (level, index, *hash)).collect();
        Some(Self { stack })
    }

    /// The frontier of the tree of `size` leaves in `store`: one lookup per
    /// set bit of `size`.
    pub fn of_tree<S: SubtreeHashes + ?Sized>(store: &S, size: u64) -> Result<Self, S::Error> {
        let stack = Self::decomposition(size)
            .map(|(level, index)| store.subtree(level, index).map(|hash| (level, index, hash)))
            .collect::<Result<_, _>>()?;
        Ok(Self { stack })
    }

    /// The complete subtrees `(level, index)` that make up a tree of `size`
    /// leaves, largest first.
    fn decomposition(size: u64) -> impl Iterator<Item = (u32, u64)> {
        let mut offset = 0u64;
        (0..64u32).rev().filter(move |level| (size >> level) & 1 == 1).map(move |level| {
            let index = offset >> level;
            offset += 1 << level;
            (level, index)
        })
    }

    /// The hashes, largest subtree first; the size gives their levels.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.stack.iter().flat_map(|(_, _, hash)| *hash).collect()
    }

    /// The root of the leaves pushed so far.
    pub fn root(&self) -> Hash {
        let mut hashes = self.stack.iter().rev().map(|&(_, _, hash)| hash);
        match hashes.next() {
            None => empty_root(),
            Some(first) => hashes.fold(first, |right, left| node_hash(&left, &right)),
        }
    }
}

/// Audit path for leaf `index` in the tree of size `tree_size`
/// (`PATH(m, D[n])`, RFC 9162 §2.1.3.1), ordered from the leaf's sibling up
/// to the root's child.
///
/// Uses at most `log2(n)` lookups for complete siblings plus at most one
/// right-edge sibling costing one lookup per set bit of its size.
pub fn inclusion_proof<S: SubtreeHashes + ?Sized>(
    store: &S,
    index: u64,
    tree_size: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if index >= tree_size {
        return Err(ProofError::IndexOutOfRange { index, tree_size });
    }
    // Walk down from the root, keeping the node [start, end) that contains
    // the leaf and recording the sibling at each step. The RFC lists the
    // siblings bottom-up, so reverse at the end.
    let mut proof = Vec::new();
    let (mut start, mut end) = (0u64, tree_size);
    while end - start > 1 {
        let mid = start + split_point(end - start);
        if index < mid {
            proof.push(range_hash(store, mid, end).map_err(ProofError::Store)?);
            end = mid;
        } else {
            proof.push(range_hash(store, start, mid).map_err(ProofError::Store)?);
            start = mid;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// Consistency proof between the trees of sizes `old_size` and `new_size`
/// (`PROOF(m, D[n])`, RFC 9162 §2.1.4.1).
///
/// The proof is empty when `old_size == 0` or `old_size == new_size`, as
/// there is nothing to prove (the RFC defines `PROOF` for `0 < m < n`).
pub fn consistency_proof<S: SubtreeHashes + ?Sized>(
    store: &S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if old_size > new_size {
        return Err(ProofError::SizeOrder { old_size, new_size });
    }
    let mut proof = Vec::new();
    if old_size == 0 || old_size == new_size {
        return Ok(proof);
    }
    // Iterative SUBPROOF(m, D[start:end], complete): `m` is the old size
    // relative to `start`; `complete` is the RFC's boolean `b`, true while
    // the old tree is a left prefix of the current node along the left edge.
    let (mut start, mut end, mut m, mut complete) = (0u64, new_size, old_size, true);
    loop {
        if m == end - start {
            if !complete {
                proof.push(range_hash(store, start, end).map_err(ProofError::Store)?);
            }
            break;
        }
        // Here 1 <= m < end - start, so the node has two children.
        let mid = start + split_point(end - start);
        if m <= mid - start {
            proof.push(range_hash(store, mid, end).map_err(ProofError::Store)?);
            end = mid;
        } else {
            proof.push(range_hash(store, start, mid).map_err(ProofError::Store)?);
            m -= mid - start;
            start = mid;
            complete = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// Verifies that `leaf_hash` is leaf `index` of the tree of size `tree_size`
/// with root `root`, using the RFC 9162 §2.1.3.2 algorithm.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    tree_size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), VerifyError> {
    if index >= tree_size {
        return Err(VerifyError::IndexOutOfRange { index, tree_size });
    }
    // `fnode` / `snode` are the RFC's `fn` / `sn`: the leaf's and the last
    // leaf's positions at the current level.
    let (mut fnode, mut snode) = (index, tree_size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if snode == 0 {
            return Err(VerifyError::WrongProofLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            // On the right edge a node may have no right sibling for several
            // levels; skip those levels.
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(VerifyError::WrongProofLength);
    }
    if r != *root {
        return Err(VerifyError::RootMismatch);
    }
    Ok(())
}

/// Verifies that the tree of size `new_size` with root `new_root` extends the
/// tree of size `old_size` with root `old_root`, using the RFC 9162 §2.1.4.2
/// algorithm.
///
/// Edge cases the RFC leaves to the caller: `old_size == new_size` requires
/// an empty proof and equal roots; `old_size == 0` requires an empty proof
/// and `old_root` equal to [`empty_root`] (every tree extends the empty one).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), VerifyError> {
    if old_size > new_size {
        return Err(VerifyError::SizeOrder { old_size, new_size });
    }
    if old_size == 0 || old_size == new_size {
        if !proof.is_empty() {
            return Err(VerifyError::WrongProofLength);
        }
        if old_size == 0 && *old_root != empty_root() {
            return Err(VerifyError::RootMismatch);
        }
        if old_size == new_size && old_root != new_root {
            return Err(VerifyError::RootMismatch);
        }
        return Ok(());
    }
    // Step 1–2: the proof omits the old root when the old tree is a complete
    // subtree (power-of-two size); it is the starting point in that case.
    let (seed, rest) = if old_size.is_power_of_two() {
        if proof.is_empty() {
            return Err(VerifyError::WrongProofLength);
        }
        (*old_root, proof)
    } else {
        match proof.split_first() {
            Some((first, rest)) => (*first, rest),
            None => return Err(VerifyError::WrongProofLength),
        }
    };
    // Steps 3–4.
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    // Steps 5–6.
    let (mut fr, mut sr) = (seed, seed);
    for c in rest {
        if snode == 0 {
            return Err(VerifyError::WrongProofLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 7.
    if snode != 0 {
        return Err(VerifyError::WrongProofLength);
    }
    if fr != *old_root || sr != *new_root {
        return Err(VerifyError::RootMismatch);
    }
    Ok(())
}

/// Lookup of a subtree that a [`MemoryTree`] does not (yet) hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no complete subtree at level {level}, index {index}")]
pub struct MissingSubtree {
    /// The requested level.
    pub level: u32,
    /// The requested index within the level.
    pub index: u64,
}

/// An in-memory log: every complete aligned subtree hash, level by level.
///
/// Used by tests and by offline verifiers that rebuild the tree from an
/// exported log. `levels[L][K]` is the subtree at level `L`, index `K`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `entry` as a new leaf and returns its index.
    pub fn push(&mut self, entry: &[u8]) -> u64 {
        self.push_leaf_hash(leaf_hash(entry))
    }

    /// Appends a leaf given its leaf hash (see [`leaf_hash`]) and returns its
    /// index.
    pub fn push_leaf_hash(&mut self, leaf: Hash) -> u64 {
        let index = self.len();
        let completed = appended_subtrees(index, leaf, |level, index| self.subtree(level, index))
            // Invariant: the left sibling of every node completed by this
            // append was completed by an earlier append and is stored.
            .expect("left siblings of an append are always stored");
        for (level, index, hash) in completed {
            let level = level as usize;
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            // Nodes of one level complete strictly left to right.
            debug_assert_eq!(self.levels[level].len() as u64, index);
            self.levels[level].push(hash);
        }
        index
    }

    /// Current root (convenience for [`root`] at [`MemoryTree::len`]).
    pub fn root(&self) -> Hash {
        // Invariant: `root` only looks up complete subtrees inside the
        // tree's own size, all of which are stored.
        root(self, self.len()).expect("complete subtrees inside the tree are stored")
    }
}

impl SubtreeHashes for MemoryTree {
    type Error = MissingSubtree;

    fn subtree(&self, level: u32, index: u64) -> Result<Hash, MissingSubtree> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.levels.get(level as usize)?.get(i))
            .copied()
            .ok_or(MissingSubtree { level, index })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::cell::Cell;

    fn hex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2), "odd hex length");
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn hash_hex(s: &str) -> Hash {
        hex(s).try_into().unwrap()
    }

    /// The certificate-transparency / RFC 6962 test leaves.
    const LEAVES: [&str; 8] =
        ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];

    /// Their roots for tree sizes 0..=8.
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    /// Reference `MTH(D[n])` straight from the RFC 6962 §2.1 text, over
    /// leaf hashes.
    fn naive_mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = naive_k(n);
                node_hash(&naive_mth(&leaves[..k]), &naive_mth(&leaves[k..]))
            }
        }
    }

    /// Largest power of two smaller than `n`, by counting up (no bit tricks).
    fn naive_k(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    /// Reference `PATH(m, D[n])` from RFC 9162 §2.1.3.1.
    fn naive_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        let n = leaves.len();
        if n <= 1 {
            return Vec::new();
        }
        let k = naive_k(n);
        if m < k {
            let mut p = naive_path(m, &leaves[..k]);
            p.push(naive_mth(&leaves[k..]));
            p
        } else {
            let mut p = naive_path(m - k, &leaves[k..]);
            p.push(naive_mth(&leaves[..k]));
            p
        }
    }

    /// Reference `SUBPROOF(m, D[n], b)` from RFC 9162 §2.1.4.1.
    fn naive_subproof(m: usize, leaves: &[Hash], b: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if b { Vec::new() } else { vec![naive_mth(leaves)] };
        }
        let k = naive_k(n);
        if m <= k {
            let mut p = naive_subproof(m, &leaves[..k], b);
            p.push(naive_mth(&leaves[k..]));
            p
        } else {
            let mut p = naive_subproof(m - k, &leaves[k..], false);
            p.push(naive_mth(&leaves[..k]));
            p
        }
    }

    fn test_leaf_hashes() -> Vec<Hash> {
        LEAVES.iter().map(|l| leaf_hash(&hex(l))).collect()
    }

    /// Distinct leaves for the exhaustive tests.
    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(format!("entry {i}").as_bytes())).collect()
    }

    fn memory_tree(leaves: &[Hash]) -> MemoryTree {
        let mut tree = MemoryTree::new();
        for leaf in leaves {
            tree.push_leaf_hash(*leaf);
        }
        tree
    }

    #[test]
    fn primitive_hashes() {
        assert_eq!(empty_root(), hash_hex(ROOTS[0]));
        // Leaf 0 is the empty entry: SHA-256(0x00).
        assert_eq!(leaf_hash(&[]), hash_hex("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"));
        // Size-2 root is node_hash of the first two leaves.
        let l = test_leaf_hashes();
        assert_eq!(node_hash(&l[0], &l[1]), hash_hex(ROOTS[2]));
        // Domain separation: a node is not the leaf of its concatenation.
        let mut concat = l[0].to_vec();
        concat.extend_from_slice(&l[1]);
        assert_ne!(leaf_hash(&concat), node_hash(&l[0], &l[1]));
    }

    #[test]
    fn known_roots_naive_reference() {
        let l = test_leaf_hashes();
        for (n, expected) in ROOTS.iter().enumerate() {
            assert_eq!(naive_mth(&l[..n]), hash_hex(expected), "naive MTH size {n}");
        }
    }

    #[test]
    fn known_roots_memory_tree() {
        let mut tree = MemoryTree::new();
        assert_eq!(tree.root(), hash_hex(ROOTS[0]));
        for (i, leaf) in LEAVES.iter().enumerate() {
            assert_eq!(tree.push(&hex(leaf)), i as u64);
            assert_eq!(tree.root(), hash_hex(ROOTS[i + 1]), "size {}", i + 1);
        }
        // Historical roots from the same store.
        for (n, expected) in ROOTS.iter().enumerate() {
            assert_eq!(root(&tree, n as u64).unwrap(), hash_hex(expected));
        }
    }

    #[test]
    fn roots_match_naive_up_to_64() {
        let l = leaves(64);
        let tree = memory_tree(&l);
        for n in 0..=64 {
            assert_eq!(root(&tree, n as u64).unwrap(), naive_mth(&l[..n]), "size {n}");
        }
    }

    #[test]
    fn appended_subtrees_are_amortised_and_correct() {
        let l = leaves(100);
        let tree = memory_tree(&l);
        let mut total = 0;
        for (i, leaf) in l.iter().enumerate() {
            let i = i as u64;
            let added = appended_subtrees(i, *leaf, |level, index| tree.subtree(level, index)).unwrap();
            // One entry for the leaf plus one per trailing one bit of i.
            assert_eq!(added.len() as u32, 1 + i.trailing_ones());
            for (level, index, hash) in &added {
                assert_eq!(*hash, tree.subtree(*level, *index).unwrap());
                // The subtree ends exactly at the new leaf.
                assert_eq!((index + 1) << level, i + 1);
            }
            total += added.len();
        }
        assert!(total < 2 * l.len());
        // Lookup errors propagate.
        let err = appended_subtrees(1, l[1], |level, index| Err::<Hash, _>(MissingSubtree { level, index }));
        assert_eq!(err, Err(MissingSubtree { level: 0, index: 0 }));
    }

    #[test]
    fn memory_tree_rejects_missing_subtrees() {
        let tree = memory_tree(&leaves(5));
        assert_eq!(tree.len(), 5);
        assert!(tree.subtree(2, 0).is_ok());
        assert_eq!(tree.subtree(2, 1), Err(MissingSubtree { level: 2, index: 1 }));
        assert_eq!(tree.subtree(9, 0), Err(MissingSubtree { level: 9, index: 0 }));
        assert!(root(&tree, 6).is_err());
        assert!(MemoryTree::new().is_empty());
    }

    #[test]
    fn proofs_match_rfc_reference() {
        let l = leaves(64);
        let tree = memory_tree(&l);
        for n in 1..=64usize {
            for m in 0..n {
                let proof = inclusion_proof(&tree, m as u64, n as u64).unwrap();
                assert_eq!(proof, naive_path(m, &l[..n]), "PATH({m}, {n})");
            }
        }
        for n in 1..=64usize {
            for m in 1..n {
                let proof = consistency_proof(&tree, m as u64, n as u64).unwrap();
                assert_eq!(proof, naive_subproof(m, &l[..n], true), "PROOF({m}, {n})");
            }
        }
    }

    /// Every single-change tamper of a proof: bit 0 and bit 255 of each hash
    /// flipped, each hash removed, a hash appended (two variants).
    fn proof_tampers(proof: &[Hash]) -> Vec<Vec<Hash>> {
        let mut out = Vec::new();
        for i in 0..proof.len() {
            for bit in [0usize, 255] {
                let mut p = proof.to_vec();
                p[i][bit / 8] ^= 1 << (bit % 8);
                out.push(p);
            }
            let mut p = proof.to_vec();
            p.remove(i);
            out.push(p);
        }
        let mut p = proof.to_vec();
        p.push(proof.last().copied().unwrap_or([7; 32]));
        out.push(p);
        let mut p = proof.to_vec();
        p.push(empty_root());
        out.push(p);
        out
    }

    /// Note on "wrong size" tampers: a claim is a (size, root) pair, and the
    /// tampered claims below pair the changed size with the true root of
    /// that size. Changing the size alone while keeping the old root is not
    /// always detectable by any verifier: e.g. the inclusion proof of leaf 0
    /// in a 3-leaf tree, `[l1, l2]`, is also a well-formed proof for a 4-leaf
    /// tree whose right half hashes to `l2`. Nothing but the signature that
    /// binds size and root together (the checkpoint) rules that out, and the
    /// RFC 9162 algorithms accept it, as do other implementations.
    #[test]
    fn inclusion_exhaustive_up_to_64() {
        let l = leaves(65);
        let tree = memory_tree(&l[..64]);
        let roots: Vec<Hash> = (0..=65).map(|n| naive_mth(&l[..n])).collect();
        for n in 1..=64usize {
            let root = roots[n];
            let size = n as u64;
            for (m, leaf) in l.iter().enumerate().take(n) {
                let index = m as u64;
                let proof = inclusion_proof(&tree, index, size).unwrap();
                assert_eq!(verify_inclusion(leaf, index, size, &proof, &root), Ok(()));

                for bad in proof_tampers(&proof) {
                    assert!(verify_inclusion(leaf, index, size, &bad, &root).is_err());
                }
                assert!(verify_inclusion(leaf, index + 1, size, &proof, &root).is_err());
                if index > 0 {
                    assert!(verify_inclusion(leaf, index - 1, size, &proof, &root).is_err());
                }
                assert!(verify_inclusion(leaf, index, size + 1, &proof, &roots[n + 1]).is_err());
                assert!(verify_inclusion(leaf, index, size - 1, &proof, &roots[n - 1]).is_err());
                let mut wrong_leaf = *leaf;
                wrong_leaf[0] ^= 1;
                assert_eq!(verify_inclusion(&wrong_leaf, index, size, &proof, &root), Err(VerifyError::RootMismatch));
                let mut wrong_root = root;
                wrong_root[31] ^= 0x80;
                assert_eq!(verify_inclusion(leaf, index, size, &proof, &wrong_root), Err(VerifyError::RootMismatch));
            }
        }
    }

    #[test]
    fn consistency_exhaustive_up_to_64() {
        let l = leaves(65);
        let tree = memory_tree(&l[..64]);
        let roots: Vec<Hash> = (0..=65).map(|n| naive_mth(&l[..n])).collect();
        for n in 0..=64usize {
            for m in 0..=n {
                let (old, new) = (m as u64, n as u64);
                let (old_root, new_root) = (&roots[m], &roots[n]);
                let proof = consistency_proof(&tree, old, new).unwrap();
                assert_eq!(verify_consistency(old, new, old_root, new_root, &proof), Ok(()), "({m}, {n})");

                for bad in proof_tampers(&proof) {
                    assert!(
                        verify_consistency(old, new, old_root, new_root, &bad).is_err(),
                        "tampered proof accepted ({m}, {n})"
                    );
                }
                // Every single change of a size (paired with the true root of
                // the changed size; see the note on the inclusion test) or of
                // a root. Claims that are trivially true with an empty proof
                // (from the empty tree, or between equal trees) are the only
                // ones allowed to pass, and only when the proof is empty.
                let mut claims: Vec<(u64, u64, Hash, Hash)> = Vec::new();
                for (o, nn) in [(old.wrapping_sub(1), new), (old + 1, new), (old, new + 1), (old, new.wrapping_sub(1))]
                {
                    if o > 65 || nn > 65 {
                        continue;
                    }
                    claims.push((o, nn, roots[o as usize], roots[nn as usize]));
                }
                let mut bad_old = *old_root;
                bad_old[0] ^= 1;
                claims.push((old, new, bad_old, *new_root));
                let mut bad_new = *new_root;
                bad_new[31] ^= 0x80;
                claims.push((old, new, *old_root, bad_new));
                for (o, nn, o_root, n_root) in claims {
                    let trivially_true = proof.is_empty()
                        && o <= nn
                        && ((o == 0 && o_root == roots[0]) || (o == nn && o_root == n_root));
                    if !trivially_true {
                        assert!(
                            verify_consistency(o, nn, &o_root, &n_root, &proof).is_err(),
                            "({m}, {n}) proof accepted for ({o}, {nn})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn consistency_known_vectors() {
        // Proofs over the RFC 6962 test leaves verify against the published
        // roots.
        let tree = memory_tree(&test_leaf_hashes());
        let roots: Vec<Hash> = ROOTS.iter().map(|r| hash_hex(r)).collect();
        for (n, new_root) in roots.iter().enumerate().skip(1) {
            for (m, old_root) in roots.iter().enumerate().take(n + 1).skip(1) {
                let (m, n) = (m as u64, n as u64);
                let proof = consistency_proof(&tree, m, n).unwrap();
                verify_consistency(m, n, old_root, new_root, &proof).unwrap();
            }
        }
    }

    #[test]
    fn argument_errors() {
        // The error types are real errors (for `?` into boxed errors), and
        // store failures are reachable through `source()`.
        fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}
        assert_error::<ProofError<MissingSubtree>>();
        assert_error::<VerifyError>();
        let store_err: ProofError<MissingSubtree> = ProofError::Store(MissingSubtree { level: 1, index: 2 });
        assert_eq!(
            std::error::Error::source(&store_err).map(ToString::to_string),
            Some("no complete subtree at level 1, index 2".to_owned())
        );

        let tree = memory_tree(&leaves(8));
        assert_eq!(inclusion_proof(&tree, 8, 8), Err(ProofError::IndexOutOfRange { index: 8, tree_size: 8 }));
        assert_eq!(inclusion_proof(&tree, 0, 0), Err(ProofError::IndexOutOfRange { index: 0, tree_size: 0 }));
        assert_eq!(consistency_proof(&tree, 5, 4), Err(ProofError::SizeOrder { old_size: 5, new_size: 4 }));
        assert_eq!(consistency_proof(&tree, 0, 8), Ok(Vec::new()));
        assert_eq!(consistency_proof(&tree, 8, 8), Ok(Vec::new()));
        assert_eq!(consistency_proof(&tree, 0, 0), Ok(Vec::new()));
        // Sizes beyond the store surface as store errors.
        assert!(matches!(inclusion_proof(&tree, 3, 9), Err(ProofError::Store(MissingSubtree { .. }))));
        assert!(matches!(consistency_proof(&tree, 3, 9), Err(ProofError::Store(MissingSubtree { .. }))));

        let r = empty_root();
        assert_eq!(verify_inclusion(&r, 3, 3, &[], &r), Err(VerifyError::IndexOutOfRange { index: 3, tree_size: 3 }));
        assert_eq!(verify_consistency(4, 3, &r, &r, &[]), Err(VerifyError::SizeOrder { old_size: 4, new_size: 3 }));
        // Empty proofs: accepted only where nothing needs proving.
        assert_eq!(verify_consistency(0, 0, &r, &r, &[]), Ok(()));
        assert_eq!(verify_consistency(0, 5, &r, &tree.root(), &[]), Ok(()));
        assert_eq!(verify_consistency(0, 5, &tree.root(), &tree.root(), &[]), Err(VerifyError::RootMismatch));
        assert_eq!(verify_consistency(0, 5, &r, &tree.root(), &[r]), Err(VerifyError::WrongProofLength));
        assert_eq!(verify_consistency(3, 3, &r, &tree.root(), &[]), Err(VerifyError::RootMismatch));
        assert_eq!(verify_consistency(3, 5, &r, &tree.root(), &[]), Err(VerifyError::WrongProofLength));
        assert_eq!(verify_consistency(4, 5, &r, &tree.root(), &[]), Err(VerifyError::WrongProofLength));
        // A single-leaf tree needs an empty inclusion proof, nothing more.
        let leaf = leaf_hash(b"x");
        assert_eq!(verify_inclusion(&leaf, 0, 1, &[], &leaf), Ok(()));
        assert_eq!(verify_inclusion(&leaf, 0, 1, &[leaf], &leaf), Err(VerifyError::WrongProofLength));
    }

    /// Wraps a store and counts lookups.
    struct Counting<'a, S> {
        inner: &'a S,
        lookups: Cell<u64>,
    }

    impl<'a, S> Counting<'a, S> {
        fn new(inner: &'a S) -> Self {
            Self { inner, lookups: Cell::new(0) }
        }

        /// Lookups since the last call.
        fn take(&self) -> u64 {
            self.lookups.replace(0)
        }
    }

    impl<S: SubtreeHashes> SubtreeHashes for Counting<'_, S> {
        type Error = S::Error;

        fn subtree(&self, level: u32, index: u64) -> Result<Hash, S::Error> {
            self.lookups.set(self.lookups.get() + 1);
            self.inner.subtree(level, index)
        }
    }

    fn log2_ceil(n: u64) -> u64 {
        u64::from(64 - n.saturating_sub(1).leading_zeros())
    }

    #[test]
    fn lookups_are_logarithmic_on_a_real_tree() {
        const N: u64 = 1 << 18;
        let mut tree = MemoryTree::new();
        for i in 0..N {
            tree.push_leaf_hash(sha256(&[&i.to_be_bytes()]));
        }
        let counting = Counting::new(&tree);
        let sizes = [1, 2, 3, 5, 1000, 4097, 12345, 32768, 65535, N];
        for &n in &sizes {
            let bound = 4 * log2_ceil(n) + 4;
            let r = root(&counting, n).unwrap();
            assert!(counting.take() <= bound);
            for index in [0, n / 3, n / 2, n - 1] {
                let proof = inclusion_proof(&counting, index, n).unwrap();
                assert!(counting.take() <= bound, "inclusion {index}/{n}");
                let leaf = tree.subtree(0, index).unwrap();
                verify_inclusion(&leaf, index, n, &proof, &r).unwrap();
            }
            for old in [1, n / 7, n / 2, n - 1, n] {
                if old == 0 {
                    continue;
                }
                let proof = consistency_proof(&counting, old, n).unwrap();
                assert!(counting.take() <= bound, "consistency {old}->{n}");
                let old_root = root(&tree, old).unwrap();
                verify_consistency(old, n, &old_root, &r, &proof).unwrap();
            }
        }
    }

    /// A store of any size that answers with a hash derived from the
    /// position, for counting lookups on huge trees. It fails any lookup of
    /// a subtree that is not complete within `size`.
    struct Synthetic {
        size: u64,
    }

    impl SubtreeHashes for Synthetic {
        type Error = MissingSubtree;

        fn subtree(&self, level: u32, index: u64) -> Result<Hash, MissingSubtree> {
            let end = (u128::from(index) + 1) << level;
            if level > 63 || end > u128::from(self.size) {
                return Err(MissingSubtree { level, index });
            }
            Ok(sha256(&[&level.to_be_bytes(), &index.to_be_bytes()]))
        }
    }

    #[test]
    fn lookups_are_logarithmic_on_huge_trees() {
        let sizes = [1u64 << 20, (1 << 20) - 1, (1 << 40) + 12345, (1 << 62) + (1 << 61) + 7, u64::MAX, u64::MAX - 1];
        for &n in &sizes {
            let store = Synthetic { size: n };
            let counting = Counting::new(&store);
            let bound = 4 * log2_ceil(n) + 4;
            root(&counting, n).unwrap();
            assert!(counting.take() <= bound);
            for index in [0, 1, n / 3, n / 2, n - 2, n - 1] {
                // `Synthetic` fails (and so `unwrap` panics on) any lookup
                // outside the tree.
                inclusion_proof(&counting, index, n).unwrap();
                let count = counting.take();
                assert!(count <= bound, "inclusion {index}/{n}: {count} lookups");
            }
            for old in [1, 2, 3, n / 7, n / 2, n - 1] {
                consistency_proof(&counting, old, n).unwrap();
                let count = counting.take();
                assert!(count <= bound, "consistency {old}->{n}: {count} lookups");
            }
        }
    }

    #[test]
    fn frontier_roots_and_completed_subtrees_match_the_memory_tree() {
        let mut frontier = Frontier::default();
        let mut tree = MemoryTree::new();
        assert_eq!(frontier.root(), empty_root());
        for index in 0..70u64 {
            let entry = index.to_be_bytes();
            let leaf = leaf_hash(&entry);
            let mut from_frontier = frontier.push(index, leaf);
            let mut expected = appended_subtrees(index, leaf, |level, at| tree.subtree(level, at)).unwrap();
            from_frontier.sort();
            expected.sort();
            assert_eq!(from_frontier, expected, "index {index}");
            tree.push(&entry);
            assert_eq!(frontier.root(), tree.root(), "size {}", index + 1);
            // Stored and read back, or read off the tree, it is the same.
            assert_eq!(Frontier::of_bytes(index + 1, &frontier.to_bytes()).as_ref(), Some(&frontier));
            assert_eq!(Frontier::of_tree(&tree, index + 1).unwrap(), frontier);
        }
        assert_eq!(Frontier::of_bytes(70, &[0; 32]), None, "hashes that do not fit the size");
    }
}
