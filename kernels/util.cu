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

#ifdef FASTRNN_INSTANTIATE
#define FASTRNN_UTIL_INSTANCES(T) (void*)&gather_steps<T>,
void* fastrnn_util_instances[] = {FASTRNN_FOR_EACH_STORAGE(FASTRNN_UTIL_INSTANCES)};
#endif
