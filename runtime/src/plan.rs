//! Capacity rules of a paged-KV serving engine, checked before any compile or device work.
//!
//! Two engines are described. kernelgen's own ([`crate::engine`]) has the knobs of
//! [`EnginePlan`] itself; Levanter's TPU inference engine (the deployments `kernelgen plan`
//! checks before they reach hardware) also has a fused decode loop of `max_rounds` steps per
//! device call and a prefill pass of `max_prefill_size` tokens ([`LevanterKnobs`]), which
//! kernelgen's engine does not have. Each [`Rule`] says which engines it describes
//! ([`Scope`]). `kernelgen plan` prints them (plus the kernel's VMEM/SMEM account); kernelgen's
//! engine refuses to start when one of its rules fails, with the same message. Rules and fixes
//! name the knobs (`max_pages`), not the flags of any command.

use serde::Serialize;

/// Knobs of Levanter's inference engine that kernelgen's engine does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LevanterKnobs {
    /// Decode steps per fused device call.
    pub max_rounds: u64,
    /// Token capacity of one prefill pass (prompts are prefilled whole).
    pub max_prefill_size: u64,
}

/// Host memory a served model needs beyond its weights and KV pool: the PJRT plugin's code,
/// the compiler's working memory while a step program compiles, the tokenizer and the engine.
/// `kernelgen bench memory` measured a peak 378-584 MB above weights + pool for SmolLM2-135M on
/// the CPU plugin (the most with a full 1.5 GB pool, while a program compiled); this rounds up.
pub const HOST_HEADROOM_BYTES: u64 = 640 << 20;

/// KV bytes one token occupies across all layers: a K and a V row per KV head per layer.
pub fn kv_bytes_per_token(num_kv_heads: u64, head_dim: u64, dtype_bytes: u64, layers: u64) -> u64 {
    2 * num_kv_heads * head_dim * dtype_bytes * layers
}

/// Which engine a rule describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Both kernelgen's engine and Levanter's.
    Both,
    /// Levanter's only (it has the knob the rule is about).
    Levanter,
}

/// Engine knobs and the workload they must serve.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EnginePlan {
    /// Sequences decoded concurrently.
    pub max_seqs: u64,
    /// KV pages in the pool.
    pub max_pages: u64,
    pub page_size: u64,
    /// Longest prompt.
    pub max_prompt_len: u64,
    pub max_new_tokens: u64,
    /// Requests in the workload (defaults to max_seqs).
    pub num_prompts: u64,
    /// Longest sequence the engine accepts (prompt + generation).
    pub max_seq_len: u64,
    /// Tokens packed per step.
    pub max_tokens_per_round: u64,
    /// KV bytes one token occupies across all layers (2 * kv_heads * head_dim * dtype * layers).
    pub kv_bytes_per_token: Option<u64>,
    /// Device memory available to the weights and the page pool.
    pub hbm_bytes: Option<u64>,
    /// The model's weights as the engine holds them (params x bytes per value).
    pub weight_bytes: Option<u64>,
    /// Host memory available, when the device's memory is the host's (a CPU plugin): the
    /// weights, the pool and [`HOST_HEADROOM_BYTES`] must fit in it.
    pub host_bytes: Option<u64>,
    /// Levanter's own knobs, when the plan is for Levanter's engine.
    pub levanter: Option<LevanterKnobs>,
}

/// One rule's outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rule {
    pub name: &'static str,
    pub scope: Scope,
    pub ok: bool,
    /// What was computed, e.g. "needs 528 pages (16 seqs x 33 pages), have 480".
    pub detail: String,
    /// For a failed rule: the knob and the value that would pass (`max_pages 528`).
    pub fix: Option<String>,
}

impl Rule {
    fn new(
        name: &'static str,
        scope: Scope,
        ok: bool,
        detail: String,
        fix: impl FnOnce() -> String,
    ) -> Rule {
        Rule {
            name,
            scope,
            ok,
            detail,
            fix: (!ok).then(fix),
        }
    }
}

