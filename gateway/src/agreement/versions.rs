//! Several versions of one agreement id held at once, and which of them is in force (pure: time
//! comes in as a value). A version is in force inside its `valid_from`/`valid_until`; a higher
//! `version` of the same id supersedes every lower one from its own `valid_from`, for good (an
//! expired successor does not bring its predecessor back: a tightening cannot be undone by
//! letting the new version lapse). So one instant, the successor's `valid_from`, is where both
//! sides switch.
//!
//! Clocks of two gateways differ by a little. The sender switches to a successor half its
//! `clock_skew` early; the receiver accepts a token under a version from `clock_skew` before
//! its `valid_from` (the tolerance it already gives token times) and refuses one under a
//! superseded version from the successor's `valid_from` exactly. A crossing made in the switch
//! therefore carries the successor and is accepted while the clocks differ by less than half the
//! skew; a token minted under the predecessor is refused after the switch
//! (`agreement_superseded`).

use std::sync::Arc;

use super::Agreement;
use crate::reason::Reason;
use crate::time::Instant;

/// How early a sender starts minting under `a`: half its clock skew (see the module docs).
pub fn sender_lead(a: &Agreement) -> i64 {
    a.clock_skew / 2
}

/// The later version of `a`'s id that has taken over at `now` by the sender's reckoning
/// (`lead` true) or the receiver's (`lead` false), if any.
fn successor<'a>(
    all: &'a [Arc<Agreement>],
    a: &Agreement,
    now: Instant,
    lead: bool,
) -> Option<&'a Agreement> {
    all.iter()
        .map(|b| b.as_ref())
        .filter(|b| b.id == a.id && b.version > a.version)
        .filter(|b| {
            let early = if lead { sender_lead(b) } else { 0 };
            b.valid_from <= now.saturating_add(early)
        })
        .max_by_key(|b| b.version)
}

/// The versions a sender mints under at `now`: every held version that no later version of its
/// id has taken over (with the sender's lead). Window checks stay with `decide_among`, so an
/// expired in-force version still gives `agreement_expired`, not a silent fallback to an older
/// one.
pub fn sendable(all: &[Arc<Agreement>], now: Instant) -> Vec<&Agreement> {
    all.iter()
        .map(|a| a.as_ref())
        .filter(|a| successor(all, a, now, true).is_none())
        .collect()
}

/// Whether a receiver accepts a token under `a` at `now`, given every version it holds: not
/// when a later version of the id has reached its `valid_from` (`agreement_superseded`).
pub fn accepted(
    all: &[Arc<Agreement>],
    a: &Agreement,
    now: Instant,
) -> Result<(), (Reason, String)> {
    match successor(all, a, now, false) {
        None => Ok(()),
        Some(b) => Err((
            Reason::AgreementSuperseded,
            format!(
                "{} version {} was superseded by version {} at {}",
                a.id,
                a.version,
                b.version,
                crate::time::format_rfc3339(b.valid_from)
            ),
        )),
    }
}

/// Whether `a`'s window holds at `now`, with the tolerance of the side asking: the sender's
/// lead or the receiver's full clock skew before `valid_from`; never after `valid_until`.
pub fn window_holds(a: &Agreement, now: Instant, inbound: bool) -> bool {
    let early = if inbound {
        a.clock_skew
    } else {
        sender_lead(a)
    };
    a.valid_from <= now.saturating_add(early) && now < a.valid_until
}

