// Elman RNN (rnn_tanh, rnn_relu): one fused pointwise kernel per step, forward and
// backward. Per step the host computes hu = h_prev @ U (B, H) with cuBLAS:
//   a = (xw[t] + b) + hu ;  h' = tanh(a) or relu(a)
// The backward needs only h' (Hs[s + 1] of the tape): tanh' = 1 - h'^2, and relu'(a) = 1
// exactly where h' > 0 (a > 0), as the reference's (a > 0).
// relu is a runtime flag (0: tanh, 1: relu); see lstm.cu for the tape and state layout.
// xw, hu and the carried gradients are in the arithmetic type ACC(T) (common.cuh).

#include "common.cuh"
#include "persist.cuh"

// The cell: h' from the pre-activation, and dL/da from dL/dh' and h'.
template <typename A>
__device__ __forceinline__ A rnn_point(A a, int relu) { return relu ? relu_(a) : tanh_(a); }

template <typename A>
__device__ __forceinline__ A rnn_point_grad(A dh, A h, int relu) {
    return relu ? dh * (h > A(0) ? A(1) : A(0)) : dh * (A(1) - h * h);
}

template <typename T>
__global__ void rnn_forward(
    const ACC(T)* __restrict__ xw, // (T, B, H) x @ W, time-indexed
    const T* __restrict__ bias,    // (H,)
    const ACC(T)* __restrict__ hu, // (B, H) h_prev @ U
    const T* h_prev, T* h_next,    // (B, H); may alias
    T* __restrict__ out,           // (T, B, H)
    const long long* __restrict__ lengths,
    int s, int T_, int B, int H, int reverse, int relu)
{
    typedef ACC(T) A;
    FOR_EACH(k, (long long)B * H) {
        const StepUnit u(k, H, 0, lengths, s, T_, reverse);
        const int b = u.b, j = u.j, t = u.t;
        const bool running = u.running;
        const long long bh = k;
        const long long o = ((long long)t * B + b) * H + j;
        if (!running) {
            store(out, o, A(0));
            store(h_next, bh, load(h_prev, bh));
            continue;
        }
        const A a = load(xw, o) + load(bias, j) + load(hu, bh);   // xw is (T, B, H) like out
        const A h = rnn_point(a, relu);
        store(h_next, bh, h);
        store(out, o, h);
    }
}

// Backward of step s: dgates (B, H) = dL/da, the same for the input and the recurrent
// product; dh_direct_out = 0 for running rows, the whole carry for finished ones.
template <typename T>
__global__ void rnn_backward(
    const T* __restrict__ dh_out,  // (T, B, H) or null
    const ACC(T)* dh_direct_in, ACC(T)* dh_direct_out,  // (B, H); may alias
    const ACC(T)* __restrict__ dh_rec,  // (B, H) dgates(s+1) @ U^T
    const T* __restrict__ h_new,   // (B, H) Hs[s + 1]
    T* __restrict__ dgates,        // (B, H) slot s
    const long long* __restrict__ lengths,
    int s, int T_, int B, int H, int reverse, int relu)
{
    typedef ACC(T) A;
    FOR_EACH(k, (long long)B * H) {
        const StepUnit u(k, H, 0, lengths, s, T_, reverse);
        const int b = u.b, j = u.j, t = u.t;
        const bool running = u.running;
        const long long bh = k;
        const A carry = load(dh_direct_in, bh) + load(dh_rec, bh);
        if (!running) {
            store(dh_direct_out, bh, carry);
            store(dgates, bh, A(0));
            continue;
        }
        A dh = carry;
        if (dh_out) dh += load(dh_out, ((long long)t * B + b) * H + j);
        store(dgates, bh, rnn_point_grad(dh, load(h_new, bh), relu));
        store(dh_direct_out, bh, A(0));
    }
}

// ------------------------------------------------------------------ persistent kernels
// As lstm_persist_* (see lstm.cu for the launch), with one gate:
//   forward : H * nj + B * PERSIST_TS + blockDim.x + B * nj elements of shared memory
//   backward: H * nj + B * PERSIST_TS + blockDim.x + 3 * B * nj
// hs: (T+1, B, H) when keep, else (2, B, H) used alternately; slot 0 holds h0.

