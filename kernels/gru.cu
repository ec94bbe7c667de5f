// GRU, both formulations: one fused pointwise kernel per step (two for reset-before),
// forward and backward. Gates r, z, n in the 3H columns (fastrnn.cells). The products of
// cuBLAS (xw, hu, hn, drh) and the carried gradients (dh_direct, dh_rec) are in the
// arithmetic type ACC(T), float32 for 16-bit storage (common.cuh).
//
// gru (cuDNN / PyTorch, reset after U_n), per step: hu = h_prev @ U (B, 3H) from cuBLAS,
//   r = sigmoid((xw_r + b_r) + hu_r) ; z = sigmoid((xw_z + b_z) + hu_z)
//   hn = hu_n + bn ; n = tanh((xw_n + b_n) + r * hn) ; h' = (1 - z) * n + z * h
//   tape gates (T, B, 4H), slot s: r, z, n, hn.
//
// gru_reset_before (original form), per step:
//   hu_rz = h_prev @ U[:, :2H] (cuBLAS); grurb_forward_rz: r, z, rh = r * h_prev
//   hn = rh @ U[:, 2H:]          (cuBLAS); grurb_forward_n : n = tanh((xw_n + b_n) + hn),
//                                           h' = (1 - z) * n + z * h
//   tape gates (T, B, 3H), slot s: r, z, n; tape rh (T, B, H), slot s (zero for finished
//   rows, because the host's GEMM for dU_n reads every row).
//
// Hs (T+1, B, H) holds the state before step s in slot s (see lstm.cu); in inference
// h_prev and h_next are the same buffer and the update in place is safe per element.

#include "common.cuh"
#include "persist.cuh"

// ------------------------------------------------------------------------ the cell (gru)

// Forward of one unit: ar, az the r and z pre-activations, axn = xw_n + b_n, hn = the
// unit's (h_prev @ U_n) + bn, hp its previous state.
template <typename A>
struct GruPoint {
    A r, z, n, h, hn;
    __device__ __forceinline__ GruPoint(A ar, A az, A axn, A hn_, A hp) : hn(hn_) {
        r = sigmoid_(ar);
        z = sigmoid_(az);
        n = tanh_(axn + r * hn);
        h = (A(1) - z) * n + z * hp;
    }
};

// Backward of one unit from dh (after the step) and the tape r, z, n, hn, h_prev:
// da_r, da_z, da_n (gradients of x @ W + b), dhn (of h_prev @ U_n + bn) and the part of
// dh_prev that does not go through U (dh * z).
template <typename A>
struct GruGrad {
    A da_r, da_z, da_n, dhn, direct;
    __device__ __forceinline__ GruGrad(A dh, A r, A z, A n, A hn, A hp) {
        const A dn = dh * (A(1) - z);
        const A dz = dh * (hp - n);
        da_n = dn * (A(1) - n * n);
        dhn = da_n * r;
        da_r = da_n * hn * r * (A(1) - r);
        da_z = dz * z * (A(1) - z);
        direct = dh * z;
    }
};

// ------------------------------------------------------------------- per-step kernels

template <typename T>
__global__ void gru_forward(
    const ACC(T)* __restrict__ xw, // (T, B, 3H) x @ W, time-indexed
    const T* __restrict__ bias,    // (3H,) b
    const T* __restrict__ bias_n,  // (H,) bn
    const ACC(T)* __restrict__ hu, // (B, 3H) h_prev @ U
    const T* h_prev, T* h_next,    // (B, H); may alias
    T* __restrict__ out,           // (T, B, H)
    T* __restrict__ gates,         // (B, 4H) tape slot (r, z, n, hn), or null
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
        const long long hr = (long long)b * G + j;
        const GruPoint<A> p(load(xw, xr) + load(bias, j) + load(hu, hr),
                            load(xw, xr + H) + load(bias, H + j) + load(hu, hr + H),
                            load(xw, xr + 2 * H) + load(bias, 2 * H + j),
                            load(hu, hr + 2 * H) + load(bias_n, j), hp);
        store(h_next, bh, p.h);
        store(out, o, p.h);
        if (gates) {
            const long long gr = 4LL * H * b + j;
            store(gates, gr, p.r);
            store(gates, gr + H, p.z);
            store(gates, gr + 2 * H, p.n);
            store(gates, gr + 3 * H, p.hn);
        }
    }
}

