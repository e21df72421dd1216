//! Every tape op at the shapes it is tested at, listed once: `tests/device_ops.rs` runs them on
//! every backend, `tests/gradcheck.rs` checks their gradients in f64 by finite differences.
//!
//! Inputs are ordinary values (normal, σ 1 to 3), so that no gradient is near zero; shapes are
//! awkward on purpose (odd widths, rows that divide nothing, padded sequences, grouped heads,
//! several loss chunks, head rows past the vocabulary).
#![allow(dead_code)]

use super::harness::{Case, Input, Tol, TOL};
use gkd::autograd::{AttnDims, LinearLoss, LinearLossTarget, LossKind, WeightLayout};
use gkd::backend::ops::IGNORE;
use gkd::backend::Divergence;
use gkd::model::{Arch, FreshConfig, ModelConfig, RopeScaling};
use gkd::Tensor;
use std::sync::Arc;

fn u32s(v: &[u32], device: gkd::Device) -> gkd::Result<Tensor> {
    Tensor::from_u32(v, device)
}

/// The embedding's tolerances. f32: the CPU f32 run against f64 (sums of up to N rounded values,
/// ~N·2⁻²⁴ relative); the GPU copies rows bit for bit and adds the same f32 values in the same
/// order as the CPU reference, so in either dtype it must match that reference exactly (bf16: 0
/// up to printing; 1e-7 leaves room for nothing but a wrong sum).
const EMBEDDING_TOL: Tol = Tol { f32: TOL.f32, bf16: 1e-7 };

pub fn embedding(vocab: usize, dim: usize, ids: Vec<u32>) -> Case {
    Case::new(
        format!("embedding_{vocab}x{dim}_{}", ids.len()),
        vec![Input::normal("table", &[vocab, dim], 0.0, 1.0, 1, true)],
        Box::new(move |t, v, d| t.embedding(&u32s(&ids, d)?, &v[0])),
    )
    .tol(EMBEDDING_TOL)
    .on_cuda()
}

/// `rows` ids into a vocabulary of `vocab`: every `hot`-th row (0: none) takes id 7 (one bucket
/// of many rows), the others spread over the vocabulary (most of it empty when vocab > rows).
pub fn embedding_ids(rows: usize, vocab: usize, hot: usize) -> Vec<u32> {
    (0..rows).map(|r| if hot > 0 && r % hot == 0 { 7 } else { (r * 7919 % vocab) as u32 }).collect()
}

pub fn linear(x: &[usize], d_out: usize, layout: WeightLayout, bias: bool) -> Case {
    let d_in = *x.last().unwrap();
    let w = match layout {
        WeightLayout::OutIn => [d_out, d_in],
        WeightLayout::InOut => [d_in, d_out],
    };
    let mut inputs =
        vec![Input::normal("x", x, 0.0, 1.0, 2, true), Input::normal("w", &w, 0.0, 0.5, 3, true)];
    if bias {
        inputs.push(Input::normal("b", &[d_out], 0.0, 1.0, 4, true));
    }
    Case::new(
        format!("linear_{x:?}_{d_out}_{layout:?}{}", if bias { "_bias" } else { "" }),
        inputs,
        Box::new(move |t, v, _| t.linear(&v[0], &v[1], v.get(2), layout)),
    )
    .on_cuda()
}

pub fn rms_norm(rows: usize, cols: usize) -> Case {
    Case::new(
        format!("rms_norm_{rows}x{cols}"),
        vec![
            Input::normal("x", &[rows, cols], 0.5, 3.0, 5, true),
            Input::normal("w", &[cols], 1.0, 0.5, 6, true),
        ],
        Box::new(|t, v, _| t.rms_norm(&v[0], &v[1], 1e-5)),
    )
    .on_cuda()
}

