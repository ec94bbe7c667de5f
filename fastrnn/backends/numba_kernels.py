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

from numba import njit, uint64

from ._blas import NO_TRANS, gemm_call
from .numba_math import JIT, sigm, tanh_


# Row helpers. Each is one short loop over the H (or G*H) entries of one sequence at one
# step, with unsigned indices: Numba then drops its negative-index handling and LLVM
# vectorises the loop, transcendentals included. Kernels below call them once per row.

@njit(**JIT)
def gates_sigm(g, x, a, bias, lo, hi):
    """g[j] = sigm(x[j] + a[j] + bias[j]) for lo <= j < hi."""
    for j in range(uint64(lo), uint64(hi)):
        g[j] = sigm(x[j] + a[j] + bias[j])


@njit(**JIT)
def gates_tanh(g, x, a, bias, lo, hi):
    """g[j] = tanh(x[j] + a[j] + bias[j]) for lo <= j < hi."""
    for j in range(uint64(lo), uint64(hi)):
        g[j] = tanh_(x[j] + a[j] + bias[j])


@njit(**JIT)
def copy_row(dst, src, n):
    for j in range(uint64(n)):
        dst[j] = src[j]


@njit(**JIT)
def add_row(dst, src, n):
    for j in range(uint64(n)):
        dst[j] += src[j]


@njit(**JIT)
def fill_row(dst, value, n):
    for j in range(uint64(n)):
        dst[j] = value


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
        gemm_call(fn, NO_TRANS, M, N, K, A.dtype.type(1.0), A.ctypes.data, K, Bm.ctypes.data,
                  N, C.dtype.type(beta), C.ctypes.data, N)
        return
    zero = C.dtype.type(0)
    uK, uN = uint64(K), uint64(N)
    for i in range(uint64(M)):
        if beta == 0:
            for j in range(uN):
                C[i, j] = zero
        for k in range(uK):
            a = A[i, k]
            for j in range(uN):
                C[i, j] += a * Bm[k, j]


@njit(**JIT)
def time_of(s, b, lengths, reverse):
    return lengths[b] - 1 - s if reverse else s


@njit(**JIT)
def gather_rows(src, s, lengths, reverse, ws):
    """ws[b] = src[t_b, b] for valid rows, 0 for the others; used when rows differ in t."""
    B, n = ws.shape
    zero = ws.dtype.type(0)
    for b in range(B):
        if s < lengths[b]:
            copy_row(ws[b], src[time_of(s, b, lengths, reverse), b], n)
        else:
            fill_row(ws[b], zero, n)


@njit(**JIT)
def recurrent_grad(dG, s, lengths, reverse, simple, ws, UT, dh_carry, fn, use_blas):
    """dh_carry[b] += dG[t_b, b] @ U^T for the rows valid at step s; the others keep theirs.

    The caller has zeroed dh_carry on the valid rows. Without lengths and reverse the rows
    of step s are the contiguous block dG[s] and go to the product as they are.
    """
    if simple:
        mm(fn, use_blas, dG[s], UT, dh_carry, 0)
    else:
        gather_rows(dG, s, lengths, reverse, ws)
        mm(fn, use_blas, ws, UT, dh_carry, 1)


# ------------------------------------------------------------------------------ Elman RNN

@njit(**JIT)
def rnn_row(x, a, bias, relu, h, o, H):
    zero = h.dtype.type(0)
    h1 = uint64(H)
    h2 = h1 + h1
    h3 = h2 + h1
    for j in range(h1):
        v = x[j] + a[j] + bias[j]
        hn = (v if (v > 0 or v != v) else zero) if relu else tanh_(v)
        h[j] = hn
        o[j] = hn


@njit(**JIT)
def rnn_forward(xp, U, bias, relu, h, lengths, reverse, out, hprev, training, acc, fn, use_blas):
    """Matches numpy_ref.rnn_step over all steps. h (B, H) holds h0 and ends as h_n."""
    T, B, H = out.shape
    for s in range(T):
        mm(fn, use_blas, h, U, acc, 0)
        for b in range(B):
            if s >= lengths[b]:
                continue
            t = time_of(s, b, lengths, reverse)
            if training:
                copy_row(hprev[t, b], h[b], H)
            rnn_row(xp[t, b], acc[b], bias, relu, h[b], out[t, b], H)


@njit(**JIT)
def rnn_bwd_row(dhc, o, relu, d, H):
    one = d.dtype.type(1)
    zero = one - one
    h1 = uint64(H)
    h2 = h1 + h1
    h3 = h2 + h1
    for j in range(h1):
        g = dhc[j]
        hn = o[j]
        d[j] = (g if hn > 0 else zero) if relu else g * (one - hn * hn)
        dhc[j] = zero


