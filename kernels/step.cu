// The per-step kernels of every cell of cells.cuh (rnn_tanh, rnn_relu, lstm, gru): one
// fused pointwise kernel per time step, forward and backward, around one cuBLAS product
// per step (fastrnn/backends/cupy/steps.py). They must match the step functions of
// fastrnn/backends/numpy/reference.py.
//
// Forward of step s, per unit (b, j): gx = (xw[t] + b), gh = hu (+ bn), the cell's
// forward; the state, the output at time t and the tape slot are written. Rows whose
// sequence has finished keep their state and write 0 to their (padded) output.
// Backward of step s (the host runs s = T-1 .. 0): the gradient of the state after step s
// is dh_direct + dh_rec (+ dh_out at the step's time), with dh_rec = dg_rec(s+1) @ U^T from
// cuBLAS; the kernel writes the gate gradients of the step (dg_rec for the recurrent
// product, dg_x for x @ W + b where the cell tells them apart), the next dh_direct (the
// whole carry for finished rows) and dc in place.
//
// Tape (step-indexed: slot s belongs to step s): hs (T+1, B, H) the state before step s
// in slot s; cs likewise (lstm); tape (T, B, TAPE*H) the cell's values. In inference
// h_prev and h_next (c_prev and c_next) are one buffer: each thread reads its element
// before writing it. xw, hu, the carried gradients and dc are in ACC(T) (common.cuh).

#include "common.cuh"
#include "cells.cuh"

template <class Cell, typename T>
__global__ void step_forward(
    const ACC(T)* __restrict__ xw, // (T, B, G*H) x @ W, time-indexed
    const T* __restrict__ bias,    // (G*H,) b
    const T* __restrict__ bias_n,  // (H,) bn (gru), else null
    const ACC(T)* __restrict__ hu, // (B, G*H) h_prev @ U of this step
    const T* h_prev, T* h_next,    // (B, H); may alias
    const T* c_prev, T* c_next,    // (B, H) or null (no cell state); may alias
    T* __restrict__ out,           // (T, B, H) outputs, time-indexed
    T* __restrict__ tape,          // (B, TAPE*H) tape slot of this step, or null
    const long long* __restrict__ lengths,  // (B,) or null
    int s, int T_, int B, int H, int reverse)
{
    typedef ACC(T) A;
    constexpr int G = Cell::G;
    const long long GH = (long long)G * H;
    FOR_EACH(k, (long long)B * H) {
        const StepUnit u(k, H, 0, lengths, s, T_, reverse);
        const long long o = ((long long)u.t * B + u.b) * H + u.j;
        const A hp = load(h_prev, k);
        const A cp = Cell::HAS_C ? load(c_prev, k) : A(0);
        if (!u.running) {
            store(out, o, A(0));
            store(h_next, k, hp);
            if (Cell::HAS_C) store(c_next, k, cp);
            continue;
        }
        const long long xr = ((long long)u.t * B + u.b) * GH + u.j;
        const long long hr = (long long)u.b * GH + u.j;
        A gx[G], gh[G], tp[TapeSlots<Cell>::N];
#pragma unroll
        for (int g = 0; g < G; ++g) {
            gx[g] = load(xw, xr + g * H) + load(bias, g * H + u.j);
            gh[g] = load(hu, hr + g * H);
        }
        if (Cell::BIAS_N) gh[G - 1] += load(bias_n, u.j);
        A h, c;
        Cell::forward(gx, gh, hp, cp, h, c, tp);
        store(h_next, k, h);
        store(out, o, h);
        if (Cell::HAS_C) store(c_next, k, c);
        if (tape) {
#pragma unroll
            for (int q = 0; q < Cell::TAPE; ++q)
                store(tape, (long long)u.b * Cell::TAPE * H + (long long)q * H + u.j, tp[q]);
        }
    }
}

