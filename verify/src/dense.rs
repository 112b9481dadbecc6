//! Dense reference Llama decoder in plain f32, and the per-layer building blocks it shares with
//! [`crate::host_executor`].
//!
//! One forward pass ([`forward`]) runs any set of token rows through the model against a
//! [`KvCache`], which decides where each row's keys and values live and which cached positions a
//! row attends to. [`DenseDecoder`] keeps one contiguous cache per layer for a single sequence;
//! the host executor keeps a paged pool for a batch of sequences. The math is the same code.
//!
//! Per layer, for rows `x` (`[rows, hidden]`), every weight `W` laid out `[out, in]` so that
//! `x W^T` is a dot product per output:
//! `h = rmsnorm(x) * attn_norm`; `[q | k | v] = h wqkv^T`; rotate-half RoPE on `q`, `k` at each
//! row's position; store `k`, `v`; causal grouped-query attention with scale `1/sqrt(head_dim)`;
//! `x += attn wo^T`; `h = rmsnorm(x) * ffn_norm`; `[gate | up] = h w_gate_up^T`;
//! `x += (silu(gate) * up) w_down^T`. Then the final norm and the LM head (`embed` when tied).

use runtime::model::{LayerWeights, Matrix, Model};

/// `out[rows, w.rows] = x[rows, w.cols] w^T`: output `o` of row `r` is `x[r] . w[o]`.
pub fn matmul(x: &[f32], rows: usize, w: &Matrix) -> Vec<f32> {
    debug_assert_eq!(x.len(), rows * w.cols);
    let mut out = Vec::with_capacity(rows * w.rows);
    for xr in x.chunks_exact(w.cols) {
        out.extend((0..w.rows).map(|o| dot(xr, w.row(o))));
    }
    out
}

/// `y += a * x`.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Dot product with eight independent accumulators (so it vectorizes).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// RMSNorm of each `weight.len()`-wide row: `x / sqrt(mean(x²) + eps) * weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let d = weight.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(d) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        out.extend(row.iter().zip(weight).map(|(v, w)| v * inv * w));
    }
    out
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Rotate-half rotary embedding: pairs `(i, i + d/2)` turn by `pos * theta^(-2i/d)`.
#[derive(Clone, Debug)]
pub struct Rope {
    inv_freq: Vec<f64>,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f32) -> Rope {
        let half = head_dim / 2;
        Rope {
            inv_freq: (0..half)
                .map(|i| f64::from(theta).powf(-2.0 * i as f64 / head_dim as f64))
                .collect(),
        }
    }

    /// `(cos, sin)` tables `[positions.len(), head_dim / 2]`.
    pub fn tables(&self, positions: &[u32]) -> (Vec<f32>, Vec<f32>) {
        let mut cos = Vec::with_capacity(positions.len() * self.inv_freq.len());
        let mut sin = Vec::with_capacity(cos.capacity());
        for &p in positions {
            for &f in &self.inv_freq {
                let angle = f64::from(p) * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        (cos, sin)
    }

    /// Rotates every `head_dim`-wide head of one row in place (`cos`, `sin`: that row's tables).
    pub fn apply(&self, row: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = self.inv_freq.len();
        for head in row.chunks_exact_mut(2 * half) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * cos[i] - x2 * sin[i];
                b[i] = x2 * cos[i] + x1 * sin[i];
            }
        }
    }
}

/// Where a forward pass keeps keys and values. Rows are the pass's token rows; positions are
/// indices into the row's own sequence.
pub trait KvCache {
    /// Stores layer `layer`'s keys and values of every row (`[rows, kv_heads * head_dim]` each,
    /// keys after RoPE). Called once per layer, before that layer's attention.
    fn store(&mut self, layer: usize, k: &[f32], v: &[f32]);
    /// Row `row` attends to positions `0..context_len(row)` of its sequence (0: attends nothing).
    fn context_len(&self, row: usize) -> usize;
    /// Key of KV head `head` at `pos` in row `row`'s sequence.
    fn key(&self, layer: usize, row: usize, pos: usize, head: usize) -> &[f32];
    fn value(&self, layer: usize, row: usize, pos: usize, head: usize) -> &[f32];
}

