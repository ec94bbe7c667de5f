"""Input checks of the public API: every error names the argument, what was expected and what came.

These run before any backend sees an array. They also bring inputs into the canonical form
backends receive (time-major, batched, contiguous, one dtype) without ever writing to a
user's array.
"""

from __future__ import annotations

import functools
from typing import Mapping

import numpy as np

from .arrays import is_cupy_array, is_foreign_array, library, where
from .cells import CellSpec


def describe(a) -> str:
    """Short description of an argument for error messages: its type, with the library
    that made it, its shape and dtype."""
    shape = getattr(a, "shape", None)
    dtype = getattr(a, "dtype", None)
    lib = library(a)
    name = f"{type(a).__module__.partition('.')[0]}.{type(a).__name__}" if lib else type(a).__name__
    if shape is not None and dtype is not None:
        return f"{name} of shape {tuple(shape)} and dtype {dtype}"
    return name


def place(a) -> tuple[str, str] | None:
    """(library, where in words) of an array argument, or None for a list or scalar: what
    :func:`check_same_place` compares, and what a tape remembers of the caller's x."""
    lib = library(a)
    return None if lib is None else (lib, where(a))


def check_same_place(reference: str, ref, arrays) -> None:
    """Every array of ``arrays`` ((name, value) pairs; None and lists skipped) is of the
    library of ``ref`` (an array, or its :func:`place`), the argument named ``reference``,
    usually x. fastrnn never moves an array between host and device behind the caller's
    back (a hidden copy in every call of a loop): a NumPy array beside a CuPy x, or the
    reverse, is a TypeError naming both, as torch refuses tensors on two devices."""
    ref_place = ref if isinstance(ref, tuple) else place(ref)
    if ref_place is None:
        return
    want, ref_where = ref_place
    for name, a in arrays:
        got = library(a)
        if got is not None and got != want:
            move = ("cupy.asarray(...)" if want == "cupy" else
                    "cupy.asnumpy(...) or .get()" if got == "cupy" else "one library's arrays")
            raise TypeError(f"{name}: {where(a)} beside {reference}, {ref_where}; fastrnn "
                            f"does not move arrays between host and device on its own. Pass "
                            f"every array where {reference} is ({move})")


def as_array(xp, name: str, a, backend: str | None = None):
    """``a`` as an array of module ``xp``; lists and host (NumPy) arrays become arrays of
    ``xp`` (for a GPU backend that is a copy to the device, the one it is asked for), other
    libraries' arrays are refused."""
    lib = library(a)
    if isinstance(a, xp.ndarray) and (lib is None or lib == xp.__name__):
        return a
    if is_foreign_array(a) or lib not in (None, "numpy", xp.__name__):
        on = f" backend {backend!r}" if backend else " this backend"
        raise TypeError(f"{name}: expected a {xp.__name__}.ndarray for{on}, which computes on "
                        f"{xp.__name__} arrays; got {where(a)}: {describe(a)}")
    try:
        return xp.asarray(a)
    except Exception as exc:  # noqa: BLE001 - any conversion failure is the user's input
        raise TypeError(f"{name}: expected an array, got {describe(a)} ({exc})") from None


@functools.lru_cache(maxsize=None)
def _dtype_set(names: tuple) -> frozenset:
    return frozenset(np.dtype(n) for n in names)


def check_float(name: str, a, allowed_dtypes) -> None:
    if a.dtype not in _dtype_set(tuple(allowed_dtypes)):
        raise TypeError(f"{name}: expected a floating dtype ({', '.join(allowed_dtypes)}), "
                        f"got {a.dtype}")


def check_same_dtype(name: str, a, dtype) -> None:
    if a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the dtype of x), got {a.dtype}; "
                        f"mixed dtypes are not converted silently")


def check_shape(name: str, a, expected: tuple, hint: str = "") -> None:
    if tuple(a.shape) != tuple(expected):
        extra = f" ({hint})" if hint else ""
        raise ValueError(f"{name}: expected shape {tuple(expected)}{extra}, got {tuple(a.shape)}")


def check_sequence_input(xp, x, allowed_dtypes, lengths, backend: str | None = None):
    """x as an array of a float dtype, 3-d (T, B, I) or 2-d unbatched (T, I); (x, unbatched)."""
    x = as_array(xp, "x", x, backend)
    check_float("x", x, allowed_dtypes)
    if x.ndim not in (2, 3):
        raise ValueError(f"x: expected a 3-d array (T, B, I) ((B, T, I) with batch_first) or a "
                         f"2-d unbatched (T, I), got {x.ndim}-d of shape {tuple(x.shape)}")
    unbatched = x.ndim == 2
    if unbatched and lengths is not None:
        raise ValueError("lengths: unbatched input (T, I) is one sequence of length T; "
                         "pass lengths only with batched input (T, B, I)")
    return x, unbatched


def check_params(xp, cell: CellSpec, params, input_size: int, allowed_dtypes):
    """Validated params dict (name -> array) and the width of h read off U: the hidden
    size H, or the projection size P for lstmp (whose H is ``cell.sizes_of(params)[0]``)."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a mapping of parameter name to array "
                        f"({', '.join(cell.param_names)}), got {type(params).__name__}")
    missing = [k for k in cell.param_names if k not in params]
    if missing:
        raise ValueError(f"params: cell {cell.name!r} needs {', '.join(cell.param_names)}; "
                         f"missing {', '.join(missing)}")
    extra = [k for k in params if k not in cell.param_names]
    if extra:
        raise ValueError(f"params: unexpected parameter(s) {', '.join(map(repr, extra))} for "
                         f"cell {cell.name!r}, which takes {', '.join(cell.param_names)}")
    out = {k: as_array(xp, f"params[{k!r}]", params[k]) for k in cell.param_names}
    U = out["U"]
    rows = "P" if cell.has_projection else "H"
    G = cell.num_gates
    if (U.ndim != 2 or U.shape[0] < 1 or U.shape[1] < 1
            or (cell.has_projection and U.shape[1] % G)):
        raise ValueError(f"params['U']: expected a 2-d array ({rows}, {G}*H), got shape "
                         f"{tuple(U.shape)}")
    H, P = cell.sizes_of(out)
    sizes = f"hidden size {H}" + (f" and projection size {P}" if cell.has_projection else "")
    for k, shape in cell.param_shapes(input_size, H, P).items():
        check_shape(f"params[{k!r}]", out[k], shape,
                    f"cell {cell.name!r} with input size {input_size} and {sizes}")
    dtype = out["W"].dtype
    for k, a in out.items():
        check_float(f"params[{k!r}]", a, allowed_dtypes)
        check_same_dtype(f"params[{k!r}]", a, dtype)
    return out, P


def check_lengths(lengths, T: int, B: int):
    """None (all sequences full length) or an int64 NumPy array (B,) with values in 1..T."""
    if lengths is None:
        return None
    if is_cupy_array(lengths):
        lengths = lengths.get()
    arr = np.asarray(lengths)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"lengths: expected integers, got {describe(arr)}")
    if arr.ndim != 1 or arr.shape[0] != B:
        raise ValueError(f"lengths: expected shape ({B},) (one length per sequence of the batch), "
                         f"got {tuple(arr.shape)}")
    if B and (arr.min() < 1 or arr.max() > T):
        bad = arr[(arr < 1) | (arr > T)]
        raise ValueError(f"lengths: expected values in 1..{T} (T), got {bad[:5].tolist()}")
    arr = arr.astype(np.int64)
    if B == 0 or (arr == T).all():
        return None
    return arr