@njit(**JIT)
def rnn_backward(out, hprev, UT, relu, lengths, reverse, simple, dh, has_dh, dh_carry, dG, ws,
                 fn, use_blas):
    """Matches numpy_ref.rnn_step_backward over all steps; fills dG (T, B, H) = dL/da."""
    T, B, H = out.shape
    for s in range(T - 1, -1, -1):
        for b in range(B):
            if s >= lengths[b]:
                continue
            t = time_of(s, b, lengths, reverse)
            if has_dh:
                add_row(dh_carry[b], dh[t, b], H)
            rnn_bwd_row(dh_carry[b], out[t, b], relu, dG[t, b], H)
        recurrent_grad(dG, s, lengths, reverse, simple, ws, UT, dh_carry, fn, use_blas)


# ----------------------------------------------------------------------------------- LSTM

@njit(**JIT)
def lstm_state_row(g, c, h, o, tc, H):
    """c' = f*c + i*g; tc = tanh(c'); h' = o*tc, for gate row g = (i, f, g, o)."""
    h1 = uint64(H)
    h2 = h1 + h1
    h3 = h2 + h1
    for j in range(h1):
        cn = g[h1 + j] * c[j] + g[j] * g[h2 + j]
        t = tanh_(cn)
        c[j] = cn
        tc[j] = t
        hn = g[h3 + j] * t
        h[j] = hn
        o[j] = hn


@njit(**JIT)
def lstm_forward(xp, U, bias, h, c, lengths, reverse, out, hprev, gates, cprev, tanhc,
                 training, acc, scratch, fn, use_blas):
    """Matches numpy_ref.lstm_step over all steps. h, c (B, H) hold h0, c0 and end as h_n, c_n.

    Tape per (t, b): gates i, f, g, o (4H), c_prev, tanh(c_new) and h_prev (H each).
    scratch (4H + H,) takes the gates and tanh(c') when no tape is kept.
    """
    T, B, H = out.shape
    for s in range(T):
        mm(fn, use_blas, h, U, acc, 0)
        for b in range(B):
            if s >= lengths[b]:
                continue
            t = time_of(s, b, lengths, reverse)
            if training:
                g, tc = gates[t, b], tanhc[t, b]
                copy_row(cprev[t, b], c[b], H)
                copy_row(hprev[t, b], h[b], H)
            else:
                g, tc = scratch[0], scratch[1]
            x, a = xp[t, b], acc[b]
            gates_sigm(g, x, a, bias, 0, 2 * H)
            gates_tanh(g, x, a, bias, 2 * H, 3 * H)
            gates_sigm(g, x, a, bias, 3 * H, 4 * H)
            lstm_state_row(g, c[b], h[b], out[t, b], tc, H)


@njit(**JIT)
def lstm_bwd_row(g, cp, tc, dhc, dcc, d, H):
    """Gate gradients dL/da (4H) for gates g = (i, f, g, o); updates the carries."""
    one = d.dtype.type(1)
    zero = one - one
    h1 = uint64(H)
    h2 = h1 + h1
    h3 = h2 + h1
    for j in range(h1):
        dhn = dhc[j]
        i = g[j]
        f = g[h1 + j]
        gg = g[h2 + j]
        o = g[h3 + j]
        t = tc[j]
        dc = dcc[j] + dhn * o * (one - t * t)
        d[j] = dc * gg * i * (one - i)
        d[h1 + j] = dc * cp[j] * f * (one - f)
        d[h2 + j] = dc * i * (one - gg * gg)
        d[h3 + j] = dhn * t * o * (one - o)
        dcc[j] = dc * f
        dhc[j] = zero


@njit(**JIT)
def lstm_backward(gates, cprev, tanhc, UT, lengths, reverse, simple, dh, has_dh, dh_carry,
                  dc_carry, dG, ws, fn, use_blas):
    """Matches numpy_ref.lstm_step_backward over all steps; fills dG (T, B, 4H)."""
    T, B, H = cprev.shape
    for s in range(T - 1, -1, -1):
        for b in range(B):
            if s >= lengths[b]:
                continue
            t = time_of(s, b, lengths, reverse)
            if has_dh:
                add_row(dh_carry[b], dh[t, b], H)
            lstm_bwd_row(gates[t, b], cprev[t, b], tanhc[t, b], dh_carry[b], dc_carry[b],
                         dG[t, b], H)
        recurrent_grad(dG, s, lengths, reverse, simple, ws, UT, dh_carry, fn, use_blas)