pub fn layer_norm(rows: usize, cols: usize) -> Case {
    Case::new(
        format!("layer_norm_{rows}x{cols}"),
        vec![
            Input::normal("x", &[rows, cols], 0.5, 3.0, 7, true),
            Input::normal("w", &[cols], 1.0, 0.5, 8, true),
            Input::normal("b", &[cols], 0.0, 0.5, 9, true),
        ],
        Box::new(|t, v, _| t.layer_norm(&v[0], &v[1], &v[2], 1e-5)),
    )
    .on_cuda()
}

/// The rotary embedding's tolerances. f32: the CPU f32 run against f64 (cos and sin rounded to
/// f32, 2⁻²⁴ relative); the GPU rounds like the CPU f32 run except for a rare cos/sin a last bit
/// apart. bf16: the GPU rounds each output to bf16, 2⁻⁹ of that element at most, so ≤ 2⁻⁹ of the
/// largest: 2e-3, with a factor 2 of room.
const ROPE_TOL: Tol = Tol { f32: TOL.f32, bf16: 4e-3 };

/// The residual add fused with RMSNorm. The closure returns sum + gelu(y), so that both outputs
/// carry a gradient of their own (dsum = dout, dy = dout·gelu'(y)) into the fused backward;
/// `y_only` returns y alone (the backward without dsum, as the model's last norm).
pub fn add_rms_norm(rows: usize, cols: usize, y_only: bool) -> Case {
    Case::new(
        format!("add_rms_norm_{rows}x{cols}{}", if y_only { "_y" } else { "" }),
        vec![
            Input::normal("x", &[rows, cols], 0.5, 3.0, 27, true),
            Input::normal("r", &[rows, cols], -0.3, 2.0, 28, true),
            Input::normal("w", &[cols], 1.0, 0.5, 29, true),
        ],
        Box::new(move |t, v, _| {
            let (sum, y) = t.add_rms_norm(&v[0], &v[1], &v[2], 1e-5)?;
            if y_only {
                return Ok(y);
            }
            let g = t.gelu(&y)?;
            t.add(&sum, &g)
        }),
    )
    .on_cuda()
}

/// The residual add fused with LayerNorm, returning sum + gelu(y) (see `add_rms_norm`).
pub fn add_layer_norm(rows: usize, cols: usize, y_only: bool) -> Case {
    Case::new(
        format!("add_layer_norm_{rows}x{cols}{}", if y_only { "_y" } else { "" }),
        vec![
            Input::normal("x", &[rows, cols], 0.5, 3.0, 30, true),
            Input::normal("r", &[rows, cols], -0.3, 2.0, 31, true),
            Input::normal("w", &[cols], 1.0, 0.5, 32, true),
            Input::normal("b", &[cols], 0.0, 0.5, 33, true),
        ],
        Box::new(move |t, v, _| {
            let (sum, y) = t.add_layer_norm(&v[0], &v[1], &v[2], &v[3], 1e-5)?;
            if y_only {
                return Ok(y);
            }
            let g = t.gelu(&y)?;
            t.add(&sum, &g)
        }),
    )
    .on_cuda()
}

pub fn rope(heads: usize, head_dim: usize, positions: Vec<u32>) -> Case {
    let inv_freq: Arc<[f64]> =
        (0..head_dim / 2).map(|i| 1.0 / 10000f64.powf(2.0 * i as f64 / head_dim as f64)).collect();
    rope_with("", heads, inv_freq, positions)
}

/// The rotary embedding with these inverse frequencies (D = 2·inv_freq.len()); `tag` names them.
pub fn rope_with(tag: &str, heads: usize, inv_freq: Arc<[f64]>, positions: Vec<u32>) -> Case {
    let head_dim = 2 * inv_freq.len();
    Case::new(
        format!(
            "rope{tag}_{}x{heads}x{head_dim}_maxpos{}",
            positions.len(),
            positions.iter().max().unwrap_or(&0)
        ),
        vec![Input::normal("x", &[positions.len(), heads * head_dim], 0.0, 1.0, 10, true)],
        Box::new(move |t, v, d| t.rope(&v[0], &u32s(&positions, d)?, inv_freq.clone(), heads)),
    )
    .tol(ROPE_TOL)
    .on_cuda()
}

