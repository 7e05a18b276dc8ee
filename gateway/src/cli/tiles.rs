//! `fedgate audit verify --url`: a live log checked through its C2SP tiles. Nothing the
//! gateway serves is trusted: the checkpoint is verified with the domain's bundle, every hash
//! fetched only feeds proofs that are checked against that signed root, and entries are hashed
//! here and compared with the level-0 tiles.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use super::admin_client::AdminConn;
use super::{print_json, usage, CliError, CliResult};
use crate::audit::checkpoint;
use crate::audit::merkle::{
    consistency_proof_of, inclusion_proof_of, leaf_hash, root_at, verify_consistency,
    verify_inclusion, Hash,
};
use crate::audit::record::Record;
use crate::audit::tiles::{self, TileLevels, TileRef, Tiled, TILE_WIDTH};
use crate::crypto::b64url;
use crate::spiffe::BundleSet;

/// Entry bundles fetched with `--full` at most (about 2.5 M records): beyond that, verify an
/// export instead.
const MAX_FULL_BUNDLES: u64 = 10_000;

struct HttpTiles<'a> {
    conn: &'a AdminConn,
    size: u64,
    cache: RefCell<HashMap<(u32, u64), Vec<Hash>>>,
    fetched: RefCell<u64>,
}

impl HttpTiles<'_> {
    fn get(&self, t: TileRef) -> Result<Vec<u8>, String> {
        *self.fetched.borrow_mut() += 1;
        let a = self
            .conn
            .call(http::Method::GET, &format!("/{}", t.path()), None)
            .map_err(|e| e.to_string())?;
        if !a.status.is_success() {
            return Err(format!("{}: {}", t.path(), a.status));
        }
        Ok(a.bytes)
    }

    fn tile(&self, level: u32, index: u64) -> Result<Vec<Hash>, String> {
        if let Some(h) = self.cache.borrow().get(&(level, index)) {
            return Ok(h.clone());
        }
        let width = tiles::tile_width(self.size, level, index);
        if width == 0 {
            return Err(format!("the tree has no tile {level}/{index}"));
        }
        let t = TileRef {
            level: Some(level),
            index,
            width,
        };
        let hs = tiles::decode_tile(&self.get(t)?)
            .filter(|h| h.len() as u64 == width)
            .ok_or_else(|| format!("{}: not {width} hashes", t.path()))?;
        self.cache.borrow_mut().insert((level, index), hs.clone());
        Ok(hs)
    }

    /// The records of one entry bundle, each checked against the level-0 tile.
    fn entries(&self, index: u64) -> Result<Vec<Vec<u8>>, String> {
        let width = tiles::tile_width(self.size, 0, index);
        let t = TileRef {
            level: None,
            index,
            width,
        };
        let b = self.get(t)?;
        let es =
            tiles::decode_bundle(&b).ok_or_else(|| format!("{}: not an entry bundle", t.path()))?;
        if es.len() as u64 != width {
            return Err(format!(
                "{}: {} entries, expected {width}",
                t.path(),
                es.len()
            ));
        }
        let leaves = self.tile(0, index)?;
        for (i, e) in es.iter().enumerate() {
            if leaf_hash(e) != leaves[i] {
                return Err(format!(
                    "record {} does not hash to its leaf in the tiles",
                    index * TILE_WIDTH + i as u64
                ));
            }
        }
        Ok(es.iter().map(|e| e.to_vec()).collect())
    }
}

impl TileLevels for HttpTiles<'_> {
    type Error = String;
    fn size(&self) -> u64 {
        self.size
    }
    fn hashes(&self, level: u32, from: u64, count: u64) -> Result<Vec<Hash>, String> {
        let mut out = Vec::with_capacity(count as usize);
        let mut at = from;
        while at < from + count {
            let idx = at / TILE_WIDTH;
            let t = self.tile(level, idx)?;
            let off = (at % TILE_WIDTH) as usize;
            let take = ((from + count - at) as usize).min(t.len().saturating_sub(off));
            if take == 0 {
                return Err(format!("hash {at} of level {level} is past the tree"));
            }
            out.extend_from_slice(&t[off..off + take]);
            at += take as u64;
        }
        Ok(out)
    }
}

