//! GPT-2: learned token and position embeddings, pre-LayerNorm blocks, fused q|k|v projection,
//! tanh GELU MLP, final LayerNorm, head tied to the token embedding.
//!
//! Weights keep the Hugging Face Conv1D layout, (in, out): c_attn (C, 3C), attn.c_proj (C, C),
//! c_fc (C, I), mlp.c_proj (I, C).
//!
//! block(h):  a = h + c_proj(attn(split(c_attn(ln_1(h)))))
//!            h' = a + mlp.c_proj(gelu(c_fc(ln_2(a))))

use super::{attend, Init, Inputs, Model, ParamSpec, ParamVars};
use crate::autograd::{Tape, Var, WeightLayout};
use crate::error::Result;
use crate::model::ModelConfig;
use crate::tensor::Tensor;

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
    let (h, eps) = (c.hidden_size, c.norm_eps);
    let var = |name: &str| m.var(p, name);
    const IO: WeightLayout = WeightLayout::InOut;
    let tok = tape.embedding(&x.ids, var("transformer.wte.weight")?)?;
    let positions = Tensor::from_u32(&x.positions, m.device())?;
    let pos = tape.embedding(&positions, var("transformer.wpe.weight")?)?;
    let mut hs = tape.add(&tok, &pos)?;
    // The norm that reads the residual stream after layer l's MLP: layer l + 1's ln_1, or ln_f.
    let norm_after = |l: usize| -> Result<(&Var, &Var)> {
        if l + 1 < c.num_layers {
            Ok((var(&layer(l + 1, "ln_1.weight"))?, var(&layer(l + 1, "ln_1.bias"))?))
        } else {
            Ok((var("transformer.ln_f.weight")?, var("transformer.ln_f.bias")?))
        }
    };
    // Only the first norm stands alone: every later one is fused with the residual add before it
    // (add_layer_norm returns the new residual stream and its norm).
    let mut n = match c.num_layers {
        0 => {
            let (w, b) = (var("transformer.ln_f.weight")?, var("transformer.ln_f.bias")?);
            return tape.layer_norm(&hs, w, b, eps);
        }
        _ => tape.layer_norm(&hs, var(&layer(0, "ln_1.weight"))?, var(&layer(0, "ln_1.bias"))?, eps)?,
    };
    for l in 0..c.num_layers {
        let v = |rest: &str| var(&layer(l, rest));
        let qkv = tape.linear(&n, v("attn.c_attn.weight")?, Some(v("attn.c_attn.bias")?), IO)?;
        let q = tape.narrow_cols(&qkv, 0, h)?;
        let k = tape.narrow_cols(&qkv, h, h)?;
        let vv = tape.narrow_cols(&qkv, 2 * h, h)?;
        let a = attend(tape, x, l, c, &q, &k, &vv)?;
        let o = tape.linear(&a, v("attn.c_proj.weight")?, Some(v("attn.c_proj.bias")?), IO)?;
        (hs, n) = tape.add_layer_norm(&hs, &o, v("ln_2.weight")?, v("ln_2.bias")?, eps)?;
        let f = tape.linear(&n, v("mlp.c_fc.weight")?, Some(v("mlp.c_fc.bias")?), IO)?;
        let f = tape.gelu(&f)?;
        let f = tape.linear(&f, v("mlp.c_proj.weight")?, Some(v("mlp.c_proj.bias")?), IO)?;
        let (w, b) = norm_after(l)?;
        (hs, n) = tape.add_layer_norm(&hs, &f, w, b, eps)?;
    }
    Ok(n)
}
