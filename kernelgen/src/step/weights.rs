//! The step program's weight parameters, in order, borrowed from the loaded model: it holds
//! them in the step's layout ([`runtime::model`]: `[out, in]`, q/k/v and gate/up stacked), so
//! packing copies nothing.

use runtime::model::{LlamaConfig, LlamaWeights};
use std::borrow::Cow;

/// One weight parameter: name (for the program's argument list), dims and row-major data.
pub struct WeightParam<'a> {
    pub name: String,
    pub dims: Vec<i64>,
    pub data: Cow<'a, [f32]>,
}

/// RoPE inverse frequencies `theta^(-2i/d)`, i < d/2 (Hugging Face rotate-half convention).
pub fn rope_inv_freq(m: &LlamaConfig) -> Vec<f32> {
    let d = m.head_dim;
    (0..d / 2)
        .map(|i| (m.rope_theta as f64).powf(-((2 * i) as f64) / d as f64) as f32)
        .collect()
}

/// Names and dims of [`pack_weights`]' parameters, in order, from the config alone.
pub fn pack_weights_dims(m: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (h, f, v) = (m.hidden_size, m.intermediate_size, m.vocab_size);
    let mut out = vec![
        ("rope_inv_freq".to_string(), vec![m.head_dim / 2]),
        ("embed".to_string(), vec![v, h]),
    ];
    for i in 0..m.num_layers {
        out.push((format!("l{i}_attn_norm"), vec![h]));
        out.push((format!("l{i}_wqkv"), vec![m.qkv_dim(), h]));
        out.push((format!("l{i}_wo"), vec![h, m.q_dim()]));
        out.push((format!("l{i}_ffn_norm"), vec![h]));
        out.push((format!("l{i}_w_gate_up"), vec![2 * f, h]));
        out.push((format!("l{i}_w_down"), vec![h, f]));
    }
    out.push(("final_norm".to_string(), vec![h]));
    if !m.tie_word_embeddings {
        out.push(("lm_head".to_string(), vec![v, h]));
    }
    out
}

/// The weights in parameter order, borrowed; names and dims are [`pack_weights_dims`]'.
pub fn pack_weights<'a>(m: &LlamaConfig, w: &'a LlamaWeights) -> Vec<WeightParam<'a>> {
    let mut data: Vec<Cow<'a, [f32]>> = vec![rope_inv_freq(m).into(), (&w.embed.data[..]).into()];
    for l in &w.layers {
        data.push((&l.attn_norm[..]).into());
        data.push((&l.wqkv.data[..]).into());
        data.push((&l.wo.data[..]).into());
        data.push((&l.ffn_norm[..]).into());
        data.push((&l.w_gate_up.data[..]).into());
        data.push((&l.w_down.data[..]).into());
    }
    data.push((&w.final_norm[..]).into());
    if let Some(head) = &w.lm_head {
        data.push((&head.data[..]).into());
    }
    let dims = pack_weights_dims(m);
    debug_assert_eq!(dims.len(), data.len(), "weights vs config (tied LM head?)");
    dims.into_iter()
        .zip(data)
        .map(|((name, dims), data)| WeightParam {
            name,
            dims: dims.iter().map(|&d| d as i64).collect(),
            data,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use verify::fixtures::tiny::{tiny_weights, TinyConfig};

    #[test]
    fn pack_weights_dims_lists_what_pack_weights_packs() {
        for tied in [false, true] {
            let cfg = TinyConfig {
                tie_word_embeddings: tied,
                ..Default::default()
            };
            let config = cfg.llama_config();
            let weights = tiny_weights(3, &cfg);
            let packed = pack_weights(&config, &weights);
            let names: Vec<(String, Vec<usize>)> = packed
                .iter()
                .map(|w| (w.name.clone(), w.dims.iter().map(|&d| d as usize).collect()))
                .collect();
            assert_eq!(names, pack_weights_dims(&config), "tied: {tied}");
            for w in &packed {
                let n: i64 = w.dims.iter().product();
                assert_eq!(w.data.len() as i64, n, "{} holds what its dims say", w.name);
            }
        }
    }
}
