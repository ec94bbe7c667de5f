"""Numba kernels that run a whole time loop: one call per forward or backward pass.

Every array is C-contiguous and indexed in *time order*: tape entry ``[t, b]`` belongs to
the step at which sequence b read time t (t = s, or lengths[b] - 1 - s with reverse), so
the weight gradients after the loop are single GEMMs over all T*B rows. The input
projection ``xp = x @ W`` (no bias) is computed before the loop by one GEMM; inside the
loop only the recurrent product runs per step, through BLAS (``gemm_call``) or, for small
sizes, through :func:`mm`'s own loops, followed by one fused pointwise pass.

Step s of sequence b is valid while s < lengths[b]; invalid steps read nothing, write
nothing (outputs, tape and gradients there keep the zeros they were allocated with) and
leave the state frozen.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from ._blas import NO_TRANS, gemm_call

JIT = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})


# tanh(x) ~ x * P(u) / Q(u), u = (x/9)^2, on [-9, 9] (beyond, float32 tanh is +-1): a
# rational fit made for fastrnn (weighted least squares on Chebyshev nodes, relative
# error <= 4e-7 in float32, 3 ulp). Branch-free, so the pointwise loops vectorise.
_TANH_P = (0.9999999925831681, 10.841865902079677, 22.96481262501568, 10.990002704320672,
           0.5786490968103096)
_TANH_Q = (1.0, 37.84185605581832, 169.89624115496613, 175.00069817880876, 33.6391813049622)


def tanh_(x):
    """tanh; in compiled float32 code the rational approximation above, else math.tanh."""
    return math.tanh(x)


def sigm(x):
    """Logistic function without overflow: 0.5 + 0.5 * tanh(x / 2), as tanh saturates."""
    return 0.5 + 0.5 * math.tanh(0.5 * x)


@overload(tanh_)
def _tanh_impl(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        f = np.float32
        p0, p1, p2, p3, p4 = (f(c) for c in _TANH_P)
        q0, q1, q2, q3, q4 = (f(c) for c in _TANH_Q)
        lim, inv_lim, one = f(9.0), f(1.0 / 9.0), f(1.0)

        def impl(x):
            # comparisons written so that a NaN passes through every select
            xc = lim if x > lim else x
            xc = -lim if xc < -lim else xc
            v = xc * inv_lim
            u = v * v
            num = (((p4 * u + p3) * u + p2) * u + p1) * u + p0
            den = (((q4 * u + q3) * u + q2) * u + q1) * u + q0
            r = xc * num / den
            r = one if r > one else r
            return -one if r < -one else r
        return impl
    return lambda x: math.tanh(x)


@overload(sigm)
def _sigm_impl(x):
    half = np.float32(0.5) if isinstance(x, types.Float) and x.bitwidth == 32 else 0.5
    return lambda x: half + half * tanh_(half * x)


@njit(**JIT)
def mm(fn, use_blas, A, Bm, C, beta):
    """C = A @ Bm + beta * C for C-contiguous 2-d arrays; beta is 0 or 1.

    Through the BLAS at address fn when use_blas, else by an own loop (cheaper than a
    BLAS call for small products).
    """
    M, K = A.shape
    N = Bm.shape[1]
    if M == 0 or N == 0:
        return
    if use_blas:
        one = A.dtype.type(1.0)
        gemm_call(fn, NO_TRANS, M, N, K, one, A.ctypes.data, K, Bm.ctypes.data, N,
                  C.dtype.type(beta), C.ctypes.data, N)
        return
    for i in range(M):
        if beta == 0:
            for j in range(N):
                C[i, j] = 0
        for k in range(K):
            a = A[i, k]
            for j in range(N):
                C[i, j] += a * Bm[k, j]


@njit(inline="always", **JIT)
def time_of(s, b, lengths, reverse):
    return lengths[b] - 1 - s if reverse else s


@njit(inline="always", **JIT)
def gather_rows(src, s, lengths, reverse, ws):
    """ws[b] = src[t_b, b] for valid rows, 0 for the others; used when rows differ in t."""
    B = ws.shape[0]
    for b in range(B):
        if s < lengths[b]:
            t = time_of(s, b, lengths, reverse)
            for j in range(ws.shape[1]):
                ws[b, j] = src[t, b, j]
        else:
            for j in range(ws.shape[1]):
                ws[b, j] = 0


# ------------------------------------------------------------------------------ Elman RNN

@njit(**JIT)
def rnn_forward(xp, U, bias, relu, h, lengths, reverse, out, hprev, training, acc, fn, use_blas):
    """Matches numpy_ref.rnn_step over all steps. h (B, H) holds h0 and ends as h_n."""
    T, B, H = out.shape
    one = out.dtype.type(1)
    zero = one - one
    for s in range(T):
        mm(fn, use_blas, h, U, acc, 0)
        for b in range(B):
            if s >= lengths[b]:
                continue
            t = time_of(s, b, lengths, reverse)
            for j in range(H):
                a = xp[t, b, j] + acc[b, j] + bias[j]
                hn = (a if (a > 0 or a != a) else zero) if relu else tanh_(a)
                if training:
                    hprev[t, b, j] = h[b, j]
                h[b, j] = hn
                out[t, b, j] = hn


@njit(**JIT)
def rnn_backward(out, hprev, UT, relu, lengths, reverse, simple, dh, has_dh, dh_carry, dG, ws,
                 fn, use_blas):
    """Matches numpy_ref.rnn_step_backward over all steps; fills dG (T, B, H) = dL/da."""
    T, B, H = out.shape
    one = out.dtype.type(1)
    zero = one - one
    for s in range(T - 1, -1, -1):
        for b in range(B):
            if s >= lengths[b]:
                continue
            t = time_of(s, b, lengths, reverse)
            for j in range(H):
                g = dh_carry[b, j]
                if has_dh:
                    g += dh[t, b, j]
                hn = out[t, b, j]
                dG[t, b, j] = (g if hn > 0 else zero) if relu else g * (one - hn * hn)
                dh_carry[b, j] = 0
        if simple:
            mm(fn, use_blas, dG[s], UT, dh_carry, 0)
        else:
            gather_rows(dG, s, lengths, reverse, ws)
            mm(fn, use_blas, ws, UT, dh_carry, 1)


# ----------------------------------------------------------------------------------- LSTM

@njit(**JIT)
def lstm_forward(xp, U, bias, h, c, lengths, reverse, out, hprev, gates, cprev, tanhc,
                 training, acc, fn, use_blas):
    """Matches numpy_ref.lstm_step over all steps. h, c (B, H) hold h0, c0 and end as h_n, c_n.

    Tape per (t, b): gates i, f, g, o (4H), c_prev, tanh(c_new) and h_prev (H each).
    Each pass below is a short loop over few arrays so that LLVM vectorises it.
    """
    T, B, H = out.shape
    for s in range(T):
        mm(fn, use_blas, h, U, acc, 0)
        for b in range(B):
            if s >= lengths[b]:
                continue
            t = time_of(s, b, lengths, reverse)
            a = acc[b]
            x_t = xp[t, b]
            for j in range(H):
                a[j] = sigm(x_t[j] + a[j] + bias[j])
            for j in range(H, 2 * H):
                a[j] = sigm(x_t[j] + a[j] + bias[j])
            for j in range(2 * H, 3 * H):
                a[j] = tanh_(x_t[j] + a[j] + bias[j])
            for j in range(3 * H, 4 * H):
                a[j] = sigm(x_t[j] + a[j] + bias[j])
            c_b = c[b]
            h_b = h[b]
            if training:
                g_t = gates[t, b]
                for j in range(4 * H):
                    g_t[j] = a[j]
                cp_t = cprev[t, b]
                hp_t = hprev[t, b]
                for j in range(H):
                    cp_t[j] = c_b[j]
                    hp_t[j] = h_b[j]
            for j in range(H):
                c_b[j] = a[H + j] * c_b[j] + a[j] * a[2 * H + j]
            tc_b = tanhc[t, b] if training else a[2 * H:3 * H]
            for j in range(H):
                tc_b[j] = tanh_(c_b[j])
            o_b = out[t, b]
            for j in range(H):
                hn = a[3 * H + j] * tc_b[j]
                h_b[j] = hn
                o_b[j] = hn


@njit(**JIT)
def lstm_backward(gates, cprev, tanhc, UT, lengths, reverse, simple, dh, has_dh, dh_carry,
                  dc_carry, dG, ws, fn, use_blas):
    """Matches numpy_ref.lstm_step_backward over all steps; fills dG (T, B, 4H)."""
    T, B, H = cprev.shape
    one = cprev.dtype.type(1)
    zero = one - one
    for s in range(T - 1, -1, -1):
        for b in range(B):
            if s >= lengths[b]:
                continue
            t = time_of(s, b, lengths, reverse)
            for j in range(H):
                dhn = dh_carry[b, j]
                if has_dh:
                    dhn += dh[t, b, j]
                i = gates[t, b, j]
                f = gates[t, b, H + j]
                g = gates[t, b, 2 * H + j]
                o = gates[t, b, 3 * H + j]
                tc = tanhc[t, b, j]
                dc = dc_carry[b, j] + dhn * o * (one - tc * tc)
                dG[t, b, j] = dc * g * i * (one - i)
                dG[t, b, H + j] = dc * cprev[t, b, j] * f * (one - f)
                dG[t, b, 2 * H + j] = dc * i * (one - g * g)
                dG[t, b, 3 * H + j] = dhn * tc * o * (one - o)
                dc_carry[b, j] = dc * f
                dh_carry[b, j] = 0
        if simple:
            mm(fn, use_blas, dG[s], UT, dh_carry, 0)
        else:
            gather_rows(dG, s, lengths, reverse, ws)
            mm(fn, use_blas, ws, UT, dh_carry, 1)


# ------------------------------------------------------------------------------------ GRU

@njit(**JIT)
def gru_forward(xp, U, bias, bn, h, lengths, reverse, out, hprev, gates, training, acc, fn,
                use_blas):
    """Matches numpy_ref.gru_step (reset after, cell 'gru') over all steps.

    Tape per (t, b): r, z, n and hn = h @ U_n + bn (4H), h_prev (H).
    """
    T, B, H = out.shape
    one = out.dtype.type(1)
    zero = one - one
    for s in range(T):
        mm(fn, use_blas, h, U, acc, 0)
        for b in range(B):
            if s >= lengths[b]:
                continue
            t = time_of(s, b, lengths, reverse)
            for j in range(H):
                r = sigm(xp[t, b, j] + acc[b, j] + bias[j])
                z = sigm(xp[t, b, H + j] + acc[b, H + j] + bias[H + j])
                hn = acc[b, 2 * H + j] + bn[j]
                n = tanh_(xp[t, b, 2 * H + j] + bias[2 * H + j] + r * hn)
                hp = h[b, j]
                hnew = (one - z) * n + z * hp
                if training:
                    gates[t, b, j] = r
                    gates[t, b, H + j] = z
                    gates[t, b, 2 * H + j] = n
                    gates[t, b, 3 * H + j] = hn
                    hprev[t, b, j] = hp
                h[b, j] = hnew
                out[t, b, j] = hnew


@njit(**JIT)
def gru_backward(gates, hprev, UT, lengths, reverse, dh, has_dh, dh_carry, dGx, dhn_all, ws,
                 fn, use_blas):
    """Matches numpy_ref.gru_step_backward for 'gru'. Fills dGx (T, B, 3H) = dL/d(xW + b)
    and dhn_all (T, B, H) = dL/d(h @ U_n + bn)."""
    T, B, H = hprev.shape
    one = hprev.dtype.type(1)
    zero = one - one
    for s in range(T - 1, -1, -1):
        for b in range(B):
            if s >= lengths[b]:
                for j in range(3 * H):
                    ws[b, j] = 0
                continue
            t = time_of(s, b, lengths, reverse)
            for j in range(H):
                g = dh_carry[b, j]
                if has_dh:
                    g += dh[t, b, j]
                r = gates[t, b, j]
                z = gates[t, b, H + j]
                n = gates[t, b, 2 * H + j]
                hn = gates[t, b, 3 * H + j]
                dan = g * (one - z) * (one - n * n)
                dar = dan * hn * r * (one - r)
                daz = g * (hprev[t, b, j] - n) * z * (one - z)
                dhn = dan * r
                dGx[t, b, j] = dar
                dGx[t, b, H + j] = daz
                dGx[t, b, 2 * H + j] = dan
                dhn_all[t, b, j] = dhn
                ws[b, j] = dar
                ws[b, H + j] = daz
                ws[b, 2 * H + j] = dhn
                dh_carry[b, j] = g * z
        mm(fn, use_blas, ws, UT, dh_carry, 1)


@njit(**JIT)
def gru_rb_forward(xp, U_rz, U_n, bias, h, lengths, reverse, out, hprev, gates, training, acc,
                   rh, acc_n, fn, use_blas):
    """Matches numpy_ref.gru_step for 'gru_reset_before': n = tanh(xW_n + b_n + (r*h) @ U_n).

    Tape per (t, b): r, z, n (3H), h_prev (H). acc (B, 2H), rh and acc_n (B, H) are workspace.
    """
    T, B, H = out.shape
    one = out.dtype.type(1)
    zero = one - one
    for s in range(T):
        mm(fn, use_blas, h, U_rz, acc, 0)
        for b in range(B):
            if s >= lengths[b]:
                for j in range(H):
                    rh[b, j] = 0
                continue
            t = time_of(s, b, lengths, reverse)
            for j in range(H):
                r = sigm(xp[t, b, j] + acc[b, j] + bias[j])
                acc[b, j] = r
                rh[b, j] = r * h[b, j]
        mm(fn, use_blas, rh, U_n, acc_n, 0)
        for b in range(B):
            if s >= lengths[b]:
                continue
            t = time_of(s, b, lengths, reverse)
            for j in range(H):
                r = acc[b, j]
                z = sigm(xp[t, b, H + j] + acc[b, H + j] + bias[H + j])
                n = tanh_(xp[t, b, 2 * H + j] + bias[2 * H + j] + acc_n[b, j])
                hp = h[b, j]
                hnew = (one - z) * n + z * hp
                if training:
                    gates[t, b, j] = r
                    gates[t, b, H + j] = z
                    gates[t, b, 2 * H + j] = n
                    hprev[t, b, j] = hp
                h[b, j] = hnew
                out[t, b, j] = hnew


@njit(**JIT)
def gru_rb_backward(gates, hprev, UT_rz, UT_n, lengths, reverse, dh, has_dh, dh_carry, dGx, rh_all,
                    ws_n, ws_rz, drh, fn, use_blas):
    """Matches numpy_ref.gru_step_backward for 'gru_reset_before'. Fills dGx (T, B, 3H) and
    rh_all (T, B, H) = r * h_prev (the input of U_n, for dU)."""
    T, B, H = hprev.shape
    one = hprev.dtype.type(1)
    zero = one - one
    for s in range(T - 1, -1, -1):
        for b in range(B):
            if s >= lengths[b]:
                for j in range(H):
                    ws_n[b, j] = 0
                continue
            t = time_of(s, b, lengths, reverse)
            for j in range(H):
                g = dh_carry[b, j]
                if has_dh:
                    g += dh[t, b, j]
                z = gates[t, b, H + j]
                n = gates[t, b, 2 * H + j]
                dan = g * (one - z) * (one - n * n)
                dGx[t, b, 2 * H + j] = dan
                dGx[t, b, H + j] = g * (hprev[t, b, j] - n) * z * (one - z)
                ws_n[b, j] = dan
                dh_carry[b, j] = g * z
        mm(fn, use_blas, ws_n, UT_n, drh, 0)
        for b in range(B):
            if s >= lengths[b]:
                for j in range(2 * H):
                    ws_rz[b, j] = 0
                continue
            t = time_of(s, b, lengths, reverse)
            for j in range(H):
                r = gates[t, b, j]
                hp = hprev[t, b, j]
                dar = drh[b, j] * hp * r * (one - r)
                dGx[t, b, j] = dar
                rh_all[t, b, j] = r * hp
                dh_carry[b, j] += drh[b, j] * r
                ws_rz[b, j] = dar
                ws_rz[b, H + j] = dGx[t, b, H + j]
        mm(fn, use_blas, ws_rz, UT_rz, dh_carry, 1)