# ------------------------------------------------------------------------------------ GRU

@njit(**JIT)
def gru_state_row(g, x, a, bias, bn, h, o, H):
    """n = tanh(x_n + b_n + r*(a_n + bn)); h' = (1-z)*n + z*h. Writes n, hn into g[2H:4H]."""
    one = g.dtype.type(1)
    h1 = uint64(H)
    h2 = h1 + h1
    h3 = h2 + h1
    for j in range(h1):
        hn = a[h2 + j] + bn[j]
        n = tanh_(x[h2 + j] + bias[h2 + j] + g[j] * hn)
        z = g[h1 + j]
        hnew = (one - z) * n + z * h[j]
        g[h2 + j] = n
        g[h3 + j] = hn
        h[j] = hnew
        o[j] = hnew


@njit(**JIT)
def gru_forward(xp, U, bias, bn, h, lengths, reverse, out, hprev, gates, training, acc, scratch,
                fn, use_blas):
    """Matches numpy_ref.gru_step (reset after, cell 'gru') over all steps.

    Tape per (t, b): r, z, n and hn = h @ U_n + bn (4H), h_prev (H).
    """
    T, B, H = out.shape
    for s in range(T):
        mm(fn, use_blas, h, U, acc, 0)
        for b in range(B):
            if s >= lengths[b]:
                continue
            t = time_of(s, b, lengths, reverse)
            if training:
                g = gates[t, b]
                copy_row(hprev[t, b], h[b], H)
            else:
                g = scratch
            x, a = xp[t, b], acc[b]
            gates_sigm(g, x, a, bias, 0, 2 * H)
            gru_state_row(g, x, a, bias, bn, h[b], out[t, b], H)


@njit(**JIT)
def gru_bwd_row(g, hp, dhc, dx_row, dhn_row, w, H):
    """Gradients for 'gru' at one row: dx_row = dL/d(xW+b) (3H), dhn_row = dL/d(hU_n+bn),
    w = (da_r, da_z, dhn) for the recurrent product; dhc becomes the direct term z*dh."""
    one = g.dtype.type(1)
    h1 = uint64(H)
    h2 = h1 + h1
    h3 = h2 + h1
    for j in range(h1):
        d = dhc[j]
        r = g[j]
        z = g[h1 + j]
        n = g[h2 + j]
        hn = g[h3 + j]
        dan = d * (one - z) * (one - n * n)
        dar = dan * hn * r * (one - r)
        daz = d * (hp[j] - n) * z * (one - z)
        dhn = dan * r
        dx_row[j] = dar
        dx_row[h1 + j] = daz
        dx_row[h2 + j] = dan
        dhn_row[j] = dhn
        w[j] = dar
        w[h1 + j] = daz
        w[h2 + j] = dhn
        dhc[j] = d * z


@njit(**JIT)
def gru_backward(gates, hprev, UT, lengths, reverse, dh, has_dh, dh_carry, dGx, dhn_all, ws,
                 fn, use_blas):
    """Matches numpy_ref.gru_step_backward for 'gru'. Fills dGx (T, B, 3H) = dL/d(xW + b)
    and dhn_all (T, B, H) = dL/d(h @ U_n + bn)."""
    T, B, H = hprev.shape
    zero = ws.dtype.type(0)
    for s in range(T - 1, -1, -1):
        for b in range(B):
            if s >= lengths[b]:
                fill_row(ws[b], zero, 3 * H)
                continue
            t = time_of(s, b, lengths, reverse)
            if has_dh:
                add_row(dh_carry[b], dh[t, b], H)
            gru_bwd_row(gates[t, b], hprev[t, b], dh_carry[b], dGx[t, b], dhn_all[t, b], ws[b],
                        H)
        mm(fn, use_blas, ws, UT, dh_carry, 1)


@njit(**JIT)
def gru_rb_rh_row(g, h, rh, H):
    h1 = uint64(H)
    h2 = h1 + h1
    h3 = h2 + h1
    for j in range(h1):
        rh[j] = g[j] * h[j]


@njit(**JIT)
def gru_rb_state_row(g, x, a, an, bias, h, o, H):
    """n = tanh(x_n + b_n + an) with an = (r*h) @ U_n; h' = (1-z)*n + z*h; n into g[2H:3H]."""
    one = g.dtype.type(1)
    h1 = uint64(H)
    h2 = h1 + h1
    h3 = h2 + h1
    for j in range(h1):
        n = tanh_(x[h2 + j] + bias[h2 + j] + an[j])
        z = g[h1 + j]
        hnew = (one - z) * n + z * h[j]
        g[h2 + j] = n
        h[j] = hnew
        o[j] = hnew