/// Causal grouped-query attention of `q` (`[rows, q_heads * head_dim]`) over the cache.
fn attention(
    model: &Model,
    layer: usize,
    q: &[f32],
    rows: usize,
    cache: &impl KvCache,
) -> Vec<f32> {
    let c = &model.config;
    let (hd, nq) = (c.head_dim, c.num_q_heads);
    let group = nq / c.num_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; rows * nq * hd];
    let mut scores = Vec::new();
    for r in 0..rows {
        let ctx = cache.context_len(r);
        if ctx == 0 {
            continue;
        }
        for h in 0..nq {
            let g = h / group;
            let qh = &q[(r * nq + h) * hd..][..hd];
            scores.clear();
            scores.extend((0..ctx).map(|p| dot(qh, cache.key(layer, r, p, g)) * scale));
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for s in &mut scores {
                *s = (*s - max).exp();
                sum += *s;
            }
            let o = &mut out[(r * nq + h) * hd..][..hd];
            for (p, &s) in scores.iter().enumerate() {
                axpy(s / sum, cache.value(layer, r, p, g), o);
            }
        }
    }
    out
}

/// One decoder layer over `x` (`[rows, hidden]`) in place.
fn layer_forward(
    model: &Model,
    layer: usize,
    w: &LayerWeights,
    x: &mut [f32],
    rows: usize,
    rope: (&Rope, &[f32], &[f32]),
    cache: &mut impl KvCache,
) {
    let c = &model.config;
    let (rope, cos, sin) = rope;
    let half = c.head_dim / 2;
    let h = rms_norm(x, &w.attn_norm, c.rms_norm_eps);
    let qkv = matmul(&h, rows, &w.wqkv);
    let (qd, kvd) = (c.q_dim(), c.kv_dim());
    let mut q = Vec::with_capacity(rows * qd);
    let mut k = Vec::with_capacity(rows * kvd);
    let mut v = Vec::with_capacity(rows * kvd);
    for row in qkv.chunks_exact(c.qkv_dim()) {
        q.extend_from_slice(&row[..qd]);
        k.extend_from_slice(&row[qd..qd + kvd]);
        v.extend_from_slice(&row[qd + kvd..]);
    }
    for r in 0..rows {
        let (cs, sn) = (&cos[r * half..][..half], &sin[r * half..][..half]);
        rope.apply(&mut q[r * qd..][..qd], cs, sn);
        rope.apply(&mut k[r * kvd..][..kvd], cs, sn);
    }
    cache.store(layer, &k, &v);
    let attn = attention(model, layer, &q, rows, cache);
    let o = matmul(&attn, rows, &w.wo);
    x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);

    let h = rms_norm(x, &w.ffn_norm, c.rms_norm_eps);
    let f = c.intermediate_size;
    let gate_up = matmul(&h, rows, &w.w_gate_up);
    let act: Vec<f32> = gate_up
        .chunks_exact(2 * f)
        .flat_map(|gu| gu[..f].iter().zip(&gu[f..]).map(|(&g, &u)| silu(g) * u))
        .collect();
    let down = matmul(&act, rows, &w.w_down);
    x.iter_mut().zip(&down).for_each(|(x, d)| *x += d);
}

/// Logits (`[vocab]`) of one final hidden row (already normed).
pub fn lm_head(model: &Model, h: &[f32]) -> Vec<f32> {
    matmul(h, 1, model.weights.head())
}

