// LSTM kernels: the per-step pair (one fused pointwise kernel per time step, forward and
// backward, around cuBLAS products) and the persistent pair (all steps in one launch).
//
// Gates i, f, g, o in the 4H columns (fastrnn.cells). With hu = h_prev @ U (B, 4H) and the
// input projection xw = x @ W (T, B, 4H), one GEMM before the loop, the bias b added here
// (xw, hu and the carried gradients dh_direct, dh_rec, dc are in the arithmetic type
// ACC(T), float32 for 16-bit storage: see common.cuh):
//   a = (xw[t] + b) + hu ;  i, f, o = sigmoid, g = tanh
//   c' = f * c + i * g ;  h' = o * tanh(c')
//
// Training tape (step-indexed, written by either forward, read by either backward):
//   gates (T, B, 4H): activated i, f, g, o of step s in slot s (rows of finished
//                     sequences are not written and never read)
//   Hs (T+1, B, H), Cs (T+1, B, H): states before step s in slot s, after it in slot s+1
//                     (a finished row carries its frozen state forward)
// In inference the per-step kernel gets the same buffer as h_prev and h_next (and c_prev,
// c_next): each thread reads its element before writing it, so updating in place is safe.

#include "common.cuh"
#include "lstm_cell.cuh"
#include "persist.cuh"

// ------------------------------------------------------------------- per-step kernels

template <typename T>
__global__ void lstm_forward(
    const ACC(T)* __restrict__ xw, // (T, B, 4H) x @ W, time-indexed
    const T* __restrict__ bias,    // (4H,)
    const ACC(T)* __restrict__ hu, // (B, 4H) h_prev @ U of this step
    const T* h_prev, T* h_next,    // (B, H); may alias
    const T* c_prev, T* c_next,    // (B, H); may alias
    T* __restrict__ out,           // (T, B, H) outputs, time-indexed
    T* __restrict__ gates,         // (B, 4H) tape slot of this step, or null (inference)
    const long long* __restrict__ lengths,  // (B,) or null
    int s, int T_, int B, int H, int reverse)
{
    typedef ACC(T) A;
    const long long G = 4LL * H;
    FOR_EACH(k, (long long)B * H) {
        const StepUnit u(k, H, 0, lengths, s, T_, reverse);
        const int b = u.b, j = u.j, t = u.t;
        const bool running = u.running;
        const long long bh = k;                                  // (b, j) in a (B, H) array
        const long long o = ((long long)t * B + b) * H + j;      // (t, b, j) in (T, B, H)
        const A hp = load(h_prev, bh);
        const A cp = load(c_prev, bh);
        if (!running) {                                          // frozen state, output 0
            store(out, o, A(0));
            store(h_next, bh, hp);
            store(c_next, bh, cp);
            continue;
        }
        const long long xr = ((long long)t * B + b) * G + j;     // (t, b, j) in (T, B, 4H)
        const long long hr = (long long)b * G + j;               // (b, j) in (B, 4H)
        const LstmPoint<A> p(load(xw, xr) + load(bias, j) + load(hu, hr),
                             load(xw, xr + H) + load(bias, H + j) + load(hu, hr + H),
                             load(xw, xr + 2 * H) + load(bias, 2 * H + j) + load(hu, hr + 2 * H),
                             load(xw, xr + 3 * H) + load(bias, 3 * H + j) + load(hu, hr + 3 * H),
                             cp);
        store(c_next, bh, p.c);
        store(h_next, bh, p.h);
        store(out, o, p.h);
        if (gates) {
            store(gates, hr, p.i);
            store(gates, hr + H, p.f);
            store(gates, hr + 2 * H, p.g);
            store(gates, hr + 3 * H, p.o);
        }
    }
}

