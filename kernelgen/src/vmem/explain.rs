//! Reading a TPU compiler's out-of-memory error (`kernelgen explain LOG`): which memory ran out,
//! by how much, in which kernel and with which call shapes, set beside the checker's account of
//! the config the user names.
//!
//! The forms parsed are the ones the deviceless compiler prints (libtpu 0.0.50.1; logs in
//! `kernelgen/tests/data/explain/`):
//! - `Scoped allocation with size 16.79M and limit 16.00M exceeded scoped vmem limit by 804.0K`
//!   (scoped VMEM), after the kernel's custom call with its `operand_layout_constraints`;
//! - `Used 56.40M of 16.00M vmem` / `... smem` (capacity);
//! - `Allocation (size=1572864) would exceed memory (size=1048576) :: #allocation9 [...,
//!   space=smem, ..., tag = 'prefetched SMEM operand 1']` (one allocation over capacity).

use super::smem::SmemRoom;
use super::{KernelModel, VmemReport};
use crate::target::fmt_compiler_bytes;
use serde::Serialize;

/// Which on-chip memory ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Space {
    Vmem,
    Smem,
}

/// The failure the log reports, with the compiler's own figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Failure {
    /// Scoped VMEM: sizes as printed (`16.79M`).
    Scoped {
        size: String,
        limit: String,
        over: String,
    },
    /// A memory space's capacity: `Used X of Y`.
    Capacity {
        space: Space,
        used: String,
        capacity: String,
    },
    /// One allocation larger than what is left: bytes, and the allocation's tag.
    Allocation {
        space: Space,
        size: u64,
        capacity: u64,
        tag: Option<String>,
    },
}

/// What a compiler log says.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CompilerLog {
    pub kernel: Option<KernelModel>,
    pub failure: Option<Failure>,
    /// The kernel call's operand shapes, in order (`s32[128]`, `bf16[2048,32,128]`, ...).
    pub operands: Vec<String>,
}

/// The text after `prefix` up to (not including) the first of `ends`.
fn after<'a>(text: &'a str, prefix: &str, ends: &[char]) -> Option<&'a str> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    Some(rest.split(|c| ends.contains(&c)).next().unwrap_or(rest))
}

fn space(s: &str) -> Option<Space> {
    match s {
        "vmem" => Some(Space::Vmem),
        "smem" => Some(Space::Smem),
        _ => None,
    }
}

/// Reads `text` (a whole log or just the error); fields the log lacks stay empty.
pub fn parse(text: &str) -> CompilerLog {
    let kernel = if text.contains("kernelgen_ragged_paged_attention") {
        Some(KernelModel::Kernelgen)
    } else if text.contains("ragged_paged_attention_kernel") {
        Some(KernelModel::JaxRpa)
    } else {
        None
    };
    let operands = operand_list(text).map(shapes).unwrap_or_default();
    let failure = scoped(text)
        .or_else(|| capacity(text))
        .or_else(|| allocation(text));
    CompilerLog {
        kernel,
        failure,
        operands,
    }
}

