//! The generation loop's state, kept where the model runs (see `kernels/decode_state.cu`, which
//! computes the same): state (5, B) u32, one column per batch slot: next input token, its
//! position, tokens generated, done, the sequence's index in the run.

/// slots (n) → (6, n): token, position (clamped below `capacity`), slot, cache row, the
/// sampler's sequence key and position key (position + 1).
pub fn decode_rows(state: &[u32], slots: &[u32], capacity: usize) -> Vec<u32> {
    let (b, n) = (state.len() / 5, slots.len());
    let mut out = vec![0u32; 6 * n];
    for (r, &s) in slots.iter().enumerate() {
        let valid = (s as usize) < b;
        let s = if valid { s as usize } else { 0 };
        let pos = if valid { state[b + s] } else { 0 }.min(capacity as u32 - 1);
        out[r] = if valid { state[s] } else { 0 };
        out[n + r] = pos;
        out[2 * n + r] = s as u32;
        out[3 * n + r] = s as u32 * capacity as u32 + pos;
        out[4 * n + r] = if valid { state[4 * b + s] } else { 0 };
        out[5 * n + r] = pos + 1;
    }
    out
}

/// What one draw per row does to the state and the outputs (B, max_new) and (B, max_new, 2).
pub struct Advance<'a> {
    pub slots: &'a [u32],
    pub tokens: &'a [u32],
    pub logprobs: &'a [f32],
    pub stops: &'a [u32],
    pub max_new: usize,
}

pub fn decode_advance(state: &mut [u32], a: &Advance<'_>, out_tokens: &mut [u32], out_logprobs: &mut [f32]) {
    let b = state.len() / 5;
    for (r, &s) in a.slots.iter().enumerate() {
        let s = s as usize;
        if s >= b || state[3 * b + s] != 0 {
            continue;
        }
        let g = state[2 * b + s] as usize;
        if g >= a.max_new {
            state[3 * b + s] = 1;
            continue;
        }
        let t = a.tokens[r];
        let at = s * a.max_new + g;
        out_tokens[at] = t;
        out_logprobs[2 * at..2 * at + 2].copy_from_slice(&a.logprobs[2 * r..2 * r + 2]);
        state[2 * b + s] = g as u32 + 1;
        if g + 1 >= a.max_new || a.stops.contains(&t) {
            state[3 * b + s] = 1;
        } else {
            state[s] = t;
            state[b + s] += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_reads_and_advances_the_state() {
        #[rustfmt::skip]
        let mut state = vec![11, 12, 13, 14, /* pos */ 2, 8, 0, 5, /* generated */ 0, 1, 2, 0, /* done */ 0, 0, 0, 1, /* seq */ 7, 8, 9, 10];
        // Slot 2 at position 0, slot 0 at 2, slot 3 at 5 (clamped to 4 by a capacity of 5).
        let rows = decode_rows(&state, &[2, 0, 3], 5);
        #[rustfmt::skip]
        assert_eq!(rows, vec![13, 11, 14, /* pos */ 0, 2, 4, /* slot */ 2, 0, 3, /* row */ 10, 2, 19, /* seq */ 9, 7, 10, /* key pos */ 1, 3, 5]);
        let (mut ot, mut ol) = (vec![0u32; 12], vec![0f32; 24]);
        let lp = [-0.5f32, -0.7, -1.5, -1.25, -2.0, -3.0, -0.125, -0.25];
        let a = Advance {
            slots: &[2, 0, 3, 1],
            tokens: &[5, 99, 6, 42],
            logprobs: &lp,
            stops: &[99],
            max_new: 3,
        };
        decode_advance(&mut state, &a, &mut ot, &mut ol);
        // Slot 2: third token, done by max_new. Slot 0: the stop token, done. Slot 3: was done,
        // untouched. Slot 1: goes on with 42 at position 9.
        #[rustfmt::skip]
        assert_eq!(state, vec![11, 42, 13, 14, /* pos */ 2, 9, 0, 5, /* generated */ 1, 2, 3, 0, /* done */ 1, 0, 1, 1, /* seq */ 7, 8, 9, 10]);
        assert_eq!(ot, vec![99, 0, 0, 0, 42, 0, 0, 0, 5, 0, 0, 0]);
        assert_eq!(&ol[0..2], &[-1.5, -1.25]);
        assert_eq!(&ol[8..10], &[-0.125, -0.25]);
        assert_eq!(&ol[16..18], &[-0.5, -0.7]);
        assert!(ol.iter().enumerate().all(|(i, &x)| [0, 1, 8, 9, 16, 17].contains(&i) || x == 0.0));
    }
}