/// Runs `tokens` (at `positions`) through the model against `cache`; returns the logits of
/// `logits_rows`, `[logits_rows.len(), vocab]`. Callers check that tokens are in the vocabulary
/// and rows in range.
pub fn forward(
    model: &Model,
    rope: &Rope,
    tokens: &[u32],
    positions: &[u32],
    cache: &mut impl KvCache,
    logits_rows: &[usize],
) -> Vec<f32> {
    let c = &model.config;
    let rows = tokens.len();
    let mut x = Vec::with_capacity(rows * c.hidden_size);
    for &t in tokens {
        x.extend_from_slice(model.weights.embed.row(t as usize));
    }
    let (cos, sin) = rope.tables(positions);
    for (i, w) in model.weights.layers.iter().enumerate() {
        layer_forward(model, i, w, &mut x, rows, (rope, &cos, &sin), cache);
    }
    let mut logits = Vec::with_capacity(logits_rows.len() * c.vocab_size);
    for &r in logits_rows {
        let h = rms_norm(
            &x[r * c.hidden_size..][..c.hidden_size],
            &model.weights.final_norm,
            c.rms_norm_eps,
        );
        logits.extend(lm_head(model, &h));
    }
    logits
}

/// Index of the largest value (the first on ties).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// One sequence's contiguous KV cache: per layer, keys and values `[len, kv_heads * head_dim]`.
struct ContiguousKv {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    kv_dim: usize,
    head_dim: usize,
    /// Tokens cached before the current forward pass.
    base: usize,
}

impl KvCache for ContiguousKv {
    fn store(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        self.k[layer].extend_from_slice(k);
        self.v[layer].extend_from_slice(v);
    }

    fn context_len(&self, row: usize) -> usize {
        self.base + row + 1
    }

    fn key(&self, layer: usize, _row: usize, pos: usize, head: usize) -> &[f32] {
        &self.k[layer][pos * self.kv_dim + head * self.head_dim..][..self.head_dim]
    }

    fn value(&self, layer: usize, _row: usize, pos: usize, head: usize) -> &[f32] {
        &self.v[layer][pos * self.kv_dim + head * self.head_dim..][..self.head_dim]
    }
}

/// A single-sequence decoder with a contiguous KV cache.
pub struct DenseDecoder<'a> {
    model: &'a Model,
    rope: Rope,
    cache: ContiguousKv,
}

impl<'a> DenseDecoder<'a> {
    pub fn new(model: &'a Model) -> DenseDecoder<'a> {
        let c = &model.config;
        DenseDecoder {
            model,
            rope: Rope::new(c.head_dim, c.rope_theta),
            cache: ContiguousKv {
                k: vec![Vec::new(); c.num_layers],
                v: vec![Vec::new(); c.num_layers],
                kv_dim: c.num_kv_heads * c.head_dim,
                head_dim: c.head_dim,
                base: 0,
            },
        }
    }

    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.cache.base
    }

    pub fn is_empty(&self) -> bool {
        self.cache.base == 0
    }

    /// Appends `tokens` to the sequence and returns the logits (`[vocab]`) after its last token.
    ///
    /// # Panics
    /// If `tokens` is empty or holds an id outside the vocabulary.
    pub fn forward(&mut self, tokens: &[u32]) -> Vec<f32> {
        self.forward_rows(tokens, &[tokens.len().wrapping_sub(1)])
    }

    /// Like [`DenseDecoder::forward`], returning the logits after every one of `tokens`
    /// (`[tokens.len(), vocab]`).
    pub fn forward_all(&mut self, tokens: &[u32]) -> Vec<f32> {
        self.forward_rows(tokens, &(0..tokens.len()).collect::<Vec<_>>())
    }

    fn forward_rows(&mut self, tokens: &[u32], rows: &[usize]) -> Vec<f32> {
        assert!(
            !tokens.is_empty(),
            "DenseDecoder::forward needs at least one token"
        );
        let vocab = self.model.config.vocab_size;
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            panic!("token {t} outside the vocabulary of {vocab}");
        }
        let base = self.cache.base;
        let positions: Vec<u32> = (base..base + tokens.len()).map(|p| p as u32).collect();
        let logits = forward(
            self.model,
            &self.rope,
            tokens,
            &positions,
            &mut self.cache,
            rows,
        );
        self.cache.base += tokens.len();
        logits
    }
}

