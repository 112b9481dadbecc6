//! The step program's weight parameters, in order: the RoPE table, then each [`Part`] of the
//! model in [`Part::all`]'s order, in the layout [`runtime::model`] loads (`[out, in]`, q/k/v
//! and gate/up stacked), so uploading copies each part once and transposes nothing.

use half::bf16;
use runtime::dtype::Dtype;
use runtime::engine::EngineError;
use runtime::model::{LlamaConfig, Part, WeightSource};
use runtime::pjrt::{Buffer, Client};
use serde::Serialize;

/// RoPE inverse frequencies `theta^(-2i/d)`, i < d/2 (Hugging Face rotate-half convention).
pub fn rope_inv_freq(m: &LlamaConfig) -> Vec<f32> {
    let d = m.head_dim;
    (0..d / 2)
        .map(|i| (m.rope_theta as f64).powf(-((2 * i) as f64) / d as f64) as f32)
        .collect()
}

/// One weight parameter of the step program.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeightParam {
    pub name: String,
    pub dims: Vec<usize>,
    /// The matrices (embedding, projections, LM head) are the served weights' dtype; norms
    /// and RoPE frequencies stay f32 (a few thousand values, read once a step), and so do the
    /// split LM head's tables (its 8-bit screen's element type is `elem`'s alone).
    pub dtype: Dtype,
    /// The MLIR element type the program declares: `dtype`'s, or `ui16` for the LM head's
    /// matrix held as two 16-bit planes (`dims` then `[2, V, H]`), or `i8` for its screen.
    pub elem: &'static str,
}

impl WeightParam {
    pub fn bytes(&self) -> u64 {
        let n = self.dims.iter().product::<usize>() as u64;
        match self.elem {
            SPLIT_ELEM => 2 * n,
            SCREEN_ELEM => n,
            _ => n * self.dtype.bytes(),
        }
    }
}

/// The element type of a matrix held as two 16-bit planes ([`runtime::kernels::lm_head`]).
const SPLIT_ELEM: &str = "ui16";

/// The element type of the split LM head's 8-bit screen ([`runtime::kernels::lm_head::tables`]).
const SCREEN_ELEM: &str = "i8";

/// The part whose matrix the LM head reads: the embedding when tied.
pub fn head_part(m: &LlamaConfig) -> Part {
    if m.tie_word_embeddings {
        Part::Embed
    } else {
        Part::LmHead
    }
}

/// Names and dims of the step's weight parameters, in order, from the config alone.
pub fn pack_weights_dims(m: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    std::iter::once(("rope_inv_freq".to_string(), vec![m.head_dim / 2]))
        .chain(Part::all(m).into_iter().map(|p| (p.name(), p.dims(m))))
        .collect()
}

/// The step's weight parameters, in order, with `weights` the matrices' dtype and, if
/// `split_head`, the LM head's matrix as two 16-bit planes and its tables last
/// (`head_rows f32[2, V]` and `head_screen i8[V, H]`, [`runtime::kernels::lm_head::tables`]).
pub fn weight_params(m: &LlamaConfig, weights: Dtype, split_head: bool) -> Vec<WeightParam> {
    let head = head_part(m).name();
    let tables = [
        WeightParam {
            name: "head_rows".into(),
            dims: vec![2, m.vocab_size],
            dtype: Dtype::F32,
            elem: "f32",
        },
        WeightParam {
            name: "head_screen".into(),
            dims: vec![m.vocab_size, m.hidden_size],
            dtype: Dtype::F32,
            elem: SCREEN_ELEM,
        },
    ];
    let params = pack_weights_dims(m).into_iter().map(|(name, dims)| {
        let dtype = param_dtype(&dims, weights);
        if split_head && name == head {
            WeightParam {
                dims: [2].into_iter().chain(dims).collect(),
                name,
                dtype,
                elem: SPLIT_ELEM,
            }
        } else {
            WeightParam {
                name,
                dims,
                dtype,
                elem: dtype.mlir(),
            }
        }
    });
    let tables = if split_head { &tables[..] } else { &[] };
    params.chain(tables.iter().cloned()).collect()
}

/// The dtype of a weight parameter of `dims` when the matrices are `weights`: matrices take
/// it, vectors (norms, RoPE frequencies) stay f32.
fn param_dtype<T>(dims: &[T], weights: Dtype) -> Dtype {
    if dims.len() == 2 {
        weights
    } else {
        Dtype::F32
    }
}

/// Values in the step's weight parameters.
pub fn num_params(m: &LlamaConfig) -> u64 {
    pack_weights_dims(m)
        .iter()
        .map(|(_, d)| d.iter().product::<usize>() as u64)
        .sum()
}

/// Bytes of the step's weight parameters with matrices in `weights`, the LM head's tables
/// included when `split_head` ([`weight_params`]: its planes are the f32 matrix's bytes).
pub fn weight_bytes(m: &LlamaConfig, weights: Dtype, split_head: bool) -> u64 {
    weight_params(m, weights, split_head)
        .iter()
        .map(WeightParam::bytes)
        .sum()
}

