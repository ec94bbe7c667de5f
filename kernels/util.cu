// Layout helpers shared by every cell.
//
// gather_steps: dst[s, b, :] = src[t(s, b), b, :] for s < lengths[b], and 0 for s >= it,
// with t(s, b) = s, or lengths[b] - 1 - s under reverse (step_time of common.cuh).
//  * on x (T, B, I) it gives the inputs in step order with padded rows zeroed, the left
//    operand of the single dW GEMM over all steps (zeroing keeps a NaN or inf that a
//    caller left in padding out of dW, since 0 * NaN is NaN);
//  * the map s -> t is its own inverse, so on step-ordered gradients (T, B, I) it gives
//    them back in time order.
// Values are copied bit for bit, whatever the storage type.

#include "common.cuh"

template <typename T>
__global__ void gather_steps(
    const T* __restrict__ src,     // (T, B, width)
    T* __restrict__ dst,           // (T, B, width)
    const long long* __restrict__ lengths,  // (B,) or null
    int T_, int B, long long width, int reverse)
{
    FOR_EACH(k, (long long)T_ * B * width) {
        const long long row = k / width;           // s * B + b
        const long long col = k - row * width;
        const int s = (int)(row / B);
        const int b = (int)(row - (long long)s * B);
        bool running;
        const int t = step_time(lengths, s, T_, b, reverse, &running);
        dst[k] = running ? src[((long long)t * B + b) * width + col] : T();
    }
}


// Checksums of up to 8 device arrays in one launch: the tape's guard against arrays
// changed in place between a forward and its backward, taken without waiting for the
// device. Block a hashes array a from count[a] elements taken every stride[a] elements,
// each bytes[a] wide (1 to 8), mixing each element's bits with its position; out[a] is the
// sum of the mixed values modulo 2^64, the same for the same bits whatever the order in
// which threads add them. blockDim.x is a power of two; the launch gives blockDim.x * 8
// bytes of dynamic shared memory.
struct DigestArrays {
    unsigned long long ptr[8];
    long long stride[8];
    long long count[8];
    long long bytes[8];
};

__device__ __forceinline__ unsigned long long digest_mix(unsigned long long v) {
    v ^= v >> 33;
    v *= 0xff51afd7ed558ccdULL;
    v ^= v >> 33;
    v *= 0xc4ceb9fe1a85ec53ULL;
    v ^= v >> 33;
    return v;
}

__global__ void digest_arrays(DigestArrays a, unsigned long long* out) {
    FASTRNN_DYNAMIC_SMEM(fastrnn_smem_raw);
    unsigned long long* partial = reinterpret_cast<unsigned long long*>(fastrnn_smem_raw);
    const int k = blockIdx.x;
    const unsigned char* base = reinterpret_cast<const unsigned char*>(a.ptr[k]);
    const int width = (int)a.bytes[k];
    unsigned long long sum = 0;
    for (long long i = threadIdx.x; i < a.count[k]; i += blockDim.x) {
        const unsigned char* e = base + i * a.stride[k] * width;
        unsigned long long bits = 0;
        for (int b = 0; b < width; ++b) bits |= (unsigned long long)e[b] << (8 * b);
        sum += digest_mix(bits + 0x9e3779b97f4a7c15ULL * (unsigned long long)(i + 1));
    }
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[k] = partial[0];
}

#ifdef FASTRNN_INSTANTIATE
#define FASTRNN_UTIL_INSTANCES(T) (void*)&gather_steps<T>,
void* fastrnn_util_instances[] = {FASTRNN_FOR_EACH_STORAGE(FASTRNN_UTIL_INSTANCES)
                                  (void*)&digest_arrays};
#endif