/// The text inside `operand_layout_constraints={...}` (its braces balanced).
fn operand_list(text: &str) -> Option<&str> {
    const OPEN: &str = "operand_layout_constraints={";
    let body = &text[text.find(OPEN)? + OPEN.len()..];
    let mut depth = 1;
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&body[..i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// Each `type[dims]` of an operand list, layouts (`{1,0}`) dropped.
fn shapes(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = list;
    while let Some(open) = rest.find('[') {
        let start = rest[..open]
            .rfind(|c: char| !c.is_ascii_alphanumeric())
            .map_or(0, |i| i + 1);
        let Some(close) = rest[open..].find(']') else {
            break;
        };
        out.push(rest[start..open + close + 1].to_string());
        rest = &rest[open + close + 1..];
    }
    out
}

fn scoped(text: &str) -> Option<Failure> {
    let size = after(text, "Scoped allocation with size ", &[' '])?;
    let limit = after(text, " and limit ", &[' '])?;
    let over = after(text, "exceeded scoped vmem limit by ", &[' ', '\n'])
        .map(|o| o.trim_end_matches('.'))
        .unwrap_or("");
    Some(Failure::Scoped {
        size: size.into(),
        limit: limit.into(),
        over: over.into(),
    })
}

fn capacity(text: &str) -> Option<Failure> {
    let used = after(text, "Used ", &[' '])?;
    let rest = after(text, &format!("Used {used} of "), &['\n'])?;
    let mut words = rest.split_whitespace();
    let cap = words.next()?;
    let sp = words.next()?.trim_end_matches('.');
    Some(Failure::Capacity {
        space: space(sp)?,
        used: used.into(),
        capacity: cap.into(),
    })
}

fn allocation(text: &str) -> Option<Failure> {
    let size = after(text, "Allocation (size=", &[')'])?.parse().ok()?;
    let capacity = after(text, "would exceed memory (size=", &[')'])?
        .parse()
        .ok()?;
    let sp = after(text, "space=", &[',', ' '])?;
    let tag = after(text, "tag = '", &['\'']).map(str::to_string);
    Some(Failure::Allocation {
        space: space(sp)?,
        size,
        capacity,
        tag,
    })
}

/// The dims of an operand (`bf16[2048,32,128]` -> [2048, 32, 128]).
fn dims(op: &str) -> Vec<u64> {
    after(op, "[", &[']'])
        .map(|d| d.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The call shapes JAX's kernel was compiled with, from its operands (kv_lens, page_indices,
/// cu_q_lens, state, num_seqs, q, kv_pages): (flag, value) pairs as `check` takes them.
pub fn jax_rpa_call_shapes(log: &CompilerLog) -> Vec<(&'static str, u64)> {
    let ops: Vec<Vec<u64>> = log.operands.iter().map(|o| dims(o)).collect();
    let (Some(pages), Some(q), Some(kv)) = (ops.get(1), ops.get(5), ops.get(6)) else {
        return vec![];
    };
    match (pages.as_slice(), q.as_slice(), kv.as_slice()) {
        ([seqs, pps], [tokens, hq, d], [total, page, hkv2, _]) => vec![
            ("--max-seqs", *seqs),
            ("--pages-per-seq", *pps),
            ("--max-tokens", *tokens),
            ("--num-q-heads", *hq),
            ("--head-dim", *d),
            ("--total-pages", *total),
            ("--page-size", *page),
            ("--num-kv-heads", hkv2 / 2),
        ],
        _ => vec![],
    }
}

/// What the checker's account says about `failure`, line by line.
pub fn reading(
    failure: &Failure,
    report: &VmemReport,
    room: SmemRoom,
    page_size: u64,
) -> Vec<String> {
    let s = &report.scoped;
    let (scratch, total) = (
        fmt_compiler_bytes(s.scratch_bytes),
        fmt_compiler_bytes(s.total_bytes()),
    );
    let mut out = Vec::new();
    match failure {
        Failure::Scoped { size, limit, over } => {
            out.push(format!(
                "compiler: scoped VMEM allocation of {size} over the limit {limit} by {over}"
            ));
            let checker = format!(
                "checker:  scratch {scratch} + internal scratch {} = {total}",
                fmt_compiler_bytes(s.internal_bytes)
            );
            if size == &total || size == &scratch {
                out.push(format!(
                    "{checker}: the compiler's figure. The kernel's scratch operands alone pass the \
                     limit, before any window or spill: shrink them (the configs below) or raise \
                     vmem_limit_bytes"
                ));
            } else if s.exceeds_limit {
                out.push(format!(
                    "{checker}: not the compiler's {size}; check the flags match the failing call"
                ));
            } else {
                out.push(format!(
                    "{checker}, under the limit: the compiler ran out later, on the pipelined \
                     windows and register spills (the checker's total with spills is {})",
                    fmt_compiler_bytes(report.total_bytes)
                ));
            }
        }
        Failure::Capacity {
            space,
            used,
            capacity,
        } => {
            out.push(format!(
                "compiler: used {used} of {capacity} {}",
                if *space == Space::Vmem {
                    "VMEM"
                } else {
                    "SMEM"
                }
            ));
            if *space == Space::Vmem {
                out.push(format!(
                    "checker:  {} total with spills (range {} .. {})",
                    fmt_compiler_bytes(report.total_bytes),
                    fmt_compiler_bytes(report.lower_bytes),
                    report
                        .upper_bytes
                        .map_or("unbounded".into(), fmt_compiler_bytes)
                ));
            } else {
                smem_lines(&mut out, report, room, page_size);
            }
        }
        Failure::Allocation {
            space,
            size,
            capacity,
            tag,
        } => {
            out.push(format!(
                "compiler: one {} allocation of {} ({}) would exceed the {} available",
                if *space == Space::Vmem {
                    "VMEM"
                } else {
                    "SMEM"
                },
                fmt_compiler_bytes(*size),
                tag.as_deref().unwrap_or("untagged"),
                fmt_compiler_bytes(*capacity)
            ));
            if *space == Space::Smem {
                if let Some(item) = report.smem.items.iter().find(|i| i.bytes == *size) {
                    out.push(format!(
                        "checker:  that is {} {:?}: {} (each row padded to 128 words)",
                        item.name,
                        item.shape,
                        fmt_compiler_bytes(item.bytes)
                    ));
                }
                smem_lines(&mut out, report, room, page_size);
            }
        }
    }
    out
}

fn smem_lines(out: &mut Vec<String>, report: &VmemReport, room: SmemRoom, page_size: u64) {
    out.push(format!(
        "checker:  SMEM {} of {}: the rule broken is max_seqs x pages_per_seq int32 page tables \
         (plus kv_lens and cu_q_lens) within SMEM",
        fmt_compiler_bytes(report.smem.total_bytes),
        fmt_compiler_bytes(report.smem.capacity_bytes)
    ));
    let mut fixes = Vec::new();
    if let Some(s) = room.max_num_seqs {
        fixes.push(format!("--max-seqs {s}"));
    }
    if let Some(p) = room.pages_per_seq {
        fixes.push(format!("--max-model-len {} ({p} pages)", p * page_size));
    }
    if !fixes.is_empty() {
        out.push(format!(
            "fix:      {} (one or the other)",
            fixes.join(", or ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_three_failure_forms() {
        let l = parse("x custom-call(...), operand_layout_constraints={s32[128]{0}, s32[128,32]{1,0}, s32[129]{0}, s32[2]{0}, s32[1]{0}, bf16[2048,32,128]{2,1,0}, bf16[4096,128,16,128]{3,2,1,0}}, metadata={op_name=\"ragged_paged_attention_kernel/pallas_call\"}. Scoped allocation with size 16.79M and limit 16.00M exceeded scoped vmem limit by 804.0K. It should");
        assert_eq!(l.kernel, Some(KernelModel::JaxRpa));
        assert_eq!(
            l.failure,
            Some(Failure::Scoped {
                size: "16.79M".into(),
                limit: "16.00M".into(),
                over: "804.0K".into()
            })
        );
        assert_eq!(l.operands.len(), 7);
        let shapes = jax_rpa_call_shapes(&l);
        assert!(shapes.contains(&("--max-seqs", 128)) && shapes.contains(&("--num-kv-heads", 8)));
        let c =
            parse("Ran out of memory in memory space vmem. Used 56.40M of 16.00M vmem. Exceeded");
        assert_eq!(
            c.failure,
            Some(Failure::Capacity {
                space: Space::Vmem,
                used: "56.40M".into(),
                capacity: "16.00M".into()
            })
        );
        let a = parse("Allocation (size=1572864) would exceed memory (size=1048576) :: #allocation9 [shape = 'u8[1572864]{0}', space=smem, size = 0x180000, scoped, tag = 'prefetched SMEM operand 1'] :: ragged_paged_attention_kernel.1");
        assert_eq!(
            a.failure,
            Some(Failure::Allocation {
                space: Space::Smem,
                size: 1572864,
                capacity: 1048576,
                tag: Some("prefetched SMEM operand 1".into())
            })
        );
        assert_eq!(parse("all good").failure, None);
    }
}
