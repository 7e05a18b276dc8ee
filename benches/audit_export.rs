//! Time to verify a 1 M-record audit export (`fedgate audit verify`'s work: parse, canonical
//! form, order, prev chain, Merkle root against the signed checkpoint). Not a criterion bench:
//! one verification takes seconds, so this runs it three times and prints each and the median.
//!
//!     cargo bench --bench audit_export

use std::time::Instant;

use fedgate::audit::{checkpoint, export, merkle, Checkpoint, Record};
use fedgate::devkit::DevDomain;

const N: usize = 1_000_000;

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let d = DevDomain::new("company.com", fedgate::time::now()).unwrap();
    let t0 = Instant::now();
    let mut jsonl = Vec::with_capacity(N * 600);
    let mut leaves = Vec::with_capacity(N);
    for i in 0..N {
        let mut r = Record::decision(
            "company.com",
            if i % 2 == 0 { "outbound" } else { "inbound" },
            &fedgate::crypto::random_id(),
            i % 7 != 0,
        );
        r.seq = i as u64;
        r.prev = leaves
            .last()
            .map(|l: &merkle::Hash| fedgate::crypto::b64url(l))
            .unwrap_or_default();
        r.partner = Some("vendor.example".into());
        r.agreement = Some(format!(
            "company-vendor-analytics@sha256:{}",
            "ab".repeat(32)
        ));
        r.source = Some("spiffe://company.com/agent/planning/p1".into());
        r.target = Some("spiffe://vendor.example/agent/analytics/a1".into());
        r.scope_requested = vec!["analytics:*".into(), "cloud:read".into()];
        r.scope_granted = vec!["analytics:*".into()];
        r.txn = Some("quarterly-infra-review".into());
        r.principal = Some("anon:WafpGd8zVOAJiPqMWk2k23seQAkid6VO3ysysqri_ak".into());
        r.chain_digest = Some("X1uWTydIBXFAAqHTxw-N-fdDK_h1aQWSCTuU32j4aR8".into());
        r.depth = Some(2);
        r.token_exp = Some(1_800_000_000);
        r.mode = Some("egress".into());
        let b = r.canonical().unwrap();
        leaves.push(merkle::leaf_hash(&b));
        jsonl.extend_from_slice(&b);
        jsonl.push(b'\n');
    }
    let note = Checkpoint {
        origin: checkpoint::origin_of("company.com"),
        size: N as u64,
        root: merkle::root_of(&leaves),
    }
    .sign(&d.audit_key)
    .unwrap();
    let bundles = DevDomain::bundle_set(&[&d]);
    println!(
        "built {N} records ({} MB) in {:.1} s",
        jsonl.len() / 1_000_000,
        t0.elapsed().as_secs_f64()
    );
    let mut times = Vec::new();
    for run in 1..=3 {
        let t = Instant::now();
        let e = export::verify(&jsonl, &note, &bundles).unwrap();
        let s = t.elapsed().as_secs_f64();
        assert_eq!(e.records.len(), N);
        println!(
            "audit_export_verify/1M run {run}: {s:.2} s ({:.0} records/s)",
            N as f64 / s
        );
        times.push(s);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("audit_export_verify/1M median: {:.2} s", times[1]);
}
