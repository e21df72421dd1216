//! GPT-2: learned token and position embeddings, pre-LayerNorm blocks, fused q|k|v projection,
//! tanh GELU MLP, final LayerNorm, head tied to the token embedding.
//!
//! Weights keep the Hugging Face Conv1D layout, (in, out): c_attn (C, 3C), attn.c_proj (C, C),
//! c_fc (C, I), mlp.c_proj (I, C).
//!
//! block(h):  a = h + c_proj(attn(split(c_attn(ln_1(h)))))
//!            h' = a + mlp.c_proj(gelu(c_fc(ln_2(a))))

use super::cached_ops::{add_assign, gather_rows, linear};
use super::kv_cache::KvCache;
use super::{Init, Model, ParamSpec, ParamVars, TokenBatch};
use crate::autograd::{AttentionSpec, Tape, Var, WeightLayout};
use crate::backend::cpu;
use crate::error::Result;
use crate::model::ModelConfig;

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

pub(super) fn forward_hidden(m: &Model, tape: &mut Tape, p: &ParamVars, batch: &TokenBatch) -> Result<Var> {
    let c = &m.config;
    let (h, eps) = (c.hidden_size, c.norm_eps);
    let var = |name: &str| m.var(p, name);
    const IO: WeightLayout = WeightLayout::InOut;
    let tok = tape.embedding(&batch.ids, var("transformer.wte.weight")?)?;
    let positions = batch.positions();
    let pos = tape.embedding(&positions, var("transformer.wpe.weight")?)?;
    let mut x = tape.add(tok, pos)?;
    let spec = AttentionSpec {
        batch: batch.batch(),
        seq: batch.seq,
        q_heads: c.num_heads,
        kv_heads: c.num_heads,
        head_dim: c.head_dim,
    };
    for l in 0..c.num_layers {
        let v = |rest: &str| var(&layer(l, rest));
        let n = tape.layernorm(x, v("ln_1.weight")?, v("ln_1.bias")?, eps)?;
        let qkv = tape.linear(n, v("attn.c_attn.weight")?, Some(v("attn.c_attn.bias")?), IO)?;
        let q = tape.narrow_cols(qkv, 0, h)?;
        let k = tape.narrow_cols(qkv, h, h)?;
        let vv = tape.narrow_cols(qkv, 2 * h, h)?;
        let a = tape.attention(q, k, vv, spec, &batch.lengths)?;
        let o = tape.linear(a, v("attn.c_proj.weight")?, Some(v("attn.c_proj.bias")?), IO)?;
        x = tape.add(x, o)?;
        let n = tape.layernorm(x, v("ln_2.weight")?, v("ln_2.bias")?, eps)?;
        let f = tape.linear(n, v("mlp.c_fc.weight")?, Some(v("mlp.c_fc.bias")?), IO)?;
        let f = tape.gelu(f)?;
        let f = tape.linear(f, v("mlp.c_proj.weight")?, Some(v("mlp.c_proj.bias")?), IO)?;
        x = tape.add(x, f)?;
    }
    tape.layernorm(x, var("transformer.ln_f.weight")?, var("transformer.ln_f.bias")?, eps)
}

pub(super) fn forward_cached(m: &Model, cache: &mut KvCache, chunks: &[(usize, &[u32])]) -> Result<Vec<f32>> {
    let c = &m.config;
    let (hd, inter, eps) = (c.hidden_size, c.intermediate_size, c.norm_eps);
    let plan = cache.plan(chunks)?;
    let ids: Vec<u32> = chunks.iter().flat_map(|(_, t)| t.iter().copied()).collect();
    let positions = KvCache::positions(&plan);
    let mut x = cpu::embedding_fwd(&ids, m.f32("transformer.wte.weight")?, hd);
    add_assign(&mut x, &cpu::embedding_fwd(&positions, m.f32("transformer.wpe.weight")?, hd));
    for l in 0..c.num_layers {
        let w = |rest: &str| m.f32(&layer(l, rest));
        let n = cpu::layernorm_fwd(&x, w("ln_1.weight")?, w("ln_1.bias")?, hd, eps).y;
        let qkv = linear(&n, w("attn.c_attn.weight")?, Some(w("attn.c_attn.bias")?), hd, 3 * hd, true);
        let q = cpu::narrow_cols_fwd(&qkv, 3 * hd, 0, hd);
        let k = cpu::narrow_cols_fwd(&qkv, 3 * hd, hd, hd);
        let v = cpu::narrow_cols_fwd(&qkv, 3 * hd, 2 * hd, hd);
        let a = cache.attend(l, &plan, c.num_heads, &q, &k, &v);
        add_assign(&mut x, &linear(&a, w("attn.c_proj.weight")?, Some(w("attn.c_proj.bias")?), hd, hd, true));
        let n = cpu::layernorm_fwd(&x, w("ln_2.weight")?, w("ln_2.bias")?, hd, eps).y;
        let f = cpu::gelu_tanh_fwd(&linear(
            &n,
            w("mlp.c_fc.weight")?,
            Some(w("mlp.c_fc.bias")?),
            hd,
            inter,
            true,
        ));
        add_assign(
            &mut x,
            &linear(&f, w("mlp.c_proj.weight")?, Some(w("mlp.c_proj.bias")?), inter, hd, true),
        );
    }
    let last: Vec<usize> = plan.iter().map(|c| c.row0 + c.rows - 1).collect();
    let x = gather_rows(&x, hd, &last);
    let n =
        cpu::layernorm_fwd(&x, m.f32("transformer.ln_f.weight")?, m.f32("transformer.ln_f.bias")?, hd, eps).y;
    Ok(linear(&n, m.f32(m.lm_head_name())?, None, hd, c.vocab_size, false))
}
