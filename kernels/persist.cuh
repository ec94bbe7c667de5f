// fastrnn GPU kernels: the building blocks of the persistent kernels (persist.cu), which run
// every time step of a sequence in one cooperative launch.
//
// The grid is split into batch groups of `nug` blocks each. Block (bg, ug) owns the batch
// rows r0 = bg * rows .. r0 + nr - 1 and the hidden units j0 = ug * nj .. j0 + njb - 1, and
// keeps the slice of U those units need in shared memory for the whole sequence. Per step
// it stages the rows of its group of the previous state (forward) or of the gate gradients
// (backward) from global memory, forms its slice of the product with U (block_matvec),
// applies the cell to its own units, and meets the other blocks of its group at a barrier
// (group_sync): batch groups never wait for each other. The host plans the geometry and the
// carve-up of shared memory (fastrnn/backends/cupy/persistent.py) and passes both in; the
// constants below are read from this file by that planner, so each is written once.
//
// Cross-block data (the state, the gate gradients) is read with ld.global.cg: from L2, the
// point of coherence, never from the SM's L1, which may hold a line from before another
// block rewrote it. The barrier orders the writes before it with the reads after it.

#ifndef FASTRNN_PERSIST_CUH
#define FASTRNN_PERSIST_CUH

#include "common.cuh"

#define PERSIST_TILE 4          // a thread's register tile: PERSIST_TILE x PERSIST_TILE outputs
#define PERSIST_PREFETCH 2      // units per thread whose next-step inputs are loaded a step ahead
#define PERSIST_MAX_THREADS 256 // block size of the persistent kernels (their __launch_bounds__)
#define PERSIST_BAR_STRIDE 32   // unsigned ints between the barrier counters of two groups
#define PERSIST_STAGE_BATCH 8   // 4-element loads each thread has in flight while staging

// ------------------------------------------------------------------ loads and stores