@njit(**JIT)
def gru_rb_forward(xp, U_rz, U_n, bias, h, lengths, reverse, out, hprev, gates, training, acc,
                   rh, acc_n, scratch, fn, use_blas):
    """Matches numpy_ref.gru_step for 'gru_reset_before': n = tanh(xW_n + b_n + (r*h) @ U_n).

    Tape per (t, b): r, z, n (3H), h_prev (H). acc (B, 2H), rh, acc_n (B, H) and
    scratch (B, 3H) are workspace.
    """
    T, B, H = out.shape
    zero = rh.dtype.type(0)
    for s in range(T):
        mm(fn, use_blas, h, U_rz, acc, 0)
        for b in range(B):
            if s >= lengths[b]:
                fill_row(rh[b], zero, H)
                continue
            t = time_of(s, b, lengths, reverse)
            g = gates[t, b] if training else scratch[b]
            gates_sigm(g, xp[t, b], acc[b], bias, 0, 2 * H)
            gru_rb_rh_row(g, h[b], rh[b], H)
        mm(fn, use_blas, rh, U_n, acc_n, 0)
        for b in range(B):
            if s >= lengths[b]:
                continue
            t = time_of(s, b, lengths, reverse)
            g = gates[t, b] if training else scratch[b]
            if training:
                copy_row(hprev[t, b], h[b], H)
            gru_rb_state_row(g, xp[t, b], acc[b], acc_n[b], bias, h[b], out[t, b], H)


@njit(**JIT)
def gru_rb_bwd_row1(g, hp, dhc, dx_row, wn, H):
    """First half for 'gru_reset_before': da_n, da_z; dhc becomes z*dh."""
    one = g.dtype.type(1)
    h1 = uint64(H)
    h2 = h1 + h1
    h3 = h2 + h1
    for j in range(h1):
        d = dhc[j]
        z = g[h1 + j]
        n = g[h2 + j]
        dan = d * (one - z) * (one - n * n)
        dx_row[h2 + j] = dan
        dx_row[h1 + j] = d * (hp[j] - n) * z * (one - z)
        wn[j] = dan
        dhc[j] = d * z


@njit(**JIT)
def gru_rb_bwd_row2(g, hp, drh, dhc, dx_row, rh_row, w, H):
    """Second half: drh = da_n @ U_n^T is the gradient of r*h; gives da_r and the r*h tape."""
    one = g.dtype.type(1)
    h1 = uint64(H)
    h2 = h1 + h1
    h3 = h2 + h1
    for j in range(h1):
        r = g[j]
        dar = drh[j] * hp[j] * r * (one - r)
        dx_row[j] = dar
        rh_row[j] = r * hp[j]
        dhc[j] += drh[j] * r
        w[j] = dar
        w[h1 + j] = dx_row[h1 + j]


@njit(**JIT)
def gru_rb_backward(gates, hprev, UT_rz, UT_n, lengths, reverse, dh, has_dh, dh_carry, dGx,
                    rh_all, ws_n, ws_rz, drh, fn, use_blas):
    """Matches numpy_ref.gru_step_backward for 'gru_reset_before'. Fills dGx (T, B, 3H) and
    rh_all (T, B, H) = r * h_prev (the input of U_n, for dU)."""
    T, B, H = hprev.shape
    zero = ws_n.dtype.type(0)
    for s in range(T - 1, -1, -1):
        for b in range(B):
            if s >= lengths[b]:
                fill_row(ws_n[b], zero, H)
                continue
            t = time_of(s, b, lengths, reverse)
            if has_dh:
                add_row(dh_carry[b], dh[t, b], H)
            gru_rb_bwd_row1(gates[t, b], hprev[t, b], dh_carry[b], dGx[t, b], ws_n[b], H)
        mm(fn, use_blas, ws_n, UT_n, drh, 0)
        for b in range(B):
            if s >= lengths[b]:
                fill_row(ws_rz[b], zero, 2 * H)
                continue
            t = time_of(s, b, lengths, reverse)
            gru_rb_bwd_row2(gates[t, b], hprev[t, b], drh[b], dh_carry[b], dGx[t, b],
                            rh_all[t, b], ws_rz[b], H)
        mm(fn, use_blas, ws_rz, UT_rz, dh_carry, 1)