// Backward of step s (the host runs s = T-1 .. 0). The gradient with respect to the state
// after step s is dh_direct + dh_rec (+ dh_out at the step's time), where dh_rec =
// dgates(s+1) @ U^T came from cuBLAS and dh_direct from the kernel of step s+1. Writes
// dgates (B, 4H) = dL/d(pre-activations) of this step, the next dh_direct (0 for running
// rows, all of it for finished ones) and dc in place (unchanged for finished rows).
template <typename T>
__global__ void lstm_backward(
    const T* __restrict__ dh_out,  // (T, B, H) upstream gradient of the outputs, or null
    const ACC(T)* dh_direct_in, ACC(T)* dh_direct_out,  // (B, H); may alias
    const ACC(T)* __restrict__ dh_rec,  // (B, H)
    ACC(T)* dc,                    // (B, H) in: dL/dc after step s, out: before it
    const T* __restrict__ gates,   // (B, 4H) tape slot s
    const T* __restrict__ c_prev,  // (B, H) Cs[s]
    const T* __restrict__ c_new,   // (B, H) Cs[s + 1]
    T* __restrict__ dgates,        // (B, 4H) slot s of the gate gradients
    const long long* __restrict__ lengths,
    int s, int T_, int B, int H, int reverse)
{
    typedef ACC(T) A;
    const long long G = 4LL * H;
    FOR_EACH(k, (long long)B * H) {
        const StepUnit u(k, H, 0, lengths, s, T_, reverse);
        const int b = u.b, j = u.j, t = u.t;
        const bool running = u.running;
        const long long bh = k;
        const long long gr = (long long)b * G + j;
        const A carry = load(dh_direct_in, bh) + load(dh_rec, bh);
        if (!running) {                                          // gradient passes through
            store(dh_direct_out, bh, carry);
            for (int q = 0; q < 4; ++q) store(dgates, gr + q * H, A(0));
            continue;
        }
        A dh = carry;
        if (dh_out) dh += load(dh_out, ((long long)t * B + b) * H + j);
        const LstmGrad<A> d(dh, load(dc, bh), load(gates, gr), load(gates, gr + H),
                            load(gates, gr + 2 * H), load(gates, gr + 3 * H),
                            load(c_prev, bh), load(c_new, bh));
        store(dgates, gr, d.di);
        store(dgates, gr + H, d.df);
        store(dgates, gr + 2 * H, d.dg);
        store(dgates, gr + 3 * H, d.d_o);
        store(dc, bh, d.dc);
        store(dh_direct_out, bh, A(0));
    }
}

// ------------------------------------------------------------------ persistent kernels
// Launched cooperatively with gridDim.x = ceil(H / nj) blocks; block q owns units
// j0 = q * nj .. j0 + njb - 1. Dynamic shared memory, in elements of the arithmetic type:
//   forward : H * 4nj (U's columns of the block's units) + B * PERSIST_TS + blockDim.x + B * 4nj
//   backward: 4H * nj (U's rows of the block's units)   + B * PERSIST_TS + blockDim.x + 4 * B * nj
// bar: two zeroed unsigned ints for grid_sync.

// All T steps of the forward. hs, cs: (T+1, B, H) when keep (training: every state is
// kept, as the per-step path does), else (2, B, H) used alternately; slot 0 holds h0, c0.
template <typename T>
__global__ void lstm_persist_forward(
    const ACC(T)* __restrict__ xw, const T* __restrict__ bias, const T* __restrict__ U,
    T* hs, T* cs,
    T* __restrict__ out,           // (T, B, H)
    T* __restrict__ gates,         // (T, B, 4H) tape, or null
    const long long* __restrict__ lengths,
    int T_, int B, int H, int reverse, int keep, int nj, unsigned int* bar)
{
    typedef ACC(T) A;
    const int NT = blockDim.x;
    const int j0 = blockIdx.x * nj;
    const int njb = min(nj, H - j0);
    const int C = 4 * njb;
    const long long G = 4LL * H, BH = (long long)B * H;
    const PersistSmem<A> sm((long long)H * 4 * nj, B);
    A* W = sm.W;                                     // W[k * C + g * njb + jj] = U[k, g H + j0 + jj]
    A* hu = sm.units;                                // hu[b * C + g * njb + jj]
    for (long long q = threadIdx.x; q < (long long)H * C; q += NT) {
        const int k = (int)(q / C), c = (int)(q - (long long)k * C);
        const int g = c / njb, jj = c - g * njb;
        W[q] = load(U, (long long)k * G + (long long)g * H + j0 + jj);
    }
    __syncthreads();
    for (int s = 0; s < T_; ++s) {
        T* hp = hs + (keep ? s : (s & 1)) * BH;
        T* hn = hs + (keep ? s + 1 : ((s + 1) & 1)) * BH;
        T* cp = cs + (keep ? s : (s & 1)) * BH;
        T* cn = cs + (keep ? s + 1 : ((s + 1) & 1)) * BH;
        block_matvec(hp, (long long)H, B, H, sm, C, hu);
        for (int q = threadIdx.x; q < B * njb; q += NT) {
            const StepUnit u(q, njb, j0, lengths, s, T_, reverse);
            const int b = u.b, j = u.j, t = u.t, jj = j - j0;
            const bool running = u.running;
            const long long bh = (long long)b * H + j;
            const long long o = ((long long)t * B + b) * H + j;
            const A h_old = load_volatile(hp, bh), c_old = load_volatile(cp, bh);
            if (!running) {
                store(out, o, A(0));
                store(hn, bh, h_old);
                store(cn, bh, c_old);
                continue;
            }
            const long long xr = ((long long)t * B + b) * G + j;
            const A* a = hu + b * C + jj;                // a[g * njb]: h @ U of gate g
            const LstmPoint<A> p(load(xw, xr) + load(bias, j) + a[0],
                                 load(xw, xr + H) + load(bias, H + j) + a[njb],
                                 load(xw, xr + 2 * H) + load(bias, 2 * H + j) + a[2 * njb],
                                 load(xw, xr + 3 * H) + load(bias, 3 * H + j) + a[3 * njb],
                                 c_old);
            store(cn, bh, p.c);
            store(hn, bh, p.h);
            store(out, o, p.h);
            if (gates) {
                const long long gr = ((long long)s * B + b) * G + j;
                store(gates, gr, p.i);
                store(gates, gr + H, p.f);
                store(gates, gr + 2 * H, p.g);
                store(gates, gr + 3 * H, p.o);
            }
        }
        grid_sync(bar);
    }
}

