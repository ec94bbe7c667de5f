// fastrnn GPU kernels: the pointwise math of each cell, written once and plugged into every
// loop skeleton (the per-step kernels of step.cu, the persistent kernels of persist.cu,
// the projected LSTM of lstmp.cu). Each must match fastrnn/backends/numpy/reference.py.
//
// A cell is a struct of compile-time facts and two static functions over one hidden unit:
//   G            gate blocks of H columns in W, U and b (xw = x @ W and hu = h @ U are G*H wide)
//   TAPE         values per unit that the forward keeps for the backward ((T, B, TAPE*H))
//   HAS_C        a cell state c beside h (lstm)
//   SPLIT_GRAD   the gradient of h @ U differs from that of x @ W + b (gru: the n gate)
//   BIAS_N       a bias bn added to the n block of h @ U before the reset gate (gru)
//   READS_H_PREV, READS_H_NEW   the backward reads h before / after the step
//   forward(gx, gh, hp, cp, h, c, tape): gx[g] = (x @ W)_g + b_g, gh[g] = (h_prev @ U)_g
//       (+ bn for the last block where BIAS_N); hp, cp the state before the step.
//   backward(dh, dc, tape, hp, hn, cp, cn, dgx, dgh, direct, dc_prev): dh, dc the gradients
//       of the state after the step; dgx[g] of (x @ W + b)_g, dgh[g] of (h @ U (+ bn))_g,
//       direct the part of dL/dh_prev that does not pass through U, dc_prev that of c.
// Arithmetic is in A = ACC(T) (common.cuh); tape values arrive as A.

#ifndef FASTRNN_CELLS_CUH
#define FASTRNN_CELLS_CUH

#include "common.cuh"

// ------------------------------------------------------------------------- Elman RNN
//   h' = tanh(a) or relu(a), a = gx + gh. The backward needs only h' (tanh' = 1 - h'^2;
//   relu'(a) = 1 exactly where h' > 0, as the reference's (a > 0)).
template <bool RELU>
struct RnnCell {
    static constexpr int G = 1;
    static constexpr int TAPE = 0;
    static constexpr bool HAS_C = false;
    static constexpr bool SPLIT_GRAD = false;
    static constexpr bool BIAS_N = false;
    static constexpr bool READS_H_PREV = false;
    static constexpr bool READS_H_NEW = true;

    template <typename A>
    __device__ __forceinline__ static void forward(const A* gx, const A* gh, A hp, A cp,
                                                   A& h, A& c, A* tape) {
        const A a = gx[0] + gh[0];
        h = RELU ? relu_(a) : tanh_(a);
        c = cp;
    }

    template <typename A>
    __device__ __forceinline__ static void backward(A dh, A dc, const A* tape, A hp, A hn,
                                                    A cp, A cn, A* dgx, A* dgh, A& direct,
                                                    A& dc_prev) {
        dgx[0] = dgh[0] = RELU ? dh * (hn > A(0) ? A(1) : A(0)) : dh * (A(1) - hn * hn);
        direct = A(0);
        dc_prev = dc;
    }
};
typedef RnnCell<false> RnnTanh;
typedef RnnCell<true> RnnRelu;

// ------------------------------------------------------------------------------- LSTM
// One unit, forward and backward (also the cell of the projected LSTM in lstmp.cu).
template <typename A>
struct LstmPoint {
    A i, f, g, o, c, h;
    __device__ __forceinline__ LstmPoint(A ai, A af, A ag, A ao, A cp) {
        i = sigmoid_(ai);
        f = sigmoid_(af);
        g = tanh_(ag);
        o = sigmoid_(ao);
        c = f * cp + i * g;
        h = o * tanh_(c);
    }
};

template <typename A>
struct LstmGrad {
    A di, df, dg, d_o, dc;
    __device__ __forceinline__ LstmGrad(A dh, A dc_after, A i, A f, A g, A o, A cp, A cn) {
        const A tc = tanh_(cn);
        const A dcs = dc_after + dh * o * (A(1) - tc * tc);
        di = dcs * g * i * (A(1) - i);
        df = dcs * cp * f * (A(1) - f);
        dg = dcs * i * (A(1) - g * g);
        d_o = dh * tc * o * (A(1) - o);
        dc = dcs * f;
    }
};

