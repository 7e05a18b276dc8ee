//! The C2SP `tlog-tiles` shape of the Merkle tree: hashes kept only at every eighth level
//! (tile level `L` holds the hashes of tree level `8L`), 256 to a tile, with the levels in
//! between recomputed from at most 128 stored hashes. Pure: the storage behind it is the
//! gateway's files (`store::tiles`) or tiles fetched over HTTP (`fedgate audit verify --url`),
//! both behind [`TileLevels`]. Also the tile paths and entry bundles of the spec.

use super::merkle::{node_hash, Hash, NodeSource};

/// Tree levels per tile (the spec's fixed height).
pub const TILE_HEIGHT: u32 = 8;
/// Hashes in a full tile.
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;
/// Tile levels the spec allows (0..=63).
pub const MAX_TILE_LEVEL: u32 = 63;
/// The largest entry an entry bundle can carry (uint16 length prefix).
pub const MAX_ENTRY_BYTES: usize = u16::MAX as usize;

/// One tile resource: `tile/<level>/<index>[.p/<width>]`, or `tile/entries/<index>[...]`
/// when `level` is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileRef {
    pub level: Option<u32>,
    pub index: u64,
    /// 1..=256; 256 is a full tile (no `.p/` suffix).
    pub width: u64,
}

/// `1234067` → `x001/x234/067`.
pub fn encode_index(mut n: u64) -> String {
    let mut groups = Vec::new();
    loop {
        groups.push(n % 1000);
        n /= 1000;
        if n == 0 {
            break;
        }
    }
    let mut out = String::new();
    for (i, g) in groups.iter().rev().enumerate() {
        if i + 1 < groups.len() {
            out.push_str(&format!("x{g:03}/"));
        } else {
            out.push_str(&format!("{g:03}"));
        }
    }
    out
}

impl TileRef {
    /// The path below the log's prefix, e.g. `tile/0/x001/234.p/17`.
    pub fn path(&self) -> String {
        let level = match self.level {
            Some(l) => l.to_string(),
            None => "entries".to_string(),
        };
        let mut p = format!("tile/{level}/{}", encode_index(self.index));
        if self.width < TILE_WIDTH {
            p.push_str(&format!(".p/{}", self.width));
        }
        p
    }

    /// Parses a path below the prefix (`tile/...`); `None` for anything the spec does not
    /// allow (leading zeros, bad groups, width 0 or above 255, level above 63).
    pub fn parse(path: &str) -> Option<TileRef> {
        let rest = path.strip_prefix("tile/")?;
        let (level, rest) = rest.split_once('/')?;
        let level = if level == "entries" {
            None
        } else {
            if level.is_empty()
                || !level.bytes().all(|b| b.is_ascii_digit())
                || (level.len() > 1 && level.starts_with('0'))
                || level.len() > 2
            {
                return None;
            }
            let l: u32 = level.parse().ok()?;
            if l > MAX_TILE_LEVEL {
                return None;
            }
            Some(l)
        };
        let (index_part, width) = match rest.split_once(".p/") {
            Some((i, w)) => {
                if w.is_empty()
                    || !w.bytes().all(|b| b.is_ascii_digit())
                    || w.starts_with('0')
                    || w.len() > 3
                {
                    return None;
                }
                let w: u64 = w.parse().ok()?;
                if !(1..TILE_WIDTH).contains(&w) {
                    return None;
                }
                (i, w)
            }
            None => (rest, TILE_WIDTH),
        };
        let groups: Vec<&str> = index_part.split('/').collect();
        // u64 has 20 decimal digits: at most 7 groups.
        if groups.is_empty() || groups.len() > 7 {
            return None;
        }
        let mut index: u64 = 0;
        for (i, g) in groups.iter().enumerate() {
            let digits = if i + 1 < groups.len() {
                g.strip_prefix('x')?
            } else {
                g
            };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let v: u64 = digits.parse().ok()?;
            index = index.checked_mul(1000)?.checked_add(v)?;
        }
        let canonical = TileRef {
            level,
            index,
            width,
        };
        // One path per tile: `x000/001` is not `001`.
        (canonical.path() == path).then_some(canonical)
    }
}