/// Uploads the weight parameters, returned in [`pack_weights_dims`] order. Each part is taken
/// from `src` only when its turn comes, into a scratch buffer that later parts reuse (the upload
/// copies during the call), so streaming from a [`runtime::model::ModelFile`] holds one part's
/// worth of host memory besides what is already uploaded. Parts go largest first, and the
/// scratch is swapped for a smaller one once the parts left are less than half its size: the
/// embedding (and an untied LM head), a fifth of a small model, is then not held a second time
/// while every other part is uploaded.
///
/// Under tensor parallelism (`tp` devices) device `d` (`[d]` of the result) gets its shard of
/// each part ([`super::tp::shard_part`]), in the shard model's dims. Matrices are uploaded in
/// `weights` ([`weight_params`]): bf16 rounds each value to nearest even. With `split_head`
/// (one device, f32) the LM head's matrix goes up as its two 16-bit planes
/// ([`runtime::kernels::lm_head::split`]), and its tables after every part
/// ([`weight_params`], [`runtime::kernels::lm_head::tables`]).
pub fn upload_weights(
    client: &Client,
    src: &dyn WeightSource,
    tp: usize,
    weights: Dtype,
    split_head: bool,
) -> Result<Vec<Vec<Buffer>>, EngineError> {
    let m = src.config();
    let shard = super::tp::shard_config(m, tp).map_err(|e| EngineError::Config(e.to_string()))?;
    let dims = |d: &[usize]| d.iter().map(|&d| d as i64).collect::<Vec<i64>>();
    let rope = rope_inv_freq(m);
    let up_err = |what: String| move |e| EngineError::Executor(format!("uploading {what}: {e}"));
    let mut uploaded: Vec<Vec<Option<Buffer>>> = Vec::with_capacity(tp);
    let parts = Part::all(m);
    for d in 0..tp {
        let rope = client
            .buffer_from_host_on(d, &rope, &[rope.len() as i64])
            .map_err(up_err("rope_inv_freq".into()))?;
        uploaded.push(
            std::iter::once(Some(rope))
                .chain(parts.iter().map(|_| None))
                .collect(),
        );
    }
    let len = |p: Part| p.dims(m).iter().product::<usize>();
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(len(parts[i])));
    let mut scratch: Vec<f32> = Vec::new();
    let mut narrowed: Vec<bf16> = Vec::new();
    let mut head_tables: Option<(Vec<f32>, Vec<i8>)> = None;
    for i in order {
        let p = parts[i];
        if scratch.capacity() > 2 * len(p) {
            scratch = Vec::with_capacity(len(p));
            narrowed = Vec::new();
        }
        let data = src
            .part(p, &mut scratch)
            .map_err(|e| EngineError::Executor(format!("uploading {}: {e}", p.name())))?;
        for (d, device) in uploaded.iter_mut().enumerate() {
            let part = super::tp::shard_part(m, tp, d, p, data);
            let shape = dims(&p.dims(&shard));
            let buffer = if split_head && p == head_part(m) {
                let planes = runtime::kernels::lm_head::split(&part);
                let k = m.hidden_size;
                head_tables.get_or_insert_with(|| runtime::kernels::lm_head::tables(&planes, k));
                let shape: Vec<i64> = [2].into_iter().chain(shape).collect();
                client.buffer_from_host_on(d, &planes, &shape)
            } else if param_dtype(&shape, weights) == Dtype::Bf16 {
                narrowed.clear();
                narrowed.extend(part.iter().map(|&x| bf16::from_f32(x)));
                client.buffer_from_host_on(d, &narrowed, &shape)
            } else {
                client.buffer_from_host_on(d, &part, &shape)
            }
            .map_err(up_err(p.name()))?;
            device[i + 1] = Some(buffer);
        }
    }
    let mut devices: Vec<Vec<Buffer>> = uploaded
        .into_iter()
        .map(|device| device.into_iter().flatten().collect())
        .collect();
    if let Some((rows, screen)) = head_tables {
        let (v, h) = (m.vocab_size as i64, m.hidden_size as i64);
        for (d, device) in devices.iter_mut().enumerate() {
            let rows = client
                .buffer_from_host_on(d, &rows, &[2, v])
                .map_err(up_err("head_rows".into()))?;
            let screen = client
                .buffer_from_host_on(d, &screen, &[v, h])
                .map_err(up_err("head_screen".into()))?;
            device.extend([rows, screen]);
        }
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::model::Model;
    use verify::fixtures::tiny::{tiny_weights, TinyConfig};

    /// Every parameter `pack_weights_dims` lists is what a loaded model lends for it.
    #[test]
    fn pack_weights_dims_lists_what_the_model_holds() {
        for tied in [false, true] {
            let cfg = TinyConfig {
                tie_word_embeddings: tied,
                ..Default::default()
            };
            let config = cfg.llama_config();
            let model = Model {
                weights: tiny_weights(3, &cfg),
                config: config.clone(),
                source: "tiny".into(),
            };
            let dims = pack_weights_dims(&config);
            let parts = Part::all(&config);
            assert_eq!(dims.len(), parts.len() + 1, "tied: {tied}");
            assert_eq!(dims[0].1, vec![config.head_dim / 2]);
            for ((name, d), p) in dims[1..].iter().zip(parts) {
                assert_eq!(name, &p.name());
                let n: usize = d.iter().product();
                assert_eq!(
                    model.part(p, &mut Vec::new()).unwrap().len(),
                    n,
                    "{name} holds what its dims say"
                );
            }
            let head = dims.iter().any(|(n, _)| n == "lm_head");
            assert_eq!(head, !tied, "an lm_head parameter only when untied");
        }
    }
}
