// A CPU stand-in for the parts of CUDA that fastrnn's kernels use, so that the test suite
// can run every kernel of kernels/ on a machine without a GPU (tests/cuda_emulation).
//
// Each CUDA thread is a fiber (ucontext) on one OS thread, run round robin. A launch runs
// its blocks one after another, the threads of a block interleaved (what CUDA
// guarantees); a cooperative launch runs all blocks interleaved, as the persistent kernels'
// grid barrier needs. A fiber gives way at __syncthreads (the block's barrier) and in spin
// loops (FASTRNN_SPIN_PAUSE); if no fiber can get on for a long time the launch aborts
// instead of hanging. Shared memory is a per-block buffer filled with 0xff bytes (NaN for
// floats) so that a read of what no thread wrote shows in the results. Inline PTX has
// plain C++ twins in the kernel headers under FASTRNN_CPU_EMULATION.
#pragma once

#include <ucontext.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define FASTRNN_CPU_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

namespace emu {
struct Block {
    unsigned int arrived = 0, generation = 0;
    unsigned char* smem = nullptr;
};
inline dim3 thread_idx, block_idx, block_dim, grid_dim;
inline Block* block = nullptr;
void yield();
void block_barrier();
}  // namespace emu

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
#define FASTRNN_DYNAMIC_SMEM(name) unsigned char* name = emu::block->smem
#define FASTRNN_SPIN_PAUSE() emu::yield()

inline void __syncthreads() { emu::block_barrier(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    return std::atomic_ref<unsigned int>(*p).fetch_add(v);
}
inline unsigned int atomicExch(unsigned int* p, unsigned int v) {
    return std::atomic_ref<unsigned int>(*p).exchange(v);
}
inline unsigned int fastrnn_emu_atomic_load(const unsigned int* p) {
    return std::atomic_ref<unsigned int>(*const_cast<unsigned int*>(p)).load();
}
inline void __nanosleep(unsigned int) { emu::yield(); }

inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, 4);
    return u;
}

// IEEE binary16 <-> float, round to nearest even (what cvt.f32.f16 / cvt.rn.f16.f32 do).
inline float fastrnn_emu_half_to_float(unsigned short h) {
    _Float16 v;
    std::memcpy(&v, &h, 2);
    return static_cast<float>(v);
}
inline unsigned short fastrnn_emu_float_to_half(float v) {
    const _Float16 h = static_cast<_Float16>(v);
    unsigned short bits;
    std::memcpy(&bits, &h, 2);
    return bits;
}

// CUDA's min and max overloads for the integer types the kernels mix.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

namespace emu {

struct Fiber {
    ucontext_t context;
    dim3 thread, block_index;
    Block* block;
    bool done = false;
};

struct Scheduler {
    ucontext_t main;
    std::vector<Fiber>* fibers = nullptr;
    size_t current = 0;
    long long idle = 0;     // turns in a row with no fiber finished and no barrier passed
    void (*call)(void*) = nullptr;
    void* args = nullptr;
};
inline Scheduler sched;

// Fiber stacks, kept from launch to launch (allocating and touching them is the costly part).
constexpr size_t kStack = 1 << 16;
inline std::vector<std::unique_ptr<char[]>> stacks;
inline char* stack_of(size_t n) {
    while (stacks.size() <= n) stacks.emplace_back(new char[kStack]);
    return stacks[n].get();
}

inline void yield() {
    Fiber& f = (*sched.fibers)[sched.current];
    if (++sched.idle > 200000000LL) {
        std::fprintf(stderr, "cuda_emu: no thread made progress in 2e8 turns: deadlock\n");
        std::abort();
    }
    swapcontext(&f.context, &sched.main);
}

inline void block_barrier() {
    Block* b = block;
    const unsigned int gen = b->generation;
    if (++b->arrived == block_dim.x) {
        b->arrived = 0;
        ++b->generation;
        sched.idle = 0;
        return;
    }
    while (b->generation == gen) yield();
}

inline void fiber_main() {
    Fiber& f = (*sched.fibers)[sched.current];
    sched.call(sched.args);
    f.done = true;
    sched.idle = 0;
    swapcontext(&f.context, &sched.main);
}

// Runs blocks [first, first + count) interleaved, each with `threads` threads.
inline void run_blocks(void (*call)(void*), void* args, unsigned int first, unsigned int count,
                       unsigned int threads, size_t smem) {
    std::vector<Block> blocks(count);
    std::vector<std::vector<unsigned char>> mems(count);
    for (unsigned int i = 0; i < count; ++i) {
        mems[i].assign(smem + 16, 0xff);
        blocks[i].smem = mems[i].data();
    }
    std::vector<Fiber> fibers(size_t(count) * threads);
    sched.fibers = &fibers;
    sched.call = call;
    sched.args = args;
    sched.idle = 0;
    for (unsigned int i = 0; i < count; ++i) {
        for (unsigned int t = 0; t < threads; ++t) {
            Fiber& f = fibers[size_t(i) * threads + t];
            f.thread = dim3{t, 1, 1};
            f.block_index = dim3{first + i, 1, 1};
            f.block = &blocks[i];
            getcontext(&f.context);
            f.context.uc_stack.ss_sp = stack_of(size_t(i) * threads + t);
            f.context.uc_stack.ss_size = kStack;
            f.context.uc_link = nullptr;
            makecontext(&f.context, fiber_main, 0);
        }
    }
    size_t live = fibers.size();
    while (live > 0) {
        live = 0;
        for (size_t n = 0; n < fibers.size(); ++n) {
            Fiber& f = fibers[n];
            if (f.done) continue;
            sched.current = n;
            thread_idx = f.thread;
            block_idx = f.block_index;
            block = f.block;
            swapcontext(&sched.main, &f.context);
            if (!f.done) ++live;
        }
    }
}

template <typename... P, size_t... I>
void launch_impl(void (*kernel)(P...), unsigned int grid, unsigned int threads, size_t smem,
                 int cooperative, void** args, std::index_sequence<I...>) {
    using Values = std::tuple<std::decay_t<P>...>;
    Values values{*static_cast<std::decay_t<P>*>(args[I])...};
    struct Ctx {
        void (*kernel)(P...);
        Values* values;
    } ctx{kernel, &values};
    auto call = [](void* p) {
        auto* c = static_cast<Ctx*>(p);
        std::apply(c->kernel, *c->values);
    };
    block_dim = dim3{threads, 1, 1};
    grid_dim = dim3{grid, 1, 1};
    if (cooperative) {
        run_blocks(call, &ctx, 0, grid, threads, smem);
    } else {
        for (unsigned int b = 0; b < grid; ++b) run_blocks(call, &ctx, b, 1, threads, smem);
    }
}

template <typename... P>
void launch(void (*kernel)(P...), unsigned int grid, unsigned int threads, size_t smem,
            int cooperative, void** args) {
    launch_impl(kernel, grid, threads, smem, cooperative, args,
                std::index_sequence_for<P...>{});
}

}  // namespace emu

// One exported entry per kernel: fastrnn_emu_<index>(grid, block, smem, cooperative, args),
// args as cuLaunchKernel takes them (an array of pointers to the argument values).
#define FASTRNN_EMU_EXPORT(index, ...)                                                   \
    extern "C" void fastrnn_emu_##index(unsigned int grid, unsigned int threads,         \
                                         size_t smem, int cooperative, void** args) {    \
        emu::launch(&__VA_ARGS__, grid, threads, smem, cooperative, args);               \
    }