/// Hashes stored at tile level `L` (tree level `8L`) that a tree of `size` leaves has complete.
pub fn level_count(size: u64, level: u32) -> u64 {
    if level * TILE_HEIGHT >= 64 {
        0
    } else {
        size >> (level * TILE_HEIGHT)
    }
}

/// The width of tile `index` at tile level `level` in a tree of `size` leaves (0 if the tree
/// has no such tile).
pub fn tile_width(size: u64, level: u32, index: u64) -> u64 {
    let have = level_count(size, level);
    let start = index.saturating_mul(TILE_WIDTH);
    if have <= start {
        0
    } else {
        (have - start).min(TILE_WIDTH)
    }
}

/// Every tile (hash tiles, then entry bundles) a tree of `size` leaves is made of, in order.
pub fn tiles_of(size: u64) -> Vec<TileRef> {
    let mut out = Vec::new();
    let mut level = 0;
    while level_count(size, level) > 0 {
        let have = level_count(size, level);
        for index in 0..have.div_ceil(TILE_WIDTH) {
            out.push(TileRef {
                level: Some(level),
                index,
                width: tile_width(size, level, index),
            });
        }
        level += 1;
    }
    out
}

/// Where the stored hashes come from.
pub trait TileLevels {
    type Error;
    /// Leaves in the tree.
    fn size(&self) -> u64;
    /// `count` consecutive hashes of tile level `level`, from `from`, all complete.
    fn hashes(&self, level: u32, from: u64, count: u64) -> Result<Vec<Hash>, Self::Error>;
}

/// Folds `2^r` consecutive hashes up `r` levels.
pub fn fold(mut hs: Vec<Hash>) -> Hash {
    while hs.len() > 1 {
        hs = hs.chunks(2).map(|p| node_hash(&p[0], &p[1])).collect();
    }
    hs.first()
        .copied()
        .unwrap_or_else(super::merkle::empty_root)
}

/// The tree of any [`TileLevels`], as a [`NodeSource`] for the proof algorithms.
pub struct Tiled<'a, T: ?Sized>(pub &'a T);

impl<T: TileLevels + ?Sized> NodeSource for Tiled<'_, T> {
    type Error = T::Error;
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn node(&self, level: u32, index: u64) -> Result<Hash, T::Error> {
        let l = level / TILE_HEIGHT;
        let r = level % TILE_HEIGHT;
        let hs = self.0.hashes(l, index << r, 1u64 << r)?;
        Ok(fold(hs))
    }
}

/// The right edge of a tiled tree: the hashes of the partial tile at every tile level. It is
/// all a writer keeps in memory (at most 255 hashes per level), and it alone gives the root of
/// the whole tree.
#[derive(Debug, Clone, Default)]
pub struct TileEdge {
    size: u64,
    /// `partial[L]`: the stored hashes of tile level `L` past its last full tile.
    partial: Vec<Vec<Hash>>,
}

/// A hash a push produced: store it at `(level, index)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub level: u32,
    pub index: u64,
    pub hash: Hash,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hash at tile level {0} index {1} is not on the edge")]
pub struct NotOnEdge(pub u32, pub u64);