template <class Cell, typename T>
__global__ void step_backward(
    const T* __restrict__ dh_out,  // (T, B, H) upstream gradient of the outputs, or null
    const ACC(T)* dh_direct_in, ACC(T)* dh_direct_out,  // (B, H); may alias
    const ACC(T)* __restrict__ dh_rec,  // (B, H) dg_rec(s+1) @ U^T
    ACC(T)* dc,                    // (B, H) in: dL/dc after step s, out: before it; or null
    const T* __restrict__ tape,    // (B, TAPE*H) tape slot s, or null (TAPE = 0)
    const T* __restrict__ h_prev,  // (B, H) hs[s]
    const T* __restrict__ h_new,   // (B, H) hs[s + 1]
    const T* __restrict__ c_prev,  // (B, H) cs[s], or null
    const T* __restrict__ c_new,   // (B, H) cs[s + 1], or null
    T* __restrict__ dg_rec,        // (B, G*H) slot s: gradient of h_prev @ U (+ bn)
    T* __restrict__ dg_x,          // (B, G*H) slot s: gradient of x @ W + b (SPLIT_GRAD only)
    const long long* __restrict__ lengths,
    int s, int T_, int B, int H, int reverse)
{
    typedef ACC(T) A;
    constexpr int G = Cell::G;
    const long long GH = (long long)G * H;
    FOR_EACH(k, (long long)B * H) {
        const StepUnit u(k, H, 0, lengths, s, T_, reverse);
        const long long gr = (long long)u.b * GH + u.j;
        const A carry = load(dh_direct_in, k) + load(dh_rec, k);
        if (!u.running) {                                        // gradient passes through
            store(dh_direct_out, k, carry);
#pragma unroll
            for (int g = 0; g < G; ++g) {
                store(dg_rec, gr + g * H, A(0));
                if (Cell::SPLIT_GRAD) store(dg_x, gr + g * H, A(0));
            }
            continue;
        }
        A dh = carry;
        if (dh_out) dh += load(dh_out, ((long long)u.t * B + u.b) * H + u.j);
        A tp[TapeSlots<Cell>::N];
#pragma unroll
        for (int q = 0; q < Cell::TAPE; ++q)
            tp[q] = load(tape, (long long)u.b * Cell::TAPE * H + (long long)q * H + u.j);
        const A hp = Cell::READS_H_PREV ? A(load(h_prev, k)) : A(0);
        const A hn = Cell::READS_H_NEW ? A(load(h_new, k)) : A(0);
        const A cp = Cell::HAS_C ? A(load(c_prev, k)) : A(0);
        const A cn = Cell::HAS_C ? A(load(c_new, k)) : A(0);
        const A dcv = Cell::HAS_C ? load(dc, k) : A(0);
        A dgx[G], dgh[G], direct, dcp;
        Cell::backward(dh, dcv, tp, hp, hn, cp, cn, dgx, dgh, direct, dcp);
#pragma unroll
        for (int g = 0; g < G; ++g) {
            store(dg_rec, gr + g * H, dgh[g]);
            if (Cell::SPLIT_GRAD) store(dg_x, gr + g * H, dgx[g]);
        }
        if (Cell::HAS_C) store(dc, k, dcp);
        store(dh_direct_out, k, direct);
    }
}

#ifdef FASTRNN_INSTANTIATE
#define FASTRNN_STEP_INSTANCES(T)                                                     \
    (void*)&step_forward<RnnTanh, T>, (void*)&step_backward<RnnTanh, T>,              \
    (void*)&step_forward<RnnRelu, T>, (void*)&step_backward<RnnRelu, T>,              \
    (void*)&step_forward<LstmCell, T>, (void*)&step_backward<LstmCell, T>,            \
    (void*)&step_forward<GruCell, T>, (void*)&step_backward<GruCell, T>,
void* fastrnn_step_instances[] = {FASTRNN_FOR_EACH_STORAGE(FASTRNN_STEP_INSTANCES)};
#endif