//   gates i, f, g, o; c' = f * c + i * g; h' = o * tanh(c'); tape i, f, g, o.
struct LstmCell {
    static constexpr int G = 4;
    static constexpr int TAPE = 4;
    static constexpr bool HAS_C = true;
    static constexpr bool SPLIT_GRAD = false;
    static constexpr bool BIAS_N = false;
    static constexpr bool READS_H_PREV = false;
    static constexpr bool READS_H_NEW = false;

    template <typename A>
    __device__ __forceinline__ static void forward(const A* gx, const A* gh, A hp, A cp,
                                                   A& h, A& c, A* tape) {
        const LstmPoint<A> p(gx[0] + gh[0], gx[1] + gh[1], gx[2] + gh[2], gx[3] + gh[3], cp);
        h = p.h;
        c = p.c;
        tape[0] = p.i;
        tape[1] = p.f;
        tape[2] = p.g;
        tape[3] = p.o;
    }

    template <typename A>
    __device__ __forceinline__ static void backward(A dh, A dc, const A* tape, A hp, A hn,
                                                    A cp, A cn, A* dgx, A* dgh, A& direct,
                                                    A& dc_prev) {
        const LstmGrad<A> d(dh, dc, tape[0], tape[1], tape[2], tape[3], cp, cn);
        dgx[0] = dgh[0] = d.di;
        dgx[1] = dgh[1] = d.df;
        dgx[2] = dgh[2] = d.dg;
        dgx[3] = dgh[3] = d.d_o;
        direct = A(0);
        dc_prev = d.dc;
    }
};

// -------------------------------------------------------------- GRU (reset after U_n)
//   r = sigmoid(gx_r + gh_r), z = sigmoid(gx_z + gh_z), hn = gh_n (h @ U_n + bn),
//   n = tanh(gx_n + r * hn), h' = (1 - z) * n + z * h; tape r, z, n, hn.
struct GruCell {
    static constexpr int G = 3;
    static constexpr int TAPE = 4;
    static constexpr bool HAS_C = false;
    static constexpr bool SPLIT_GRAD = true;
    static constexpr bool BIAS_N = true;
    static constexpr bool READS_H_PREV = true;
    static constexpr bool READS_H_NEW = false;

    template <typename A>
    __device__ __forceinline__ static void forward(const A* gx, const A* gh, A hp, A cp,
                                                   A& h, A& c, A* tape) {
        const A r = sigmoid_(gx[0] + gh[0]);
        const A z = sigmoid_(gx[1] + gh[1]);
        const A hn = gh[2];
        const A n = tanh_(gx[2] + r * hn);
        h = (A(1) - z) * n + z * hp;
        c = cp;
        tape[0] = r;
        tape[1] = z;
        tape[2] = n;
        tape[3] = hn;
    }

    template <typename A>
    __device__ __forceinline__ static void backward(A dh, A dc, const A* tape, A hp, A hn_,
                                                    A cp, A cn, A* dgx, A* dgh, A& direct,
                                                    A& dc_prev) {
        const A r = tape[0], z = tape[1], n = tape[2], hn = tape[3];
        const A dn = dh * (A(1) - z);
        const A dz = dh * (hp - n);
        const A da_n = dn * (A(1) - n * n);
        const A da_r = da_n * hn * r * (A(1) - r);
        const A da_z = dz * z * (A(1) - z);
        dgx[0] = dgh[0] = da_r;
        dgx[1] = dgh[1] = da_z;
        dgx[2] = da_n;
        dgh[2] = da_n * r;
        direct = dh * z;
        dc_prev = dc;
    }
};

// Array length for a cell's tape values (C++ has no arrays of length 0).
template <class Cell>
struct TapeSlots {
    static constexpr int N = Cell::TAPE > 0 ? Cell::TAPE : 1;
};

#endif  // FASTRNN_CELLS_CUH
