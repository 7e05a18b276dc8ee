//! The RFC 9162 (RFC 6962) Merkle tree: leaf hash `SHA-256(0x00 || data)`, node hash
//! `SHA-256(0x01 || left || right)`, tree heads for any size, inclusion and consistency proofs
//! and their verification. Written out here (not taken from a crate) because every audit
//! byte depends on it being exactly the RFC's; tested against the published vectors.

use crate::crypto::{sha256, sha256_parts};

pub type Hash = [u8; 32];

/// `SHA-256(0x00 || data)`
pub fn leaf_hash(data: &[u8]) -> Hash {
    sha256_parts(&[&[0u8], data])
}

/// `SHA-256(0x01 || left || right)`
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256_parts(&[&[1u8], left, right])
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    sha256(b"")
}

/// The largest power of two strictly less than `n` (n >= 2).
fn split(n: u64) -> u64 {
    let mut k = 1u64;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// Where the hashes of complete subtrees come from: memory ([`MerkleTree`]), tiles on disk
/// (`store::tiles`) or tiles fetched over HTTP (the CLI). The proof algorithms below need
/// nothing else.
pub trait NodeSource {
    type Error;
    /// Leaves in the tree.
    fn size(&self) -> u64;
    /// The hash of complete node `index` at `level`: leaves `[index·2^level, (index+1)·2^level)`,
    /// all within the tree.
    fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// MTH of leaves `[start, start+size)`; the caller keeps the range within the tree.
pub fn subtree_root<S: NodeSource + ?Sized>(
    s: &S,
    start: u64,
    size: u64,
) -> Result<Hash, S::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    if size.is_power_of_two() && start % size == 0 {
        let k = size.trailing_zeros();
        return s.node(k, start >> k);
    }
    let k = split(size);
    Ok(node_hash(
        &subtree_root(s, start, k)?,
        &subtree_root(s, start + k, size - k)?,
    ))
}

/// The root of the first `size` leaves; `None` past the end of the tree.
pub fn root_at<S: NodeSource + ?Sized>(s: &S, size: u64) -> Result<Option<Hash>, S::Error> {
    if size > s.size() {
        return Ok(None);
    }
    subtree_root(s, 0, size).map(Some)
}

/// Inclusion proof of leaf `index` in the tree of the first `size` leaves (RFC 9162
/// section 2.1.3.1).
pub fn inclusion_proof_of<S: NodeSource + ?Sized>(
    s: &S,
    index: u64,
    size: u64,
) -> Result<Option<Vec<Hash>>, S::Error> {
    if index >= size || size > s.size() {
        return Ok(None);
    }
    let mut out = Vec::new();
    path(s, index, 0, size, &mut out)?;
    Ok(Some(out))
}

fn path<S: NodeSource + ?Sized>(
    s: &S,
    m: u64,
    start: u64,
    n: u64,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(s, m, start, k, out)?;
        out.push(subtree_root(s, start + k, n - k)?);
    } else {
        path(s, m - k, start + k, n - k, out)?;
        out.push(subtree_root(s, start, k)?);
    }
    Ok(())
}

/// Consistency proof between the trees of the first `m` and `n` leaves (RFC 9162
/// section 2.1.4.1).
pub fn consistency_proof_of<S: NodeSource + ?Sized>(
    s: &S,
    m: u64,
    n: u64,
) -> Result<Option<Vec<Hash>>, S::Error> {
    if m == 0 || m > n || n > s.size() {
        return Ok(None);
    }
    let mut out = Vec::new();
    subproof(s, m, 0, n, true, &mut out)?;
    Ok(Some(out))
}

fn subproof<S: NodeSource + ?Sized>(
    s: &S,
    m: u64,
    start: u64,
    n: u64,
    b: bool,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    if m == n {
        if !b {
            out.push(subtree_root(s, start, n)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(s, m, start, k, b, out)?;
        out.push(subtree_root(s, start + k, n - k)?);
    } else {
        subproof(s, m - k, start + k, n - k, false, out)?;
        out.push(subtree_root(s, start, k)?);
    }
    Ok(())
}

/// An append-only tree keeping every complete subtree hash in memory, so heads and proofs for
/// any size cost O(log² n) hashes. Memory: about 64 bytes per leaf, so it serves exports,
/// reconciliation and tests; the gateway's own log keeps its tree on disk as tiles.
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    /// `levels[k][i]` is the hash of leaves `[i·2^k, (i+1)·2^k)`.
    levels: Vec<Vec<Hash>>,
}

impl NodeSource for MerkleTree {
    type Error = std::convert::Infallible;
    fn size(&self) -> u64 {
        self.len()
    }
    fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error> {
        Ok(self
            .levels
            .get(level as usize)
            .and_then(|l| l.get(index as usize))
            .copied()
            .unwrap_or_else(empty_root))
    }
}

fn infallible<T>(r: Result<T, std::convert::Infallible>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => match e {},
    }
}

impl MerkleTree {
    pub fn new() -> Self {
        MerkleTree {
            levels: vec![Vec::new()],
        }
    }

    pub fn len(&self) -> u64 {
        self.levels.first().map(|l| l.len() as u64).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut level = 0;
        while self.levels[level].len() % 2 == 0 {
            let l = &self.levels[level];
            let parent = node_hash(&l[l.len() - 2], &l[l.len() - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(parent);
            level += 1;
        }
    }

    pub fn leaf(&self, i: u64) -> Option<Hash> {
        self.levels.first().and_then(|l| l.get(i as usize)).copied()
    }

    /// The root of the first `size` leaves.
    pub fn root(&self, size: u64) -> Option<Hash> {
        infallible(root_at(self, size))
    }

    /// Inclusion proof of leaf `index` in the tree of the first `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        infallible(inclusion_proof_of(self, index, size))
    }

    /// Consistency proof between the trees of the first `m` and `n` leaves.
    pub fn consistency_proof(&self, m: u64, n: u64) -> Option<Vec<Hash>> {
        infallible(consistency_proof_of(self, m, n))
    }
}

/// Verifies an inclusion proof (RFC 9162 section 2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && crate::crypto::ct_eq(&r, root)
}

