//! Shape and type rules for the StableHLO ops kernelgen emits.
//!
//! melior parses StableHLO as an unregistered dialect, so MLIR checks nothing about it: a wrong
//! result shape or a misspelled op would only surface at PJRT compile time, far from the template.
//! This module recomputes every op's result type from its operands and attributes and compares it
//! with the declared one. Ops without a rule are rejected, so a typo cannot slip through.

use std::collections::HashMap;
use std::fmt;

/// A ranked tensor type: `tensor<2x3xf32>` is `dims [2, 3]`, `elem "f32"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorType {
    pub dims: Vec<i64>,
    pub elem: String,
}

impl TensorType {
    pub fn parse(s: &str) -> Option<TensorType> {
        let inner = s.trim().strip_prefix("tensor<")?.strip_suffix('>')?;
        let mut parts: Vec<&str> = inner.split('x').collect();
        let elem = parts.pop()?.to_string();
        let dims = parts
            .iter()
            .map(|d| d.parse::<i64>().ok().filter(|&d| d >= 0))
            .collect::<Option<Vec<_>>>()?;
        Some(TensorType { dims, elem })
    }

    fn rank(&self) -> usize {
        self.dims.len()
    }

    fn with_dims(&self, dims: Vec<i64>) -> TensorType {
        TensorType {
            dims,
            elem: self.elem.clone(),
        }
    }

    fn with_elem(&self, elem: &str) -> TensorType {
        TensorType {
            dims: self.dims.clone(),
            elem: elem.to_string(),
        }
    }

    fn elements(&self) -> i64 {
        self.dims.iter().product()
    }

    fn is_scalar(&self) -> bool {
        self.dims.is_empty()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tensor<")?;
        for d in &self.dims {
            write!(f, "{d}x")?;
        }
        write!(f, "{}>", self.elem)
    }
}

/// One region of an op: its entry block's argument types and its terminator's operand types.
#[derive(Clone, Debug, Default)]
pub struct RegionView {
    pub args: Vec<TensorType>,
    pub yields: Vec<TensorType>,
}

/// What the checker needs to know about one op, independent of melior.
#[derive(Clone, Debug, Default)]
pub struct OpView {
    pub name: String,
    pub operands: Vec<TensorType>,
    pub results: Vec<TensorType>,
    /// Attribute name -> printed attribute.
    pub attrs: HashMap<String, String>,
    pub regions: Vec<RegionView>,
}

type Check = Result<(), String>;