// Backward of step s for gru. The state gradient after step s is dh_direct + dh_rec
// (+ dh_out at the step's time). Writes
//   dg_rec (B, 3H) = [da_r, da_z, dhn]: gradient of h_prev @ U + [0, 0, bn], for
//                    dh_rec = dg_rec @ U^T, dU = Hs^T @ dg_rec and dbn = sum dhn;
//   dg_x   (B, 3H) = [da_r, da_z, da_n]: gradient of x @ W + b, for dW, db and dx;
//   dh_direct_out  = dh * z (running rows) or the whole carry (finished rows).
template <typename T>
__global__ void gru_backward(
    const T* __restrict__ dh_out,  // (T, B, H) or null
    const ACC(T)* dh_direct_in, ACC(T)* dh_direct_out,  // (B, H); may alias
    const ACC(T)* __restrict__ dh_rec,  // (B, H)
    const T* __restrict__ gates,   // (B, 4H) tape slot s: r, z, n, hn
    const T* __restrict__ h_prev,  // (B, H) Hs[s]
    T* __restrict__ dg_rec,        // (B, 3H) slot s
    T* __restrict__ dg_x,          // (B, 3H) slot s
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
        const long long dr = (long long)b * G + j;
        const A carry = load(dh_direct_in, bh) + load(dh_rec, bh);
        if (!running) {
            store(dh_direct_out, bh, carry);
            for (int q = 0; q < 3; ++q) {
                store(dg_rec, dr + q * H, A(0));
                store(dg_x, dr + q * H, A(0));
            }
            continue;
        }
        A dh = carry;
        if (dh_out) dh += load(dh_out, ((long long)t * B + b) * H + j);
        const long long gr = 4LL * H * b + j;
        const GruGrad<A> d(dh, load(gates, gr), load(gates, gr + H), load(gates, gr + 2 * H),
                           load(gates, gr + 3 * H), load(h_prev, bh));
        store(dg_rec, dr, d.da_r);
        store(dg_rec, dr + H, d.da_z);
        store(dg_rec, dr + 2 * H, d.dhn);
        store(dg_x, dr, d.da_r);
        store(dg_x, dr + H, d.da_z);
        store(dg_x, dr + 2 * H, d.da_n);
        store(dh_direct_out, bh, d.direct);
    }
}

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

// ------------------------------------------------------------ persistent kernels (gru)
// As lstm_persist_* (see lstm.cu for the launch and shared-memory layout), with 3 gates:
//   forward : H * 3nj + B * PERSIST_TS + blockDim.x + B * 3nj elements
//   backward: 3H * nj + B * PERSIST_TS + blockDim.x + 3 * B * nj elements
// hs: (T+1, B, H) when keep, else (2, B, H) used alternately; slot 0 holds h0.

template <typename T>
__global__ void gru_persist_forward(
    const ACC(T)* __restrict__ xw, const T* __restrict__ bias, const T* __restrict__ bias_n,
    const T* __restrict__ U,
    T* hs,
    T* __restrict__ out,           // (T, B, H)
    T* __restrict__ gates,         // (T, B, 4H) tape r, z, n, hn, or null
    const long long* __restrict__ lengths,
    int T_, int B, int H, int reverse, int keep, int nj, unsigned int* bar)
{
    typedef ACC(T) A;
    const int NT = blockDim.x;
    const int j0 = blockIdx.x * nj;
    const int njb = min(nj, H - j0);
    const int C = 3 * njb;
    const long long G = 3LL * H, BH = (long long)B * H;
    const PersistSmem<A> sm((long long)H * 3 * nj, B);
    A* W = sm.W;                                     // W[k * C + g * njb + jj] = U[k, g H + j0 + jj]
    A* hu = sm.units;
    for (long long q = threadIdx.x; q < (long long)H * C; q += NT) {
        const int k = (int)(q / C), c = (int)(q - (long long)k * C);
        const int g = c / njb, jj = c - g * njb;
        W[q] = load(U, (long long)k * G + (long long)g * H + j0 + jj);
    }
    __syncthreads();
    for (int s = 0; s < T_; ++s) {
        T* hp = hs + (keep ? s : (s & 1)) * BH;
        T* hn = hs + (keep ? s + 1 : ((s + 1) & 1)) * BH;
        block_matvec(hp, (long long)H, B, H, sm, C, hu);
        for (int q = threadIdx.x; q < B * njb; q += NT) {
            const StepUnit u(q, njb, j0, lengths, s, T_, reverse);
            const int b = u.b, j = u.j, t = u.t, jj = j - j0;
            const bool running = u.running;
            const long long bh = (long long)b * H + j;
            const long long o = ((long long)t * B + b) * H + j;
            const A h_old = load_volatile(hp, bh);
            if (!running) {
                store(out, o, A(0));
                store(hn, bh, h_old);
                continue;
            }
            const long long xr = ((long long)t * B + b) * G + j;
            const A* a = hu + b * C + jj;
            const GruPoint<A> p(load(xw, xr) + load(bias, j) + a[0],
                                load(xw, xr + H) + load(bias, H + j) + a[njb],
                                load(xw, xr + 2 * H) + load(bias, 2 * H + j),
                                a[2 * njb] + load(bias_n, j), h_old);
            store(hn, bh, p.h);
            store(out, o, p.h);
            if (gates) {
                const long long gr = ((long long)s * B + b) * 4 * H + j;
                store(gates, gr, p.r);
                store(gates, gr + H, p.z);
                store(gates, gr + 2 * H, p.n);
                store(gates, gr + 3 * H, p.hn);
            }
        }
        grid_sync(bar);
    }
}

