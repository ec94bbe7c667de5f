// fastrnn GPU kernels: the pieces of the persistent kernels (one launch for all T steps).
//
// A persistent kernel runs on a cooperative grid (cuLaunchCooperativeKernel: all blocks
// resident at once). Block q owns hidden units j0 = q * nj .. j0 + njb - 1 and keeps the
// columns of U it needs in shared memory for the whole sequence, so only h (B x H) or the
// gate gradients (B x G*H) travel between steps, through L2. Per step: every block reads
// the whole previous state and forms its slice of h @ U (block_matvec), applies the cell
// to its own units, writes the new state, and waits at grid_sync for all blocks before the
// next step reads that state. (The technique of cuDNN's PERSIST_STATIC, Persistent RNNs
// and FlashRNN.)
//
// Cross-block data is read with volatile loads (ld.volatile: not served from the
// non-coherent L1, so a line cached before another block rewrote it is never used) and
// ordered by grid_sync. Everything a block reads only from itself uses ordinary loads.

#ifndef FASTRNN_PERSIST_CUH
#define FASTRNN_PERSIST_CUH

#include "common.cuh"

#define PERSIST_KT 64     // k-tile of the staged operand rows
#define PERSIST_TS 65     // its row stride in shared memory (+1: no bank conflicts across rows)
#define PERSIST_R 8       // outputs per thread at most: B * C <= PERSIST_R * blockDim.x

// The dynamic shared memory of a persistent kernel, carved in the order the host sizes it
// (persistent_plan in fastrnn/backends/cupy/persistent.py): W, the block's slice of U
// (w_elems); tile, the staged k-tile of block_matvec (B * PERSIST_TS); red, its reduction
// buffer (blockDim.x); then units, the per-unit arrays of the kernel (each B * nj).
template <typename A>
struct PersistSmem {
    A* W;
    A* tile;
    A* red;
    A* units;
    __device__ __forceinline__ PersistSmem(long long w_elems, int B) {
        extern __shared__ __align__(16) unsigned char fastrnn_smem_raw[];
        W = reinterpret_cast<A*>(fastrnn_smem_raw);
        tile = W + w_elems;
        red = tile + B * PERSIST_TS;
        units = red + blockDim.x;
    }
};

__device__ __forceinline__ float load_volatile(const float* p, long long i) {
    return ((const volatile float*)p)[i];
}
__device__ __forceinline__ double load_volatile(const double* p, long long i) {
    return ((const volatile double*)p)[i];
}
__device__ __forceinline__ float load_volatile(const half_t* p, long long i) {
    half_t v;
    v.bits = ((const volatile unsigned short*)p)[i];
    return load(&v, 0);
}
__device__ __forceinline__ float load_volatile(const bf16_t* p, long long i) {
    bf16_t v;
    v.bits = ((const volatile unsigned short*)p)[i];
    return load(&v, 0);
}

// Barrier across all blocks of a cooperative grid. bar[0] counts arrivals, bar[1] is the
// generation; both start at 0 (the host zeroes them before the launch). Thread 0 of each
// block reads the generation, then fences and arrives; the last block to arrive resets
// the count and bumps the generation, the others spin until it changes. The fences and
// the __syncthreads on both sides order every thread's writes before the barrier with
// every thread's reads after it (the same scheme as cooperative_groups' grid.sync).
__device__ __forceinline__ void grid_sync(unsigned int* bar) {
    __syncthreads();
    if (threadIdx.x == 0) {
        volatile unsigned int* generation = bar + 1;
        const unsigned int seen = *generation;
        __threadfence();
        if (atomicAdd(bar, 1u) == gridDim.x - 1) {
            atomicExch(bar, 0u);
            __threadfence();
            atomicAdd(bar + 1, 1u);
        } else {
            while (*generation == seen) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700
                __nanosleep(20);   // back off (sm_70+); the sources must build for any arch
#endif
            }
        }
        __threadfence();
    }
    __syncthreads();
}

// out[b * C + c] = sum_k src[b * ld + k] * W[k * C + c] for b < B, c < C, k < K, with W,
// tile and red those of sm: the block's slice of a (B x K) @ (K x C) product. src is in
// global memory and was written by other blocks (volatile loads, staged through the k-tile
// in shared memory); out is shared memory (B * C elements).
// With few outputs the k range is split over otherwise idle threads and the partial sums
// are added in a fixed order: the result does not depend on timing.
template <typename T, typename A>
__device__ void block_matvec(const T* src, long long ld, int B, int K,
                             const PersistSmem<A>& sm, int C, A* out) {
    const A* W = sm.W;
    A* tile = sm.tile;
    A* red = sm.red;
    const int NT = blockDim.x, t = threadIdx.x;
    const int P = B * C;
    int KS = 1;
    while (KS * 2 * P <= NT && KS < 32) KS *= 2;
    const int ks = KS > 1 ? t / P : 0;
    A acc[PERSIST_R];
    int rowb[PERSIST_R], col[PERSIST_R];
    bool live[PERSIST_R];
#pragma unroll
    for (int r = 0; r < PERSIST_R; ++r) {
        const int o = KS > 1 ? t % P : t + r * NT;
        live[r] = KS > 1 ? (r == 0 && t < KS * P) : (o < P);
        rowb[r] = live[r] ? o / C : 0;
        col[r] = live[r] ? o - rowb[r] * C : 0;
        acc[r] = A(0);
    }
    for (int k0 = 0; k0 < K; k0 += PERSIST_KT) {
        const int kt = min(PERSIST_KT, K - k0);
        for (int q = t; q < B * kt; q += NT) {
            const int b = q / kt, kk = q - b * kt;
            tile[b * PERSIST_TS + kk] = load_volatile(src, (long long)b * ld + k0 + kk);
        }
        __syncthreads();
        for (int kk = ks; kk < kt; kk += KS) {
            const A* w = W + (long long)(k0 + kk) * C;
#pragma unroll
            for (int r = 0; r < PERSIST_R; ++r) {
                if (live[r]) acc[r] += tile[rowb[r] * PERSIST_TS + kk] * w[col[r]];
            }
        }
        __syncthreads();
    }
    if (KS > 1) {
        if (live[0]) red[ks * P + t % P] = acc[0];
        __syncthreads();
        if (t < P) {
            A s = A(0);
            for (int q = 0; q < KS; ++q) s += red[q * P + t];
            out[t] = s;
        }
    } else {
#pragma unroll
        for (int r = 0; r < PERSIST_R; ++r) {
            if (live[r]) out[t + r * NT] = acc[r];
        }
    }
    __syncthreads();
}

#endif  // FASTRNN_PERSIST_CUH
