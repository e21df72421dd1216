//! The Llama family (Llama, Qwen2, Mistral): token embedding, pre-RMSNorm blocks with rotary
//! grouped-query attention and a SwiGLU MLP, final RMSNorm, tied or untied head.
//!
//! Weights are `nn.Linear`, (out, in): q_proj (Hq·D, C), k_proj and v_proj (Hkv·D, C),
//! o_proj (C, Hq·D), gate_proj and up_proj (I, C), down_proj (C, I).
//!
//! block(h):  a = h + o_proj(attn(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))),  n = rms(h)
//!            h' = a + down_proj(silu(gate_proj(rms(a))) · up_proj(rms(a)))

use super::{attend, Init, Inputs, Model, ParamSpec, ParamVars};
use crate::autograd::{Tape, Var, WeightLayout};
use crate::error::Result;
use crate::model::{ModelConfig, RopeScaling};
use crate::tensor::Tensor;
use std::sync::Arc;

fn layer(i: usize, rest: &str) -> String {
    format!("model.layers.{i}.{rest}")
}

pub(super) fn param_specs(c: &ModelConfig) -> Vec<ParamSpec> {
    let (h, i, v, q, kv) = (c.hidden_size, c.intermediate_size, c.vocab_size, c.q_dim(), c.kv_dim());
    let w = Init::Normal { std: c.initializer_range };
    let mut s = vec![ParamSpec::new("model.embed_tokens.weight", &[v, h], w)];
    for l in 0..c.num_layers {
        let mut proj = |name: &str, out: usize, inp: usize, bias: bool| {
            s.push(ParamSpec::new(layer(l, &format!("{name}.weight")), &[out, inp], w));
            if bias {
                s.push(ParamSpec::new(layer(l, &format!("{name}.bias")), &[out], Init::Zeros));
            }
        };
        proj("self_attn.q_proj", q, h, c.qkv_bias);
        proj("self_attn.k_proj", kv, h, c.qkv_bias);
        proj("self_attn.v_proj", kv, h, c.qkv_bias);
        proj("self_attn.o_proj", h, q, c.o_bias);
        proj("mlp.gate_proj", i, h, c.mlp_bias);
        proj("mlp.up_proj", i, h, c.mlp_bias);
        proj("mlp.down_proj", h, i, c.mlp_bias);
        s.push(ParamSpec::new(layer(l, "input_layernorm.weight"), &[h], Init::Ones));
        s.push(ParamSpec::new(layer(l, "post_attention_layernorm.weight"), &[h], Init::Ones));
    }
    s.push(ParamSpec::new("model.norm.weight", &[h], Init::Ones));
    if !c.tie_word_embeddings {
        s.push(ParamSpec::new("lm_head.weight", &[v, h], w));
    }
    s
}

/// RoPE inverse frequencies, (D/2): θ^(−2i/D), rescaled as the config says. Computed in f32 as
/// transformers computes them, so that positions rotate by the same angles.
pub fn inv_freq(c: &ModelConfig) -> Arc<[f64]> {
    let d = c.head_dim;
    let base: Vec<f32> =
        (0..d / 2).map(|i| 1.0 / (c.rope_theta as f32).powf((2 * i) as f32 / d as f32)).collect();
    let scaled: Vec<f32> = match c.rope_scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor as f32).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => {
            let (factor, lo, hi, old) =
                (factor as f32, low_freq_factor as f32, high_freq_factor as f32, old as f32);
            let (low_wavelen, high_wavelen) = (old / lo, old / hi);
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        // Between the two: interpolate between f / factor and f.
                        let smooth = (old / wavelen - lo) / (hi - lo);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    };
    scaled.into_iter().map(f64::from).collect()
}

pub(super) fn forward(m: &Model, tape: &mut Tape, p: &ParamVars, x: &mut Inputs) -> Result<Var> {
    let c = &m.config;
    let eps = c.norm_eps;
    const OI: WeightLayout = WeightLayout::OutIn;
    let freqs = inv_freq(c);
    let positions = Tensor::from_u32(&x.positions, m.device())?;
    let mut h = tape.embedding(&x.ids, m.var(p, "model.embed_tokens.weight")?)?;
    // The norm that reads the residual stream after layer l's MLP: layer l + 1's input norm, or
    // the final one.
    let norm_after = |l: usize| {
        if l + 1 < c.num_layers {
            m.var(p, &layer(l + 1, "input_layernorm.weight"))
        } else {
            m.var(p, "model.norm.weight")
        }
    };
    // Only the first norm stands alone: every later one is fused with the residual add before it
    // (add_rms_norm returns the new residual stream and its norm).
    let mut n = match c.num_layers {
        0 => return tape.rms_norm(&h, m.var(p, "model.norm.weight")?, eps),
        _ => tape.rms_norm(&h, m.var(p, &layer(0, "input_layernorm.weight"))?, eps)?,
    };
    for l in 0..c.num_layers {
        let v = |rest: &str| m.var(p, &layer(l, rest));
        let b = |name: &str| m.var_opt(p, &layer(l, &format!("{name}.bias")));
        let q = tape.linear(&n, v("self_attn.q_proj.weight")?, b("self_attn.q_proj"), OI)?;
        let k = tape.linear(&n, v("self_attn.k_proj.weight")?, b("self_attn.k_proj"), OI)?;
        let vv = tape.linear(&n, v("self_attn.v_proj.weight")?, b("self_attn.v_proj"), OI)?;
        let q = tape.rope(&q, &positions, freqs.clone(), c.num_heads)?;
        let k = tape.rope(&k, &positions, freqs.clone(), c.num_kv_heads)?;
        let a = attend(tape, x, l, c, &q, &k, &vv)?;
        let o = tape.linear(&a, v("self_attn.o_proj.weight")?, b("self_attn.o_proj"), OI)?;
        (h, n) = tape.add_rms_norm(&h, &o, v("post_attention_layernorm.weight")?, eps)?;
        let g = tape.linear(&n, v("mlp.gate_proj.weight")?, b("mlp.gate_proj"), OI)?;
        let u = tape.linear(&n, v("mlp.up_proj.weight")?, b("mlp.up_proj"), OI)?;
        let f = tape.swiglu(&g, &u)?;
        let f = tape.linear(&f, v("mlp.down_proj.weight")?, b("mlp.down_proj"), OI)?;
        (h, n) = tape.add_rms_norm(&h, &f, norm_after(l)?, eps)?;
    }
    Ok(n)
}
