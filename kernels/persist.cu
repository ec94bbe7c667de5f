// The persistent kernels of every cell of cells.cuh (rnn_tanh, rnn_relu, lstm, gru): all T
// steps of a forward, or of a backward, in one cooperative launch. They write the same
// tape and gradients as the per-step kernels of step.cu, so either forward pairs with
// either backward, and must match the reference's step functions as those do.
//
// Geometry (persist.cuh): block (bg, ug) = (blockIdx.x / nug, blockIdx.x % nug) owns batch
// rows r0 = bg * rows .. and hidden units j0 = ug * nj ..; its slice of U stays in shared
// memory. The host's plan (fastrnn/backends/cupy/persistent.py) gives the geometry, the
// matvec shape and where in dynamic shared memory each region starts (element offsets of
// the arithmetic type A): W at 0, `out` (the block's product), `scratch` (staged operand,
// then partial sums) and `units` (per-unit state kept across steps, rows * nj each).
//
// Forward, per step s: out = h_prev[rows of the group] @ W (W[k * cs + g * nj + jj] =
// U[k, g H + j0 + jj]), then per unit the cell's forward; h and c of the block's own units
// stay in `units` (hown, cown) besides being written to hs and cs, which the other blocks
// and the backward read. hs, cs: (T+1, B, H) when keep (training), else (2, B, H) used
// alternately; the first step reads h0 and c0 (which the host puts in slot 0 of the
// training tape as well).
// Backward, per step s = T-1 .. 0: per unit the cell's backward from carry (dL/dh after
// the step), written as gate gradients dg_rec[s] (and dg_x[s]); the group barrier; then
// rec = dg_rec[s][rows] @ W (W[k * cs + jj] = U[j0 + jj, k], k < G*H) and carry = direct +
// rec. `units` holds carry, direct and dc. dh0, dc0 are written at the end.
//
// A unit's inputs that do not depend on the recurrence (x @ W + b in the forward; the
// tape and upstream gradient in the backward) are loaded a step ahead for the first
// PERSIST_PREFETCH units of each thread, so their latency hides behind the barrier.

#include "common.cuh"
#include "cells.cuh"
#include "persist.cuh"

// Which block and units this is, from the plan's geometry.
struct PersistBlock {
    int bg, j0, njb, r0, nr;
    __device__ __forceinline__ PersistBlock(int nug, int nj, int rows, int B, int H) {
        bg = blockIdx.x / nug;
        const int ug = blockIdx.x - bg * nug;
        j0 = ug * nj;
        njb = min(nj, H - j0);
        r0 = bg * rows;
        nr = min(rows, B - r0);
    }
};

template <typename A>
__device__ __forceinline__ A* dynamic_smem() {
    FASTRNN_DYNAMIC_SMEM(fastrnn_smem_raw);
    return reinterpret_cast<A*>(fastrnn_smem_raw);
}

// ------------------------------------------------------------------------------ forward

template <class Cell, typename T>
struct ForwardUnit {
    typedef ACC(T) A;
    static constexpr int G = Cell::G;

    // x @ W + b of unit (b, j) at step s, or nothing for a finished row.
    __device__ __forceinline__ static void load_inputs(const A* xw, const T* bias,
                                                       const long long* lengths, int s, int T_,
                                                       int B, int H, int reverse, int b, int j,
                                                       A (&gx)[G]) {
        bool running;
        const int t = step_time(lengths, s, T_, b, reverse, &running);
        if (!running) return;
        const long long xr = ((long long)t * B + b) * G * H + j;
#pragma unroll
        for (int g = 0; g < G; ++g) gx[g] = load(xw, xr + (long long)g * H) + load(bias, g * H + j);
    }
};