template <typename T>
__global__ void rnn_persist_forward(
    const ACC(T)* __restrict__ xw, const T* __restrict__ bias, const T* __restrict__ U,
    T* hs,
    T* __restrict__ out,           // (T, B, H)
    const long long* __restrict__ lengths,
    int T_, int B, int H, int reverse, int keep, int nj, unsigned int* bar, int relu)
{
    typedef ACC(T) A;
    const int NT = blockDim.x;
    const int j0 = blockIdx.x * nj;
    const int njb = min(nj, H - j0);
    const long long BH = (long long)B * H;
    const PersistSmem<A> sm((long long)H * nj, B);
    A* W = sm.W;                                     // W[k * njb + jj] = U[k, j0 + jj]
    A* hu = sm.units;
    for (long long q = threadIdx.x; q < (long long)H * njb; q += NT) {
        const long long k = q / njb;
        W[q] = load(U, k * H + j0 + (q - k * njb));
    }
    __syncthreads();
    for (int s = 0; s < T_; ++s) {
        T* hp = hs + (keep ? s : (s & 1)) * BH;
        T* hn = hs + (keep ? s + 1 : ((s + 1) & 1)) * BH;
        block_matvec(hp, (long long)H, B, H, sm, njb, hu);
        for (int q = threadIdx.x; q < B * njb; q += NT) {
            const StepUnit u(q, njb, j0, lengths, s, T_, reverse);
            const int b = u.b, j = u.j, t = u.t;
            const bool running = u.running;
            const long long bh = (long long)b * H + j;
            const long long o = ((long long)t * B + b) * H + j;
            if (!running) {
                store(out, o, A(0));
                store(hn, bh, load_volatile(hp, bh));
                continue;
            }
            const A h = rnn_point(load(xw, o) + load(bias, j) + hu[q], relu);
            store(hn, bh, h);
            store(out, o, h);
        }
        grid_sync(bar);
    }
}

// Writes dg (T, B, H) as rnn_backward does for each step, and dh0.
template <typename T>
__global__ void rnn_persist_backward(
    const T* __restrict__ dh_out,  // (T, B, H) or null
    const T* __restrict__ dh_n,    // (B, H) or null
    const T* __restrict__ hs,      // (T+1, B, H) tape
    const T* __restrict__ U,       // (H, H)
    T* dg,                         // (T, B, H) out
    T* __restrict__ dh0,           // (B, H) out
    const long long* __restrict__ lengths,
    int T_, int B, int H, int reverse, int nj, unsigned int* bar, int relu)
{
    typedef ACC(T) A;
    const int NT = blockDim.x;
    const int j0 = blockIdx.x * nj;
    const int njb = min(nj, H - j0);
    const long long BH = (long long)B * H;
    const PersistSmem<A> sm((long long)H * nj, B);
    A* W = sm.W;                                     // W[c * njb + kk] = U[j0 + kk, c]
    A* rec = sm.units;
    A* carry = rec + B * nj;
    A* direct = carry + B * nj;
    for (long long q = threadIdx.x; q < (long long)H * njb; q += NT) {
        const long long c = q / njb;
        const int kk = (int)(q - c * njb);
        W[q] = load(U, (long long)(j0 + kk) * H + c);
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
            const long long bh = (long long)b * H + j;
            if (!running) {
                direct[q] = carry[q];
                store(dg, s * BH + bh, A(0));
                continue;
            }
            A dh = carry[q];
            if (dh_out) dh += load(dh_out, ((long long)t * B + b) * H + j);
            store(dg, s * BH + bh, rnn_point_grad(dh, load(hs, (s + 1) * BH + bh), relu));
            direct[q] = A(0);
        }
        grid_sync(bar);
        block_matvec(dg + s * BH, (long long)H, B, H, sm, njb, rec);
        for (int q = threadIdx.x; q < B * njb; q += NT) carry[q] = direct[q] + rec[q];
        __syncthreads();
    }
    for (int q = threadIdx.x; q < B * njb; q += NT) {
        const int b = q / njb, j = j0 + q - b * njb;
        store(dh0, (long long)b * H + j, carry[q]);
    }
}

#ifdef FASTRNN_INSTANTIATE
#define FASTRNN_RNN_INSTANCES(T)                                                      \
    (void*)&rnn_forward<T>, (void*)&rnn_backward<T>, (void*)&rnn_persist_forward<T>,   \
    (void*)&rnn_persist_backward<T>,
void* fastrnn_rnn_instances[] = {FASTRNN_FOR_EACH_STORAGE(FASTRNN_RNN_INSTANCES)};
#endif
