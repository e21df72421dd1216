//! GPT-2: learned token and position embeddings, pre-LayerNorm blocks, fused q|k|v projection,
//! tanh GELU MLP, final LayerNorm, head tied to the token embedding.
//!
//! Weights keep the Hugging Face Conv1D layout, (in, out): c_attn (C, 3C), attn.c_proj (C, C),
//! c_fc (C, I), mlp.c_proj (I, C).
//!
//! block(h):  a = h + c_proj(attn(split(c_attn(ln_1(h)))))
//!            h' = a + mlp.c_proj(gelu(c_fc(ln_2(a))))

use super::{
    attend, need, recomputed_attention, recomputed_layer, Init, Inputs, Lookup, Model, ParamSpec, ParamVars,
    Recompute,
};
use crate::autograd::{Tape, Var, WeightLayout};
use crate::error::Result;
use crate::model::ModelConfig;
use std::sync::Arc;

const IO: WeightLayout = WeightLayout::InOut;

fn layer(i: usize, rest: &str) -> String {
    format!("transformer.h.{i}.{rest}")
}

pub(super) fn param_specs(c: &ModelConfig) -> Vec<ParamSpec> {
    let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let w = Init::Normal { std: c.initializer_range };
    // As transformers: residual projections get std / √(2·layers).
    let w_res = Init::Normal { std: c.initializer_range / (2.0 * c.num_layers as f64).sqrt() };
    let mut s = vec![
        ParamSpec::new("transformer.wte.weight", &[v, h], w),
        ParamSpec::new("transformer.wpe.weight", &[c.max_position_embeddings, h], w),
    ];
    for l in 0..c.num_layers {
        s.extend([
            ParamSpec::new(layer(l, "ln_1.weight"), &[h], Init::Ones),
            ParamSpec::new(layer(l, "ln_1.bias"), &[h], Init::Zeros),
            ParamSpec::new(layer(l, "attn.c_attn.weight"), &[h, 3 * h], w),
            ParamSpec::new(layer(l, "attn.c_attn.bias"), &[3 * h], Init::Zeros),
            ParamSpec::new(layer(l, "attn.c_proj.weight"), &[h, h], w_res),
            ParamSpec::new(layer(l, "attn.c_proj.bias"), &[h], Init::Zeros),
            ParamSpec::new(layer(l, "ln_2.weight"), &[h], Init::Ones),
            ParamSpec::new(layer(l, "ln_2.bias"), &[h], Init::Zeros),
            ParamSpec::new(layer(l, "mlp.c_fc.weight"), &[h, i], w),
            ParamSpec::new(layer(l, "mlp.c_fc.bias"), &[i], Init::Zeros),
            ParamSpec::new(layer(l, "mlp.c_proj.weight"), &[i, h], w_res),
            ParamSpec::new(layer(l, "mlp.c_proj.bias"), &[h], Init::Zeros),
        ]);
    }
    s.extend([
        ParamSpec::new("transformer.ln_f.weight", &[h], Init::Ones),
        ParamSpec::new("transformer.ln_f.bias", &[h], Init::Zeros),
    ]);
    if !c.tie_word_embeddings {
        s.push(ParamSpec::new("lm_head.weight", &[v, h], w));
    }
    s
}

