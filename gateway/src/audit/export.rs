//! Audit exports (`fedgate audit export`): JSON Lines of canonical records in `seq` order plus
//! the signed checkpoint covering exactly those records. Verification (pure) checks the
//! checkpoint's signature with the domain's bundle, each record's form, order and link to the
//! previous record, and that all of them hash to the signed root; it names the first bad record.

use super::checkpoint::{self, Checkpoint};
use super::merkle::{leaf_hash, root_of, Hash};
use super::record::Record;
use crate::crypto::b64url;
use crate::spiffe::BundleSet;

/// A verified export.
#[derive(Debug, Clone)]
pub struct Export {
    pub domain: String,
    /// The replica whose log this is, when the domain runs several (from the origin).
    pub replica: Option<String>,
    pub records: Vec<Record>,
    pub leaves: Vec<Hash>,
    pub checkpoint: Checkpoint,
}

/// Why an export does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportError {
    /// The first record found bad, when one can be named.
    pub record: Option<u64>,
    pub message: String,
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.record {
            Some(r) => write!(f, "record {r}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

fn err(record: Option<u64>, m: impl Into<String>) -> ExportError {
    ExportError {
        record,
        message: m.into(),
    }
}

/// Splits JSON Lines into records' canonical bytes.
pub fn lines(jsonl: &[u8]) -> Vec<&[u8]> {
    let mut v: Vec<&[u8]> = jsonl.split(|b| *b == b'\n').collect();
    if v.last().map(|l| l.is_empty()).unwrap_or(false) {
        v.pop();
    }
    v
}

/// Verifies an export against the bundles (the checkpoint's origin names the domain).
pub fn verify(jsonl: &[u8], note: &str, bundles: &BundleSet) -> Result<Export, ExportError> {
    let peek = checkpoint::peek(note).map_err(|e| err(None, format!("checkpoint: {e}")))?;
    let (domain, replica) = checkpoint::parse_origin(&peek.origin)
        .map(|(d, r)| (d.to_string(), r.map(String::from)))
        .ok_or_else(|| {
            err(
                None,
                format!(
                    "checkpoint origin {:?} is not a fedgate audit log",
                    peek.origin
                ),
            )
        })?;
    let bundle = bundles
        .get_str(&domain)
        .ok_or_else(|| err(None, format!("no bundle for {domain}")))?;
    let cp = checkpoint::verify_with_bundle(note, bundle)
        .map_err(|e| err(None, format!("tampered checkpoint: {e}")))?;
    let raw = lines(jsonl);
    let mut records = Vec::with_capacity(raw.len());
    let mut leaves: Vec<Hash> = Vec::with_capacity(raw.len());
    for (i, bytes) in raw.iter().enumerate() {
        let i = i as u64;
        let r = Record::from_canonical(bytes).map_err(|e| err(Some(i), e))?;
        if r.seq != i {
            return Err(err(
                Some(i),
                format!(
                    "has seq {} at position {i}: records deleted, inserted or reordered",
                    r.seq
                ),
            ));
        }
        if r.domain != domain {
            return Err(err(
                Some(i),
                format!("belongs to {}, not {domain}", r.domain),
            ));
        }
        let want_prev = leaves.last().map(|l| b64url(l)).unwrap_or_default();
        if r.prev != want_prev {
            // The previous record is not the one this record was appended after.
            return Err(err(
                Some(i.saturating_sub(1)),
                "content changed after it was logged (the next record's prev does not match)",
            ));
        }
        leaves.push(leaf_hash(bytes));
        records.push(r);
    }
    if (records.len() as u64) < cp.size {
        return Err(err(
            Some(records.len() as u64),
            format!(
                "missing: the checkpoint covers {} records, the export has {}",
                cp.size,
                records.len()
            ),
        ));
    }
    if (records.len() as u64) > cp.size {
        return Err(err(
            Some(cp.size),
            format!(
                "not covered: the checkpoint covers {} records, the export has {}",
                cp.size,
                records.len()
            ),
        ));
    }
    if root_of(&leaves) != cp.root {
        let last = (records.len() as u64).checked_sub(1);
        return Err(err(last, "tampered: the records do not hash to the signed root (the last record, or a rewritten run of records)"));
    }
    Ok(Export {
        domain,
        replica,
        records,
        leaves,
        checkpoint: cp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devkit::DevDomain;

    fn build(n: usize) -> (DevDomain, Vec<u8>, String) {
        let d = DevDomain::new("company.com", 1_800_000_000).unwrap();
        let mut out = Vec::new();
        let mut leaves = Vec::new();
        for i in 0..n {
            let mut r = Record::decision("company.com", "outbound", &format!("c{i}"), true);
            r.seq = i as u64;
            r.prev = leaves.last().map(|l: &Hash| b64url(l)).unwrap_or_default();
            let b = r.canonical().unwrap();
            leaves.push(leaf_hash(&b));
            out.extend_from_slice(&b);
            out.push(b'\n');
        }
        let cp = Checkpoint {
            origin: checkpoint::origin_of("company.com"),
            size: n as u64,
            root: root_of(&leaves),
        };
        let note = cp.sign(&d.audit_key).unwrap();
        (d, out, note)
    }

    fn set(d: &DevDomain) -> BundleSet {
        DevDomain::bundle_set(&[d])
    }

    #[test]
    fn clean_export_verifies() {
        let (d, jsonl, note) = build(5);
        let e = verify(&jsonl, &note, &set(&d)).unwrap();
        assert_eq!(e.records.len(), 5);
        assert_eq!(e.domain, "company.com");
    }

    #[test]
    fn each_break_names_the_first_bad_record() {
        let (d, jsonl, note) = build(6);
        let b = set(&d);
        let ls: Vec<Vec<u8>> = lines(&jsonl).iter().map(|l| l.to_vec()).collect();
        let join = |v: &[Vec<u8>]| {
            v.iter()
                .flat_map(|l| l.iter().copied().chain([b'\n']))
                .collect::<Vec<u8>>()
        };
        // Deleted.
        let mut del = ls.clone();
        del.remove(2);
        assert_eq!(verify(&join(&del), &note, &b).unwrap_err().record, Some(2));
        // Swapped.
        let mut sw = ls.clone();
        sw.swap(1, 3);
        assert_eq!(verify(&join(&sw), &note, &b).unwrap_err().record, Some(1));
        // Edited (kept canonical): the next record's prev points at the original.
        let mut ed = ls.clone();
        ed[2] = String::from_utf8(ed[2].clone())
            .unwrap()
            .replace("\"allow\"", "\"deny\"")
            .into_bytes();
        assert_eq!(verify(&join(&ed), &note, &b).unwrap_err().record, Some(2));
        // The last record edited: only the root can tell.
        let mut last = ls.clone();
        last[5] = String::from_utf8(last[5].clone())
            .unwrap()
            .replace("\"allow\"", "\"deny\"")
            .into_bytes();
        let e = verify(&join(&last), &note, &b).unwrap_err();
        assert_eq!(e.record, Some(5));
        assert!(e.message.contains("tampered"));
        // Not canonical.
        let mut nc = ls.clone();
        nc[0] = String::from_utf8(nc[0].clone())
            .unwrap()
            .replacen('{', "{ ", 1)
            .into_bytes();
        assert_eq!(verify(&join(&nc), &note, &b).unwrap_err().record, Some(0));
        // Truncated export.
        assert_eq!(
            verify(&join(&ls[..4]), &note, &b).unwrap_err().record,
            Some(4)
        );
        // A checkpoint signed by another key.
        let other = DevDomain::new("company.com", 1_800_000_000).unwrap();
        let forged = Checkpoint {
            origin: "company.com/fedgate-audit".into(),
            size: 6,
            root: [0; 32],
        }
        .sign(&other.audit_key)
        .unwrap();
        assert!(verify(&jsonl, &forged, &b)
            .unwrap_err()
            .message
            .contains("checkpoint"));
    }
}