// Writes dg_rec and dg_x (T, B, 3H) as gru_backward does for each step, and dh0.
template <typename T>
__global__ void gru_persist_backward(
    const T* __restrict__ dh_out,  // (T, B, H) or null
    const T* __restrict__ dh_n,    // (B, H) or null
    const T* __restrict__ gates,   // (T, B, 4H) tape
    const T* __restrict__ hs,      // (T+1, B, H) tape
    const T* __restrict__ U,       // (H, 3H)
    T* dg_rec, T* __restrict__ dg_x,   // (T, B, 3H) out
    T* __restrict__ dh0,           // (B, H) out
    const long long* __restrict__ lengths,
    int T_, int B, int H, int reverse, int nj, unsigned int* bar)
{
    typedef ACC(T) A;
    const int NT = blockDim.x;
    const int j0 = blockIdx.x * nj;
    const int njb = min(nj, H - j0);
    const long long G = 3LL * H, BH = (long long)B * H;
    const PersistSmem<A> sm(G * nj, B);
    A* W = sm.W;                                     // W[c * njb + kk] = U[j0 + kk, c]
    A* rec = sm.units;
    A* carry = rec + B * nj;
    A* direct = carry + B * nj;
    for (long long q = threadIdx.x; q < G * njb; q += NT) {
        const long long c = q / njb;
        const int kk = (int)(q - c * njb);
        W[q] = load(U, (long long)(j0 + kk) * G + c);
    }
    for (int q = threadIdx.x; q < B * njb; q += NT) {
        const int b = q / njb, j = j0 + q - b * njb;
        carry[q] = dh_n ? load(dh_n, (long long)b * H + j) : A(0);
    }
    __syncthreads();
    for (int s = T_ - 1; s >= 0; --s) {
        for (int q = threadIdx.x; q < B * njb; q += NT) {
            const StepUnit u(q, njb, j0, lengths, s, T_, reverse);
            const int b = u.b, j = u.j, t = u.t;
            const bool running = u.running;
            const long long dr = ((long long)s * B + b) * G + j;
            if (!running) {
                direct[q] = carry[q];
                for (int g = 0; g < 3; ++g) {
                    store(dg_rec, dr + g * H, A(0));
                    store(dg_x, dr + g * H, A(0));
                }
                continue;
            }
            A dh = carry[q];
            if (dh_out) dh += load(dh_out, ((long long)t * B + b) * H + j);
            const long long gr = ((long long)s * B + b) * 4 * H + j;
            const GruGrad<A> d(dh, load(gates, gr), load(gates, gr + H),
                               load(gates, gr + 2 * H), load(gates, gr + 3 * H),
                               load(hs, s * BH + (long long)b * H + j));
            store(dg_rec, dr, d.da_r);
            store(dg_rec, dr + H, d.da_z);
            store(dg_rec, dr + 2 * H, d.dhn);
            store(dg_x, dr, d.da_r);
            store(dg_x, dr + H, d.da_z);
            store(dg_x, dr + 2 * H, d.da_n);
            direct[q] = d.direct;
        }
        grid_sync(bar);
        block_matvec(dg_rec + s * B * G, G, B, (int)G, sm, njb, rec);
        for (int q = threadIdx.x; q < B * njb; q += NT) carry[q] = direct[q] + rec[q];
        __syncthreads();
    }
    for (int q = threadIdx.x; q < B * njb; q += NT) {
        const int b = q / njb, j = j0 + q - b * njb;
        store(dh0, (long long)b * H + j, carry[q]);
    }
}

#ifdef FASTRNN_INSTANTIATE
#define FASTRNN_GRU_INSTANCES(T)                                                     \
    (void*)&gru_forward<T>, (void*)&gru_backward<T>, (void*)&grurb_forward_rz<T>,    \
    (void*)&grurb_forward_n<T>, (void*)&grurb_backward_n<T>, (void*)&grurb_backward_r<T>,  \
    (void*)&gru_persist_forward<T>, (void*)&gru_persist_backward<T>,
void* fastrnn_gru_instances[] = {FASTRNN_FOR_EACH_STORAGE(FASTRNN_GRU_INSTANCES)};
#endif
