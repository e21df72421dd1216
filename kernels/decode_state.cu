// The generation loop's state on the device, so that a decode step needs nothing from the host
// (and can be replayed as a CUDA graph): state is (5, B) u32, one column per batch slot:
//   row 0  the slot's next input token       row 1  that token's position
//   row 2  tokens generated so far           row 3  done (0 or 1)
//   row 4  the sequence's index in the run (the sampler's RNG key and the output's owner)
//
//   decode_rows:    slots (n) → (6, n) u32: token, position, slot, cache row (slot·L + position),
//                   RNG sequence key, RNG position key (position + 1: where the drawn token goes).
//   decode_advance: after the draw of row r (slot s = slots[r]) of a slot not done: the token and
//                   its two log-probabilities go to the slot's output at index `generated`; the slot
//                   is done after a stop token or `max_new` tokens, else the token is its next input
//                   at the next position.
// The host makes the slots (distinct, < B) and vouches for them; both kernels still ignore a slot
// ≥ B and clamp a position to the cache, so that no index can reach outside a buffer.
#include "common.cuh"

extern "C" __global__ void decode_rows(const unsigned *__restrict__ state, int batch,
                                       const unsigned *__restrict__ slots, int n, unsigned capacity,
                                       unsigned *__restrict__ out) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    unsigned s = slots[r];
    const bool valid = s < (unsigned)batch;
    s = valid ? s : 0u;
    unsigned pos = valid ? state[batch + s] : 0u;
    pos = pos < capacity ? pos : capacity - 1;
    out[r] = valid ? state[s] : 0u;
    out[n + r] = pos;
    out[2 * n + r] = s;
    out[3 * n + r] = s * capacity + pos;
    out[4 * n + r] = valid ? state[4 * batch + s] : 0u;
    out[5 * n + r] = pos + 1;
}

extern "C" __global__ void decode_advance(unsigned *__restrict__ state, int batch,
                                          const unsigned *__restrict__ slots,
                                          const unsigned *__restrict__ tokens,
                                          const float *__restrict__ logprobs, int n,
                                          const unsigned *__restrict__ stops, int n_stops,
                                          unsigned max_new, unsigned *__restrict__ out_tokens,
                                          float *__restrict__ out_logprobs) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    const unsigned s = slots[r];
    if (s >= (unsigned)batch || state[3 * batch + s] != 0u) return;
    const unsigned g = state[2 * batch + s];
    if (g >= max_new) {
        state[3 * batch + s] = 1u;
        return;
    }
    const unsigned t = tokens[r];
    const unsigned long long at = (unsigned long long)s * max_new + g;
    out_tokens[at] = t;
    out_logprobs[2 * at] = logprobs[2 * r];
    out_logprobs[2 * at + 1] = logprobs[2 * r + 1];
    state[2 * batch + s] = g + 1;
    bool stop = g + 1 >= max_new;
    for (int k = 0; k < n_stops; ++k) stop |= stops[k] == t;
    if (stop) {
        state[3 * batch + s] = 1u;
    } else {
        state[s] = t;
        state[batch + s] += 1u;
    }
}