template <class Cell, typename T>
__global__ void __launch_bounds__(PERSIST_MAX_THREADS, 1) persist_forward(
    const ACC(T)* __restrict__ xw, // (T, B, G*H) x @ W, time-indexed
    const T* __restrict__ bias,    // (G*H,)
    const T* __restrict__ bias_n,  // (H,) gru, else null
    const T* __restrict__ U,       // (H, G*H)
    const T* h0, const T* c0,      // (B, H) initial states (c0 null without a cell state)
    T* hs, T* cs,                  // (slots, B, H); cs null without a cell state
    T* __restrict__ out,           // (T, B, H)
    T* __restrict__ tape,          // (T, B, TAPE*H), or null (inference)
    const long long* __restrict__ lengths,
    int T_, int B, int H, int reverse, int keep,
    int nug, int nj, int rows, int rs, int cs_, int kt, int kstride,
    int off_out, int off_scratch, int off_units, unsigned int* bar)
{
    typedef ACC(T) A;
    constexpr int G = Cell::G;
    constexpr int PF = PERSIST_PREFETCH;
    typedef ForwardUnit<Cell, T> FU;
    const int NT = blockDim.x, tid = threadIdx.x;
    const PersistBlock pb(nug, nj, rows, B, H);
    const long long BH = (long long)B * H, GH = (long long)G * H;
    A* smem = dynamic_smem<A>();
    A* W = smem;
    A* hu = smem + off_out;
    A* scratch = smem + off_scratch;
    A* hown = smem + off_units;
    A* cown = hown + rows * nj;
    const MatvecShape mv{rs, cs_, kt, kstride};
    const int Kp = ((H + 3) >> 2) << 2;
    for (long long q = tid; q < (long long)Kp * cs_; q += NT) {
        const int k = (int)(q / cs_), c = (int)(q - (long long)k * cs_);
        const int g = c / nj, jj = c - g * nj;
        W[q] = (k < H && g < G && jj < pb.njb)
                   ? A(load(U, (long long)k * GH + (long long)g * H + pb.j0 + jj)) : A(0);
    }
    const int units = pb.nr * pb.njb;
    for (int q = tid; q < units; q += NT) {
        const int rr = q / pb.njb, jj = q - rr * pb.njb;
        const long long bh = (long long)(pb.r0 + rr) * H + pb.j0 + jj;
        hown[rr * nj + jj] = load(h0, bh);
        if (Cell::HAS_C) cown[rr * nj + jj] = load(c0, bh);
    }
    A bn[PF], gx_next[PF][G];
#pragma unroll
    for (int i = 0; i < PF; ++i) {
        const int q = tid + i * NT;
        if (q < units) {
            const int rr = q / pb.njb, j = pb.j0 + q - rr * pb.njb;
            bn[i] = Cell::BIAS_N ? A(load(bias_n, j)) : A(0);
            FU::load_inputs(xw, bias, lengths, 0, T_, B, H, reverse, pb.r0 + rr, j, gx_next[i]);
        }
    }
    __syncthreads();
    unsigned int* counter = bar + pb.bg * PERSIST_BAR_STRIDE;
    unsigned int arrivals = 0;

    for (int s = 0; s < T_; ++s) {
        const T* hp = s == 0 ? h0 : hs + (keep ? s : (s & 1)) * BH;
        T* hn = hs + (keep ? s + 1 : ((s + 1) & 1)) * BH;
        T* cn = Cell::HAS_C ? cs + (keep ? s + 1 : ((s + 1) & 1)) * BH : nullptr;
        block_matvec(hp + (long long)pb.r0 * H, (long long)H, pb.nr, H, W, scratch, hu, mv);

        // The cell on unit q with its inputs gx (x @ W + b of this step).
        auto cell_step = [&](int q, const A (&gx)[G], A bnq) {
            const int rr = q / pb.njb, jj = q - rr * pb.njb;
            const int b = pb.r0 + rr, j = pb.j0 + jj;
            bool running;
            const int t = step_time(lengths, s, T_, b, reverse, &running);
            const long long bh = (long long)b * H + j;
            const long long o = ((long long)t * B + b) * H + j;
            A* hq = hown + rr * nj + jj;
            A* cq = cown + rr * nj + jj;
            if (!running) {
                store(out, o, A(0));
                store(hn, bh, *hq);
                if (Cell::HAS_C) store(cn, bh, *cq);
                return;
            }
            A gh[G], tp[TapeSlots<Cell>::N], h, c;
#pragma unroll
            for (int g = 0; g < G; ++g) gh[g] = hu[rr * cs_ + g * nj + jj];
            if (Cell::BIAS_N) gh[G - 1] += bnq;
            Cell::forward(gx, gh, *hq, Cell::HAS_C ? *cq : A(0), h, c, tp);
            *hq = h;
            store(hn, bh, h);
            store(out, o, h);
            if (Cell::HAS_C) {
                *cq = c;
                store(cn, bh, c);
            }
            if (tape) {
                const long long tr = ((long long)s * B + b) * Cell::TAPE * H + j;
#pragma unroll
                for (int g = 0; g < Cell::TAPE; ++g) store(tape, tr + (long long)g * H, tp[g]);
            }
        };

#pragma unroll
        for (int i = 0; i < PF; ++i) {
            const int q = tid + i * NT;
            if (q < units) {
                A gx[G];
#pragma unroll
                for (int g = 0; g < G; ++g) gx[g] = gx_next[i][g];
                cell_step(q, gx, bn[i]);
                if (s + 1 < T_) {
                    const int rr = q / pb.njb, j = pb.j0 + q - rr * pb.njb;
                    FU::load_inputs(xw, bias, lengths, s + 1, T_, B, H, reverse, pb.r0 + rr, j,
                                    gx_next[i]);
                }
            }
        }
        for (int q = tid + PF * NT; q < units; q += NT) {
            const int rr = q / pb.njb, j = pb.j0 + q - rr * pb.njb;
            A gx[G];
            FU::load_inputs(xw, bias, lengths, s, T_, B, H, reverse, pb.r0 + rr, j, gx);
            cell_step(q, gx, Cell::BIAS_N ? A(load(bias_n, j)) : A(0));
        }
        arrivals += nug;
        group_sync(counter, arrivals, nug);
    }
}

