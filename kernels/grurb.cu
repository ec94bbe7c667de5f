// gru_reset_before (the original GRU, Keras reset_after=False): the per-step kernels, two
// GEMM + kernel pairs per step, since the product (r * h_prev) @ U_n depends on r. Gates
// r, z, n in the 3H columns (fastrnn.core.cells); must match the reference's
// gru_reset_before step. The products of cuBLAS (xw, hu, hn, drh) and the carried
// gradients (dh_direct, dh_rec) are in the arithmetic type ACC(T), float32 for 16-bit
// storage (common.cuh).
//
// Forward, per step:
//   hu_rz = h_prev @ U[:, :2H] (cuBLAS); grurb_forward_rz: r, z, rh = r * h_prev
//   hn = rh @ U[:, 2H:]          (cuBLAS); grurb_forward_n : n = tanh((xw_n + b_n) + hn),
//                                           h' = (1 - z) * n + z * h
//   tape gates (T, B, 3H), slot s: r, z, n; tape rh (T, B, H), slot s (zero for finished
//   rows, because the host's GEMM for dU_n reads every row).
//
// Hs (T+1, B, H) holds the state before step s in slot s (see step.cu); in inference
// h_prev and h_next are the same buffer and the update in place is safe per element.

#include "common.cuh"

// gru_reset_before, forward part 1: r, z and rh = r * h_prev (the operand of U_n).
template <typename T>
__global__ void grurb_forward_rz(
    const ACC(T)* __restrict__ xw, // (T, B, 3H)
    const T* __restrict__ bias,    // (3H,)
    const ACC(T)* __restrict__ hu_rz,  // (B, 2H) h_prev @ U[:, :2H]
    const T* __restrict__ h_prev,  // (B, H)
    T* __restrict__ gates,         // (B, 3H) tape slot (or scratch): writes r, z
    T* __restrict__ rh,            // (B, H) tape slot (or scratch)
    const long long* __restrict__ lengths,
    int s, int T_, int B, int H, int reverse)
{
    typedef ACC(T) A;
    const long long G = 3LL * H;
    FOR_EACH(k, (long long)B * H) {
        const StepUnit u(k, H, 0, lengths, s, T_, reverse);
        const int b = u.b, j = u.j, t = u.t;
        const bool running = u.running;
        const long long bh = k;
        if (!running) {
            store(rh, bh, A(0));
            continue;
        }
        const long long xr = ((long long)t * B + b) * G + j;
        const long long hr = 2LL * H * b + j;
        const A r = sigmoid_(load(xw, xr) + load(bias, j) + load(hu_rz, hr));
        const A z = sigmoid_(load(xw, xr + H) + load(bias, H + j) + load(hu_rz, hr + H));
        const long long gr = (long long)b * G + j;
        store(gates, gr, r);
        store(gates, gr + H, z);
        store(rh, bh, r * load(h_prev, bh));
    }
}

// gru_reset_before, forward part 2: n and the new state.
template <typename T>
__global__ void grurb_forward_n(
    const ACC(T)* __restrict__ xw, // (T, B, 3H)
    const T* __restrict__ bias,    // (3H,)
    const ACC(T)* __restrict__ hn, // (B, H) rh @ U[:, 2H:]
    const T* h_prev, T* h_next,    // (B, H); may alias
    T* __restrict__ out,           // (T, B, H)
    T* __restrict__ gates,         // (B, 3H) slot: reads z, writes n
    const long long* __restrict__ lengths,
    int s, int T_, int B, int H, int reverse)
{
    typedef ACC(T) A;
    const long long G = 3LL * H;
    FOR_EACH(k, (long long)B * H) {
        const StepUnit u(k, H, 0, lengths, s, T_, reverse);
        const int b = u.b, j = u.j, t = u.t;
        const bool running = u.running;
        const long long bh = k;
        const long long o = ((long long)t * B + b) * H + j;
        const A hp = load(h_prev, bh);
        if (!running) {
            store(out, o, A(0));
            store(h_next, bh, hp);
            continue;
        }
        const long long xr = ((long long)t * B + b) * G + j;
        const long long gr = (long long)b * G + j;
        const A z = load(gates, gr + H);
        const A n = tanh_(load(xw, xr + 2 * H) + load(bias, 2 * H + j) + load(hn, bh));
        const A h = (A(1) - z) * n + z * hp;
        store(gates, gr + 2 * H, n);
        store(h_next, bh, h);
        store(out, o, h);
    }
}