/// Llama 3.1's RoPE frequencies (θ = 500000, factor 8, low and high frequency factors 1 and 4,
/// 8192 original positions) at head dimension `head_dim`, computed by the model's own code.
pub fn llama3_inv_freq(head_dim: usize) -> Arc<[f64]> {
    let mut c = ModelConfig::fresh(FreshConfig {
        arch: Arch::Llama,
        vocab_size: 16,
        hidden_size: 2 * head_dim,
        num_layers: 1,
        num_heads: 2,
        num_kv_heads: 2,
        intermediate_size: 16,
        max_position_embeddings: 131072,
        rope_theta: 500000.0,
        tie_word_embeddings: false,
        bos_token_id: None,
        eos_token_ids: vec![],
        pad_token_id: None,
    })
    .unwrap();
    c.rope_scaling = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192.0,
    };
    gkd::model::rope_inv_freq(&c)
}

/// `rows` positions spread over 0..=max (the first 0, the last max).
pub fn spread_positions(rows: usize, max: u32) -> Vec<u32> {
    (0..rows).map(|r| if r + 1 == rows { max } else { (r as u64 * 7919 % (max as u64 + 1)) as u32 }).collect()
}

/// Causal attention over sequences of `lengths`: right-padded to T = the longest (rows of no
/// sequence between them) or packed back to back.
pub fn attention(lengths: Vec<u32>, q_heads: usize, kv_heads: usize, head_dim: usize, packed: bool) -> Case {
    let (b, t) = (lengths.len(), *lengths.iter().max().unwrap());
    let starts: Vec<u32> = if packed {
        lengths.iter().scan(0, |at, &l| Some(std::mem::replace(at, *at + l))).collect()
    } else {
        (0..b as u32).map(|i| i * t).collect()
    };
    let rows = if packed { lengths.iter().sum::<u32>() } else { b as u32 * t } as usize;
    let d = AttnDims::new(rows, b, q_heads, kv_heads, head_dim);
    Case::new(
        format!(
            "attention_{}_{q_heads}q{kv_heads}kv_d{head_dim}_len{lengths:?}",
            if packed { "packed" } else { "padded" }
        ),
        vec![
            Input::normal("q", &[rows, q_heads * head_dim], 0.0, 1.0, 11, true),
            Input::normal("k", &[rows, kv_heads * head_dim], 0.0, 1.0, 12, true),
            Input::normal("v", &[rows, kv_heads * head_dim], 0.0, 1.0, 13, true),
        ],
        Box::new(move |tp, v, dev| {
            tp.attention(&v[0], &v[1], &v[2], d, &u32s(&starts, dev)?, &u32s(&lengths, dev)?)
        }),
    )
    .on_cuda()
}

pub fn gelu(n: usize) -> Case {
    Case::new(
        format!("gelu_{n}"),
        vec![Input::normal("x", &[n], 0.0, 2.0, 14, true)],
        Box::new(|t, v, _| t.gelu(&v[0])),
    )
    .on_cuda()
}

pub fn swiglu(n: usize) -> Case {
    Case::new(
        format!("swiglu_{n}"),
        vec![Input::normal("gate", &[n], 0.0, 2.0, 15, true), Input::normal("up", &[n], 0.0, 1.0, 16, true)],
        Box::new(|t, v, _| t.swiglu(&v[0], &v[1])),
    )
    .on_cuda()
}

pub fn add(n: usize) -> Case {
    Case::new(
        format!("add_{n}"),
        vec![
            Input::normal("a", &[n, 3], 0.0, 1.0, 17, true),
            Input::normal("b", &[n, 3], 0.0, 1.0, 18, true),
        ],
        Box::new(|t, v, _| t.add(&v[0], &v[1])),
    )
    .on_cuda()
}

