//! The Llama family (Llama, Qwen2, Mistral): token embedding, pre-RMSNorm blocks with rotary
//! grouped-query attention and a SwiGLU MLP, final RMSNorm, tied or untied head.
//!
//! Weights are `nn.Linear`, (out, in): q_proj (Hq·D, C), k_proj and v_proj (Hkv·D, C),
//! o_proj (C, Hq·D), gate_proj and up_proj (I, C), down_proj (C, I).
//!
//! block(h):  a = h + o_proj(attn(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))),  n = rms(h)
//!            h' = a + down_proj(silu(gate_proj(rms(a))) · up_proj(rms(a)))

use super::{
    attend, cached_attention, need, recomputed_attention, recomputed_layer, Attend, Init, Inputs, Lookup,
    Model, ParamSpec, ParamVars, Recompute,
};
use crate::autograd::{Tape, Var, WeightLayout};
use crate::error::Result;
use crate::model::{ModelConfig, RopeScaling};
use crate::tensor::Tensor;
use std::sync::Arc;

const OI: WeightLayout = WeightLayout::OutIn;

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
    let freqs = inv_freq(c);
    let positions = x.positions.clone();
    let mut h = tape.embedding(&x.ids, m.var(p, "model.embed_tokens.weight")?)?;
    // Only the first norm stands alone: every later one is fused with the residual add before it
    // (add_rms_norm returns the new residual stream and its norm).
    let mut n = match c.num_layers {
        0 => return tape.rms_norm(&h, m.var(p, "model.norm.weight")?, eps),
        _ => tape.rms_norm(&h, m.var(p, &layer(0, "input_layernorm.weight"))?, eps)?,
    };
    // Recomputation applies to training forwards over packed sequences.
    let owned = x.owned_sequences().filter(|_| tape.grad_enabled());
    let mode = if owned.is_some() { m.recompute() } else { Recompute::None };
    // Without a gradient, each layer's gate and up projections run as one product when their
    // weights sit next to each other in the parameter buffer (no MLP bias between them).
    let gate_up = match tape.grad_enabled() {
        true => vec![],
        false => (0..c.num_layers).map(|l| gate_up_weight(m, l)).collect::<Result<_>>()?,
    };
    let ctx = Arc::new(Ctx { c: c.clone(), positions, freqs, gate_up });
    for l in 0..c.num_layers {
        (h, n) = match (mode, &owned) {
            (Recompute::Layers, Some(seq)) => {
                let ctx = ctx.clone();
                let (prefix, next) = (layer(l, ""), [norm_after(c, l)]);
                recomputed_layer(tape, m, p, (&h, &n), (&prefix, &next), seq, move |t, x, w, h, n| {
                    block(t, &ctx, l, x, w, h, n, None)
                })?
            }
            _ => {
                let attn = (mode == Recompute::Attention).then_some((m, p));
                block(tape, &ctx, l, x, &|name| m.var_opt(p, name).cloned(), &h, &n, attn)?
            }
        };
    }
    Ok(n)
}

/// What every layer shares: the configuration, each row's position, the rotary frequencies, and
/// (forwards without a gradient) each layer's gate and up weights as one (2I, C) matrix.
struct Ctx {
    c: ModelConfig,
    positions: Tensor,
    freqs: Arc<[f64]>,
    gate_up: Vec<Option<Tensor>>,
}

/// Layer l's gate_proj and up_proj weights as one (2I, C) view of the parameter buffer, when the
/// second follows the first there.
fn gate_up_weight(m: &Model, l: usize) -> Result<Option<Tensor>> {
    let p = m.params();
    let (g, u) = (p.entry(&layer(l, "mlp.gate_proj.weight")), p.entry(&layer(l, "mlp.up_proj.weight")));
    match (g, u) {
        (Some(g), Some(u)) if g.shape == u.shape && u.offset == g.offset + g.numel() => {
            let (i, c) = (g.shape[0], g.shape[1]);
            Ok(Some(p.weights().narrow(0, g.offset, 2 * i * c)?.reshape([2 * i, c])?))
        }
        _ => Ok(None),
    }
}