// All T steps of the backward (s = T-1 .. 0) from the tape of either forward. Per step:
// the gate gradients of the block's units into dg (T, B, 4H), grid_sync, then the block's
// slice of dg[s] @ U^T, the recurrent part of the state gradient of its units. The
// state gradients stay in shared memory; dh0, dc0 are written at the end.
template <typename T>
__global__ void lstm_persist_backward(
    const T* __restrict__ dh_out,  // (T, B, H) or null
    const T* __restrict__ dh_n, const T* __restrict__ dc_n,   // (B, H) or null
    const T* __restrict__ gates,   // (T, B, 4H) tape
    const T* __restrict__ cs,      // (T+1, B, H) tape
    const T* __restrict__ U,       // (H, 4H)
    T* dg,                         // (T, B, 4H) out: gate gradients
    T* __restrict__ dh0, T* __restrict__ dc0,   // (B, H) out
    const long long* __restrict__ lengths,
    int T_, int B, int H, int reverse, int nj, unsigned int* bar)
{
    typedef ACC(T) A;
    const int NT = blockDim.x;
    const int j0 = blockIdx.x * nj;
    const int njb = min(nj, H - j0);
    const long long G = 4LL * H, BH = (long long)B * H;
    const PersistSmem<A> sm(G * nj, B);
    A* W = sm.W;                                     // W[c * njb + kk] = U[j0 + kk, c]
    A* rec = sm.units;                               // per (b, jj): dg[s] @ U^T
    A* carry = rec + B * nj;                         // dL/dh after the step
    A* dcs = carry + B * nj;                         // dL/dc after the step
    A* direct = dcs + B * nj;
    for (long long q = threadIdx.x; q < G * njb; q += NT) {
        const long long c = q / njb;
        const int kk = (int)(q - c * njb);
        W[q] = load(U, (long long)(j0 + kk) * G + c);
    }
    for (int q = threadIdx.x; q < B * njb; q += NT) {
        const int b = q / njb, j = j0 + q - b * njb;
        const long long bh = (long long)b * H + j;
        carry[q] = dh_n ? load(dh_n, bh) : A(0);
        dcs[q] = dc_n ? load(dc_n, bh) : A(0);
    }
    __syncthreads();
    for (int s = T_ - 1; s >= 0; --s) {
        for (int q = threadIdx.x; q < B * njb; q += NT) {
            const StepUnit u(q, njb, j0, lengths, s, T_, reverse);
            const int b = u.b, j = u.j, t = u.t;
            const bool running = u.running;
            const long long bh = (long long)b * H + j;
            const long long gr = ((long long)s * B + b) * G + j;
            if (!running) {
                direct[q] = carry[q];
                for (int g = 0; g < 4; ++g) store(dg, gr + g * H, A(0));
                continue;
            }
            A dh = carry[q];
            if (dh_out) dh += load(dh_out, ((long long)t * B + b) * H + j);
            const LstmGrad<A> d(dh, dcs[q], load(gates, gr), load(gates, gr + H),
                                load(gates, gr + 2 * H), load(gates, gr + 3 * H),
                                load(cs, s * BH + bh), load(cs, (s + 1) * BH + bh));
            store(dg, gr, d.di);
            store(dg, gr + H, d.df);
            store(dg, gr + 2 * H, d.dg);
            store(dg, gr + 3 * H, d.d_o);
            dcs[q] = d.dc;
            direct[q] = A(0);
        }
        grid_sync(bar);
        block_matvec(dg + s * B * G, G, B, (int)G, sm, njb, rec);
        for (int q = threadIdx.x; q < B * njb; q += NT) carry[q] = direct[q] + rec[q];
        __syncthreads();
    }
    for (int q = threadIdx.x; q < B * njb; q += NT) {
        const int b = q / njb, j = j0 + q - b * njb;
        const long long bh = (long long)b * H + j;
        store(dh0, bh, carry[q]);
        store(dc0, bh, dcs[q]);
    }
}

#ifdef FASTRNN_INSTANTIATE
#define FASTRNN_LSTM_INSTANCES(T)                                                     \
    (void*)&lstm_forward<T>, (void*)&lstm_backward<T>, (void*)&lstm_persist_forward<T>, \
    (void*)&lstm_persist_backward<T>,
void* fastrnn_lstm_instances[] = {FASTRNN_FOR_EACH_STORAGE(FASTRNN_LSTM_INSTANCES)};
#endif