// gru_reset_before, backward part 1 (step s): everything that does not need
// drh = da_n @ U_n^T. Writes da_n (B, H) for that GEMM and for dU_n = rh^T @ da_n, the z
// and n columns of dg_x, the z column of dg_rz, and dh_direct_out = dh * z (running rows)
// or the whole carry (finished rows, whose dg_x, dg_rz and da_n are zeroed).
template <typename T>
__global__ void grurb_backward_n(
    const T* __restrict__ dh_out,  // (T, B, H) or null
    const ACC(T)* dh_direct_in, ACC(T)* dh_direct_out,  // (B, H); may alias
    const ACC(T)* __restrict__ dh_rec,  // (B, H) dg_rz(s+1) @ U[:, :2H]^T
    const T* __restrict__ gates,   // (B, 3H) tape slot s: r, z, n
    const T* __restrict__ h_prev,  // (B, H) Hs[s]
    T* __restrict__ dg_x,          // (B, 3H) slot s
    T* __restrict__ dg_rz,         // (B, 2H) slot s
    T* __restrict__ da_n,          // (B, H) slot s
    const long long* __restrict__ lengths,
    int s, int T_, int B, int H, int reverse)
{
    typedef ACC(T) A;
    const long long G = 3LL * H;
    FOR_EACH(k, (long long)B * H) {
        const StepUnit u(k, H, 0, lengths, s, T_, reverse);
        const int b = u.b, j = u.j, t = u.t;
        const bool running = u.running;
        const long long bh = k;
        const long long gr = (long long)b * G + j;
        const long long rr = 2LL * H * b + j;
        const A carry = load(dh_direct_in, bh) + load(dh_rec, bh);
        if (!running) {
            store(dh_direct_out, bh, carry);
            store(dg_x, gr, A(0));
            store(dg_x, gr + H, A(0));
            store(dg_x, gr + 2 * H, A(0));
            store(dg_rz, rr, A(0));
            store(dg_rz, rr + H, A(0));
            store(da_n, bh, A(0));
            continue;
        }
        A dh = carry;
        if (dh_out) dh += load(dh_out, ((long long)t * B + b) * H + j);
        const A z = load(gates, gr + H), n = load(gates, gr + 2 * H);
        const A hp = load(h_prev, bh);
        const A dn = dh * (A(1) - z);
        const A dz = dh * (hp - n);
        const A dan = dn * (A(1) - n * n);
        const A daz = dz * z * (A(1) - z);
        store(da_n, bh, dan);
        store(dg_x, gr + H, daz);
        store(dg_x, gr + 2 * H, dan);
        store(dg_rz, rr + H, daz);
        store(dh_direct_out, bh, dh * z);
    }
}

// gru_reset_before, backward part 2 (step s), after drh = da_n @ U_n^T: dr = drh * h_prev,
// dh_direct += drh * r, and the r columns of dg_x and dg_rz. Finished rows: nothing (their
// columns were zeroed by part 1).
template <typename T>
__global__ void grurb_backward_r(
    const ACC(T)* __restrict__ drh,  // (B, H)
    ACC(T)* dh_direct,             // (B, H) in/out
    const T* __restrict__ gates,   // (B, 3H) tape slot s
    const T* __restrict__ h_prev,  // (B, H) Hs[s]
    T* __restrict__ dg_x,          // (B, 3H) slot s
    T* __restrict__ dg_rz,         // (B, 2H) slot s
    const long long* __restrict__ lengths,
    int s, int T_, int B, int H, int reverse)
{
    typedef ACC(T) A;
    const long long G = 3LL * H;
    FOR_EACH(k, (long long)B * H) {
        const StepUnit u(k, H, 0, lengths, s, T_, reverse);
        const int b = u.b, j = u.j;
        const bool running = u.running;
        if (!running) continue;
        const long long bh = k;
        const long long gr = (long long)b * G + j;
        const A r = load(gates, gr);
        const A a = load(drh, bh);
        const A da_r = a * load(h_prev, bh) * r * (A(1) - r);
        store(dh_direct, bh, load(dh_direct, bh) + a * r);
        store(dg_x, gr, da_r);
        store(dg_rz, 2LL * H * b + j, da_r);
    }
}

#ifdef FASTRNN_INSTANTIATE
#define FASTRNN_GRURB_INSTANCES(T)                                                   \
    (void*)&grurb_forward_rz<T>, (void*)&grurb_forward_n<T>,                         \
    (void*)&grurb_backward_n<T>, (void*)&grurb_backward_r<T>,
void* fastrnn_grurb_instances[] = {FASTRNN_FOR_EACH_STORAGE(FASTRNN_GRURB_INSTANCES)};
#endif