/// The norm that reads the residual stream after layer l's MLP: layer l + 1's input norm, or the
/// final one.
fn norm_after(c: &ModelConfig, l: usize) -> String {
    if l + 1 < c.num_layers {
        layer(l + 1, "input_layernorm.weight")
    } else {
        "model.norm.weight".into()
    }
}

/// Layer l from the residual stream h and its norm n to the next (h, n). With `recompute_attn`
/// (the model and its bound parameters), the attention block is a recomputed segment.
#[allow(clippy::too_many_arguments)]
fn block(
    tape: &mut Tape,
    ctx: &Arc<Ctx>,
    l: usize,
    x: &mut Inputs,
    w: Lookup,
    h: &Var,
    n: &Var,
    recompute_attn: Option<(&Model, &ParamVars)>,
) -> Result<(Var, Var)> {
    let (c, eps) = (&ctx.c, ctx.c.norm_eps);
    let v = |rest: &str| need(w, &layer(l, rest));
    let b = |name: &str| w(&layer(l, &format!("{name}.bias")));
    let a = match (recompute_attn, x.owned_sequences()) {
        (Some((m, p)), Some(seq)) => {
            let names: Vec<String> = ["q_proj", "k_proj", "v_proj"]
                .iter()
                .flat_map(|pr| ["weight", "bias"].map(|t| layer(l, &format!("self_attn.{pr}.{t}"))))
                .collect();
            let ctx = ctx.clone();
            recomputed_attention(tape, m, p, n, &names, seq, move |t, x, w, n| {
                attention(t, &ctx, l, x, w, n)
            })?
        }
        _ => attention(tape, ctx, l, x, w, n)?,
    };
    let o = tape.linear(&a, &v("self_attn.o_proj.weight")?, b("self_attn.o_proj").as_ref(), OI)?;
    let (h, n) = tape.add_rms_norm(h, &o, &v("post_attention_layernorm.weight")?, eps)?;
    let f = match ctx.gate_up.get(l).cloned().flatten() {
        Some(w) => {
            let gu = tape.linear(&n, &Var::constant(w), None, OI)?;
            tape.swiglu_packed(&gu)?
        }
        None => {
            let g = tape.linear(&n, &v("mlp.gate_proj.weight")?, b("mlp.gate_proj").as_ref(), OI)?;
            let u = tape.linear(&n, &v("mlp.up_proj.weight")?, b("mlp.up_proj").as_ref(), OI)?;
            tape.swiglu(&g, &u)?
        }
    };
    let f = tape.linear(&f, &v("mlp.down_proj.weight")?, b("mlp.down_proj").as_ref(), OI)?;
    tape.add_rms_norm(&h, &f, &need(w, &norm_after(c, l))?, eps)
}

/// Layer l's attention before its output projection: q, k, v from the normed input n, the rotary
/// embedding, attention over what `x` says.
fn attention(tape: &mut Tape, ctx: &Ctx, l: usize, x: &mut Inputs, w: Lookup, n: &Var) -> Result<Var> {
    let c = &ctx.c;
    let v = |rest: &str| need(w, &layer(l, rest));
    let b = |name: &str| w(&layer(l, &format!("{name}.bias")));
    let q = tape.linear(n, &v("self_attn.q_proj.weight")?, b("self_attn.q_proj").as_ref(), OI)?;
    let k = tape.linear(n, &v("self_attn.k_proj.weight")?, b("self_attn.k_proj").as_ref(), OI)?;
    let vv = tape.linear(n, &v("self_attn.v_proj.weight")?, b("self_attn.v_proj").as_ref(), OI)?;
    if let Attend::Cache { cache, step } = &mut x.attend {
        if step.fresh().is_none() {
            // Decoding: one pass rotates q and k and appends k and v to the cache.
            let heads = (c.num_heads, c.num_kv_heads);
            let q = cache.rope_append(l, step, q.value(), k.value(), vv.value(), &ctx.freqs, heads)?;
            return cached_attention(tape, cache, step, l, c, &Var::constant(q));
        }
    }
    let q = tape.rope(&q, &ctx.positions, ctx.freqs.clone(), c.num_heads)?;
    let k = tape.rope(&k, &ctx.positions, ctx.freqs.clone(), c.num_kv_heads)?;
    attend(tape, x, l, c, &q, &k, &vv)
}
