//! Programs that take the step apart, for `kernelgen bench decode`'s breakdown of where a step's
//! time goes.
//!
//! [`matmul_chain_program`] is the step's projections alone, in order and dependent on each
//! other as in the model (QKV, O, gate/up, down per layer, then the LM head), reading the very
//! weight buffers the step reads. Its parameters are `x f32[rows, H]` followed by every weight
//! of [`super::layout::pack_weights`] in order (norms and RoPE frequencies are passed but
//! unused), so it runs against [`super::DeviceExecutor::weights`] without another upload.

use super::layout::pack_weights_dims;
use crate::model::LlamaConfig;
use std::fmt::Write;

fn t(dims: &[usize]) -> String {
    let d: Vec<String> = dims.iter().map(usize::to_string).collect();
    format!("tensor<{}xf32>", d.join("x"))
}

/// `x @ W^T` for `W` laid out `[out, in]`.
fn dot(out: &str, x: &str, w: &str, rows: usize, i: usize, o: usize) -> String {
    format!(
        "    {out} = \"stablehlo.dot_general\"({x}, {w}) {{dot_dimension_numbers = #stablehlo.dot<lhs_contracting_dimensions = [1], rhs_contracting_dimensions = [1]>}} : ({}, {}) -> {}\n",
        t(&[rows, i]),
        t(&[o, i]),
        t(&[rows, o])
    )
}

fn slice(out: &str, x: &str, rows: usize, cols: usize, from: usize, to: usize) -> String {
    format!(
        "    {out} = \"stablehlo.slice\"({x}) {{limit_indices = array<i64: {rows}, {to}>, start_indices = array<i64: 0, {from}>, strides = array<i64: 1, 1>}} : ({}) -> {}\n",
        t(&[rows, cols]),
        t(&[rows, to - from])
    )
}

fn binary(op: &str, out: &str, a: &str, b: &str, ty: &str) -> String {
    format!("    {out} = \"stablehlo.{op}\"({a}, {b}) : ({ty}, {ty}) -> {ty}\n")
}

/// The step's matmuls at `rows` token rows, as one program returning the logits.
pub fn matmul_chain_program(m: &LlamaConfig, rows: usize) -> String {
    let h = m.hidden_size;
    let qd = m.num_q_heads * m.head_dim;
    let qkv = qd + 2 * m.num_kv_heads * m.head_dim;
    let f = m.intermediate_size;
    let v = m.vocab_size;
    let params = pack_weights_dims(m);
    let mut sig = vec![format!("%x: {}", t(&[rows, h]))];
    sig.extend(
        params
            .iter()
            .map(|(name, dims)| format!("%{name}: {}", t(dims))),
    );
    let th = t(&[rows, h]);
    let tf = t(&[rows, f]);
    let mut body = String::new();
    let mut x = "%x".to_string();
    for i in 0..m.num_layers {
        let p = format!("%l{i}");
        body += &dot(&format!("{p}_qkv"), &x, &format!("{p}_wqkv"), rows, h, qkv);
        body += &slice(&format!("{p}_a"), &format!("{p}_qkv"), rows, qkv, 0, qd);
        body += &dot(
            &format!("{p}_o"),
            &format!("{p}_a"),
            &format!("{p}_wo"),
            rows,
            qd,
            h,
        );
        body += &binary("add", &format!("{p}_x1"), &x, &format!("{p}_o"), &th);
        let gu = format!("{p}_gu");
        body += &dot(
            &gu,
            &format!("{p}_x1"),
            &format!("{p}_w_gate_up"),
            rows,
            h,
            2 * f,
        );
        body += &slice(&format!("{p}_g"), &gu, rows, 2 * f, 0, f);
        body += &slice(&format!("{p}_u"), &gu, rows, 2 * f, f, 2 * f);
        body += &binary(
            "multiply",
            &format!("{p}_m"),
            &format!("{p}_g"),
            &format!("{p}_u"),
            &tf,
        );
        body += &dot(
            &format!("{p}_d"),
            &format!("{p}_m"),
            &format!("{p}_w_down"),
            rows,
            f,
            h,
        );
        let next = format!("%h{i}");
        body += &binary("add", &next, &format!("{p}_x1"), &format!("{p}_d"), &th);
        x = next;
    }
    let head = if m.tie_word_embeddings {
        "%embed"
    } else {
        "%lm_head"
    };
    body += &dot("%logits", &x, head, rows, h, v);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "// the step's matmuls alone: {} layers, {rows} rows (runtime/src/step/profile.rs)",
        m.num_layers
    );
    let _ = writeln!(
        out,
        "func.func @main({}) -> {} {{\n{body}    return %logits : {}\n}}",
        sig.join(", "),
        t(&[rows, v]),
        t(&[rows, v])
    );
    out
}
