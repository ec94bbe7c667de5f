"""tanh and sigmoid for Numba kernels, written so that LLVM vectorises the loops using them.

``math.tanh`` compiles to a scalar libm call, which dominated the pointwise work of the
kernels. The versions below use only arithmetic, selects and bit casts, so a loop over
them becomes AVX-512/AVX2 code:

* float32: tanh(x) ~ x * P(u) / Q(u), u = (x/9)^2, clamped to [-9, 9] (beyond, float32
  tanh is +-1); a rational fit made for fastrnn (weighted least squares on Chebyshev
  nodes), relative error 2.2e-8, evaluated in float64 and rounded once (within 1 ulp).
* float64: |x| < 1/4: the Taylor series of tanh to x^23 (coefficients from t' = 1 - t^2);
  else (1 - e) / (1 + e) with e = exp(-2|x|), exp by range reduction (k ln 2 + r, Cody-Waite
  split of ln 2), a degree-13 Taylor polynomial on |r| <= ln(2)/2 and 2^k built from its
  exponent bits. Relative error <= 4.5e-16 (2 ulp) against NumPy's tanh.

Both pass NaN through and give +-1 at +-inf. The logistic function is computed from
e = exp(-|x|) (so never of a large argument: no overflow), as 1 / (1 + e) for x >= 0 and
e / (1 + e) below, which keeps the relative precision of small values: in float64 for
float64, and in float32 arithmetic for float32 (16 lanes per AVX-512 vector, within 4 ulp;
its exp is the float32 twin of the float64 one, a degree-7 polynomial).
Called from Python (not compiled) they fall back to ``math.tanh``.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import int64, njit, types
from numba.extending import intrinsic, overload

JIT = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})

_TANH32_P = (0.9999999925831681, 10.841865902079677, 22.96481262501568, 10.990002704320672,
             0.5786490968103096)
_TANH32_Q = (1.0, 37.84185605581832, 169.89624115496613, 175.00069817880876, 33.6391813049622)


def _tanh_taylor_odd(terms: int) -> tuple[float, ...]:
    """Coefficients c_k of tanh(x) = x * sum_k c_k x^(2k), exact from t' = 1 - t^2."""
    from fractions import Fraction
    n = 2 * terms
    a = [Fraction(0)] * (n + 1)
    a[1] = Fraction(1)
    for m in range(1, n):
        a[m + 1] = ((1 if m == 0 else 0) - sum(a[i] * a[m - i] for i in range(m + 1))) / (m + 1)
    return tuple(float(a[k]) for k in range(1, n + 1, 2))


_TANH64_SERIES = _tanh_taylor_odd(12)          # through x^23: < 1 ulp for |x| < 1/4
_EXP_SERIES = tuple(1.0 / math.factorial(k) for k in range(14))
LOG2E = 1.4426950408889634
LN2_HI = 6.93147180369123816490e-01           # ln 2 = LN2_HI + LN2_LO, LN2_HI exact in 32 bits
LN2_LO = 1.90821492927058770002e-10
ROUND_MAGIC = 6755399441055744.0               # 1.5 * 2**52: (v + M) - M rounds v to an integer


def tanh_(x):
    """tanh; compiled, the vectorisable versions described in the module docstring."""
    return math.tanh(x)


def sigm(x):
    """Logistic function without overflow: 0.5 + 0.5 * tanh(x / 2)."""
    return 0.5 + 0.5 * math.tanh(0.5 * x)


@njit(**JIT)
def polynomial(c, x):
    """c[0] + c[1] x + c[2] x^2 + ... by Horner's rule, for a tuple of constants c (the
    loop unrolls at compile time)."""
    p = c[-1]
    for k in range(len(c) - 2, -1, -1):
        p = p * x + c[k]
    return p