impl EnginePlan {
    /// Pages one sequence needs to hold its prompt and full generation.
    pub fn pages_per_seq(&self) -> u64 {
        (self.max_prompt_len + self.max_new_tokens).div_ceil(self.page_size.max(1))
    }

    /// Sequences resident at once.
    pub fn concurrent_seqs(&self) -> u64 {
        self.num_prompts.min(self.max_seqs)
    }

    /// Every rule, in order; an engine must refuse to start if any is not ok. Levanter's rules
    /// are there only when the plan has [`LevanterKnobs`].
    pub fn rules(&self) -> Vec<Rule> {
        let mut rules = Vec::new();
        let mut zero = vec![
            ("max_seqs", self.max_seqs),
            ("max_pages", self.max_pages),
            ("page_size", self.page_size),
            ("max_new_tokens", self.max_new_tokens),
            ("max_tokens_per_round", self.max_tokens_per_round),
        ];
        if let Some(l) = &self.levanter {
            zero.push(("max_rounds", l.max_rounds));
        }
        for (knob, v) in zero {
            if v == 0 {
                rules.push(Rule::new(
                    "positive knobs",
                    Scope::Both,
                    false,
                    format!("{knob} = 0"),
                    || format!("{knob} 1 or more"),
                ));
            }
        }
        if !rules.is_empty() {
            return rules;
        }
        let per_seq = self.pages_per_seq();
        let seqs = self.concurrent_seqs();
        let needed = seqs * per_seq;
        rules.push(Rule::new(
            "kv pages",
            Scope::Both,
            needed <= self.max_pages,
            format!(
                "needs {needed} pages ({seqs} seqs x ceil(({} + {}) / {}) = {per_seq} pages), have {}",
                self.max_prompt_len, self.max_new_tokens, self.page_size, self.max_pages
            ),
            || {
                let fit = self.max_pages / per_seq;
                if fit == 0 {
                    format!(
                        "max_pages {needed}, or a shorter max_seq_len / max_new_tokens (one sequence needs {per_seq} pages, the pool has {})",
                        self.max_pages
                    )
                } else {
                    format!("max_pages {needed}, or max_seqs {fit} (the most that fit {} pages)", self.max_pages)
                }
            },
        ));
        let longest = self.max_prompt_len + self.max_new_tokens;
        rules.push(Rule::new(
            "sequence length",
            Scope::Both,
            longest <= self.max_seq_len,
            format!(
                "prompt {} + new tokens {} = {longest}, max_seq_len {}",
                self.max_prompt_len, self.max_new_tokens, self.max_seq_len
            ),
            || format!("max_seq_len {longest}"),
        ));
        if let Some(l) = &self.levanter {
            rules.extend(self.levanter_rules(l));
        }
        if let (Some(per_token), Some(hbm)) = (self.kv_bytes_per_token, self.hbm_bytes) {
            rules.push(self.memory_rule("device memory", per_token, hbm, 0));
        }
        if let (Some(per_token), Some(host)) = (self.kv_bytes_per_token, self.host_bytes) {
            rules.push(self.memory_rule("host memory", per_token, host, HOST_HEADROOM_BYTES));
        }
        rules
    }

