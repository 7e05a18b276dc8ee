//! Gateway-local extra rules in Rego v1 (regorus), evaluated after the agreement allows.
//!
//! Contract: the modules define `data.fedgate.deny`, a set of messages. Empty or undefined
//! means allow; any message means deny with `policy_denied` and that message. The input is
//! the crossing (see [`crossing_input`]); time comes in the input (`input.time.now_ns`), so
//! evaluation is deterministic and needs no clock builtin. Evaluation is bounded by a wall-clock
//! budget; running out of it, or any evaluation error, denies (fail closed).

use std::num::NonZeroU32;
use std::time::Duration;

use regorus::utils::limits::{set_fallback_execution_timer_config, ExecutionTimerConfig};

/// Largest Rego module accepted.
pub const MAX_REGO_BYTES: usize = 256 * 1024;
/// Evaluation budget per crossing: a local rule that needs more than this is a bug or an
/// attack on the gateway, and the crossing is denied.
pub const REGO_EVAL_BUDGET: Duration = Duration::from_millis(50);
/// The rule fedgate queries.
pub const ENTRYPOINT: &str = "data.fedgate.deny";

/// Compiled local policy, shareable across workers.
pub struct LocalPolicy {
    compiled: regorus::CompiledPolicy,
    names: Vec<String>,
}

impl std::fmt::Debug for LocalPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalPolicy({:?})", self.names)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegoError {
    #[error("{0}: larger than {MAX_REGO_BYTES} bytes")]
    TooLarge(String),
    #[error("{0}")]
    Compile(String),
    #[error("evaluation failed: {0}")]
    Eval(String),
}

impl LocalPolicy {
    /// Compiles `(name, source)` modules with entry point `data.fedgate.deny`.
    pub fn compile(modules: &[(String, String)]) -> Result<LocalPolicy, RegoError> {
        let mut engine = regorus::Engine::new();
        for (name, text) in modules {
            if text.len() > MAX_REGO_BYTES {
                return Err(RegoError::TooLarge(name.clone()));
            }
            engine
                .add_policy(name.clone(), text.clone())
                .map_err(|e| RegoError::Compile(format!("{name}: {e}")))?;
        }
        // Compiled policies take the process-wide budget; fedgate is regorus's only user.
        set_fallback_execution_timer_config(Some(ExecutionTimerConfig {
            limit: REGO_EVAL_BUDGET,
            check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
        }));
        let compiled = engine
            .compile_with_entrypoint(&ENTRYPOINT.into())
            .map_err(|e| RegoError::Compile(e.to_string()))?;
        Ok(LocalPolicy {
            compiled,
            names: modules.iter().map(|m| m.0.clone()).collect(),
        })
    }

    pub fn module_names(&self) -> &[String] {
        &self.names
    }

    /// The deny messages for `input` (empty: allow). Errors and timeouts are errors; callers
    /// deny on them.
    pub fn deny_messages(&self, input: &serde_json::Value) -> Result<Vec<String>, RegoError> {
        let value = regorus::Value::from(input.clone());
        let out = self
            .compiled
            .eval_with_input(value)
            .map_err(|e| RegoError::Eval(e.to_string()))?;
        if out == regorus::Value::Undefined {
            return Ok(vec![]);
        }
        let set = out
            .as_set()
            .map_err(|_| RegoError::Eval("data.fedgate.deny must be a set of strings".into()))?;
        let mut msgs = Vec::new();
        for v in set.iter() {
            match v.as_string() {
                Ok(s) => msgs.push(s.to_string()),
                Err(_) => msgs.push(v.to_string()),
            }
        }
        Ok(msgs)
    }
}

