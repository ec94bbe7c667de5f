// Projected LSTM (fastrnn cell "lstmp", PyTorch's LSTM with proj_size = P): the per-step
// kernels around four cuBLAS products per step (two forward, two backward).
//
// The cell as lstm.cu's, with the recurrent input and the output P wide:
//   a = (xw[t] + b) + hu,  hu = h_prev @ U (B, 4H), h_prev (B, P)
//   c' = f * c + i * g ;  m = o * tanh(c') (B, H) ;  h' = m @ Wr (B, P)
// Per forward step: cuBLAS hu; lstmp_forward_cell (gates, c', m); cuBLAS hr = m @ Wr;
// lstmp_forward_proj (h', the output and the frozen state of finished rows).
// Per backward step: lstmp_backward_in (the gradient of h' of the step, dH[s]); cuBLAS
// dm = dH[s] @ Wr^T; lstmp_backward_cell (gate gradients, dc); cuBLAS dgates @ U^T.
//
// Tape (step-indexed): gates (T, B, 4H), zero in rows of finished sequences (so that
// m = o * tanh(c') over all rows is zero there); Hs (T+1, B, P), Cs (T+1, B, H).
// Intermediates xw, hu, hr, dm and the carried gradients are in ACC(T) (common.cuh).

#include "common.cuh"
#include "cells.cuh"

// Gates, c' and m of step s, for (B, H) units. Finished rows keep c and get m = 0.
template <typename T>
__global__ void lstmp_forward_cell(
    const ACC(T)* __restrict__ xw, // (T, B, 4H) x @ W, time-indexed
    const T* __restrict__ bias,    // (4H,)
    const ACC(T)* __restrict__ hu, // (B, 4H) h_prev @ U of this step
    const T* c_prev, T* c_next,    // (B, H); may alias
    T* __restrict__ m,             // (B, H) o * tanh(c'), the left operand of m @ Wr
    T* __restrict__ gates,         // (B, 4H) tape slot of this step, or null (inference)
    const long long* __restrict__ lengths,  // (B,) or null
    int s, int T_, int B, int H, int reverse)
{
    typedef ACC(T) A;
    const long long G = 4LL * H;
    FOR_EACH(k, (long long)B * H) {
        const StepUnit u(k, H, 0, lengths, s, T_, reverse);
        const int b = u.b, j = u.j, t = u.t;
        const A cp = load(c_prev, k);
        if (!u.running) {
            store(c_next, k, cp);
            store(m, k, A(0));
            continue;
        }
        const long long xr = ((long long)t * B + b) * G + j;
        const long long hr = (long long)b * G + j;
        const LstmPoint<A> p(load(xw, xr) + load(bias, j) + load(hu, hr),
                             load(xw, xr + H) + load(bias, H + j) + load(hu, hr + H),
                             load(xw, xr + 2 * H) + load(bias, 2 * H + j) + load(hu, hr + 2 * H),
                             load(xw, xr + 3 * H) + load(bias, 3 * H + j) + load(hu, hr + 3 * H),
                             cp);
        store(c_next, k, p.c);
        store(m, k, p.h);
        if (gates) {
            store(gates, hr, p.i);
            store(gates, hr + H, p.f);
            store(gates, hr + 2 * H, p.g);
            store(gates, hr + 3 * H, p.o);
        }
    }
}

// h' = hr (= m @ Wr) and the output of step s, for (B, P) units; finished rows keep h and
// write 0 to their padded output position.
template <typename T>
__global__ void lstmp_forward_proj(
    const ACC(T)* __restrict__ hr, // (B, P) m @ Wr of this step
    const T* h_prev, T* h_next,    // (B, P); may alias
    T* __restrict__ out,           // (T, B, P) outputs, time-indexed
    const long long* __restrict__ lengths,
    int s, int T_, int B, int P, int reverse)
{
    typedef ACC(T) A;
    FOR_EACH(k, (long long)B * P) {
        const StepUnit u(k, P, 0, lengths, s, T_, reverse);
        const long long o = ((long long)u.t * B + u.b) * P + u.j;
        if (!u.running) {
            store(h_next, k, A(load(h_prev, k)));
            store(out, o, A(0));
            continue;
        }
        const A h = hr[k];
        store(h_next, k, h);
        store(out, o, h);
    }
}

// The gradient of h' of step s (B, P): dh_direct + dh_rec (+ dh_out at the step's time)
// into dH (the tape slot s, zero for finished rows, whose gradient passes on through
// dh_direct_out instead).
template <typename T>
__global__ void lstmp_backward_in(
    const T* __restrict__ dh_out,  // (T, B, P) upstream gradient of the outputs, or null
    const ACC(T)* dh_direct_in, ACC(T)* dh_direct_out,  // (B, P); may alias
    const ACC(T)* __restrict__ dh_rec,  // (B, P) dgates(s+1) @ U^T
    T* __restrict__ dH,            // (B, P) slot s: dL/dh' of this step
    const long long* __restrict__ lengths,
    int s, int T_, int B, int P, int reverse)
{
    typedef ACC(T) A;
    FOR_EACH(k, (long long)B * P) {
        const StepUnit u(k, P, 0, lengths, s, T_, reverse);
        A dh = load(dh_direct_in, k) + load(dh_rec, k);
        if (!u.running) {
            store(dh_direct_out, k, dh);
            store(dH, k, A(0));
            continue;
        }
        if (dh_out) dh += load(dh_out, ((long long)u.t * B + u.b) * P + u.j);
        store(dH, k, dh);
        store(dh_direct_out, k, A(0));
    }
}

// Gate gradients of step s from dm = dH[s] @ Wr^T, for (B, H) units; dc in place
// (unchanged for finished rows, whose gate gradients are 0).
template <typename T>
__global__ void lstmp_backward_cell(
    const ACC(T)* __restrict__ dm, // (B, H) dL/dm of this step
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
        const long long gr = (long long)u.b * G + u.j;
        if (!u.running) {
            for (int q = 0; q < 4; ++q) store(dgates, gr + q * H, A(0));
            continue;
        }
        const LstmGrad<A> d(dm[k], dc[k], load(gates, gr), load(gates, gr + H),
                            load(gates, gr + 2 * H), load(gates, gr + 3 * H),
                            load(c_prev, k), load(c_new, k));
        store(dgates, gr, d.di);
        store(dgates, gr + H, d.df);
        store(dgates, gr + 2 * H, d.dg);
        store(dgates, gr + 3 * H, d.d_o);
        dc[k] = d.dc;
    }
}

#ifdef FASTRNN_INSTANTIATE
#define FASTRNN_LSTMP_INSTANCES(T)                                                     \
    (void*)&lstmp_forward_cell<T>, (void*)&lstmp_forward_proj<T>,                       \
    (void*)&lstmp_backward_in<T>, (void*)&lstmp_backward_cell<T>,
void* fastrnn_lstmp_instances[] = {FASTRNN_FOR_EACH_STORAGE(FASTRNN_LSTMP_INSTANCES)};
#endif