pub fn narrow_cols(rows: usize, width: usize, start: usize, len: usize) -> Case {
    Case::new(
        format!("narrow_cols_{rows}x{width}_{start}+{len}"),
        vec![Input::normal("x", &[rows, width], 0.0, 1.0, 19, true)],
        Box::new(move |t, v, _| t.narrow_cols(&v[0], start, len)),
    )
    .on_cuda()
}

pub fn cross_entropy(rows: usize, vocab: usize) -> Case {
    // Every third row ignored; the others' targets spread over the vocabulary.
    let targets: Vec<u32> =
        (0..rows).map(|r| if r % 3 == 1 { IGNORE } else { (r * 7919 % vocab) as u32 }).collect();
    Case::new(
        format!("cross_entropy_{rows}x{vocab}"),
        vec![Input::normal("logits", &[rows, vocab], 0.0, 2.0, 20, true)],
        Box::new(move |t, v, d| Ok(t.cross_entropy(&v[0], &u32s(&targets, d)?, 0.2)?.0)),
    )
    .on_cuda()
}

pub const DIVERGENCES: [Divergence; 7] = [
    Divergence::ForwardKl,
    Divergence::ReverseKl,
    Divergence::Jsd { beta: 0.3 },
    Divergence::Jsd { beta: 0.9 },
    Divergence::Tvd,
    Divergence::SkewForwardKl { alpha: 0.2 },
    Divergence::SkewReverseKl { alpha: 0.4 },
];

/// D(teacher ‖ student) over (rows, vocab) logits at τ = 0.7; row 1 masked out.
pub fn divergence(div: Divergence, rows: usize, vocab: usize) -> Case {
    let mask: Vec<u8> = (0..rows).map(|r| u8::from(r != 1)).collect();
    Case::new(
        format!("divergence_{div}_{rows}x{vocab}"),
        vec![
            Input::normal("student", &[rows, vocab], 0.0, 2.0, 21, true),
            Input::normal("teacher", &[rows, vocab], 0.0, 2.0, 22, false),
        ],
        Box::new(move |t, v, d| {
            let m = Tensor::from_host(gkd::tensor::CpuStorage::U8(mask.clone()), [mask.len()], d)?;
            Ok(t.divergence(&v[0], v[1].value(), Some(&m), div, 0.7, 0.5)?.0)
        }),
    )
    .on_cuda()
}

/// The output head fused with the loss: hidden (rows, h) and a head of `vocab` + 3 rows (padding
/// past the vocabulary), in chunks of `chunk` rows; with `teacher`, a divergence against a teacher
/// of hidden size h + 2.
pub fn linear_loss(rows: usize, h: usize, vocab: usize, chunk: usize, teacher: Option<Divergence>) -> Case {
    let head_rows = vocab + 3;
    let mut inputs = vec![
        Input::normal("hidden", &[rows, h], 0.0, 1.0, 23, true),
        Input::normal("head", &[head_rows, h], 0.0, 0.6, 24, true),
    ];
    let name = match teacher {
        Some(div) => {
            inputs.push(Input::normal("teacher_hidden", &[rows, h + 2], 0.0, 1.0, 25, false));
            inputs.push(Input::normal("teacher_head", &[vocab + 1, h + 2], 0.0, 0.6, 26, false));
            format!("linear_loss_{div}_{rows}x{h}_v{vocab}_chunk{chunk}")
        }
        None => format!("linear_loss_ce_{rows}x{h}_v{vocab}_chunk{chunk}"),
    };
    let targets: Vec<u32> =
        (0..rows).map(|r| if r % 4 == 2 { IGNORE } else { (r * 31 % vocab) as u32 }).collect();
    Case::new(
        name,
        inputs,
        Box::new(move |t, v, d| {
            let (kind, target_t);
            let target = match teacher {
                Some(divergence) => {
                    kind = LossKind::Divergence { divergence, temperature: 1.5 };
                    LinearLossTarget::Teacher { hidden: v[2].value(), head: v[3].value() }
                }
                None => {
                    kind = LossKind::CrossEntropy;
                    target_t = u32s(&targets, d)?;
                    LinearLossTarget::Tokens(&target_t)
                }
            };
            let spec = LinearLoss { kind, vocab, scale: 0.125, chunk_rows: chunk };
            Ok(t.linear_loss(&v[0], &v[1], target, &spec)?.0)
        }),
    )
    .on_cuda()
}