/// The Rego input for a crossing: chain summary, target, scopes, agreement and time.
#[allow(clippy::too_many_arguments)]
pub fn crossing_input(
    direction: &str,
    source: &str,
    target: &str,
    requested: &[String],
    granted: &[String],
    held: &[String],
    agreement: &str,
    principal: Option<&str>,
    task: &str,
    depth: usize,
    agents: &[&str],
    expires: i64,
    now: i64,
) -> serde_json::Value {
    serde_json::json!({
        "direction": direction,
        "source": source,
        "target": target,
        "scopes": {"requested": requested, "granted": granted, "held": held},
        "agreement": agreement,
        "chain": {
            "principal": principal,
            "task": task,
            "depth": depth,
            "agents": agents,
            "expires": expires,
            "expires_ns": (expires as i128) * 1_000_000_000,
        },
        "time": {"now": now, "now_ns": (now as i128) * 1_000_000_000},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed_policy() -> LocalPolicy {
        let text = include_str!("../../../policies/seed_delegation.rego");
        LocalPolicy::compile(&[("seed_delegation.rego".into(), text.into())]).unwrap()
    }

    fn input(
        requested: &[&str],
        held: &[&str],
        depth: usize,
        expires: i64,
        now: i64,
    ) -> serde_json::Value {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        crossing_input(
            "outbound",
            "spiffe://company.com/agent/planning/p1",
            "spiffe://vendor.example/agent/analytics/a1",
            &s(requested),
            &s(requested),
            &s(held),
            "a@sha256:00",
            Some("alice@company.com"),
            "task-1",
            depth,
            &["spiffe://company.com/agent/planning/p1"],
            expires,
            now,
        )
    }

    #[test]
    fn seed_rule_allows_and_denies() {
        let p = seed_policy();
        assert_eq!(
            p.deny_messages(&input(&["analytics:run"], &["analytics:*"], 2, 2000, 1000))
                .unwrap(),
            Vec::<String>::new()
        );
        // Scope not a subset.
        let m = p
            .deny_messages(&input(&["billing:read"], &["analytics:*"], 2, 2000, 1000))
            .unwrap();
        assert!(m.iter().any(|x| x.contains("scope")), "{m:?}");
        // Chain too long.
        let m = p
            .deny_messages(&input(&["analytics:run"], &["analytics:*"], 5, 2000, 1000))
            .unwrap();
        assert!(m.iter().any(|x| x.contains("chain")), "{m:?}");
        // Expired.
        let m = p
            .deny_messages(&input(&["analytics:run"], &["analytics:*"], 2, 1000, 2000))
            .unwrap();
        assert!(m.iter().any(|x| x.contains("expired")), "{m:?}");
    }

    #[test]
    fn errors_and_undefined() {
        assert!(LocalPolicy::compile(&[(
            "bad.rego".into(),
            "package fedgate\ndeny contains x if {".into()
        )])
        .is_err());
        // A policy set without a `deny` rule is refused at load, never a silent allow...
        assert!(
            LocalPolicy::compile(&[("empty.rego".into(), "package fedgate\nx := 1\n".into())])
                .is_err()
        );
        // ...a `deny` that is undefined for this input allows...
        let p = LocalPolicy::compile(&[(
            "cond.rego".into(),
            "package fedgate\ndeny contains \"no\" if input.x == 1\n".into(),
        )])
        .unwrap();
        assert_eq!(
            p.deny_messages(&serde_json::json!({"x": 2})).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            p.deny_messages(&serde_json::json!({"x": 1})).unwrap(),
            vec!["no".to_string()]
        );
        // ...and a `deny` that is not a set of messages is an error, which callers deny on.
        let p =
            LocalPolicy::compile(&[("bool.rego".into(), "package fedgate\ndeny := true\n".into())])
                .unwrap();
        assert!(p.deny_messages(&serde_json::json!({})).is_err());
        let big = "#".repeat(MAX_REGO_BYTES + 1);
        assert!(matches!(
            LocalPolicy::compile(&[("big.rego".into(), big)]),
            Err(RegoError::TooLarge(_))
        ));
    }

    #[test]
    fn runaway_rules_hit_the_budget() {
        // A rule that iterates ten billion times must not hang the gateway.
        let text = "package fedgate\nr := numbers.range(1, 100000)\ndeny contains msg if {\n  some i in r\n  some j in r\n  i + j < 0\n  msg := \"never\"\n}\n";
        match LocalPolicy::compile(&[("slow.rego".into(), text.into())]) {
            Ok(p) => {
                let t = std::time::Instant::now();
                let r = p.deny_messages(&serde_json::json!({}));
                assert!(
                    r.is_err(),
                    "expected the budget to stop evaluation, got {r:?}"
                );
                assert!(t.elapsed() < Duration::from_secs(5));
            }
            Err(e) => panic!("{e}"),
        }
    }
}
