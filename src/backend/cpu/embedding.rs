//! Token embedding: a row gather and its scatter-add.
//!
//! fwd: out[n, :] = table[ids[n], :]
//! bwd: dtable[v, :] = Σ_{n : ids[n] = v} dout[n, :]   (repeated ids accumulate)

use super::Real;
use rayon::prelude::*;

pub fn embedding_fwd<T: Real>(
    ids: &[u32], // (N)
    table: &[T], // (V, C)
    dim: usize,  // C
) -> Vec<T> /* (N, C) */ {
    assert!(dim > 0, "embedding_fwd: dim must be positive");
    assert_eq!(
        table.len() % dim,
        0,
        "embedding_fwd: table length {} is not a multiple of dim {dim}",
        table.len()
    );
    let vocab = table.len() / dim;
    let mut out = vec![T::zero(); ids.len() * dim];
    out.par_chunks_mut(dim).zip(ids.par_iter()).for_each(|(row, &id)| {
        let id = id as usize;
        assert!(id < vocab, "embedding_fwd: token id {id} out of range for vocabulary {vocab}");
        row.copy_from_slice(&table[id * dim..(id + 1) * dim]);
    });
    out
}

pub fn embedding_bwd<T: Real>(
    ids: &[u32],  // (N)
    dout: &[T],   // (N, C)
    vocab: usize, // V
    dim: usize,   // C
) -> Vec<T> /* dtable (V, C) */ {
    assert_eq!(
        dout.len(),
        ids.len() * dim,
        "embedding_bwd: dout has {} elements, expected {}×{dim}",
        dout.len(),
        ids.len()
    );
    // Serial over tokens: scatter-add with repeated ids; parallel over the C columns would not pay
    // at the sizes the reference runs.
    let mut dtable = vec![T::zero(); vocab * dim];
    for (n, &id) in ids.iter().enumerate() {
        let id = id as usize;
        assert!(id < vocab, "embedding_bwd: token id {id} out of range for vocabulary {vocab}");
        let src = &dout[n * dim..(n + 1) * dim];
        for (d, &g) in dtable[id * dim..(id + 1) * dim].iter_mut().zip(src) {
            *d = *d + g;
        }
    }
    dtable
}