/// The fused head's cross-entropy with a weight per row (RL's policy-gradient term): weights of
/// both signs, exactly 0 on some rows, and ignored targets on others (they stay 0 whatever their
/// weight); a head of `vocab` + 3 rows, in chunks of `chunk` rows.
pub fn linear_loss_weighted(rows: usize, h: usize, vocab: usize, chunk: usize) -> Case {
    let inputs = vec![
        Input::normal("hidden", &[rows, h], 0.0, 1.0, 27, true),
        Input::normal("head", &[vocab + 3, h], 0.0, 0.6, 28, true),
    ];
    let targets: Vec<u32> =
        (0..rows).map(|r| if r % 5 == 3 { IGNORE } else { (r * 7919 % vocab) as u32 }).collect();
    // In [−1.5, 1.5] by steps of 0.3, 0 where r·7 mod 11 = 5.
    let weights: Vec<f32> = (0..rows).map(|r| ((r * 7 % 11) as f32 - 5.0) * 0.3).collect();
    Case::new(
        format!("linear_loss_weighted_ce_{rows}x{h}_v{vocab}_chunk{chunk}"),
        inputs,
        Box::new(move |t, v, d| {
            let target_t = u32s(&targets, d)?;
            let weight_t =
                Tensor::from_host(gkd::tensor::CpuStorage::F32(weights.clone()), [weights.len()], d)?;
            let target = LinearLossTarget::WeightedTokens { targets: &target_t, weights: &weight_t };
            let spec = LinearLoss { kind: LossKind::CrossEntropy, vocab, scale: 0.125, chunk_rows: chunk };
            Ok(t.linear_loss(&v[0], &v[1], target, &spec)?.0)
        }),
    )
    .on_cuda()
}

/// The small cases: every op, at shapes a finite-difference check in f64 can afford.
pub fn small() -> Vec<Case> {
    let mut c = vec![
        embedding(13, 7, vec![3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]),
        // Many rows on one id (every third), most of a larger vocabulary never used.
        embedding(40, 5, embedding_ids(30, 40, 3)),
        linear(&[9, 13], 7, WeightLayout::OutIn, true),
        linear(&[3, 4, 13], 7, WeightLayout::InOut, false),
        linear(&[5, 11], 6, WeightLayout::InOut, true),
        rms_norm(13, 33),
        layer_norm(13, 33),
        rope(3, 8, vec![0, 5, 2, 9, 1, 3, 300]),
        rope_with("_llama3", 2, llama3_inv_freq(16), vec![0, 1, 4000, 8191, 17, 9000]),
        attention(vec![5, 3], 4, 2, 8, false),
        attention(vec![3], 7, 1, 4, false),
        attention(vec![4, 1, 2], 2, 2, 6, true),
        // Longer than the CPU kernel's 64-row query tiles: three tiles, the last one partial.
        attention(vec![150, 3], 2, 1, 4, true),
        gelu(257),
        swiglu(257),
        add(41),
        narrow_cols(6, 12, 4, 5),
        // Width, start and length multiples of 8: whole 16-byte packs in f32 and bf16.
        narrow_cols(5, 24, 8, 16),
        add_rms_norm(13, 33, false),
        add_rms_norm(7, 33, true),
        add_layer_norm(13, 33, false),
        add_layer_norm(7, 33, true),
        cross_entropy(7, 50),
        linear_loss(9, 12, 20, 4, None),
        linear_loss_weighted(9, 12, 20, 4),
    ];
    c.extend(DIVERGENCES.iter().map(|&d| divergence(d, 5, 64)));
    c.extend(DIVERGENCES.iter().map(|&d| linear_loss(9, 12, 20, 4, Some(d))));
    c
}