/// Problems with a set of versions held together: one (id, version) twice with different
/// content, or versions of one id that name other trust domains (a change of partner is a new
/// agreement, not a version).
pub fn conflicts(all: &[Agreement]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, a) in all.iter().enumerate() {
        for b in &all[..i] {
            if a.id != b.id {
                continue;
            }
            if a.version == b.version {
                out.push(format!(
                    "agreement {} version {} is held twice ({} and {})",
                    a.id, a.version, b.hash, a.hash
                ));
            }
            let tds = |x: &Agreement| {
                let mut v = [
                    x.domains[0].trust_domain.as_str(),
                    x.domains[1].trust_domain.as_str(),
                ];
                v.sort();
                v.map(str::to_string)
            };
            if tds(a) != tds(b) {
                out.push(format!(
                    "versions {} and {} of agreement {} name different trust domains",
                    b.version, a.version, a.id
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = include_str!("../../../federation-agreements/company-vendor-analytics.toml");
    /// 2027-01-01T00:00:00Z, the successor's valid_from in these tests.
    const SWITCH: i64 = 1_798_761_600;

    fn version(v: u64, from: &str) -> Arc<Agreement> {
        let text = BASE
            .replacen("version = 3", &format!("version = {v}"), 1)
            .replacen(
                "valid_from = 2026-01-01T00:00:00Z",
                &format!("valid_from = {from}"),
                1,
            );
        Arc::new(Agreement::parse(&text).unwrap())
    }

    fn v3_v4() -> Vec<Arc<Agreement>> {
        vec![
            version(3, "2026-01-01T00:00:00Z"),
            version(4, "2027-01-01T00:00:00Z"),
        ]
    }

    fn versions_of(v: &[&Agreement]) -> Vec<u64> {
        v.iter().map(|a| a.version).collect()
    }

    #[test]
    fn the_sender_switches_half_the_skew_early() {
        let all = v3_v4();
        assert_eq!(all[1].valid_from, SWITCH);
        assert_eq!(sender_lead(&all[1]), 15);
        assert_eq!(versions_of(&sendable(&all, SWITCH - 16)), vec![3, 4]);
        assert_eq!(versions_of(&sendable(&all, SWITCH - 15)), vec![4]);
        assert_eq!(versions_of(&sendable(&all, SWITCH + 1_000_000)), vec![4]);
        // v4 is not yet in its window for the sender at SWITCH - 16; decide_among sees both and
        // only v3's window holds.
        assert!(window_holds(&all[0], SWITCH - 16, false));
        assert!(!window_holds(&all[1], SWITCH - 16, false));
        assert!(window_holds(&all[1], SWITCH - 15, false));
    }

    #[test]
    fn the_receiver_refuses_the_predecessor_from_the_switch_exactly() {
        let all = v3_v4();
        assert!(accepted(&all, &all[0], SWITCH - 1).is_ok());
        let (r, m) = accepted(&all, &all[0], SWITCH).unwrap_err();
        assert_eq!(r, Reason::AgreementSuperseded);
        assert!(
            m.contains("superseded by version 4 at 2027-01-01T00:00:00Z"),
            "{m}"
        );
        assert!(accepted(&all, &all[1], SWITCH).is_ok());
        // The receiver takes the successor a full skew early, so a sender whose clock is ahead
        // by less than half the skew is accepted.
        assert!(window_holds(&all[1], SWITCH - 30, true));
        assert!(!window_holds(&all[1], SWITCH - 31, true));
    }

    #[test]
    fn an_expired_successor_does_not_bring_the_predecessor_back() {
        let v5 = {
            let text = BASE
                .replacen("version = 3", "version = 5", 1)
                .replacen(
                    "valid_from = 2026-01-01T00:00:00Z",
                    "valid_from = 2026-06-01T00:00:00Z",
                    1,
                )
                .replacen(
                    "valid_until = 2028-01-01T00:00:00Z",
                    "valid_until = 2026-07-01T00:00:00Z",
                    1,
                );
            Arc::new(Agreement::parse(&text).unwrap())
        };
        let all = vec![version(3, "2026-01-01T00:00:00Z"), v5];
        let later = 1_786_000_000; // 2026-08-06, after v5 expired
        assert_eq!(versions_of(&sendable(&all, later)), vec![5]);
        assert!(!window_holds(&all[1], later, false));
        assert!(accepted(&all, &all[0], later).is_err());
    }

    #[test]
    fn conflicting_versions_are_named() {
        let a = (*version(3, "2026-01-01T00:00:00Z")).clone();
        let b = (*version(3, "2026-02-01T00:00:00Z")).clone();
        let c = (*version(4, "2027-01-01T00:00:00Z")).clone();
        assert!(conflicts(&[a.clone(), c.clone()]).is_empty());
        let m = conflicts(&[a.clone(), b]);
        assert_eq!(m.len(), 1);
        assert!(m[0].contains("version 3 is held twice"), "{m:?}");
        let other = Agreement::parse(&BASE.replace("vendor.example", "other.example").replacen(
            "version = 3",
            "version = 4",
            1,
        ))
        .unwrap();
        let m = conflicts(&[a, other]);
        assert!(
            m.iter().any(|x| x.contains("different trust domains")),
            "{m:?}"
        );
    }
}