/// Verifies a consistency proof between tree sizes `m <= n` (RFC 9162 section 2.1.4.2).
pub fn verify_consistency(m: u64, n: u64, proof: &[Hash], first: &Hash, second: &Hash) -> bool {
    if m == 0 || m > n {
        return false;
    }
    if m == n {
        return proof.is_empty() && first == second;
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if m.is_power_of_two() {
        path.push(*first);
    }
    path.extend_from_slice(proof);
    let (mut fn_, mut sn) = (m - 1, n - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let mut fr = path[0];
    let mut sr = path[0];
    for c in &path[1..] {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && &fr == first && &sr == second
}

/// The root of a list of leaf hashes, computed directly (for exports and tests).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{hex, hex_decode};
    use proptest::prelude::*;

    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn h(s: &str) -> Hash {
        let v = hex_decode(s).unwrap();
        let mut o = [0u8; 32];
        o.copy_from_slice(&v);
        o
    }

    fn vector_tree() -> MerkleTree {
        let mut t = MerkleTree::new();
        for l in LEAVES {
            t.push(leaf_hash(&hex_decode(l).unwrap()));
        }
        t
    }

    /// The certificate-transparency reference vectors (RFC 6962 test data).
    #[test]
    fn roots_match_published_vectors() {
        let t = vector_tree();
        assert_eq!(
            hex(&t.root(0).unwrap()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for n in 1..=8 {
            assert_eq!(hex(&t.root(n).unwrap()), ROOTS[n as usize - 1], "size {n}");
        }
        assert_eq!(t.root(9), None);
    }

    #[test]
    fn inclusion_proofs_match_published_vectors() {
        let t = vector_tree();
        let cases: &[(u64, u64, &[&str])] = &[
            (0, 1, &[]),
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (i, n, want) in cases {
            let p = t.inclusion_proof(*i, *n).unwrap();
            assert_eq!(
                p.iter().map(|x| hex(x)).collect::<Vec<_>>(),
                want.to_vec(),
                "({i}, {n})"
            );
            assert!(verify_inclusion(
                &t.leaf(*i).unwrap(),
                *i,
                *n,
                &p,
                &h(ROOTS[*n as usize - 1])
            ));
        }
    }

    #[test]
    fn consistency_proofs_match_published_vectors() {
        let t = vector_tree();
        let cases: &[(u64, u64, &[&str])] = &[
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (m, n, want) in cases {
            let p = t.consistency_proof(*m, *n).unwrap();
            assert_eq!(
                p.iter().map(|x| hex(x)).collect::<Vec<_>>(),
                want.to_vec(),
                "({m}, {n})"
            );
            assert!(verify_consistency(
                *m,
                *n,
                &p,
                &h(ROOTS[*m as usize - 1]),
                &h(ROOTS[*n as usize - 1])
            ));
        }
    }

    fn tree(n: usize) -> (MerkleTree, Vec<Hash>) {
        let mut t = MerkleTree::new();
        let mut v = Vec::new();
        for i in 0..n {
            let l = leaf_hash(format!("record {i}").as_bytes());
            t.push(l);
            v.push(l);
        }
        (t, v)
    }

    proptest! {
        #[test]
        fn every_inclusion_proof_verifies_and_tampering_fails(n in 1usize..80, seed in 0usize..1000) {
            let (t, v) = tree(n);
            let i = (seed % n) as u64;
            let size = i + 1 + (seed as u64 % (n as u64 - i));
            let root = t.root(size).unwrap();
            prop_assert_eq!(root, root_of(&v[..size as usize]));
            let p = t.inclusion_proof(i, size).unwrap();
            prop_assert!(verify_inclusion(&v[i as usize], i, size, &p, &root));
            // Another leaf, another index or a flipped proof byte must fail.
            let other = leaf_hash(b"not in the log");
            prop_assert!(!verify_inclusion(&other, i, size, &p, &root));
            if size > 1 {
                prop_assert!(!verify_inclusion(&v[i as usize], (i + 1) % size, size, &p, &root));
                let mut bad = p.clone();
                bad[0][0] ^= 1;
                prop_assert!(!verify_inclusion(&v[i as usize], i, size, &bad, &root));
            }
        }

        #[test]
        fn every_consistency_proof_verifies_and_forks_fail(n in 1usize..80, seed in 0usize..1000) {
            let (t, v) = tree(n);
            let m = 1 + (seed % n) as u64;
            let p = t.consistency_proof(m, n as u64).unwrap();
            let (r1, r2) = (t.root(m).unwrap(), t.root(n as u64).unwrap());
            prop_assert!(verify_consistency(m, n as u64, &p, &r1, &r2));
            // A fork: the same size, one earlier leaf changed.
            if m < n as u64 {
                let mut forked = MerkleTree::new();
                for (i, l) in v.iter().enumerate() {
                    forked.push(if i == 0 { leaf_hash(b"forked") } else { *l });
                }
                let r1f = forked.root(m).unwrap();
                prop_assert!(!verify_consistency(m, n as u64, &p, &r1f, &r2));
            }
        }
    }
}