impl TileEdge {
    pub fn new() -> Self {
        TileEdge::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Restores an edge from the partial tiles of a stored tree of `size` leaves: `partial[L]`
    /// must hold exactly `tile_width`-many hashes of the last (partial) tile of level `L`.
    pub fn from_partials(size: u64, partial: Vec<Vec<Hash>>) -> Option<TileEdge> {
        for (l, p) in partial.iter().enumerate() {
            if p.len() as u64 != level_count(size, l as u32) % TILE_WIDTH {
                return None;
            }
        }
        let mut level = partial.len() as u32;
        while level_count(size, level) > 0 {
            if level_count(size, level) % TILE_WIDTH != 0 {
                return None;
            }
            level += 1;
        }
        Some(TileEdge { size, partial })
    }

    /// Appends a leaf hash; returns every stored hash this completes, lowest level first.
    pub fn push(&mut self, leaf: Hash) -> Vec<Stored> {
        let mut out = Vec::with_capacity(1);
        let mut level = 0u32;
        let mut hash = leaf;
        loop {
            let index = level_count(self.size + 1, level) - 1;
            out.push(Stored { level, index, hash });
            if self.partial.len() <= level as usize {
                self.partial.push(Vec::new());
            }
            let p = &mut self.partial[level as usize];
            p.push(hash);
            if p.len() as u64 == TILE_WIDTH {
                hash = fold(std::mem::take(p));
                level += 1;
            } else {
                break;
            }
        }
        self.size += 1;
        out
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash {
        let s = Tiled(self);
        super::merkle::subtree_root(&s, 0, self.size).unwrap_or_else(|_| {
            // Unreachable: every node of the root's decomposition lies in a partial tile.
            super::merkle::empty_root()
        })
    }
}

impl TileLevels for TileEdge {
    type Error = NotOnEdge;
    fn size(&self) -> u64 {
        self.size
    }
    fn hashes(&self, level: u32, from: u64, count: u64) -> Result<Vec<Hash>, NotOnEdge> {
        let have = level_count(self.size, level);
        let start = have - have % TILE_WIDTH;
        let p = self
            .partial
            .get(level as usize)
            .ok_or(NotOnEdge(level, from))?;
        if from < start || from + count > have {
            return Err(NotOnEdge(level, from));
        }
        Ok(p[(from - start) as usize..(from - start + count) as usize].to_vec())
    }
}

/// An entry bundle: each entry as a big-endian uint16 length and its bytes.
pub fn encode_bundle<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for e in entries {
        if e.len() > MAX_ENTRY_BYTES {
            return Err(format!("entry of {} bytes", e.len()));
        }
        out.extend_from_slice(&(e.len() as u16).to_be_bytes());
        out.extend_from_slice(e);
    }
    Ok(out)
}

/// Splits an entry bundle; `None` if it is cut short or has trailing bytes.
pub fn decode_bundle(mut b: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 2 {
            return None;
        }
        let n = u16::from_be_bytes([b[0], b[1]]) as usize;
        if b.len() < 2 + n {
            return None;
        }
        out.push(&b[2..2 + n]);
        b = &b[2 + n..];
    }
    Some(out)
}