/// Larger shapes, for the backends' comparison only (vectorized and multi-block paths, the
/// multi-threaded CPU GEMM, several rows per block).
pub fn large() -> Vec<Case> {
    vec![
        // Vectorized rows (C = 896, 4096), several rank tiles of 256 rows, a hot bucket
        // (every 4th row on one id) and a vocabulary larger than the rows (two scan tiles of 4096).
        embedding(5000, 896, embedding_ids(700, 5000, 4)),
        embedding(300, 4096, embedding_ids(257, 300, 3)),
        // Odd C: the element-wise paths.
        embedding(2000, 897, embedding_ids(600, 2000, 5)),
        // Qwen2-0.5B's heads (14 × 64), Llama's head dimension 128, positions up to ~8000.
        rope(14, 64, spread_positions(300, 8000)),
        rope(4, 128, spread_positions(200, 7999)),
        rope_with("_llama3", 4, llama3_inv_freq(128), spread_positions(200, 8000)),
        linear(&[130, 65], 33, WeightLayout::OutIn, true),
        linear(&[40, 300], 900, WeightLayout::OutIn, false),
        linear(&[70, 96], 288, WeightLayout::InOut, true),
        rms_norm(300, 896),
        rms_norm(1031, 129),
        layer_norm(300, 896),
        layer_norm(64, 4099),
        // The CUDA kernels' awkward shapes: lengths that are no multiple of any tile (16 scalar,
        // 32 and 64 tensor-core), 7:1 and 14:2 grouped heads and a single key/value head, head dim
        // 64 and 128 (the bf16 tensor-core kernels; f32 takes the scalar ones), padded and packed,
        // and head dim 256 (the scalar kernels' limit, shared memory above 48 KiB). bf16 keeps the
        // default 2e-2: the tensor-core kernels round P and dS to bf16 before their products (2^-9
        // relative each, errors of random sign summed over the keys) and the outputs to bf16; a
        // lane-level emulation of their rounding at these shapes gave at most 5e-3 per tensor.
        attention(vec![37, 64, 1], 14, 2, 64, true),
        attention(vec![33, 20], 4, 4, 128, false),
        attention(vec![150, 37], 7, 1, 64, false),
        attention(vec![150, 37], 14, 2, 128, true),
        attention(vec![37, 150], 14, 2, 64, true),
        attention(vec![130, 3], 7, 1, 128, false),
        attention(vec![21, 7], 4, 1, 256, true),
        add_rms_norm(300, 896, false),
        add_rms_norm(1031, 129, true),
        add_layer_norm(64, 4099, false),
        add_layer_norm(300, 896, true),
        gelu(100_003),
        swiglu(100_003),
        // GPT-2's q|k|v split at packed widths (16-byte packs), and one that is unaligned.
        narrow_cols(33, 192, 64, 64),
        narrow_cols(17, 100, 3, 50),
        cross_entropy(33, 4099),
        // One warp per row at its largest V on CUDA; an odd V past every kernel's vector width.
        cross_entropy(19, 2048),
        cross_entropy(4, 151937),
        divergence(Divergence::Jsd { beta: 0.5 }, 6, 32000),
        divergence(Divergence::ReverseKl, 4, 151937),
        linear_loss(70, 64, 3001, 16, Some(Divergence::Jsd { beta: 0.5 })),
        linear_loss(70, 64, 3001, 0, None),
        // Cross-entropy heads at odd vocabularies, in chunks that do not divide the rows.
        linear_loss(37, 32, 4099, 8, None),
        linear_loss(23, 16, 151937, 5, None),
        // Weighted rows (RL): the warp-per-row kernel (V ≤ 2048), the block-per-row one at an odd
        // V, and Qwen's vocabulary in chunks that do not divide the rows.
        linear_loss_weighted(37, 32, 1999, 8),
        linear_loss_weighted(70, 64, 3001, 16),
        linear_loss_weighted(23, 16, 151937, 5),
    ]
}
