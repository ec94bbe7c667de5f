// fastrnn GPU kernels: helpers shared by every cell's kernels.
//
// Storage types: float, double, half_t (IEEE binary16) and bf16_t (bfloat16). Arithmetic
// runs in acc_t<T>: double for double, float for everything else, so 16-bit storage gets
// float32 arithmetic. half_t and bf16_t are plain 16-bit structs converted by hand (PTX
// cvt for half, bit arithmetic for bf16): the sources need no CUDA header, so NVRTC
// (through cupy.RawModule) and nvcc both compile them as they are.
//
// Intermediates: what cuBLAS computes for the kernels (xw = x @ W, the per-step h_prev @ U)
// and what they carry from step to step (the state gradients dh_direct, dh_rec, and dc)
// are ACC(T) arrays, not storage: with 16-bit storage they stay float32, so a 16-bit
// rounding happens only where a value is stored for the caller or the tape.
//
// Flush to zero: CuPy compiles with -ftz=true, so float arithmetic (float32 and 16-bit
// storage) treats subnormal inputs and results as 0; sigmoid_(float) is exactly 0 below
// ln(FLT_MIN) ~ -87.34, where expf(-|x|) would be subnormal. double is not affected.
//
// Layouts (all C-contiguous, row-vector convention of fastrnn.cells):
//   time-indexed   (T, B, W): element (t, b, k) at (t * B + b) * W + k
//   step slot      (B, W)   : element (b, k)    at b * W + k   (one step of a tape)
// Step s of batch row b reads time t(s, b) (see step_time). lengths may be null, meaning
// every sequence has all T steps.
//
// This header is inlined into each .cu by the Python loader (fastrnn.backends.cupy.nvrtc)
// before NVRTC compiles it; nvcc finds it through -I. The test suite also compiles every
// kernel as C++ for the CPU (tests/cuda_emulation/): FASTRNN_CPU_EMULATION is defined
// there, and the few lines of inline PTX below have a plain C++ twin for it.

#ifndef FASTRNN_COMMON_CUH
#define FASTRNN_COMMON_CUH

struct half_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

template <typename T> struct acc_of { typedef float type; };
template <> struct acc_of<double> { typedef double type; };
#define ACC(T) typename acc_of<T>::type

// ------------------------------------------------------------------ loads and stores

__device__ __forceinline__ float load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ double load(const double* p, long long i) { return p[i]; }

__device__ __forceinline__ float half_bits_to_float(unsigned short h) {
#ifdef FASTRNN_CPU_EMULATION
    return fastrnn_emu_half_to_float(h);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

__device__ __forceinline__ unsigned short float_to_half_bits(float v) {
#ifdef FASTRNN_CPU_EMULATION
    return fastrnn_emu_float_to_half(v);
#else
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));   // round to nearest even
    return h;
#endif
}

__device__ __forceinline__ float bf16_bits_to_float(unsigned short h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

__device__ __forceinline__ float load(const half_t* p, long long i) {
    return half_bits_to_float(p[i].bits);
}

__device__ __forceinline__ float load(const bf16_t* p, long long i) {
    return bf16_bits_to_float(p[i].bits);
}

__device__ __forceinline__ void store(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store(double* p, long long i, double v) { p[i] = v; }

__device__ __forceinline__ void store(half_t* p, long long i, float v) {
    p[i].bits = float_to_half_bits(v);
}

__device__ __forceinline__ void store(bf16_t* p, long long i, float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) {              // NaN: keep it a (quiet) NaN
        p[i].bits = (unsigned short)((u >> 16) | 0x0040u);
    } else {                                             // round to nearest even
        u += 0x7fffu + ((u >> 16) & 1u);
        p[i].bits = (unsigned short)(u >> 16);
    }
}

// ------------------------------------------------------------------ cell nonlinearities
// sigmoid takes exp only of -|x|: no overflow, no NaN for any finite x (as cells.sigmoid).

__device__ __forceinline__ float sigmoid_(float x) {
    float e = expf(-fabsf(x));
    return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}
__device__ __forceinline__ double sigmoid_(double x) {
    double e = exp(-fabs(x));
    return x >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }
// relu as np.maximum(a, 0) of the reference: NaN stays NaN.
__device__ __forceinline__ float relu_(float x) { return x < 0.0f ? 0.0f : x; }
__device__ __forceinline__ double relu_(double x) { return x < 0.0 ? 0.0 : x; }

// ------------------------------------------------------------------ time order

// The time index that step s of batch row b works on, and whether row b still runs.
// Running (s < len): t = s, or len - 1 - s with reverse (the reference's step_positions).
// Finished (s >= len): t = s, the padded position that this step owns. For each b the
// map s -> t is a permutation of 0..T-1 that is its own inverse; the padded positions
// t >= len are exactly the finished steps, so writing zeros there at step s fills every
// padded output once.
__device__ __forceinline__ int step_time(const long long* lengths, int s, int T, int b,
                                         int reverse, bool* running) {
    long long len = lengths ? lengths[b] : (long long)T;
    *running = s < len;
    if (!*running) return s;
    return reverse ? (int)(len - 1 - s) : s;
}

// One unit of one step, as a kernel's thread loop meets it: element k of a loop over a
// (rows, width) block of units that starts at hidden unit j0 is batch row b = k / width and
// unit j = j0 + k % width (the per-step kernels: width H, j0 0). t is the time that step s
// of row b works on and running whether row b still runs (step_time).
struct StepUnit {
    int b, j, t;
    bool running;
    __device__ __forceinline__ StepUnit(long long k, int width, int j0,
                                        const long long* lengths, int s, int T, int reverse) {
        b = (int)(k / width);
        j = j0 + (int)(k - (long long)b * width);
        t = step_time(lengths, s, T, b, reverse, &running);
    }
};

// Grid-stride loop over n elements with a 64-bit index.
#define FOR_EACH(k, n)                                                            \
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < (n);  \
         k += (long long)gridDim.x * blockDim.x)

// The dynamic shared memory of a kernel (one array, 16-byte aligned) and the pause of a spin
// loop; the CPU emulation of the test suite defines its own.
#ifndef FASTRNN_CPU_EMULATION
#define FASTRNN_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#define FASTRNN_SPIN_PAUSE()
#endif

// Explicit instantiation for the CUDA compile check (tests/test_cuda_compile.py): taking
// the address of every specialisation makes nvcc emit each kernel for each storage type.
// The Python loader never defines FASTRNN_INSTANTIATE; it names the specialisations it
// needs through cupy.RawModule(name_expressions=...).
#define FASTRNN_FOR_EACH_STORAGE(X) X(float) X(double) X(half_t) X(bf16_t)

#endif  // FASTRNN_COMMON_CUH