// Four consecutive elements from global memory through L2 (p 4-element aligned, see
// vec_aligned), as the arithmetic type.
__device__ __forceinline__ void load_cg4(const float* p, float (&v)[4]) {
#ifdef FASTRNN_CPU_EMULATION
    for (int e = 0; e < 4; ++e) v[e] = ((const volatile float*)p)[e];
#else
    asm volatile("ld.global.cg.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(v[0]), "=f"(v[1]), "=f"(v[2]), "=f"(v[3]) : "l"(p) : "memory");
#endif
}
__device__ __forceinline__ void load_cg4(const double* p, double (&v)[4]) {
#ifdef FASTRNN_CPU_EMULATION
    for (int e = 0; e < 4; ++e) v[e] = ((const volatile double*)p)[e];
#else
    asm volatile("ld.global.cg.v2.f64 {%0, %1}, [%2];"
                 : "=d"(v[0]), "=d"(v[1]) : "l"(p) : "memory");
    asm volatile("ld.global.cg.v2.f64 {%0, %1}, [%2];"
                 : "=d"(v[2]), "=d"(v[3]) : "l"(p + 2) : "memory");
#endif
}
__device__ __forceinline__ void load_cg4_bits(const unsigned short* p, unsigned short (&h)[4]) {
#ifdef FASTRNN_CPU_EMULATION
    for (int e = 0; e < 4; ++e) h[e] = ((const volatile unsigned short*)p)[e];
#else
    asm volatile("ld.global.cg.v4.u16 {%0, %1, %2, %3}, [%4];"
                 : "=h"(h[0]), "=h"(h[1]), "=h"(h[2]), "=h"(h[3]) : "l"(p) : "memory");
#endif
}
__device__ __forceinline__ void load_cg4(const half_t* p, float (&v)[4]) {
    unsigned short h[4];
    load_cg4_bits(reinterpret_cast<const unsigned short*>(p), h);
    for (int e = 0; e < 4; ++e) v[e] = half_bits_to_float(h[e]);
}
__device__ __forceinline__ void load_cg4(const bf16_t* p, float (&v)[4]) {
    unsigned short h[4];
    load_cg4_bits(reinterpret_cast<const unsigned short*>(p), h);
    for (int e = 0; e < 4; ++e) v[e] = bf16_bits_to_float(h[e]);
}

// One element written by another block, through L2.
__device__ __forceinline__ float load_cg(const float* p, long long i) {
    return ((const volatile float*)p)[i];
}
__device__ __forceinline__ double load_cg(const double* p, long long i) {
    return ((const volatile double*)p)[i];
}
__device__ __forceinline__ float load_cg(const half_t* p, long long i) {
    return half_bits_to_float(((const volatile unsigned short*)p)[i]);
}
__device__ __forceinline__ float load_cg(const bf16_t* p, long long i) {
    return bf16_bits_to_float(((const volatile unsigned short*)p)[i]);
}

// Whether 4-element vector loads of T from p are aligned.
template <typename T>
__device__ __forceinline__ bool vec_aligned(const T* p) {
    const unsigned long long bytes = sizeof(T) == 8 ? 16 : 4 * sizeof(T);
    return (reinterpret_cast<unsigned long long>(p) & (bytes - 1)) == 0;
}

// Four consecutive elements of shared memory (16-byte aligned for float, double).
__device__ __forceinline__ void lds4(const float* p, float (&v)[4]) {
#ifdef FASTRNN_CPU_EMULATION
    for (int e = 0; e < 4; ++e) v[e] = p[e];
#else
    const float4 t = *reinterpret_cast<const float4*>(p);
    v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
#endif
}
__device__ __forceinline__ void lds4(const double* p, double (&v)[4]) {
#ifdef FASTRNN_CPU_EMULATION
    for (int e = 0; e < 4; ++e) v[e] = p[e];
#else
    const double2 a = *reinterpret_cast<const double2*>(p);
    const double2 b = *reinterpret_cast<const double2*>(p + 2);
    v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
#endif
}

// ------------------------------------------------------------------ the group barrier

// Counter of batch group bg, bumped once per block and barrier: after the n-th barrier of a
// launch it reads n * (blocks of the group). The host zeroes the counters before a launch.
__device__ __forceinline__ unsigned int read_counter(const unsigned int* p) {
#ifdef FASTRNN_CPU_EMULATION
    return fastrnn_emu_atomic_load(p);
#else
    return *(const volatile unsigned int*)p;
#endif
}

// All blocks of one batch group wait here until each has arrived; every write made before
// by any thread of those blocks is visible to every read after it. The fences and the
// __syncthreads on both sides follow the scheme of cooperative_groups' grid.sync.
__device__ __forceinline__ void group_sync(unsigned int* counter, unsigned int target,
                                           int blocks) {
    __syncthreads();
    if (blocks > 1 && threadIdx.x == 0) {
        __threadfence();
        atomicAdd(counter, 1u);
        while (read_counter(counter) < target) {
            FASTRNN_SPIN_PAUSE();
        }
        __threadfence();
    }
    __syncthreads();
}

// ------------------------------------------------------------------ the block's product

// The shape of one block's product, as planned by the host:
//   out[r * cs + c] = sum_k src[r * ld + k] * W[k * cs + c]   for r < rs, c < cs, k < K,
// where src (nr rows of global memory, rows nr..rs-1 read as 0) is staged kt columns at a
// time into the scratch tile S (row stride kstride), and W (round4(K) rows of cs columns,
// zero-padded) stays in shared memory. rs is 1 or a multiple of PERSIST_TILE; cs, kt and
// kstride are multiples of 4.
struct MatvecShape {
    int rs, cs, kt, kstride;
};

template <int TR, typename A>
__device__ __forceinline__ void tile_fma(const A* S, int kstride, const A* W, int cs, int k,
                                         A (&acc)[TR][4]) {
    A s[TR][4], w[4][4];
#pragma unroll
    for (int i = 0; i < TR; ++i) lds4(S + i * kstride + k, s[i]);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) lds4(W + (long long)(k + kk) * cs, w[kk]);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
        for (int i = 0; i < TR; ++i)
#pragma unroll
            for (int jc = 0; jc < 4; ++jc) acc[i][jc] += s[i][kk] * w[kk][jc];
}