// ----------------------------------------------------------------------------- backward

// What the backward of unit (b, j) at step s reads besides the carried gradients.
template <class Cell, typename A>
struct BackwardInputs {
    A dh_out, hp, hn, cp, cn;
    A tape[TapeSlots<Cell>::N];
};

template <class Cell, typename T>
__device__ __forceinline__ void load_backward_inputs(
    const T* dh_out, const T* tape, const T* hs, const T* cs, const long long* lengths,
    int s, int T_, int B, int H, int reverse, int b, int j,
    BackwardInputs<Cell, ACC(T)>& in) {
    typedef ACC(T) A;
    bool running;
    const int t = step_time(lengths, s, T_, b, reverse, &running);
    if (!running) return;
    const long long BH = (long long)B * H, bh = (long long)b * H + j;
    in.dh_out = dh_out ? A(load(dh_out, (long long)t * BH + bh)) : A(0);
    const long long tr = ((long long)s * B + b) * Cell::TAPE * H + j;
#pragma unroll
    for (int g = 0; g < Cell::TAPE; ++g) in.tape[g] = load(tape, tr + (long long)g * H);
    in.hp = Cell::READS_H_PREV ? A(load(hs, s * BH + bh)) : A(0);
    in.hn = Cell::READS_H_NEW ? A(load(hs, (s + 1) * BH + bh)) : A(0);
    in.cp = Cell::HAS_C ? A(load(cs, s * BH + bh)) : A(0);
    in.cn = Cell::HAS_C ? A(load(cs, (s + 1) * BH + bh)) : A(0);
}

