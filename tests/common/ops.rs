//! Every tape op at the shapes it is tested at, listed once: `tests/device_ops.rs` runs them on
//! every backend, `tests/gradcheck.rs` checks their gradients in f64 by finite differences.
//!
//! Inputs are ordinary values (normal, σ 1 to 3), so that no gradient is near zero; shapes are
//! awkward on purpose (odd widths, rows that divide nothing, padded sequences, grouped heads,
//! several loss chunks, head rows past the vocabulary).
#![allow(dead_code)]

use super::harness::{Case, Input};
use gkd::autograd::{AttnDims, LinearLoss, LinearLossTarget, LossKind, WeightLayout};
use gkd::backend::ops::IGNORE;
use gkd::backend::Divergence;
use gkd::Tensor;
use std::sync::Arc;

fn u32s(v: &[u32], device: gkd::Device) -> gkd::Result<Tensor> {
    Tensor::from_u32(v, device)
}

pub fn embedding(vocab: usize, dim: usize, ids: Vec<u32>) -> Case {
    Case::new(
        format!("embedding_{vocab}x{dim}_{}", ids.len()),
        vec![Input::normal("table", &[vocab, dim], 0.0, 1.0, 1, true)],
        Box::new(move |t, v, d| t.embedding(&u32s(&ids, d)?, &v[0])),
    )
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

pub fn rope(heads: usize, head_dim: usize, positions: Vec<u32>) -> Case {
    let inv_freq: Arc<[f64]> =
        (0..head_dim / 2).map(|i| 1.0 / 10000f64.powf(2.0 * i as f64 / head_dim as f64)).collect();
    Case::new(
        format!("rope_{}x{heads}x{head_dim}", positions.len()),
        vec![Input::normal("x", &[positions.len(), heads * head_dim], 0.0, 1.0, 10, true)],
        Box::new(move |t, v, d| t.rope(&v[0], &u32s(&positions, d)?, inv_freq.clone(), heads)),
    )
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
}

pub fn swiglu(n: usize) -> Case {
    Case::new(
        format!("swiglu_{n}"),
        vec![Input::normal("gate", &[n], 0.0, 2.0, 15, true), Input::normal("up", &[n], 0.0, 1.0, 16, true)],
        Box::new(|t, v, _| t.swiglu(&v[0], &v[1])),
    )
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
    let case = Case::new(
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
    );
    // The CUDA backend fuses the head with a divergence only (no cross-entropy kernel yet).
    if teacher.is_some() {
        case.on_cuda()
    } else {
        case
    }
}

/// The small cases: every op, at shapes a finite-difference check in f64 can afford.
pub fn small() -> Vec<Case> {
    let mut c = vec![
        embedding(13, 7, vec![3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]),
        linear(&[9, 13], 7, WeightLayout::OutIn, true),
        linear(&[3, 4, 13], 7, WeightLayout::InOut, false),
        linear(&[5, 11], 6, WeightLayout::InOut, true),
        rms_norm(13, 33),
        layer_norm(13, 33),
        rope(3, 8, vec![0, 5, 2, 9, 1, 3, 300]),
        attention(vec![5, 3], 4, 2, 8, false),
        attention(vec![3], 7, 1, 4, false),
        attention(vec![4, 1, 2], 2, 2, 6, true),
        // Longer than the CPU kernel's 64-row query tiles: three tiles, the last one partial.
        attention(vec![150, 3], 2, 1, 4, true),
        gelu(257),
        swiglu(257),
        add(41),
        narrow_cols(6, 12, 4, 5),
        cross_entropy(7, 50),
        linear_loss(9, 12, 20, 4, None),
    ];
    c.extend(DIVERGENCES.iter().map(|&d| divergence(d, 5, 64)));
    c.extend(DIVERGENCES.iter().map(|&d| linear_loss(9, 12, 20, 4, Some(d))));
    c
}

/// Larger shapes, for the backends' comparison only (vectorized and multi-block paths, the
/// multi-threaded CPU GEMM, several rows per block).
pub fn large() -> Vec<Case> {
    vec![
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
        gelu(100_003),
        swiglu(100_003),
        cross_entropy(33, 4099),
        divergence(Divergence::Jsd { beta: 0.5 }, 6, 32000),
        divergence(Divergence::ReverseKl, 4, 151937),
        linear_loss(70, 64, 3001, 16, Some(Divergence::Jsd { beta: 0.5 })),
        linear_loss(70, 64, 3001, 0, None),
    ]
}