pub(super) fn forward(m: &Model, tape: &mut Tape, p: &ParamVars, x: &mut Inputs) -> Result<Var> {
    let c = &m.config;
    let eps = c.norm_eps;
    let var = |name: &str| m.var(p, name);
    let tok = tape.embedding(&x.ids, var("transformer.wte.weight")?)?;
    let positions = x.positions.clone();
    let pos = tape.embedding(&positions, var("transformer.wpe.weight")?)?;
    let mut hs = tape.add(&tok, &pos)?;
    // Only the first norm stands alone: every later one is fused with the residual add before it
    // (add_layer_norm returns the new residual stream and its norm).
    let mut n = match c.num_layers {
        0 => {
            let (w, b) = (var("transformer.ln_f.weight")?, var("transformer.ln_f.bias")?);
            return tape.layer_norm(&hs, w, b, eps);
        }
        _ => tape.layer_norm(&hs, var(&layer(0, "ln_1.weight"))?, var(&layer(0, "ln_1.bias"))?, eps)?,
    };
    // Recomputation applies to training forwards over packed sequences.
    let owned = x.owned_sequences().filter(|_| tape.grad_enabled());
    let mode = if owned.is_some() { m.recompute() } else { Recompute::None };
    let cfg = Arc::new(c.clone());
    for l in 0..c.num_layers {
        (hs, n) = match (mode, &owned) {
            (Recompute::Layers, Some(seq)) => {
                let cfg = cfg.clone();
                let (prefix, next) = (layer(l, ""), norm_after(c, l));
                recomputed_layer(tape, m, p, (&hs, &n), (&prefix, &next), seq, move |t, x, w, h, n| {
                    block(t, &cfg, l, x, w, h, n, None)
                })?
            }
            _ => {
                let attn = (mode == Recompute::Attention).then_some((m, p));
                block(tape, &cfg, l, x, &|name| m.var_opt(p, name).cloned(), &hs, &n, attn)?
            }
        };
    }
    Ok(n)
}

/// The LayerNorm (weight, bias) that reads the residual stream after layer l's MLP: layer l + 1's
/// ln_1, or ln_f.
fn norm_after(c: &ModelConfig, l: usize) -> [String; 2] {
    if l + 1 < c.num_layers {
        [layer(l + 1, "ln_1.weight"), layer(l + 1, "ln_1.bias")]
    } else {
        ["transformer.ln_f.weight".into(), "transformer.ln_f.bias".into()]
    }
}

/// Layer l from the residual stream hs and its norm n to the next (hs, n). With `recompute_attn`
/// (the model and its bound parameters), the attention block is a recomputed segment.
#[allow(clippy::too_many_arguments)]
fn block(
    tape: &mut Tape,
    c: &Arc<ModelConfig>,
    l: usize,
    x: &mut Inputs,
    w: Lookup,
    hs: &Var,
    n: &Var,
    recompute_attn: Option<(&Model, &ParamVars)>,
) -> Result<(Var, Var)> {
    let eps = c.norm_eps;
    let v = |rest: &str| need(w, &layer(l, rest));
    let a = match (recompute_attn, x.owned_sequences()) {
        (Some((m, p)), Some(seq)) => {
            let names = [layer(l, "attn.c_attn.weight"), layer(l, "attn.c_attn.bias")];
            let c = c.clone();
            recomputed_attention(tape, m, p, n, &names, seq, move |t, x, w, n| attention(t, &c, l, x, w, n))?
        }
        _ => attention(tape, c, l, x, w, n)?,
    };
    let o = tape.linear(&a, &v("attn.c_proj.weight")?, Some(&v("attn.c_proj.bias")?), IO)?;
    let (hs, n) = tape.add_layer_norm(hs, &o, &v("ln_2.weight")?, &v("ln_2.bias")?, eps)?;
    let f = tape.linear(&n, &v("mlp.c_fc.weight")?, Some(&v("mlp.c_fc.bias")?), IO)?;
    let f = tape.gelu(&f)?;
    let f = tape.linear(&f, &v("mlp.c_proj.weight")?, Some(&v("mlp.c_proj.bias")?), IO)?;
    let [nw, nb] = norm_after(c, l);
    tape.add_layer_norm(&hs, &f, &need(w, &nw)?, &need(w, &nb)?, eps)
}

/// Layer l's attention before its output projection: the fused q|k|v projection of the normed
/// input n, split, attention over what `x` says.
fn attention(tape: &mut Tape, c: &ModelConfig, l: usize, x: &mut Inputs, w: Lookup, n: &Var) -> Result<Var> {
    let h = c.hidden_size;
    let qkv = tape.linear(
        n,
        &need(w, &layer(l, "attn.c_attn.weight"))?,
        Some(&need(w, &layer(l, "attn.c_attn.bias"))?),
        IO,
    )?;
    let q = tape.narrow_cols(&qkv, 0, h)?;
    let k = tape.narrow_cols(&qkv, h, h)?;
    let vv = tape.narrow_cols(&qkv, 2 * h, h)?;
    attend(tape, x, l, c, &q, &k, &vv)
}