template <class Cell, typename T>
__global__ void __launch_bounds__(PERSIST_MAX_THREADS, 1) persist_backward(
    const T* __restrict__ dh_out,  // (T, B, H) or null
    const T* __restrict__ dh_n, const T* __restrict__ dc_n,   // (B, H) or null
    const T* __restrict__ tape,    // (T, B, TAPE*H) or null (TAPE = 0)
    const T* __restrict__ hs,      // (T+1, B, H) tape
    const T* __restrict__ cs,      // (T+1, B, H) tape, or null
    const T* __restrict__ U,       // (H, G*H)
    T* dg_rec,                     // (T, B, G*H) out: gradient of h_prev @ U (+ bn)
    T* __restrict__ dg_x,          // (T, B, G*H) out (SPLIT_GRAD), else null
    T* __restrict__ dh0, T* __restrict__ dc0,   // (B, H) out; dc0 null without c
    const long long* __restrict__ lengths,
    int T_, int B, int H, int reverse,
    int nug, int nj, int rows, int rs, int cs_, int kt, int kstride,
    int off_out, int off_scratch, int off_units, unsigned int* bar)
{
    typedef ACC(T) A;
    constexpr int G = Cell::G;
    constexpr int PF = PERSIST_PREFETCH;
    typedef BackwardInputs<Cell, A> In;
    const int NT = blockDim.x, tid = threadIdx.x;
    const PersistBlock pb(nug, nj, rows, B, H);
    const long long GH = (long long)G * H;
    A* smem = dynamic_smem<A>();
    A* W = smem;
    A* rec = smem + off_out;
    A* scratch = smem + off_scratch;
    A* carry = smem + off_units;
    A* direct = carry + rows * nj;
    A* dcs = direct + rows * nj;
    const MatvecShape mv{rs, cs_, kt, kstride};
    const long long Kp = ((GH + 3) >> 2) << 2;
    for (long long q = tid; q < Kp * cs_; q += NT) {
        const long long k = q / cs_;
        const int jj = (int)(q - k * cs_);
        W[q] = (k < GH && jj < pb.njb) ? A(load(U, (long long)(pb.j0 + jj) * GH + k)) : A(0);
    }
    const int units = pb.nr * pb.njb;
    for (int q = tid; q < units; q += NT) {
        const int rr = q / pb.njb, jj = q - rr * pb.njb;
        const long long bh = (long long)(pb.r0 + rr) * H + pb.j0 + jj;
        carry[rr * nj + jj] = dh_n ? A(load(dh_n, bh)) : A(0);
        dcs[rr * nj + jj] = (Cell::HAS_C && dc_n) ? A(load(dc_n, bh)) : A(0);
    }
    In next[PF];
#pragma unroll
    for (int i = 0; i < PF; ++i) {
        const int q = tid + i * NT;
        if (q < units) {
            const int rr = q / pb.njb, j = pb.j0 + q - rr * pb.njb;
            load_backward_inputs<Cell, T>(dh_out, tape, hs, cs, lengths, T_ - 1, T_, B, H,
                                          reverse, pb.r0 + rr, j, next[i]);
        }
    }
    __syncthreads();
    unsigned int* counter = bar + pb.bg * PERSIST_BAR_STRIDE;
    unsigned int arrivals = 0;

    for (int s = T_ - 1; s >= 0; --s) {
        // The cell's backward on unit q with its inputs of this step.
        auto cell_step = [&](int q, const In& in) {
            const int rr = q / pb.njb, jj = q - rr * pb.njb;
            const int b = pb.r0 + rr, j = pb.j0 + jj;
            const int u = rr * nj + jj;
            bool running;
            step_time(lengths, s, T_, b, reverse, &running);
            const long long gr = ((long long)s * B + b) * GH + j;
            if (!running) {
                direct[u] = carry[u];
#pragma unroll
                for (int g = 0; g < G; ++g) {
                    store(dg_rec, gr + (long long)g * H, A(0));
                    if (Cell::SPLIT_GRAD) store(dg_x, gr + (long long)g * H, A(0));
                }
                return;
            }
            A dgx[G], dgh[G], dir, dcp;
            Cell::backward(carry[u] + in.dh_out, dcs[u], in.tape, in.hp, in.hn, in.cp, in.cn,
                           dgx, dgh, dir, dcp);
#pragma unroll
            for (int g = 0; g < G; ++g) {
                store(dg_rec, gr + (long long)g * H, dgh[g]);
                if (Cell::SPLIT_GRAD) store(dg_x, gr + (long long)g * H, dgx[g]);
            }
            direct[u] = dir;
            dcs[u] = dcp;
        };

#pragma unroll
        for (int i = 0; i < PF; ++i) {
            const int q = tid + i * NT;
            if (q < units) {
                const In in = next[i];
                cell_step(q, in);
                if (s > 0) {
                    const int rr = q / pb.njb, j = pb.j0 + q - rr * pb.njb;
                    load_backward_inputs<Cell, T>(dh_out, tape, hs, cs, lengths, s - 1, T_, B,
                                                  H, reverse, pb.r0 + rr, j, next[i]);
                }
            }
        }
        for (int q = tid + PF * NT; q < units; q += NT) {
            const int rr = q / pb.njb, j = pb.j0 + q - rr * pb.njb;
            In in;
            load_backward_inputs<Cell, T>(dh_out, tape, hs, cs, lengths, s, T_, B, H, reverse,
                                          pb.r0 + rr, j, in);
            cell_step(q, in);
        }
        arrivals += nug;
        group_sync(counter, arrivals, nug);
        block_matvec(dg_rec + (long long)s * B * GH + (long long)pb.r0 * GH, GH, pb.nr,
                     (int)GH, W, scratch, rec, mv);
        for (int q = tid; q < units; q += NT) {
            const int rr = q / pb.njb, jj = q - rr * pb.njb;
            carry[rr * nj + jj] = direct[rr * nj + jj] + rec[rr * cs_ + jj];
        }
        __syncthreads();
    }
    for (int q = tid; q < units; q += NT) {
        const int rr = q / pb.njb, jj = q - rr * pb.njb;
        const long long bh = (long long)(pb.r0 + rr) * H + pb.j0 + jj;
        store(dh0, bh, carry[rr * nj + jj]);
        if (Cell::HAS_C) store(dc0, bh, dcs[rr * nj + jj]);
    }
}

#ifdef FASTRNN_INSTANTIATE
#define FASTRNN_PERSIST_INSTANCES(T)                                                  \
    (void*)&persist_forward<RnnTanh, T>, (void*)&persist_backward<RnnTanh, T>,        \
    (void*)&persist_forward<RnnRelu, T>, (void*)&persist_backward<RnnRelu, T>,        \
    (void*)&persist_forward<LstmCell, T>, (void*)&persist_backward<LstmCell, T>,      \
    (void*)&persist_forward<GruCell, T>, (void*)&persist_backward<GruCell, T>,
void* fastrnn_persist_instances[] = {FASTRNN_FOR_EACH_STORAGE(FASTRNN_PERSIST_INSTANCES)};
#endif