fn expect_eq(what: &str, declared: &TensorType, computed: &TensorType) -> Check {
    if declared != computed {
        return Err(format!(
            "{what} is declared {declared} but the operands give {computed}"
        ));
    }
    Ok(())
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Check {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

/// `array<i64: 1, 2>` -> `[1, 2]`; `array<i64>` -> `[]`.
fn i64_array(attr: &str) -> Option<Vec<i64>> {
    let inner = attr.trim().strip_prefix("array<i64")?.strip_suffix('>')?;
    let list = match inner.strip_prefix(':') {
        Some(l) => l,
        None if inner.is_empty() => return Some(vec![]),
        None => return None,
    };
    list.split(',').map(|x| x.trim().parse().ok()).collect()
}

/// `key = [1, 2]` inside a structured attribute such as `#stablehlo.dot<...>`.
fn field_list(attr: &str, key: &str) -> Option<Vec<i64>> {
    let start = find_key(attr, key)?;
    let rest = attr[start..].trim_start().strip_prefix('[')?;
    let list = &rest[..rest.find(']')?];
    if list.trim().is_empty() {
        return Some(vec![]);
    }
    list.split(',').map(|x| x.trim().parse().ok()).collect()
}

/// `key = 3` inside a structured attribute, or a leading `3 : i64` when `key` is empty.
fn field_int(attr: &str, key: &str) -> Option<i64> {
    let rest = if key.is_empty() {
        attr.trim()
    } else {
        attr[find_key(attr, key)?..].trim_start()
    };
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Byte offset just after `key =` (whole-word match).
fn find_key(attr: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = attr[from..].find(key) {
        let at = from + i;
        let before_ok = at == 0
            || !attr.as_bytes()[at - 1].is_ascii_alphanumeric() && attr.as_bytes()[at - 1] != b'_';
        let after = attr[at + key.len()..].trim_start();
        if before_ok {
            if let Some(rest) = after.strip_prefix('=') {
                return Some(attr.len() - rest.len());
            }
        }
        from = at + key.len();
    }
    None
}

impl OpView {
    fn attr(&self, name: &str) -> Result<&str, String> {
        self.attrs
            .get(name)
            .map(|s| s.as_str())
            .ok_or_else(|| format!("missing attribute '{name}'"))
    }

    fn dims_attr(&self, name: &str) -> Result<Vec<i64>, String> {
        let a = self.attr(name)?;
        i64_array(a).ok_or_else(|| format!("attribute '{name}' = {a} is not an array<i64: ...>"))
    }

    fn arity(&self, operands: usize, results: usize) -> Check {
        ensure(
            self.operands.len() == operands && self.results.len() == results,
            || {
                format!(
                    "expects {operands} operand(s) and {results} result(s), has {} and {}",
                    self.operands.len(),
                    self.results.len()
                )
            },
        )
    }
}

/// Checks one op; `Err` says what is wrong in terms of the op's own operands and attributes.
pub fn check_op(op: &OpView) -> Check {
    let short = op.name.strip_prefix("stablehlo.").unwrap_or(&op.name);
    match short {
        "add" | "subtract" | "multiply" | "divide" | "maximum" | "minimum" | "and" | "or"
        | "remainder" | "power" | "shift_left" => elementwise(op, 2),
        "exponential" | "tanh" | "negate" | "sqrt" | "rsqrt" | "log" | "abs" | "not"
        | "logistic" | "cosine" | "sine" => elementwise(op, 1),
        "concatenate" => concatenate(op),
        "scatter" => scatter(op),
        "convert" => {
            op.arity(1, 1)?;
            expect_eq(
                "result",
                &op.results[0],
                &op.operands[0].with_elem(&op.results[0].elem),
            )
        }
        // Same shape, same element width (kernelgen rejoins 32-bit patterns into f32).
        "bitcast_convert" => {
            op.arity(1, 1)?;
            let (a, r) = (&op.operands[0], &op.results[0]);
            let bits = |e: &str| {
                e.trim_start_matches(|c: char| c.is_alphabetic())
                    .to_string()
            };
            ensure(a.dims == r.dims && bits(&a.elem) == bits(&r.elem), || {
                format!("cannot bitcast {a} to {r}: shapes and element widths must match")
            })
        }
        "reshape" => {
            op.arity(1, 1)?;
            let (a, r) = (&op.operands[0], &op.results[0]);
            ensure(a.elem == r.elem && a.elements() == r.elements(), || {
                format!(
                    "cannot reshape {a} ({} elements) to {r} ({} elements)",
                    a.elements(),
                    r.elements()
                )
            })
        }
        "constant" => {
            op.arity(0, 1)?;
            let v = op.attr("value")?;
            let ty = v.rsplit(" : ").next().and_then(TensorType::parse);
            ensure(ty.as_ref() == Some(&op.results[0]), || {
                format!("value {v} does not have the result type {}", op.results[0])
            })
        }
        "iota" => {
            op.arity(0, 1)?;
            let d = field_int(op.attr("iota_dimension")?, "").ok_or("bad iota_dimension")?;
            ensure(d >= 0 && (d as usize) < op.results[0].rank(), || {
                format!("iota_dimension {d} out of range for {}", op.results[0])
            })
        }
        "compare" => compare(op),
        "select" => select(op),
        "broadcast_in_dim" => broadcast_in_dim(op),
        "transpose" => transpose(op),
        "slice" => slice(op),
        "pad" => pad(op),
        "dynamic_slice" => dynamic_slice(op),
        "dynamic_update_slice" => dynamic_update_slice(op),
        "dot_general" => dot_general(op),
        "gather" => gather(op),
        "reduce" => reduce(op),
        "while" => while_loop(op),
        "optimization_barrier" => ensure(op.operands == op.results, || {
            "results must have the operands' types".into()
        }),
        // A sum across devices: each device's result has its operand's type.
        "all_reduce" => {
            op.arity(1, 1)?;
            op.attr("replica_groups")?;
            expect_eq("result", &op.results[0], &op.operands[0])
        }
        "custom_call" => custom_call(op),
        "return" => Ok(()), // checked by the op that owns the region
        _ => Err(format!(
            "no shape rule for '{}': add one in emit/typecheck.rs before emitting it",
            op.name
        )),
    }
}

/// The custom calls kernelgen emits, the native host kernels (`runtime::kernels`).
fn custom_call(op: &OpView) -> Check {
    match op.attr("call_target_name")? {
        "\"kernelgen_rpa\"" => host_rpa(op),
        "\"kernelgen_matmul\"" => {
            op.arity(2, 1)?;
            host_matmul(op, &op.operands[0], &op.operands[1])
        }
        "\"kernelgen_norm_matmul\"" => {
            op.arity(3, 1)?;
            let [x, norm, w] = &op.operands[..] else {
                unreachable!("arity checked")
            };
            let config = op.attr("backend_config")?;
            ensure(config.contains("eps ="), || {
                format!("backend_config {config} must give the norm's eps")
            })?;
            host_matmul(op, x, w)?;
            expect_eq("norm", norm, &f32_of(vec![x.dims[1]]))
        }
        "\"kernelgen_matmul_add\"" => {
            op.arity(3, 1)?;
            let [x, w, residual] = &op.operands[..] else {
                unreachable!("arity checked")
            };
            host_matmul(op, x, w)?;
            expect_eq("residual", residual, &op.results[0])
        }
        "\"kernelgen_lm_head\"" => host_lm_head(op),
        target => Err(format!(
            "unknown custom call target {target} (kernelgen emits \"kernelgen_rpa\", \
             \"kernelgen_matmul\", \"kernelgen_norm_matmul\", \"kernelgen_matmul_add\" and \
             \"kernelgen_lm_head\")"
        )),
    }
}

fn f32_of(dims: Vec<i64>) -> TensorType {
    TensorType {
        dims,
        elem: "f32".into(),
    }
}

/// `x[m, k] f32` times `w[n, k]` (f32 or bf16) transposed: `[m, n] f32`.
fn host_matmul(op: &OpView, x: &TensorType, w: &TensorType) -> Check {
    ensure(
        x.rank() == 2 && w.rank() == 2 && x.dims[1] == w.dims[1],
        || format!("x {x} and w {w} must be [m, k] and [n, k]"),
    )?;
    ensure(
        x.elem == "f32" && (w.elem == "f32" || w.elem == "bf16"),
        || format!("x {x} must be f32 and w {w} f32 or bf16"),
    )?;
    expect_eq(
        "result",
        &op.results[0],
        &f32_of(vec![x.dims[0], w.dims[0]]),
    )
}

/// The host LM head: `x[m, k] f32`, the weight's planes `[2, n, k] ui16`, its tables `rows
/// [2, n] f32` and `screen [n, k] i8`, and `argmax_only [1] i32`: `[m, n] f32`.
fn host_lm_head(op: &OpView) -> Check {
    op.arity(5, 1)?;
    let [x, w, rows, screen, flag] = &op.operands[..] else {
        unreachable!("arity checked")
    };
    ensure(
        x.rank() == 2 && w.rank() == 3 && w.dims[0] == 2 && x.dims[1] == w.dims[2],
        || format!("x {x} and planes {w} must be [m, k] and [2, n, k]"),
    )?;
    ensure(x.elem == "f32" && w.elem == "ui16", || {
        format!("x {x} must be f32 and planes {w} ui16")
    })?;
    expect_eq("rows", rows, &f32_of(vec![2, w.dims[1]]))?;
    expect_eq(
        "screen",
        screen,
        &TensorType {
            dims: vec![w.dims[1], w.dims[2]],
            elem: "i8".into(),
        },
    )?;
    expect_eq(
        "argmax_only",
        flag,
        &TensorType {
            dims: vec![1],
            elem: "i32".into(),
        },
    )?;
    expect_eq(
        "result",
        &op.results[0],
        &TensorType {
            dims: vec![x.dims[0], w.dims[1]],
            elem: "f32".into(),
        },
    )
}

/// The host RPA kernel: operands the kernel interface's, the result q's type.
fn host_rpa(op: &OpView) -> Check {
    op.arity(6, 1)?;
    let [q, kv, kv_lens, pages, cu, n] = &op.operands[..] else {
        unreachable!("arity checked")
    };
    expect_eq("result", &op.results[0], q)?;
    let i32_of = |dims: Vec<i64>| TensorType {
        dims,
        elem: "i32".into(),
    };
    ensure(q.rank() == 3 && kv.rank() == 4 && kv.elem == q.elem, || {
        format!(
            "q {q} and kv_pages {kv} must be [t, hq, d] and [pages, size, 2*hkv, d] of one dtype"
        )
    })?;
    ensure(
        kv.dims[3] == q.dims[2]
            && kv.dims[2] % 2 == 0
            && kv.dims[2] > 0
            && q.dims[1] % (kv.dims[2] / 2) == 0,
        || {
            format!("kv_pages {kv} does not fit q {q}: head_dim must match and q heads be a multiple of kv heads")
        },
    )?;
    ensure(pages.rank() == 2, || {
        format!("page_indices {pages} must be [seqs, pages_per_seq]")
    })?;
    let s = pages.dims[0];
    expect_eq("page_indices", pages, &i32_of(pages.dims.clone()))?;
    expect_eq("kv_lens", kv_lens, &i32_of(vec![s]))?;
    expect_eq("cu_q_lens", cu, &i32_of(vec![s + 1]))?;
    expect_eq("num_seqs", n, &i32_of(vec![1]))
}

fn elementwise(op: &OpView, n: usize) -> Check {
    op.arity(n, 1)?;
    for (i, t) in op.operands.iter().enumerate() {
        expect_eq(&format!("result (operand {i})"), &op.results[0], t)?;
    }
    Ok(())
}

fn compare(op: &OpView) -> Check {
    op.arity(2, 1)?;
    let dir = op.attr("comparison_direction")?;
    ensure(
        ["EQ", "NE", "LT", "LE", "GT", "GE"]
            .iter()
            .any(|d| dir.contains(&format!("comparison_direction {d}>"))),
        || format!("unknown comparison_direction {dir}"),
    )?;
    expect_eq("rhs", &op.operands[0], &op.operands[1])?;
    expect_eq("result", &op.results[0], &op.operands[0].with_elem("i1"))
}

fn select(op: &OpView) -> Check {
    op.arity(3, 1)?;
    let pred = &op.operands[0];
    ensure(pred.elem == "i1", || {
        format!("predicate must be i1, is {pred}")
    })?;
    ensure(pred.is_scalar() || pred.dims == op.operands[1].dims, || {
        format!("predicate {pred} does not match {}", op.operands[1])
    })?;
    expect_eq("on_false", &op.operands[1], &op.operands[2])?;
    expect_eq("result", &op.results[0], &op.operands[1])
}

fn broadcast_in_dim(op: &OpView) -> Check {
    op.arity(1, 1)?;
    let (a, r) = (&op.operands[0], &op.results[0]);
    let map = op.dims_attr("broadcast_dimensions")?;
    ensure(map.len() == a.rank(), || {
        format!(
            "broadcast_dimensions has {} entries for a rank-{} operand",
            map.len(),
            a.rank()
        )
    })?;
    ensure(a.elem == r.elem, || {
        format!("element types differ: {a} -> {r}")
    })?;
    for (i, &m) in map.iter().enumerate() {
        ensure(m >= 0 && (m as usize) < r.rank(), || {
            format!("broadcast dimension {m} out of range for {r}")
        })?;
        let (ad, rd) = (a.dims[i], r.dims[m as usize]);
        ensure(ad == rd || ad == 1, || {
            format!("operand dim {i} ({ad}) cannot broadcast to result dim {m} ({rd})")
        })?;
    }
    ensure(map.windows(2).all(|w| w[0] < w[1]), || {
        "broadcast_dimensions must increase".into()
    })
}

fn transpose(op: &OpView) -> Check {
    op.arity(1, 1)?;
    let a = &op.operands[0];
    let perm = op.dims_attr("permutation")?;
    let mut seen = perm.clone();
    seen.sort();
    ensure(seen == (0..a.rank() as i64).collect::<Vec<_>>(), || {
        format!(
            "permutation {perm:?} is not a permutation of 0..{}",
            a.rank()
        )
    })?;
    let dims = perm.iter().map(|&p| a.dims[p as usize]).collect();
    expect_eq("result", &op.results[0], &a.with_dims(dims))
}

fn slice(op: &OpView) -> Check {
    op.arity(1, 1)?;
    let a = &op.operands[0];
    let (start, limit, strides) = (
        op.dims_attr("start_indices")?,
        op.dims_attr("limit_indices")?,
        op.dims_attr("strides")?,
    );
    ensure(
        start.len() == a.rank() && limit.len() == a.rank() && strides.len() == a.rank(),
        || "start/limit/strides must have one entry per dimension".into(),
    )?;
    let mut dims = Vec::new();
    for i in 0..a.rank() {
        ensure(
            0 <= start[i] && start[i] <= limit[i] && limit[i] <= a.dims[i] && strides[i] > 0,
            || {
                format!(
                    "dim {i}: slice {}..{} step {} outside 0..{}",
                    start[i], limit[i], strides[i], a.dims[i]
                )
            },
        )?;
        dims.push((limit[i] - start[i] + strides[i] - 1) / strides[i]);
    }
    expect_eq("result", &op.results[0], &a.with_dims(dims))
}

fn pad(op: &OpView) -> Check {
    op.arity(2, 1)?;
    let (a, v) = (&op.operands[0], &op.operands[1]);
    ensure(v.is_scalar() && v.elem == a.elem, || {
        format!("padding value {v} must be a scalar {}", a.elem)
    })?;
    let (lo, hi, interior) = (
        op.dims_attr("edge_padding_low")?,
        op.dims_attr("edge_padding_high")?,
        op.dims_attr("interior_padding")?,
    );
    ensure(
        lo.len() == a.rank() && hi.len() == a.rank() && interior.len() == a.rank(),
        || "padding attributes must have one entry per dimension".into(),
    )?;
    let dims = (0..a.rank())
        .map(|i| lo[i] + hi[i] + a.dims[i] + (a.dims[i] - 1).max(0) * interior[i])
        .collect();
    expect_eq("result", &op.results[0], &a.with_dims(dims))
}

fn scalar_indices(op: &OpView, from: usize, rank: usize) -> Check {
    let idx = &op.operands[from..];
    ensure(idx.len() == rank, || {
        format!("needs {rank} start indices, has {}", idx.len())
    })?;
    for (i, t) in idx.iter().enumerate() {
        ensure(
            t.is_scalar() && (t.elem == "i32" || t.elem == "i64"),
            || format!("start index {i} must be a scalar integer, is {t}"),
        )?;
    }
    Ok(())
}

fn dynamic_slice(op: &OpView) -> Check {
    ensure(op.results.len() == 1 && !op.operands.is_empty(), || {
        "expects an operand and a result".into()
    })?;
    let a = &op.operands[0];
    scalar_indices(op, 1, a.rank())?;
    let sizes = op.dims_attr("slice_sizes")?;
    ensure(sizes.len() == a.rank(), || {
        "slice_sizes must have one entry per dimension".into()
    })?;
    for (i, (&s, &d)) in sizes.iter().zip(&a.dims).enumerate() {
        ensure(0 <= s && s <= d, || {
            format!("slice size {s} of dim {i} exceeds {d}")
        })?;
    }
    expect_eq("result", &op.results[0], &a.with_dims(sizes))
}

fn dynamic_update_slice(op: &OpView) -> Check {
    ensure(op.results.len() == 1 && op.operands.len() >= 2, || {
        "expects operand, update, indices".into()
    })?;
    let (a, u) = (&op.operands[0], &op.operands[1]);
    ensure(u.elem == a.elem && u.rank() == a.rank(), || {
        format!("update {u} does not fit {a}")
    })?;
    for i in 0..a.rank() {
        ensure(u.dims[i] <= a.dims[i], || {
            format!("update dim {i} ({}) exceeds {}", u.dims[i], a.dims[i])
        })?;
    }
    scalar_indices(op, 2, a.rank())?;
    expect_eq("result", &op.results[0], a)
}

fn dot_general(op: &OpView) -> Check {
    op.arity(2, 1)?;
    let (l, r) = (&op.operands[0], &op.operands[1]);
    let a = op.attr("dot_dimension_numbers")?;
    let get = |k: &str| field_list(a, k).unwrap_or_default();
    let (lb, rb, lc, rc) = (
        get("lhs_batching_dimensions"),
        get("rhs_batching_dimensions"),
        get("lhs_contracting_dimensions"),
        get("rhs_contracting_dimensions"),
    );
    ensure(lb.len() == rb.len() && lc.len() == rc.len(), || {
        format!("unbalanced dimension numbers in {a}")
    })?;
    let in_range = |d: &[i64], t: &TensorType| d.iter().all(|&x| x >= 0 && (x as usize) < t.rank());
    ensure(
        in_range(&lb, l) && in_range(&lc, l) && in_range(&rb, r) && in_range(&rc, r),
        || format!("dimension numbers out of range in {a}"),
    )?;
    for (&x, &y) in lb.iter().zip(&rb).chain(lc.iter().zip(&rc)) {
        ensure(l.dims[x as usize] == r.dims[y as usize], || {
            format!(
                "lhs dim {x} ({}) != rhs dim {y} ({})",
                l.dims[x as usize], r.dims[y as usize]
            )
        })?;
    }
    let free = |t: &TensorType, b: &[i64], c: &[i64]| -> Vec<i64> {
        (0..t.rank() as i64)
            .filter(|d| !b.contains(d) && !c.contains(d))
            .map(|d| t.dims[d as usize])
            .collect()
    };
    let mut dims: Vec<i64> = lb.iter().map(|&d| l.dims[d as usize]).collect();
    dims.extend(free(l, &lb, &lc));
    dims.extend(free(r, &rb, &rc));
    let res = &op.results[0];
    ensure(l.elem == r.elem, || {
        format!("operand element types differ: {} vs {}", l.elem, r.elem)
    })?;
    expect_eq("result", res, &res.with_dims(dims))
}

fn gather(op: &OpView) -> Check {
    op.arity(2, 1)?;
    let (a, idx) = (&op.operands[0], &op.operands[1]);
    let dn = op.attr("dimension_numbers")?;
    let offset_dims = field_list(dn, "offset_dims").unwrap_or_default();
    let collapsed = field_list(dn, "collapsed_slice_dims").unwrap_or_default();
    let start_map = field_list(dn, "start_index_map").unwrap_or_default();
    let ivd = field_int(dn, "index_vector_dim").ok_or("missing index_vector_dim")?;
    let sizes = op.dims_attr("slice_sizes")?;
    ensure(sizes.len() == a.rank(), || {
        "slice_sizes must have one entry per operand dimension".into()
    })?;
    for (i, (&s, &d)) in sizes.iter().zip(&a.dims).enumerate() {
        ensure(0 <= s && s <= d, || {
            format!("slice size {s} of dim {i} exceeds {d}")
        })?;
    }
    let index_len = if (ivd as usize) < idx.rank() {
        idx.dims[ivd as usize]
    } else {
        1
    };
    ensure(index_len as usize == start_map.len(), || {
        format!(
            "index vector has {index_len} entries, start_index_map {}",
            start_map.len()
        )
    })?;
    for &c in &collapsed {
        ensure(sizes.get(c as usize) == Some(&1), || {
            format!("collapsed dim {c} must have slice size 1")
        })?;
    }
    let batch: Vec<i64> = (0..idx.rank())
        .filter(|&d| d as i64 != ivd)
        .map(|d| idx.dims[d])
        .collect();
    let offsets: Vec<i64> = (0..a.rank() as i64)
        .filter(|d| !collapsed.contains(d))
        .map(|d| sizes[d as usize])
        .collect();
    ensure(offsets.len() == offset_dims.len(), || {
        format!(
            "offset_dims has {} entries for {} uncollapsed dims",
            offset_dims.len(),
            offsets.len()
        )
    })?;
    let rank = batch.len() + offsets.len();
    let (mut b, mut o) = (batch.iter(), offsets.iter());
    let dims = (0..rank as i64)
        .map(|d| {
            if offset_dims.contains(&d) {
                o.next()
            } else {
                b.next()
            }
            .copied()
            .unwrap_or(-1)
        })
        .collect();
    expect_eq("result", &op.results[0], &a.with_dims(dims))
}

fn concatenate(op: &OpView) -> Check {
    ensure(!op.operands.is_empty() && op.results.len() == 1, || {
        "expects operands and one result".into()
    })?;
    let dim = field_int(op.attr("dimension")?, "").ok_or("bad dimension")? as usize;
    let first = &op.operands[0];
    ensure(dim < first.rank(), || {
        format!("dimension {dim} out of range for {first}")
    })?;
    let mut dims = first.dims.clone();
    for t in &op.operands[1..] {
        ensure(t.rank() == first.rank() && t.elem == first.elem, || {
            format!("{t} cannot join {first}")
        })?;
        for (i, (&a, &b)) in t.dims.iter().zip(&first.dims).enumerate() {
            ensure(i == dim || a == b, || {
                format!("dim {i} differs: {t} vs {first}")
            })?;
        }
        dims[dim] += t.dims[dim];
    }
    expect_eq("result", &op.results[0], &first.with_dims(dims))
}

/// Scatter with one operand: result = operand; updates = scatter batch dims + window dims.
fn scatter(op: &OpView) -> Check {
    op.arity(3, 1)?;
    let (a, idx, upd) = (&op.operands[0], &op.operands[1], &op.operands[2]);
    expect_eq("result", &op.results[0], a)?;
    ensure(idx.elem == "i32" || idx.elem == "i64", || {
        format!("indices must be integers, are {idx}")
    })?;
    ensure(upd.elem == a.elem, || {
        format!("updates {upd} do not match operand {a}")
    })?;
    let dn = op.attr("scatter_dimension_numbers")?;
    let window = field_list(dn, "update_window_dims").unwrap_or_default();
    let inserted = field_list(dn, "inserted_window_dims").unwrap_or_default();
    let ivd = field_int(dn, "index_vector_dim").ok_or("missing index_vector_dim")?;
    let batch = idx.rank() - usize::from((ivd as usize) < idx.rank());
    ensure(upd.rank() == batch + window.len(), || {
        format!(
            "updates {upd} need rank {} (batch) + {} (window)",
            batch,
            window.len()
        )
    })?;
    ensure(window.len() + inserted.len() == a.rank(), || {
        "window + inserted dims must cover the operand".into()
    })?;
    let kept: Vec<i64> = (0..a.rank() as i64)
        .filter(|d| !inserted.contains(d))
        .map(|d| a.dims[d as usize])
        .collect();
    for (w, k) in window.iter().zip(&kept) {
        let u = upd.dims[*w as usize];
        ensure(u <= *k, || {
            format!("update window dim {w} ({u}) exceeds operand dim ({k})")
        })?;
    }
    let body = op.regions.first().ok_or("scatter needs an update region")?;
    let scalar = TensorType {
        dims: vec![],
        elem: a.elem.clone(),
    };
    ensure(
        body.args == [scalar.clone(), scalar.clone()] && body.yields == [scalar],
        || "update region must take and return scalars of the operand type".into(),
    )
}

fn reduce(op: &OpView) -> Check {
    let n = op.operands.len() / 2;
    ensure(
        n >= 1 && op.operands.len() == 2 * n && op.results.len() == n,
        || "reduce expects N inputs, N init values and N results".into(),
    )?;
    let dims = op.dims_attr("dimensions")?;
    for i in 0..n {
        let (a, init) = (&op.operands[i], &op.operands[n + i]);
        ensure(init.is_scalar() && init.elem == a.elem, || {
            format!("init {init} must be a scalar {}", a.elem)
        })?;
        let kept = (0..a.rank())
            .filter(|d| !dims.contains(&(*d as i64)))
            .map(|d| a.dims[d])
            .collect();
        expect_eq(&format!("result {i}"), &op.results[i], &a.with_dims(kept))?;
    }
    let body = op.regions.first().ok_or("reduce needs a body region")?;
    let scalars: Vec<TensorType> = op.operands[n..].to_vec();
    ensure(
        body.args.len() == 2 * n && body.args[..n] == scalars[..] && body.args[n..] == scalars[..],
        || "body arguments must be the scalar element types, twice".into(),
    )?;
    ensure(body.yields == scalars, || {
        "body must return one scalar per input".into()
    })
}

fn while_loop(op: &OpView) -> Check {
    ensure(op.regions.len() == 2, || {
        "while needs a cond and a body region".into()
    })?;
    ensure(op.operands == op.results, || {
        "while results must have the operands' types".into()
    })?;
    let (cond, body) = (&op.regions[0], &op.regions[1]);
    ensure(cond.args == op.operands && body.args == op.operands, || {
        "cond and body arguments must have the operands' types".into()
    })?;
    ensure(
        cond.yields
            == [TensorType {
                dims: vec![],
                elem: "i1".into(),
            }],
        || format!("cond must return tensor<i1>, returns {:?}", cond.yields),
    )?;
    ensure(body.yields == op.operands, || {
        let show = |v: &[TensorType]| {
            v.iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "body returns ({}) but carries ({})",
            show(&body.yields),
            show(&op.operands)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TensorType {
        TensorType::parse(s).unwrap()
    }

    fn op(name: &str, operands: &[&str], results: &[&str], attrs: &[(&str, &str)]) -> OpView {
        OpView {
            name: format!("stablehlo.{name}"),
            operands: operands.iter().map(|s| t(s)).collect(),
            results: results.iter().map(|s| t(s)).collect(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            regions: vec![],
        }
    }

    #[test]
    fn parses_types_and_attributes() {
        assert_eq!(t("tensor<2x3xbf16>").dims, vec![2, 3]);
        assert_eq!(t("tensor<i32>").dims, Vec::<i64>::new());
        assert_eq!(i64_array("array<i64: 1, 0, 2>"), Some(vec![1, 0, 2]));
        assert_eq!(i64_array("array<i64>"), Some(vec![]));
        let dn = "#stablehlo.dot<lhs_batching_dimensions = [1], rhs_batching_dimensions = [1], lhs_contracting_dimensions = [3], rhs_contracting_dimensions = [2]>";
        assert_eq!(field_list(dn, "lhs_contracting_dimensions"), Some(vec![3]));
        assert_eq!(field_list(dn, "rhs_batching_dimensions"), Some(vec![1]));
        assert_eq!(
            field_int("#x<a = [0], index_vector_dim = 1>", "index_vector_dim"),
            Some(1)
        );
    }

    #[test]
    fn dot_general_computes_batch_then_free_dims() {
        let dn = ("dot_dimension_numbers", "#stablehlo.dot<lhs_batching_dimensions = [1], rhs_batching_dimensions = [1], lhs_contracting_dimensions = [3], rhs_contracting_dimensions = [2]>");
        let ok = op(
            "dot_general",
            &["tensor<4x2x3x8xf32>", "tensor<16x2x8xf32>"],
            &["tensor<2x4x3x16xf32>"],
            &[dn],
        );
        assert_eq!(check_op(&ok), Ok(()));
        let bad = op(
            "dot_general",
            &["tensor<4x2x3x8xf32>", "tensor<16x2x8xf32>"],
            &["tensor<2x3x4x16xf32>"],
            &[dn],
        );
        assert!(check_op(&bad).unwrap_err().contains("tensor<2x4x3x16xf32>"));
        let mismatch = op(
            "dot_general",
            &["tensor<4x2x3x8xf32>", "tensor<16x2x4xf32>"],
            &["tensor<2x4x3x16xf32>"],
            &[dn],
        );
        assert!(check_op(&mismatch).unwrap_err().contains("lhs dim 3"));
    }

    #[test]
    fn gather_of_pages() {
        let attrs = [
            ("dimension_numbers", "#stablehlo.gather<offset_dims = [1, 2, 3], collapsed_slice_dims = [0], start_index_map = [0], index_vector_dim = 1>"),
            ("slice_sizes", "array<i64: 1, 16, 4, 8>"),
        ];
        let ok = op(
            "gather",
            &["tensor<10x16x4x8xbf16>", "tensor<3x1xi32>"],
            &["tensor<3x16x4x8xbf16>"],
            &attrs,
        );
        assert_eq!(check_op(&ok), Ok(()));
        let bad = op(
            "gather",
            &["tensor<10x16x4x8xbf16>", "tensor<3x1xi32>"],
            &["tensor<3x16x4x8xf32>"],
            &attrs,
        );
        assert!(check_op(&bad).is_err());
    }

    #[test]
    fn broadcast_slice_pad_transpose() {
        let b = op(
            "broadcast_in_dim",
            &["tensor<4xi32>"],
            &["tensor<3x4xi32>"],
            &[("broadcast_dimensions", "array<i64: 1>")],
        );
        assert_eq!(check_op(&b), Ok(()));
        let b = op(
            "broadcast_in_dim",
            &["tensor<4xi32>"],
            &["tensor<4x3xi32>"],
            &[("broadcast_dimensions", "array<i64: 1>")],
        );
        assert!(check_op(&b).is_err());
        let s = op(
            "slice",
            &["tensor<8x2x2x4xf32>"],
            &["tensor<8x2x1x4xf32>"],
            &[
                ("start_indices", "array<i64: 0, 0, 1, 0>"),
                ("limit_indices", "array<i64: 8, 2, 2, 4>"),
                ("strides", "array<i64: 1, 1, 1, 1>"),
            ],
        );
        assert_eq!(check_op(&s), Ok(()));
        let p = op(
            "pad",
            &["tensor<5x3xi32>", "tensor<i32>"],
            &["tensor<5x4xi32>"],
            &[
                ("edge_padding_low", "array<i64: 0, 0>"),
                ("edge_padding_high", "array<i64: 0, 1>"),
                ("interior_padding", "array<i64: 0, 0>"),
            ],
        );
        assert_eq!(check_op(&p), Ok(()));
        let tr = op(
            "transpose",
            &["tensor<2x3x4xf32>"],
            &["tensor<3x2x4xf32>"],
            &[("permutation", "array<i64: 1, 0, 2>")],
        );
        assert_eq!(check_op(&tr), Ok(()));
    }

    #[test]
    fn unknown_ops_are_rejected() {
        let o = op(
            "multipy",
            &["tensor<f32>", "tensor<f32>"],
            &["tensor<f32>"],
            &[],
        );
        assert!(check_op(&o).unwrap_err().contains("no shape rule"));
    }

    #[test]
    fn while_body_must_carry_the_same_types() {
        let i = t("tensor<i32>");
        let mut w = op(
            "while",
            &["tensor<i32>", "tensor<4xf32>"],
            &["tensor<i32>", "tensor<4xf32>"],
            &[],
        );
        let args = w.operands.clone();
        w.regions = vec![
            RegionView {
                args: args.clone(),
                yields: vec![t("tensor<i1>")],
            },
            RegionView {
                args: args.clone(),
                yields: vec![i.clone(), t("tensor<4xf32>")],
            },
        ];
        assert_eq!(check_op(&w), Ok(()));
        w.regions[1].yields = vec![i, t("tensor<4xbf16>")];
        assert!(check_op(&w).unwrap_err().contains("body returns"));
    }
}
