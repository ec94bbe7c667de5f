// fastrnn GPU kernels: one LSTM unit, forward and backward, shared by the LSTM kernels
// (lstm.cu) and those of the projected LSTM (lstmp.cu).

#ifndef FASTRNN_LSTM_CELL_CUH
#define FASTRNN_LSTM_CELL_CUH

#include "common.cuh"

// Forward of one unit: pre-activations and the previous cell state in, gates and state out.
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

// Backward of one unit: dh, dc after the step, the tape; out the gradients of the four
// pre-activations and dc before the step.
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

#endif  // FASTRNN_LSTM_CELL_CUH