/// Splits a hash tile into its hashes; `None` unless it is a whole number of hashes.
pub fn decode_tile(b: &[u8]) -> Option<Vec<Hash>> {
    if b.len() % 32 != 0 {
        return None;
    }
    Some(
        b.chunks(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle::{
        consistency_proof_of, inclusion_proof_of, leaf_hash, root_at, MerkleTree,
    };

    /// Stored levels of a whole in-memory tree, for comparison.
    struct Levels(Vec<Vec<Hash>>, u64);
    impl TileLevels for Levels {
        type Error = ();
        fn size(&self) -> u64 {
            self.1
        }
        fn hashes(&self, level: u32, from: u64, count: u64) -> Result<Vec<Hash>, ()> {
            let l = self.0.get(level as usize).ok_or(())?;
            l.get(from as usize..(from + count) as usize)
                .map(|s| s.to_vec())
                .ok_or(())
        }
    }

    #[test]
    fn paths_follow_the_spec() {
        assert_eq!(encode_index(1234067), "x001/x234/067");
        assert_eq!(encode_index(0), "000");
        let t = TileRef {
            level: Some(0),
            index: 1234067,
            width: TILE_WIDTH,
        };
        assert_eq!(t.path(), "tile/0/x001/x234/067");
        assert_eq!(TileRef::parse("tile/0/x001/x234/067"), Some(t));
        let p = TileRef {
            level: None,
            index: 5,
            width: 17,
        };
        assert_eq!(p.path(), "tile/entries/005.p/17");
        assert_eq!(TileRef::parse("tile/entries/005.p/17"), Some(p));
        for bad in [
            "tile/0/5",
            "tile/00/005",
            "tile/64/005",
            "tile/0/x000/005",
            "tile/0/005.p/0",
            "tile/0/005.p/256",
            "tile/0/005.p/017",
            "tile/0/001/002",
            "tile/0/x01/002",
            "tile/x/000",
            "tile/0/x001/x002/x003/x004/x005/x006/x007/008",
        ] {
            assert_eq!(TileRef::parse(bad), None, "{bad}");
        }
        // The example of the spec: a tree of 70,000 leaves.
        let ts = tiles_of(70_000);
        assert_eq!(ts.iter().filter(|t| t.level == Some(0)).count(), 274);
        assert_eq!(ts.iter().filter(|t| t.level == Some(1)).count(), 2);
        assert_eq!(tile_width(70_000, 0, 273), 112);
        assert_eq!(tile_width(70_000, 1, 1), 17);
        assert_eq!(tile_width(70_000, 2, 0), 1);
        assert_eq!(tile_width(256, 1, 0), 1);
    }

    #[test]
    fn tiled_proofs_equal_the_full_trees() {
        for n in [
            1u64, 2, 3, 255, 256, 257, 511, 513, 65_535, 65_536, 65_537, 70_000,
        ] {
            let mut full = MerkleTree::new();
            let mut edge = TileEdge::new();
            let mut levels: Vec<Vec<Hash>> = Vec::new();
            for i in 0..n {
                let h = leaf_hash(&i.to_be_bytes());
                full.push(h);
                for s in edge.push(h) {
                    if levels.len() <= s.level as usize {
                        levels.push(Vec::new());
                    }
                    assert_eq!(levels[s.level as usize].len() as u64, s.index);
                    levels[s.level as usize].push(s.hash);
                }
            }
            assert_eq!(edge.root(), full.root(n).unwrap(), "n={n}");
            let stored = Levels(levels, n);
            let t = Tiled(&stored);
            for m in [1, n / 3 + 1, n / 2 + 1, n - 1, n] {
                let m = m.clamp(1, n);
                assert_eq!(root_at(&t, m).unwrap(), full.root(m));
                assert_eq!(
                    consistency_proof_of(&t, m, n).unwrap(),
                    full.consistency_proof(m, n)
                );
                assert_eq!(
                    inclusion_proof_of(&t, m - 1, n).unwrap(),
                    full.inclusion_proof(m - 1, n)
                );
            }
            // Restoring the edge from its partial tiles gives the same root.
            let partial: Vec<Vec<Hash>> = (0..stored.0.len() as u32)
                .map(|l| {
                    let have = level_count(n, l);
                    stored.0[l as usize][(have - have % TILE_WIDTH) as usize..].to_vec()
                })
                .collect();
            let again = TileEdge::from_partials(n, partial).unwrap();
            assert_eq!(again.root(), edge.root());
        }
    }

    #[test]
    fn bundles_round_trip_and_refuse_damage() {
        let b = encode_bundle([&b"ab"[..], &b""[..], &b"xyz"[..]]).unwrap();
        assert_eq!(
            decode_bundle(&b).unwrap(),
            vec![&b"ab"[..], &b""[..], &b"xyz"[..]]
        );
        assert!(decode_bundle(&b[..b.len() - 1]).is_none());
        assert!(decode_bundle(&[0]).is_none());
        assert!(encode_bundle([&vec![0u8; MAX_ENTRY_BYTES + 1][..]]).is_err());
        assert!(decode_tile(&[0u8; 33]).is_none());
        assert_eq!(decode_tile(&[1u8; 64]).unwrap().len(), 2);
    }
}