    /// Weights (when known) + the page pool + `headroom` within `capacity` bytes.
    fn memory_rule(
        &self,
        name: &'static str,
        per_token: u64,
        capacity: u64,
        headroom: u64,
    ) -> Rule {
        let gib = |b: u64| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64);
        let weights = self.weight_bytes.unwrap_or(0);
        // Saturating: absurd knobs must fail the rule, not overflow.
        let pool = self
            .max_pages
            .saturating_mul(self.page_size)
            .saturating_mul(per_token);
        let mut parts = vec![format!(
            "{} pages x {} tokens x {per_token} B = {} of pool",
            self.max_pages,
            self.page_size,
            gib(pool)
        )];
        if self.weight_bytes.is_some() {
            parts.insert(0, format!("{} of weights", gib(weights)));
        }
        if headroom > 0 {
            parts.push(format!("{} of runtime headroom", gib(headroom)));
        }
        let need = weights.saturating_add(pool).saturating_add(headroom);
        Rule::new(
            name,
            Scope::Both,
            need <= capacity,
            format!("{} = {} of {}", parts.join(" + "), gib(need), gib(capacity)),
            || {
                let left = capacity.saturating_sub(weights.saturating_add(headroom));
                match left / self.page_size.saturating_mul(per_token).max(1) {
                    0 => format!(
                        "a smaller model or more memory: the weights{} alone take {} of {}",
                        if headroom > 0 { " and headroom" } else { "" },
                        gib(weights + headroom),
                        gib(capacity)
                    ),
                    pages => format!("max_pages {pages}"),
                }
            },
        )
    }

    /// Levanter's fused decode budget and whole-prompt prefill.
    fn levanter_rules(&self, l: &LevanterKnobs) -> Vec<Rule> {
        // Decode budget of a fused loop: max_seq_len / max_rounds host iterations, each running
        // max_rounds steps that emit at most min(max_tokens_per_round, max_seqs) tokens.
        let per_round = self.max_tokens_per_round.min(self.max_seqs);
        let budget = (self.max_seq_len / l.max_rounds) * l.max_rounds * per_round;
        let wanted = self.num_prompts * self.max_new_tokens;
        let decode = Rule::new(
            "decode token budget",
            Scope::Levanter,
            budget >= wanted,
            format!(
                "floor({} / {}) x {} x min({}, {}) = {budget} tokens, workload needs {} x {} = {wanted}",
                self.max_seq_len, l.max_rounds, l.max_rounds, self.max_tokens_per_round, self.max_seqs, self.num_prompts, self.max_new_tokens
            ),
            || {
                let rounds = self.max_seq_len / l.max_rounds * l.max_rounds;
                let need = wanted.div_ceil(rounds.max(1));
                if need <= self.max_seqs {
                    format!("max_tokens_per_round {need}")
                } else {
                    format!("max_seqs {need} and max_tokens_per_round {need}")
                }
            },
        );
        let prefill = Rule::new(
            "prefill capacity",
            Scope::Levanter,
            l.max_prefill_size >= self.max_prompt_len,
            format!(
                "max_prefill_size {}, longest prompt {}",
                l.max_prefill_size, self.max_prompt_len
            ),
            || format!("max_prefill_size {}", self.max_prompt_len),
        );
        vec![decode, prefill]
    }

    /// `Err` with one line per failed rule, for refusing to start.
    pub fn validate(&self) -> Result<(), String> {
        let failed: Vec<String> = self
            .rules()
            .into_iter()
            .filter(|r| !r.ok)
            .map(|r| {
                format!(
                    "{}: {}; fix: {}",
                    r.name,
                    r.detail,
                    r.fix.unwrap_or_default()
                )
            })
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seqs: u64, pages: u64) -> EnginePlan {
        EnginePlan {
            max_seqs: seqs,
            max_pages: pages,
            page_size: 64,
            max_prompt_len: 64,
            max_new_tokens: 2048,
            num_prompts: seqs,
            max_seq_len: 4096,
            max_tokens_per_round: seqs,
            kv_bytes_per_token: None,
            hbm_bytes: None,
            weight_bytes: None,
            host_bytes: None,
            levanter: Some(LevanterKnobs {
                max_rounds: 32,
                max_prefill_size: 64,
            }),
        }
    }

    fn rule(p: &EnginePlan, name: &str) -> Rule {
        p.rules().into_iter().find(|r| r.name == name).unwrap()
    }

    #[test]
    fn sixteen_seqs_need_528_pages() {
        let r = rule(&plan(16, 480), "kv pages");
        assert!(!r.ok);
        assert!(r.detail.contains("needs 528 pages"), "{}", r.detail);
        assert!(r.fix.unwrap().contains("max_pages 528"));
        assert_eq!(r.scope, Scope::Both);
        assert!(rule(&plan(16, 528), "kv pages").ok);
    }

    #[test]
    fn page_pool_of_4096_holds_124_seqs_not_125() {
        assert!(rule(&plan(124, 4096), "kv pages").ok);
        let r = rule(&plan(125, 4096), "kv pages");
        assert!(!r.ok && r.detail.contains("needs 4125 pages"));
        assert!(r.fix.unwrap().contains("max_seqs 124"));
    }

    #[test]
    fn decode_budget_counts_fused_rounds() {
        let mut p = plan(16, 1024);
        p.max_tokens_per_round = 4;
        let r = rule(&p, "decode token budget");
        // floor(4096/32)*32*min(4,16) = 16384 < 16 * 2048 = 32768
        assert!(!r.ok, "{}", r.detail);
        assert_eq!(r.fix.as_deref(), Some("max_tokens_per_round 8"));
        assert_eq!(r.scope, Scope::Levanter);
        p.max_tokens_per_round = 8;
        assert!(rule(&p, "decode token budget").ok);
        assert!(plan(16, 528).validate().is_ok());
        assert!(plan(16, 480).validate().unwrap_err().contains("kv pages"));
    }

    /// Weights, pool and headroom are added against the capacity; the fix names the pages that
    /// fit, or says the weights alone do not.
    #[test]
    fn memory_rules_count_weights_pool_and_headroom() {
        let mut p = plan(16, 1024);
        p.kv_bytes_per_token = Some(1 << 20);
        p.weight_bytes = Some(4 << 30);
        p.hbm_bytes = Some(16 << 30);
        // 4 GiB + 1024 x 64 x 1 MiB = 68 GiB > 16 GiB: (16 - 4) GiB / 64 MiB = 192 pages fit.
        let r = rule(&p, "device memory");
        assert!(!r.ok, "{}", r.detail);
        assert!(r.detail.contains("4.00 GiB of weights"), "{}", r.detail);
        assert_eq!(r.fix.as_deref(), Some("max_pages 192"));
        p.max_pages = 192;
        assert!(rule(&p, "device memory").ok);
        p.host_bytes = Some(4 << 30);
        let r = rule(&p, "host memory");
        assert!(
            !r.ok && r.detail.contains("runtime headroom"),
            "{}",
            r.detail
        );
        assert!(r.fix.unwrap().contains("weights and headroom alone"));
        p.host_bytes = Some((4 << 30) + HOST_HEADROOM_BYTES + 192 * 64 * (1 << 20));
        assert!(rule(&p, "host memory").ok);
        p.max_pages = u64::MAX;
        assert!(
            !rule(&p, "host memory").ok,
            "an overflowing pool fails the rule"
        );
        p.host_bytes = None;
        assert!(p.rules().iter().all(|r| r.name != "host memory"));
    }

    /// kernelgen's engine has no fused loop or prefill pass: without Levanter's knobs their
    /// rules are absent, and no fix names a command-line flag.
    #[test]
    fn levanter_rules_only_with_levanter_knobs() {
        let mut p = plan(16, 480);
        p.levanter = None;
        let names: Vec<_> = p.rules().iter().map(|r| r.name).collect();
        assert!(!names.contains(&"decode token budget") && !names.contains(&"prefill capacity"));
        assert!(p.rules().iter().all(|r| r.scope == Scope::Both));
        let with = plan(16, 480);
        assert!(with.rules().iter().any(|r| r.scope == Scope::Levanter));
        for r in with.rules().iter().chain(&p.rules()) {
            assert!(r.fix.as_deref().is_none_or(|f| !f.contains("--")), "{r:?}");
        }
    }
}