// Stages columns k0 .. k0 + kq - 1 of rows 0 .. rs - 1 of src into S: rows past nr and
// columns past K read as 0. Each thread issues PERSIST_STAGE_BATCH loads before it stores
// any: an L2 load takes about a microsecond, and one at a time (a store between each, which
// the loads' memory clobber keeps in order) made staging the slowest part of a step.
template <typename T, typename A>
__device__ __forceinline__ void stage_rows(const T* src, long long ld, int nr, int K, int k0,
                                           int kq, const MatvecShape& m, A* S) {
    const int quads = kq >> 2;
    const int total = m.rs * quads;
    const int NT = blockDim.x;
    const bool vec = vec_aligned(src) && (ld & 3) == 0;
    for (int base = threadIdx.x; base < total; base += PERSIST_STAGE_BATCH * NT) {
        A v[PERSIST_STAGE_BATCH][4];
#pragma unroll
        for (int u = 0; u < PERSIST_STAGE_BATCH; ++u) {
            const int q = base + u * NT;
            if (q >= total) break;
            const int r = q / quads;
            const int k = k0 + ((q - r * quads) << 2);
            if (r < nr && vec && k + 4 <= K) {
                load_cg4(src + (long long)r * ld + k, v[u]);
            } else {
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    v[u][e] = (r < nr && k + e < K) ? A(load_cg(src, (long long)r * ld + k + e))
                                                    : A(0);
            }
        }
#pragma unroll
        for (int u = 0; u < PERSIST_STAGE_BATCH; ++u) {
            const int q = base + u * NT;
            if (q >= total) break;
            const int r = q / quads;
            const int kk = (q - r * quads) << 2;
#pragma unroll
            for (int e = 0; e < 4; ++e) S[r * m.kstride + kk + e] = v[u][e];
        }
    }
}

// out (rs x cs, shared memory) = the block's product, see MatvecShape. Threads own one
// TR x 4 tile of outputs each and split K between them when there are fewer tiles than
// threads; the partial sums are added in a fixed order, so results never depend on timing.
// scratch holds the staged tile and, after it, the partial sums (rs * kstride and
// nks * tiles * TR * 4 elements: the host reserves the larger).
template <int TR, typename T, typename A>
__device__ void block_matvec_tr(const T* src, long long ld, int nr, int K, const A* W,
                                A* scratch, A* out, const MatvecShape& m) {
    const int NT = blockDim.x, tid = threadIdx.x;
    const int ntc = m.cs >> 2;
    const int ntile = (m.rs / TR) * ntc;
    const int nks = ntile >= NT ? 1 : NT / ntile;
    const int tile = tid % ntile, part = tid / ntile;
    const bool active = part < nks;
    const int tr = tile / ntc, tc = tile - tr * ntc;
    A acc[TR][4];
#pragma unroll
    for (int i = 0; i < TR; ++i)
#pragma unroll
        for (int jc = 0; jc < 4; ++jc) acc[i][jc] = A(0);
    for (int k0 = 0; k0 < K; k0 += m.kt) {
        const int kq = ((min(m.kt, K - k0) + 3) >> 2) << 2;
        stage_rows(src, ld, nr, K, k0, kq, m, scratch);
        __syncthreads();
        if (active) {
            const int chunk = (((kq + nks - 1) / nks + 3) >> 2) << 2;
            const int kb = part * chunk, ke = min(kb + chunk, kq);
            const A* S = scratch + tr * TR * m.kstride;
            const A* Wt = W + (long long)k0 * m.cs + tc * 4;
#pragma unroll 2
            for (int k = kb; k < ke; k += 4) tile_fma<TR>(S, m.kstride, Wt, m.cs, k, acc);
        }
        __syncthreads();
    }
    if (nks == 1) {
        if (active) {
#pragma unroll
            for (int i = 0; i < TR; ++i)
#pragma unroll
                for (int jc = 0; jc < 4; ++jc) out[(tr * TR + i) * m.cs + tc * 4 + jc] = acc[i][jc];
        }
    } else {
        constexpr int E = TR * 4;
        if (active) {
#pragma unroll
            for (int i = 0; i < TR; ++i)
#pragma unroll
                for (int jc = 0; jc < 4; ++jc)
                    scratch[((long long)part * ntile + tile) * E + i * 4 + jc] = acc[i][jc];
        }
        __syncthreads();
        for (int o = tid; o < ntile * E; o += NT) {
            const int t = o / E, e = o - t * E;
            A sum = A(0);
            for (int p = 0; p < nks; ++p) sum += scratch[((long long)p * ntile + t) * E + e];
            const int r = (t / ntc) * TR + e / 4, c = (t % ntc) * 4 + (e & 3);
            out[r * m.cs + c] = sum;
        }
    }
    __syncthreads();
}

template <typename T, typename A>
__device__ __forceinline__ void block_matvec(const T* src, long long ld, int nr, int K,
                                             const A* W, A* scratch, A* out,
                                             const MatvecShape& m) {
    if (m.rs == 1) {
        block_matvec_tr<1>(src, ld, nr, K, W, scratch, out, m);
    } else {
        block_matvec_tr<PERSIST_TILE>(src, ld, nr, K, W, scratch, out, m);
    }
}

#endif  // FASTRNN_PERSIST_CUH