/// Greedy decoding: prefill `prompt`, then pick the most likely token up to `max_new_tokens`
/// times. Returns the new tokens; generation stops after (and includes) the first stop id.
pub fn generate_greedy(
    model: &Model,
    prompt: &[u32],
    max_new_tokens: usize,
    stop_ids: &[u32],
) -> Vec<u32> {
    let mut dec = DenseDecoder::new(model);
    let mut out = Vec::new();
    if max_new_tokens == 0 {
        return out;
    }
    let mut logits = dec.forward(prompt);
    loop {
        let t = argmax(&logits);
        out.push(t);
        if out.len() == max_new_tokens || stop_ids.contains(&t) {
            return out;
        }
        logits = dec.forward(&[t]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rng() -> (u64, rand_chacha::ChaCha8Rng) {
        let seed = rand::random();
        (seed, rand_chacha::ChaCha8Rng::seed_from_u64(seed))
    }

    #[test]
    fn matmul_matches_naive() {
        let (seed, mut rng) = rng();
        for _ in 0..20 {
            let (n, k, m) = (
                rng.random_range(1..20),
                rng.random_range(1..40),
                rng.random_range(1..40),
            );
            let x: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let w = Matrix::new(
                m,
                k,
                (0..k * m).map(|_| rng.random_range(-1.0..1.0)).collect(),
            );
            let y = matmul(&x, n, &w);
            for r in 0..n {
                for c in 0..m {
                    let want: f64 = (0..k)
                        .map(|i| f64::from(x[r * k + i]) * f64::from(w.data[c * k + i]))
                        .sum();
                    assert!((f64::from(y[r * m + c]) - want).abs() < 1e-4, "seed {seed}");
                }
                let d = dot(&x[r * k..][..k], &x[r * k..][..k]);
                let want: f32 = x[r * k..][..k].iter().map(|v| v * v).sum();
                assert!((d - want).abs() <= 1e-4 * want.max(1.0), "seed {seed}");
            }
        }
    }

    /// RoPE is a rotation (norm-preserving), the identity at position 0, and relative: the dot
    /// product of a rotated query and key depends only on the position difference.
    #[test]
    fn rope_is_a_relative_rotation() {
        let (seed, mut rng) = rng();
        let hd = 2 * rng.random_range(1..17);
        let rope = Rope::new(hd, 10000.0);
        let q: Vec<f32> = (0..hd).map(|_| rng.random_range(-1.0..1.0)).collect();
        let k: Vec<f32> = (0..hd).map(|_| rng.random_range(-1.0..1.0)).collect();
        let rot = |v: &[f32], p: u32| {
            let (c, s) = rope.tables(&[p]);
            let mut v = v.to_vec();
            rope.apply(&mut v, &c, &s);
            v
        };
        assert_eq!(rot(&q, 0), q);
        let (p, d) = (rng.random_range(0..500), rng.random_range(0..500));
        let norm = |v: &[f32]| dot(v, v).sqrt();
        assert!((norm(&rot(&q, p)) - norm(&q)).abs() < 1e-4, "seed {seed}");
        let a = dot(&rot(&q, p + d), &rot(&k, p));
        let b = dot(&rot(&q, d), &k);
        assert!((a - b).abs() < 1e-3, "seed {seed}: {a} vs {b}");
    }

    #[test]
    fn rms_norm_has_unit_rms_with_unit_weight() {
        let (seed, mut rng) = rng();
        let d = rng.random_range(1..100);
        let x: Vec<f32> = (0..3 * d).map(|_| rng.random_range(-10.0..10.0)).collect();
        let y = rms_norm(&x, &vec![1.0; d], 0.0);
        for row in y.chunks(d) {
            let rms = (row.iter().map(|v| v * v).sum::<f32>() / d as f32).sqrt();
            assert!((rms - 1.0).abs() < 1e-4, "seed {seed}: {rms}");
        }
    }
}
