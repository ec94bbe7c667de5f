"""A CBLAS ``gemm`` that Numba-jitted code can call, found in the BLAS NumPy already loads.

Numba's own ``np.dot`` needs SciPy; fastrnn does not. NumPy wheels ship OpenBLAS in a
shared library whose CBLAS ``sgemm``/``dgemm`` we look up by address with ctypes. The
jitted kernels take that address as a plain integer argument and call it through
:func:`gemm_call`, an intrinsic, so the compiled code holds no process-specific pointer
and can be cached on disk (``cache=True``).

Integer arguments are passed as 64-bit values: correct for ILP64 builds (NumPy's
``scipy_openblas64_``) and, under the x86-64 and AArch64 Linux calling conventions, for
LP64 ones too, whose callee reads the low 32 bits of the same register or stack slot.

When no library or symbol is found, :data:`SGEMM` and :data:`DGEMM` are 0 and the
kernels use their own loops instead.
"""

from __future__ import annotations

import ctypes
import glob
import os

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

_SYMBOLS = {
    "s": ("scipy_cblas_sgemm64_", "cblas_sgemm64_", "scipy_cblas_sgemm", "cblas_sgemm"),
    "d": ("scipy_cblas_dgemm64_", "cblas_dgemm64_", "scipy_cblas_dgemm", "cblas_dgemm"),
}


def _candidate_libraries():
    root = os.path.dirname(np.__file__)
    patterns = [os.path.join(root, "..", "numpy.libs", "*openblas*"),
                os.path.join(root, ".dylibs", "*openblas*"),
                os.path.join(root, "..", "scipy_openblas64", "lib", "*openblas*"),
                os.path.join(root, "..", "scipy_openblas32", "lib", "*openblas*")]
    for pattern in patterns:
        yield from sorted(glob.glob(pattern))


def _find_gemm():
    for path in _candidate_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        found = {}
        for prefix, names in _SYMBOLS.items():
            for name in names:
                try:
                    found[prefix] = ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
                    break
                except AttributeError:
                    continue
        if len(found) == 2:
            return found["s"], found["d"], path
    return 0, 0, None


if os.environ.get("FASTRNN_NO_BLAS_IN_KERNELS"):
    SGEMM, DGEMM, LIBRARY = 0, 0, None
else:
    SGEMM, DGEMM, LIBRARY = _find_gemm()


def gemm_address(dtype) -> int:
    """Address of cblas_sgemm/cblas_dgemm for ``dtype`` (0 if none was found)."""
    return SGEMM if np.dtype(dtype) == np.float32 else DGEMM


@intrinsic
def gemm_call(typingctx, fn, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Row-major C = alpha * A @ op(B) + beta * C through the CBLAS function at address fn.

    a, b, c are data addresses (``array.ctypes.data``); op(B) is B or B^T by trans_b.
    """
    float_t = alpha
    sig = types.void(fn, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        fn_, tb, m_, n_, k_, al, a_, lda_, b_, ldb_, be, c_, ldc_ = args
        i32, i64 = ir.IntType(32), ir.IntType(64)
        fp = ir.FloatType() if float_t == types.float32 else ir.DoubleType()
        ptr = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, fp, ptr, i64, ptr,
                                               i64, fp, ptr, i64])
        callee = builder.inttoptr(fn_, fnty.as_pointer())

        def as_i64(v):
            return builder.sext(v, i64) if v.type.width < 64 else v

        builder.call(callee, [
            ir.Constant(i32, ROW_MAJOR), ir.Constant(i32, NO_TRANS), builder.trunc(tb, i32)
            if tb.type.width > 32 else tb,
            as_i64(m_), as_i64(n_), as_i64(k_), al, builder.inttoptr(a_, ptr), as_i64(lda_),
            builder.inttoptr(b_, ptr), as_i64(ldb_), be, builder.inttoptr(c_, ptr), as_i64(ldc_)])
        return context.get_dummy_value()

    return sig, codegen