@intrinsic
def _bits_to_float64(typingctx, bits):
    """Reinterpret an int64 as the float64 with the same bits (an LLVM bitcast)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@njit(**JIT)
def exp_nonpositive(y):
    """exp(y) for y <= 0 (float64); y below -708 is taken as -708 (exp ~ 3e-308)."""
    y = -708.0 if y < -708.0 else y             # written so that NaN passes through
    k = (y * LOG2E + ROUND_MAGIC) - ROUND_MAGIC
    r = (y - k * LN2_HI) - k * LN2_LO
    p = polynomial(_EXP_SERIES, r)
    k = k if k == k else 0.0                    # NaN: a defined integer (p carries the NaN)
    return p * _bits_to_float64((int64(k) + 1023) << 52)


@njit(**JIT)
def tanh64(x):
    a = abs(x)
    e = exp_nonpositive(-2.0 * a)
    large = math.copysign((1.0 - e) / (1.0 + e), x)
    u = x * x
    p = polynomial(_TANH64_SERIES, u)
    return x * p if a < 0.25 else large


@overload(tanh_)
def _tanh_impl(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        # evaluated in float64 and rounded once: within 1 ulp, like a correctly rounded
        # tanh, which keeps 1 - tanh^2 of saturated units as exact as NumPy's
        p0, p1, p2, p3, p4 = _TANH32_P
        q0, q1, q2, q3, q4 = _TANH32_Q
        lim, inv_lim = 9.0, 1.0 / 9.0

        def impl(x):
            xd = np.float64(x)
            # comparisons written so that a NaN passes through every select
            xc = lim if xd > lim else xd
            xc = -lim if xc < -lim else xc
            v = xc * inv_lim
            u = v * v
            num = (((p4 * u + p3) * u + p2) * u + p1) * u + p0
            den = (((q4 * u + q3) * u + q2) * u + q1) * u + q0
            r = xc * num / den
            r = 1.0 if r > 1.0 else r
            return np.float32(-1.0 if r < -1.0 else r)
        return impl
    if isinstance(x, types.Float) and x.bitwidth == 64:
        return lambda x: tanh64(x)
    return lambda x: math.tanh(x)


@njit(**JIT)
def sigm64(x):
    """1 / (1 + exp(-x)) from e = exp(-|x|): e / (1 + e) below 0, so small values keep
    their relative precision (0.5 + 0.5 tanh(x/2) would lose it to cancellation)."""
    e = exp_nonpositive(-abs(x))
    s = 1.0 / (1.0 + e)
    return s if x >= 0 else e * s                 # a NaN takes the second branch: e is NaN


@intrinsic
def _bits_to_float32(typingctx, bits):
    """Reinterpret an int32 as the float32 with the same bits (an LLVM bitcast)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


_F32 = np.float32
_EXP32_SERIES = tuple(_F32(1.0 / math.factorial(k)) for k in range(8))
_LN2_HI32 = _F32(0.693145751953125)              # 12 significant bits: k * LN2_HI32 exact
_LN2_LO32 = _F32(1.428606765330187e-06)
_LOG2E32 = _F32(LOG2E)
_ROUND_MAGIC32 = _F32(12582912.0)                # 1.5 * 2**23
_TWO_M64 = _F32(2.0 ** -64)


@njit(**JIT)
def exp32_nonpositive(y):
    """exp(y) for float32 y <= 0 in float32 arithmetic (16 lanes per AVX-512 vector).

    Relative error < 3 ulp down to the smallest normal (y ~ -87.3), then within one
    subnormal step; y below -104 (exp < half the smallest subnormal) gives 0. Only for
    y <= 0: positive y gives garbage. 2^k is built as
    2^(k+64) from exponent bits times 2^-64, so that k down to -150 stays representable.
    """
    y = _F32(-104.0) if y < _F32(-104.0) else y  # written so that NaN passes through
    k = (y * _LOG2E32 + _ROUND_MAGIC32) - _ROUND_MAGIC32
    r = (y - k * _LN2_HI32) - k * _LN2_LO32
    p = polynomial(_EXP32_SERIES, r)
    k = k if k == k else _F32(0.0)              # NaN: a defined integer (p carries the NaN)
    return (p * _bits_to_float32((np.int32(k) + np.int32(191)) << np.int32(23))) * _TWO_M64


@njit(**JIT)
def sigm32(x):
    """The float32 twin of :func:`sigm64`, in float32 arithmetic: twice the lanes of the
    float64 version and a single-precision divide, within 4 ulp."""
    e = exp32_nonpositive(-abs(x))
    s = _F32(1.0) / (_F32(1.0) + e)
    return s if x >= _F32(0.0) else e * s


@overload(sigm)
def _sigm_impl(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: sigm32(x)
    if isinstance(x, types.Float) and x.bitwidth == 64:
        return lambda x: sigm64(x)
    return lambda x: 0.5 + 0.5 * math.tanh(0.5 * x)