pub fn verify_live(
    conn: &AdminConn,
    set: &BundleSet,
    inclusion: &[u64],
    since: Option<&Path>,
    full: bool,
    json: bool,
) -> CliResult {
    let note = conn.call(http::Method::GET, "/checkpoint", None)?.ok()?;
    let peek =
        checkpoint::peek(&note).map_err(|e| CliError::Invalid(format!("checkpoint: {e}")))?;
    let (td, _) = checkpoint::parse_origin(&peek.origin).ok_or_else(|| {
        CliError::Invalid(format!("{:?} is not a fedgate audit log", peek.origin))
    })?;
    let bundle = set
        .get_str(td)
        .ok_or_else(|| usage(format!("no bundle for {td}")))?;
    let cp = checkpoint::verify_with_bundle(&note, bundle)
        .map_err(|e| CliError::Invalid(format!("checkpoint: {e}")))?;
    let now = crate::time::now().max(0) as u64;
    let mut cosigned_by = Vec::new();
    for b in set.iter().filter(|b| b.trust_domain.as_str() != td) {
        let name = crate::witness::witness_name(b.trust_domain.as_str());
        for k in b.keys_with_role(crate::spiffe::KeyRole::Audit) {
            if let Ok(Some(t)) = crate::witness::verify_cosignature(&note, &name, k.key.raw(), now)
            {
                cosigned_by
                    .push(serde_json::json!({"witness": b.trust_domain.as_str(), "time": t}));
                break;
            }
        }
    }
    let t = HttpTiles {
        conn,
        size: cp.size,
        cache: RefCell::new(HashMap::new()),
        fetched: RefCell::new(0),
    };
    let mut problems: Vec<String> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    match root_at(&Tiled(&t), cp.size) {
        Ok(Some(r)) if r == cp.root => lines.push(format!(
            "the tiles hash to the signed root of {} records",
            cp.size
        )),
        Ok(_) => problems.push("the tiles do not hash to the signed root".into()),
        Err(e) => problems.push(format!("tiles: {e}")),
    }
    for seq in inclusion {
        let r = (|| -> Result<String, String> {
            if *seq >= cp.size {
                return Err(format!("record {seq} is not in the tree of {}", cp.size));
            }
            let es = t.entries(seq / TILE_WIDTH)?;
            let bytes = &es[(seq % TILE_WIDTH) as usize];
            let rec = Record::from_canonical(bytes).map_err(|e| format!("record {seq}: {e}"))?;
            if rec.seq != *seq {
                return Err(format!("record {seq} says seq {}", rec.seq));
            }
            let proof =
                inclusion_proof_of(&Tiled(&t), *seq, cp.size)?.ok_or("no inclusion proof")?;
            if !verify_inclusion(&leaf_hash(bytes), *seq, cp.size, &proof, &cp.root) {
                return Err(format!(
                    "the inclusion proof of record {seq} does not verify"
                ));
            }
            Ok(format!(
                "record {seq} (crossing {}) is in the tree: inclusion proof of {} hashes verifies",
                rec.crossing,
                proof.len()
            ))
        })();
        match r {
            Ok(l) => lines.push(l),
            Err(e) => problems.push(e),
        }
    }
    if let Some(p) = since {
        let r = (|| -> Result<String, String> {
            let old = crate::files::read_text_limited(p, checkpoint::MAX_NOTE_BYTES)
                .map_err(|e| e.to_string())?;
            let old = checkpoint::verify_with_bundle(&old, bundle).map_err(|e| e.to_string())?;
            if old.origin != cp.origin {
                return Err(format!("{} is a checkpoint of another log", p.display()));
            }
            if old.size > cp.size {
                return Err(format!(
                    "the live tree ({}) is smaller than the earlier checkpoint ({}): records were removed",
                    cp.size, old.size
                ));
            }
            let proof = if old.size == 0 {
                vec![]
            } else {
                consistency_proof_of(&Tiled(&t), old.size, cp.size)?.ok_or("no proof")?
            };
            let ok = if old.size == 0 {
                old.root == crate::audit::merkle::empty_root()
            } else {
                verify_consistency(old.size, cp.size, &proof, &old.root, &cp.root)
            };
            if !ok {
                return Err(format!(
                    "the live tree is not consistent with the earlier checkpoint of {} records: history was rewritten",
                    old.size
                ));
            }
            Ok(format!(
                "the live tree extends the checkpoint of {} records: consistency proof of {} hashes verifies",
                old.size,
                proof.len()
            ))
        })();
        match r {
            Ok(l) => lines.push(l),
            Err(e) => problems.push(e),
        }
    }
    if full {
        let bundles = cp.size.div_ceil(TILE_WIDTH);
        if bundles > MAX_FULL_BUNDLES {
            return Err(usage(format!(
                "--full fetches {bundles} entry bundles, more than {MAX_FULL_BUNDLES}: export the log and verify the export"
            )));
        }
        let r = (|| -> Result<String, String> {
            let mut prev: Option<Hash> = None;
            for b in 0..bundles {
                for (i, bytes) in t.entries(b)?.iter().enumerate() {
                    let seq = b * TILE_WIDTH + i as u64;
                    let rec =
                        Record::from_canonical(bytes).map_err(|e| format!("record {seq}: {e}"))?;
                    if rec.seq != seq || rec.domain != td {
                        return Err(format!("record {seq}: wrong seq or domain"));
                    }
                    if rec.prev != prev.map(|p| b64url(&p)).unwrap_or_default() {
                        return Err(format!(
                            "record {}: changed after it was logged",
                            seq.saturating_sub(1)
                        ));
                    }
                    prev = Some(leaf_hash(bytes));
                }
            }
            Ok(format!(
                "all {} records are canonical, in order and chained",
                cp.size
            ))
        })();
        match r {
            Ok(l) => lines.push(l),
            Err(e) => problems.push(e),
        }
    }
    let fetched = *t.fetched.borrow();
    if json {
        print_json(&serde_json::json!({
            "valid": problems.is_empty(),
            "domain": td,
            "size": cp.size,
            "root": crate::crypto::b64std(&cp.root),
            "cosigned_by": cosigned_by,
            "checked": lines,
            "problems": problems,
            "tiles_fetched": fetched,
        }));
    } else {
        println!(
            "{}: checkpoint of {} records, signed by {td}",
            conn.admin_url, cp.size
        );
        for c in &cosigned_by {
            println!(
                "  witnessed: cosigned by {}",
                c["witness"].as_str().unwrap_or("")
            );
        }
        if cosigned_by.is_empty() {
            println!("  unwitnessed: no partner has cosigned this checkpoint yet");
        }
        for l in &lines {
            println!("  ok: {l}");
        }
        for p in &problems {
            println!("  FAILED: {p}");
        }
        println!("  ({fetched} tile requests)");
    }
    Ok(if problems.is_empty() { 0 } else { 1 })
}
