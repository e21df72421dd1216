//! The CUDA embedding beyond the device-ops harness: its backward is deterministic (two runs are
//! bit-identical) and exact (equal bit for bit to the CPU reference, which adds the same f32
//! values in the same increasing row order), at a training-sized batch with a hot id and mostly
//! empty buckets; an id past the vocabulary gives a NaN row forward and adds nothing backward.
//! SKIPPED without a GPU.

mod common;

use common::harness::normals;
use common::ops::embedding_ids;
use gkd::autograd::Tape;
use gkd::{DType, Device, Tensor};

/// (output, d(table)) of the embedding of `ids` into `table` (vocab, dim) on `device` in `dtype`,
/// the backward seeded with `dout`; values as f64 (exact for f32 and bf16).
fn embed(
    table: &[f64],
    vocab: usize,
    dim: usize,
    ids: &[u32],
    dout: &[f64],
    device: Device,
    dtype: DType,
) -> (Vec<f64>, Vec<f64>) {
    let on = |v: &[f64], shape: Vec<usize>| {
        Tensor::from_vec(v.to_vec(), shape).unwrap().to_dtype(dtype).unwrap().to_device(device).unwrap()
    };
    let mut tape = Tape::new();
    let t = tape.leaf(on(table, vec![vocab, dim]), true);
    let out = tape.embedding(&Tensor::from_u32(ids, device).unwrap(), &t).unwrap();
    let y = out.value().to_vec_f64().unwrap();
    let grads = tape.backward_from(&out, on(dout, vec![ids.len(), dim])).unwrap();
    (y, grads.get(&t).unwrap().to_vec_f64().unwrap())
}

/// Values rounded to `dtype` (what a run in that dtype sees), as f64.
fn rounded(v: &[f64], dtype: DType) -> Vec<f64> {
    Tensor::from_vec(v.to_vec(), [v.len()]).unwrap().to_dtype(dtype).unwrap().to_vec_f64().unwrap()
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn backward_is_deterministic_and_equals_the_cpu_bit_for_bit() {
    let Some(dev) =
        common::cuda_or_skip("cuda_embedding::backward_is_deterministic_and_equals_the_cpu_bit_for_bit")
    else {
        return;
    };
    let gpu = Device::Cuda(dev.ordinal());
    // 8192 rows, a quarter of them on one id; 32000 vocabulary rows, most never used. C = 896 and
    // 4096 take the vectorized paths, 897 the element-wise ones.
    for (rows, vocab, dim) in [(8192usize, 32000usize, 896usize), (2048, 3000, 897), (1500, 1000, 4096)] {
        let ids = embedding_ids(rows, vocab, 4);
        let table = normals(vocab * dim, 0.0, 1.0, 41);
        let dout = normals(rows * dim, 0.0, 1.0, 42);
        for dtype in [DType::F32, DType::BF16] {
            let what = format!("{rows}x{dim} into {vocab}, {dtype}");
            let (table, dout) = (rounded(&table, dtype), rounded(&dout, dtype));
            let (y1, g1) = embed(&table, vocab, dim, &ids, &dout, gpu, dtype);
            let (_, g2) = embed(&table, vocab, dim, &ids, &dout, gpu, dtype);
            assert!(bits(&g1) == bits(&g2), "{what}: two backward runs differ");
            let (y_cpu, g_cpu) = embed(&table, vocab, dim, &ids, &dout, Device::Cpu, DType::F32);
            assert!(bits(&y1) == bits(&y_cpu), "{what}: the gathered rows differ from the table's");
            if let Some(i) = (0..g1.len()).find(|&i| g1[i].to_bits() != g_cpu[i].to_bits()) {
                panic!(
                    "{what}: d(table)[{}, {}] = {} on the GPU, {} on the CPU",
                    i / dim,
                    i % dim,
                    g1[i],
                    g_cpu[i]
                );
            }
            // The hot id's row is a sum of rows / 4 values: far from zero, so the check is not vacuous.
            assert!(g1[7 * dim..8 * dim].iter().any(|x| x.abs() > 1.0), "{what}: the hot row is ~0");
        }
    }
}

#[test]
fn ids_past_the_vocabulary_give_nan_rows_and_no_gradient() {
    let Some(dev) =
        common::cuda_or_skip("cuda_embedding::ids_past_the_vocabulary_give_nan_rows_and_no_gradient")
    else {
        return;
    };
    let gpu = Device::Cuda(dev.ordinal());
    let (vocab, dim) = (50usize, 8usize);
    let ids = [3u32, 50, 7, u32::MAX, 3, 49];
    let table = normals(vocab * dim, 0.0, 1.0, 43);
    let dout = normals(ids.len() * dim, 0.0, 1.0, 44);
    let (y, g) = embed(&table, vocab, dim, &ids, &dout, gpu, DType::F32);
    // The reference: the same rows without the two bad ids.
    let keep: Vec<usize> = (0..ids.len()).filter(|&r| (ids[r] as usize) < vocab).collect();
    let good_ids: Vec<u32> = keep.iter().map(|&r| ids[r]).collect();
    let good_dout: Vec<f64> = keep.iter().flat_map(|&r| dout[r * dim..(r + 1) * dim].to_vec()).collect();
    let (y_cpu, g_cpu) = embed(&table, vocab, dim, &good_ids, &good_dout, Device::Cpu, DType::F32);
    for (r, &id) in ids.iter().enumerate() {
        let row = &y[r * dim..(r + 1) * dim];
        match keep.iter().position(|&k| k == r) {
            None => assert!(row.iter().all(|v| v.is_nan()), "row {r} (id {id}) should be NaN"),
            Some(k) => assert_eq!(bits(row), bits(&y_cpu[k * dim..(k + 1) * dim]), "row {r} (id {id})"),
        }
    }
    assert_eq!(bits(&g), bits(&g_cpu), "d(table) should hold the valid rows' sums only");
}
