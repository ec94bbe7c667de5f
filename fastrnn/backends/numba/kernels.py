"""Numba kernels that run a whole time loop: one call per forward or backward pass.

Every array is C-contiguous and indexed in *time order*: tape entry ``[t, b]`` belongs to
the step at which sequence b read time t (t = s, or lengths[b] - 1 - s with reverse), so
the weight gradients after the loop are single GEMMs over all T*B rows. Each step of the
forward gathers its input rows into ``xs`` and computes ``ax = xs @ W`` and
``acc = h @ U`` with :func:`packed_gemm` (weights packed once per pass), then one fused
pointwise pass. The input projection runs per step rather than as one GEMM before the
loop: the same FLOPs, without a (T, B, G*H) array to write and read back.

The batch is split into chunks of whole MR-row tiles that run the entire time loop on
their own threads (``prange``): sequences are independent, so the threads never wait for
each other. State and work buffers have ``Bp`` rows, the batch padded to a multiple of MR,
and the padded rows stay zero.

Step s of sequence b is valid while s < lengths[b]; invalid steps read nothing, write
nothing (outputs, tape and gradients there keep the zeros they were allocated with) and
leave the state frozen.
"""

from __future__ import annotations

from numba import njit, prange, uint64

from .gemm import packed_gemm
from .math import JIT, sigm, tanh_

PARALLEL = dict(JIT, parallel=True)


@njit(**JIT)
def chunk_rows(ci, chunk, Bp):
    b0 = ci * chunk
    return b0, min(b0 + chunk, Bp)


# Row helpers. one_h, two_h, three_h are H, 2H, 3H: where the gate blocks of a row start.
# Each is one short loop over the H (or G*H) entries of one sequence at one
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
def store_panels(dst, r, src, n):
    """Row r of an (R, n) matrix kept as panels dst (P, R, NR) (see pack_panels) = src[:n]."""
    P, R, nr = dst.shape
    flat = dst.reshape(P * R * nr)
    for p in range(P):
        lo = uint64(p * nr)
        base = uint64((p * R + r) * nr)
        for j in range(uint64(min(nr, n - p * nr))):
            flat[base + j] = src[lo + j]


@njit(**JIT)
def time_of(s, b, lengths, reverse):
    return lengths[b] - 1 - s if reverse else s


@njit(**JIT)
def gather_rows(src, s, lengths, reverse, ws, b0, b1):
    """ws[b] = src[t_b, b] for the rows of b0..b1 valid at step s, 0 for the others."""
    n = ws.shape[1]
    B = lengths.shape[0]
    zero = ws.dtype.type(0)
    for b in range(b0, b1):
        if b < B and s < lengths[b]:
            copy_row(ws[b], src[time_of(s, b, lengths, reverse), b], n)
        else:
            fill_row(ws[b], zero, n)


@njit(**JIT)
def recurrent_grad(dG, s, lengths, reverse, ws, UTp, dh_carry, b0, b1):
    """dh_carry[b] += dG[t_b, b] @ U^T for the rows of b0..b1 valid at step s.

    The caller has zeroed dh_carry on those rows; the others get zero rows of ws, so their
    carry stays as it is.
    """
    gather_rows(dG, s, lengths, reverse, ws, b0, b1)
    packed_gemm(ws, b0, min(b1, lengths.shape[0]), UTp, dh_carry, 1)


# ------------------------------------------------------------------------------ Elman RNN

@njit(**JIT)
def rnn_row(x, a, bias, relu, h, o, H):
    zero = h.dtype.type(0)
    one_h = uint64(H)
    for j in range(one_h):
        v = x[j] + a[j] + bias[j]
        hn = (v if (v > 0 or v != v) else zero) if relu else tanh_(v)
        h[j] = hn
        o[j] = hn


@njit(**JIT)
def rnn_forward_rows(x, Wp, Up, bias, relu, h, lengths, reverse, out, hprev, training, xs, ax, acc,
                     b0, b1):
    """The loop of :func:`rnn_forward` for the batch rows b0..b1 (whole MR-row tiles),
    on the calling thread."""
    T, B, H = out.shape
    for s in range(T):
        gather_rows(x, s, lengths, reverse, xs, b0, b1)
        packed_gemm(xs, b0, min(b1, B), Wp, ax, 0)
        packed_gemm(h, b0, min(b1, B), Up, acc, 0)
        for b in range(b0, min(b1, B)):
            if s >= lengths[b]:
                continue
            t = time_of(s, b, lengths, reverse)
            if training:
                copy_row(hprev[t, b], h[b], H)
            rnn_row(ax[b], acc[b], bias, relu, h[b], out[t, b], H)


@njit(**PARALLEL)
def rnn_forward(x, Wp, Up, bias, relu, h, lengths, reverse, out, hprev, training, xs, ax, acc,
                chunk):
    """Matches reference.rnn_step over all steps. h (Bp, H) holds h0 and ends as h_n."""
    Bp = h.shape[0]
    for ci in prange(-(-Bp // chunk)):
        b0, b1 = chunk_rows(ci, chunk, Bp)
        rnn_forward_rows(x, Wp, Up, bias, relu, h, lengths, reverse, out, hprev, training, xs, ax,
                         acc, b0, b1)


@njit(**JIT)
def rnn_bwd_row(dhc, o, relu, d, H):
    one = d.dtype.type(1)
    zero = one - one
    one_h = uint64(H)
    for j in range(one_h):
        g = dhc[j]
        hn = o[j]
        d[j] = (g if hn > 0 else zero) if relu else g * (one - hn * hn)
        dhc[j] = zero


@njit(**JIT)
def rnn_backward_rows(out, hprev, UTp, relu, lengths, reverse, dh, has_dh, dh_carry, dG, ws, b0,
                      b1):
    """The loop of :func:`rnn_backward` for the batch rows b0..b1 (whole MR-row tiles),
    on the calling thread."""
    T, B, H = out.shape
    for s in range(T - 1, -1, -1):
        for b in range(b0, min(b1, B)):
            if s >= lengths[b]:
                continue
            t = time_of(s, b, lengths, reverse)
            if has_dh:
                add_row(dh_carry[b], dh[t, b], H)
            rnn_bwd_row(dh_carry[b], out[t, b], relu, dG[t, b], H)
        recurrent_grad(dG, s, lengths, reverse, ws, UTp, dh_carry, b0, b1)


@njit(**PARALLEL)
def rnn_backward(out, hprev, UTp, relu, lengths, reverse, dh, has_dh, dh_carry, dG, ws, chunk):
    """Matches reference.rnn_step_backward over all steps; fills dG (T, B, H) = dL/da."""
    Bp = dh_carry.shape[0]
    for ci in prange(-(-Bp // chunk)):
        b0, b1 = chunk_rows(ci, chunk, Bp)
        rnn_backward_rows(out, hprev, UTp, relu, lengths, reverse, dh, has_dh, dh_carry, dG, ws,
                          b0, b1)


# ----------------------------------------------------------------------------------- LSTM

@njit(**JIT)
def lstm_state_row(g, c, h, o, tc, H):
    """c' = f*c + i*g; tc = tanh(c'); h' = o*tc, for gate row g = (i, f, g, o).

    Three loops over two or three arrays each: with all five in one loop LLVM's alias
    checks give up and the loop runs scalar.
    """
    one_h = uint64(H)
    two_h = one_h + one_h
    three_h = two_h + one_h
    for j in range(one_h):
        c[j] = g[one_h + j] * c[j] + g[j] * g[two_h + j]
    for j in range(one_h):
        tc[j] = tanh_(c[j])
    for j in range(one_h):
        h[j] = g[three_h + j] * tc[j]
    copy_row(o, h, H)


@njit(**JIT)
def lstm_row(g, x, a, bias, c, h, o, tc, H):
    """One LSTM step of one row: the gates i, f, g, o of x + a + bias into g, then
    :func:`lstm_state_row` (c, h and the output row o; tc = tanh(c'))."""
    gates_sigm(g, x, a, bias, 0, 2 * H)
    gates_tanh(g, x, a, bias, 2 * H, 3 * H)
    gates_sigm(g, x, a, bias, 3 * H, 4 * H)
    lstm_state_row(g, c, h, o, tc, H)


@njit(**JIT)
def lstm_forward_rows(x, Wp, Up, bias, h, c, lengths, reverse, out, hprev, gates, cprev, tanhc,
                      training, xs, ax, acc, scratch_g, scratch_tc, b0, b1):
    """The loop of :func:`lstm_forward` for the batch rows b0..b1 (whole MR-row tiles),
    on the calling thread."""
    T, B, H = out.shape
    for s in range(T):
        gather_rows(x, s, lengths, reverse, xs, b0, b1)
        packed_gemm(xs, b0, min(b1, B), Wp, ax, 0)
        packed_gemm(h, b0, min(b1, B), Up, acc, 0)
        for b in range(b0, min(b1, B)):
            if s >= lengths[b]:
                continue
            t = time_of(s, b, lengths, reverse)
            if training:
                g, tc = gates[t, b], tanhc[t, b]
                copy_row(cprev[t, b], c[b], H)
                copy_row(hprev[t, b], h[b], H)
            else:
                g, tc = scratch_g[b], scratch_tc[b]
            lstm_row(g, ax[b], acc[b], bias, c[b], h[b], out[t, b], tc, H)


@njit(**PARALLEL)
def lstm_forward(x, Wp, Up, bias, h, c, lengths, reverse, out, hprev, gates, cprev, tanhc,
                 training, xs, ax, acc, scratch_g, scratch_tc, chunk):
    """Matches reference.lstm_step over all steps. h, c (Bp, H) hold h0, c0 and end as h_n, c_n.

    Tape per (t, b): gates i, f, g, o (4H), c_prev, tanh(c_new) and h_prev (H each).
    scratch_g (Bp, 4H) and scratch_tc (Bp, H) take them when no tape is kept.
    """
    Bp = h.shape[0]
    for ci in prange(-(-Bp // chunk)):
        b0, b1 = chunk_rows(ci, chunk, Bp)
        lstm_forward_rows(x, Wp, Up, bias, h, c, lengths, reverse, out, hprev, gates, cprev, tanhc,
                          training, xs, ax, acc, scratch_g, scratch_tc, b0, b1)


@njit(**JIT)
def lstm_bwd_row(g, cp, tc, dhc, dcc, d, H):
    """Gate gradients dL/da (4H) for gates g = (i, f, g, o); updates the carries.

    Split in three loops over at most four arrays each: as one loop over all six LLVM's
    alias checks give up and it runs scalar.
    """
    one = d.dtype.type(1)
    zero = one - one
    one_h = uint64(H)
    two_h = one_h + one_h
    three_h = two_h + one_h
    for j in range(one_h):
        o = g[three_h + j]
        t = tc[j]
        dhn = dhc[j]
        dcc[j] += dhn * o * (one - t * t)            # dcc now holds dL/dc of this step
        d[three_h + j] = dhn * t * o * (one - o)
    for j in range(one_h):
        dhc[j] = zero
    for j in range(one_h):
        dc = dcc[j]
        i = g[j]
        f = g[one_h + j]
        gg = g[two_h + j]
        d[j] = dc * gg * i * (one - i)
        d[one_h + j] = dc * cp[j] * f * (one - f)
        d[two_h + j] = dc * i * (one - gg * gg)
        dcc[j] = dc * f


@njit(**JIT)
def lstm_backward_rows(gates, cprev, tanhc, UTp, lengths, reverse, dh, has_dh, dh_carry, dc_carry,
                       dGp, ws, b0, b1):
    """The loop of :func:`lstm_backward` for the batch rows b0..b1 (whole MR-row tiles),
    on the calling thread."""
    T, B, H = cprev.shape
    zero = ws.dtype.type(0)
    for s in range(T - 1, -1, -1):
        for b in range(b0, min(b1, B)):
            if s >= lengths[b]:
                fill_row(ws[b], zero, 4 * H)
                continue
            t = time_of(s, b, lengths, reverse)
            if has_dh:
                add_row(dh_carry[b], dh[t, b], H)
            lstm_bwd_row(gates[t, b], cprev[t, b], tanhc[t, b], dh_carry[b], dc_carry[b],
                         ws[b], H)
            store_panels(dGp, t * B + b, ws[b], 4 * H)
        packed_gemm(ws, b0, min(b1, B), UTp, dh_carry, 1)


@njit(**PARALLEL)
def lstm_backward(gates, cprev, tanhc, UTp, lengths, reverse, dh, has_dh, dh_carry, dc_carry, dGp,
                  ws, chunk):
    """Matches reference.lstm_step_backward over all steps.

    Fills dGp (P, T*B, NR), the gate gradients dL/da (T*B, 4H) in panels (row t*B + b),
    ready to be the packed operand of dW and dU. ws (Bp, 4H) must start zero.
    """
    Bp = dh_carry.shape[0]
    for ci in prange(-(-Bp // chunk)):
        b0, b1 = chunk_rows(ci, chunk, Bp)
        lstm_backward_rows(gates, cprev, tanhc, UTp, lengths, reverse, dh, has_dh, dh_carry,
                           dc_carry, dGp, ws, b0, b1)


# --------------------------------------------------------------------- LSTM, projected

@njit(**JIT)
def lstmp_forward_rows(x, Wp, Up, Rp, bias, h, c, m, lengths, reverse, out, hprev, gates, cprev,
                       tanhc, training, xs, ax, acc, hr, scratch_g, scratch_tc, b0, b1):
    """The loop of :func:`lstmp_forward` for the batch rows b0..b1 (whole MR-row tiles),
    on the calling thread."""
    T, B, P = out.shape
    H = c.shape[1]
    for s in range(T):
        gather_rows(x, s, lengths, reverse, xs, b0, b1)
        packed_gemm(xs, b0, min(b1, B), Wp, ax, 0)
        packed_gemm(h, b0, min(b1, B), Up, acc, 0)
        for b in range(b0, min(b1, B)):
            if s >= lengths[b]:
                continue
            t = time_of(s, b, lengths, reverse)
            if training:
                g, tc = gates[t, b], tanhc[t, b]
                copy_row(cprev[t, b], c[b], H)
                copy_row(hprev[t, b], h[b], P)
            else:
                g, tc = scratch_g[b], scratch_tc[b]
            lstm_row(g, ax[b], acc[b], bias, c[b], m[b], m[b], tc, H)
        packed_gemm(m, b0, min(b1, B), Rp, hr, 0)       # h' = m @ Wr
        for b in range(b0, min(b1, B)):
            if s < lengths[b]:
                t = time_of(s, b, lengths, reverse)
                copy_row(h[b], hr[b], P)
                copy_row(out[t, b], hr[b], P)


@njit(**PARALLEL)
def lstmp_forward(x, Wp, Up, Rp, bias, h, c, m, lengths, reverse, out, hprev, gates, cprev, tanhc,
                  training, xs, ax, acc, hr, scratch_g, scratch_tc, chunk):
    """Matches reference.lstmp_step over all steps. h (Bp, P), c (Bp, H) hold h0, c0 and
    end as h_n, c_n; m (Bp, H) and hr (Bp, P) are workspace.

    Tape per (t, b): gates i, f, g, o (4H), c_prev, tanh(c_new) (H each) and h_prev (P);
    m = o * tanh(c_new) is recomputed from them by the backward.
    """
    Bp = h.shape[0]
    for ci in prange(-(-Bp // chunk)):
        b0, b1 = chunk_rows(ci, chunk, Bp)
        lstmp_forward_rows(x, Wp, Up, Rp, bias, h, c, m, lengths, reverse, out, hprev, gates,
                           cprev, tanhc, training, xs, ax, acc, hr, scratch_g, scratch_tc, b0, b1)


@njit(**JIT)
def lstmp_backward_rows(gates, cprev, tanhc, UTp, RTp, lengths, reverse, dh, has_dh, dh_carry,
                        dc_carry, dGp, dH, ws, dm, b0, b1):
    """The loop of :func:`lstmp_backward` for the batch rows b0..b1 (whole MR-row tiles),
    on the calling thread."""
    T, B, H = cprev.shape
    P = dH.shape[2]
    zero = ws.dtype.type(0)
    for s in range(T - 1, -1, -1):
        for b in range(b0, min(b1, B)):
            if s < lengths[b] and has_dh:
                add_row(dh_carry[b], dh[time_of(s, b, lengths, reverse), b], P)
        packed_gemm(dh_carry, b0, min(b1, B), RTp, dm, 0)  # dL/dm = dL/dh' @ Wr^T
        for b in range(b0, min(b1, B)):
            if s >= lengths[b]:
                fill_row(ws[b], zero, 4 * H)
                continue
            t = time_of(s, b, lengths, reverse)
            copy_row(dH[t, b], dh_carry[b], P)
            fill_row(dh_carry[b], zero, P)
            lstm_bwd_row(gates[t, b], cprev[t, b], tanhc[t, b], dm[b], dc_carry[b], ws[b], H)
            store_panels(dGp, t * B + b, ws[b], 4 * H)
        packed_gemm(ws, b0, min(b1, B), UTp, dh_carry, 1)


@njit(**PARALLEL)
def lstmp_backward(gates, cprev, tanhc, UTp, RTp, lengths, reverse, dh, has_dh, dh_carry,
                   dc_carry, dGp, dH, ws, dm, chunk):
    """Matches reference.lstmp_step_backward over all steps.

    Fills dGp (P4, T*B, NR), the gate gradients dL/da (T*B, 4H) in panels (row t*B + b),
    and dH (T, B, P), the gradient of every step's output h' (for dWr). dh_carry (Bp, P),
    dc_carry (Bp, H) hold dh_n, dc_n and end as dh0, dc0; ws (Bp, 4H) must start zero;
    dm (Bp, H) is workspace.
    """
    Bp = dh_carry.shape[0]
    for ci in prange(-(-Bp // chunk)):
        b0, b1 = chunk_rows(ci, chunk, Bp)
        lstmp_backward_rows(gates, cprev, tanhc, UTp, RTp, lengths, reverse, dh, has_dh,
                            dh_carry, dc_carry, dGp, dH, ws, dm, b0, b1)


# ------------------------------------------------------------------------------------ GRU

@njit(**JIT)
def gru_state_row(g, x, a, bias, bn, h, o, H):
    """n = tanh(x_n + b_n + r*(a_n + bn)); h' = (1-z)*n + z*h. Writes n, hn into g[2H:4H]."""
    one = g.dtype.type(1)
    one_h = uint64(H)
    two_h = one_h + one_h
    three_h = two_h + one_h
    for j in range(one_h):
        hn = a[two_h + j] + bn[j]
        n = tanh_(x[two_h + j] + bias[two_h + j] + g[j] * hn)
        z = g[one_h + j]
        hnew = (one - z) * n + z * h[j]
        g[two_h + j] = n
        g[three_h + j] = hn
        h[j] = hnew
        o[j] = hnew


@njit(**JIT)
def gru_forward_rows(x, Wp, Up, bias, bn, h, lengths, reverse, out, hprev, gates, training, xs, ax,
                     acc, scratch, b0, b1):
    """The loop of :func:`gru_forward` for the batch rows b0..b1 (whole MR-row tiles),
    on the calling thread."""
    T, B, H = out.shape
    for s in range(T):
        gather_rows(x, s, lengths, reverse, xs, b0, b1)
        packed_gemm(xs, b0, min(b1, B), Wp, ax, 0)
        packed_gemm(h, b0, min(b1, B), Up, acc, 0)
        for b in range(b0, min(b1, B)):
            if s >= lengths[b]:
                continue
            t = time_of(s, b, lengths, reverse)
            if training:
                g = gates[t, b]
                copy_row(hprev[t, b], h[b], H)
            else:
                g = scratch[b]
            xb, a = ax[b], acc[b]
            gates_sigm(g, xb, a, bias, 0, 2 * H)
            gru_state_row(g, xb, a, bias, bn, h[b], out[t, b], H)


@njit(**PARALLEL)
def gru_forward(x, Wp, Up, bias, bn, h, lengths, reverse, out, hprev, gates, training, xs, ax, acc,
                scratch, chunk):
    """Matches reference.gru_step (reset after, cell 'gru') over all steps.

    Tape per (t, b): r, z, n and hn = h @ U_n + bn (4H), h_prev (H). scratch (Bp, 4H).
    """
    Bp = h.shape[0]
    for ci in prange(-(-Bp // chunk)):
        b0, b1 = chunk_rows(ci, chunk, Bp)
        gru_forward_rows(x, Wp, Up, bias, bn, h, lengths, reverse, out, hprev, gates, training, xs,
                         ax, acc, scratch, b0, b1)


@njit(**JIT)
def gru_bwd_row(g, hp, dhc, dx_row, w, H):
    """Gradients for 'gru' at one row: dx_row = dL/d(xW+b) (3H) and w = (da_r, da_z, dhn)
    with dhn = dL/d(hU_n+bn), the rows that meet U; dhc becomes the direct term z*dh.

    Two loops over at most four arrays each, so that both vectorise (see lstm_bwd_row).
    """
    one = g.dtype.type(1)
    one_h = uint64(H)
    two_h = one_h + one_h
    three_h = two_h + one_h
    for j in range(one_h):
        d = dhc[j]
        r = g[j]
        z = g[one_h + j]
        n = g[two_h + j]
        hn = g[three_h + j]
        dan = d * (one - z) * (one - n * n)
        dx_row[j] = dan * hn * r * (one - r)
        dx_row[one_h + j] = d * (hp[j] - n) * z * (one - z)
        dx_row[two_h + j] = dan
        dhc[j] = d * z
    for j in range(one_h):
        w[j] = dx_row[j]
        w[one_h + j] = dx_row[one_h + j]
        w[two_h + j] = dx_row[two_h + j] * g[j]


@njit(**JIT)
def gru_backward_rows(gates, hprev, UTp, lengths, reverse, dh, has_dh, dh_carry, dGxp, wp, ws,
                      scratch, b0, b1):
    """The loop of :func:`gru_backward` for the batch rows b0..b1 (whole MR-row tiles),
    on the calling thread."""
    T, B, H = hprev.shape
    zero = ws.dtype.type(0)
    for s in range(T - 1, -1, -1):
        for b in range(b0, min(b1, B)):
            if s >= lengths[b]:
                fill_row(ws[b], zero, 3 * H)
                continue
            t = time_of(s, b, lengths, reverse)
            if has_dh:
                add_row(dh_carry[b], dh[t, b], H)
            gru_bwd_row(gates[t, b], hprev[t, b], dh_carry[b], scratch[b], ws[b], H)
            store_panels(dGxp, t * B + b, scratch[b], 3 * H)
            store_panels(wp, t * B + b, ws[b], 3 * H)
        packed_gemm(ws, b0, min(b1, B), UTp, dh_carry, 1)


@njit(**PARALLEL)
def gru_backward(gates, hprev, UTp, lengths, reverse, dh, has_dh, dh_carry, dGxp, wp, ws, scratch,
                 chunk):
    """Matches reference.gru_step_backward for 'gru'.

    Fills, as panels (P, T*B, NR) with row t*B + b: dGxp = dL/d(xW + b) (3H columns) and
    wp = (da_r, da_z, dL/d(h @ U_n + bn)), the gradient that meets U. ws (Bp, 3H) must
    start zero; scratch (Bp, 3H) is workspace.
    """
    Bp = dh_carry.shape[0]
    for ci in prange(-(-Bp // chunk)):
        b0, b1 = chunk_rows(ci, chunk, Bp)
        gru_backward_rows(gates, hprev, UTp, lengths, reverse, dh, has_dh, dh_carry, dGxp, wp, ws,
                          scratch, b0, b1)


@njit(**JIT)
def grurb_rh_row(g, h, rh, H):
    one_h = uint64(H)
    for j in range(one_h):
        rh[j] = g[j] * h[j]


@njit(**JIT)
def grurb_state_row(g, x, a, an, bias, h, o, H):
    """n = tanh(x_n + b_n + an) with an = (r*h) @ U_n; h' = (1-z)*n + z*h; n into g[2H:3H]."""
    one = g.dtype.type(1)
    one_h = uint64(H)
    two_h = one_h + one_h
    for j in range(one_h):
        n = tanh_(x[two_h + j] + bias[two_h + j] + an[j])
        z = g[one_h + j]
        hnew = (one - z) * n + z * h[j]
        g[two_h + j] = n
        h[j] = hnew
        o[j] = hnew


@njit(**JIT)
def grurb_forward_rows(x, Wp, U_rz, U_n, bias, h, lengths, reverse, out, hprev, gates, training,
                       xs, ax, acc, rh, acc_n, scratch, b0, b1):
    """The loop of :func:`grurb_forward` for the batch rows b0..b1 (whole MR-row tiles),
    on the calling thread."""
    T, B, H = out.shape
    zero = rh.dtype.type(0)
    for s in range(T):
        gather_rows(x, s, lengths, reverse, xs, b0, b1)
        packed_gemm(xs, b0, min(b1, B), Wp, ax, 0)
        packed_gemm(h, b0, min(b1, B), U_rz, acc, 0)
        for b in range(b0, min(b1, B)):
            if s >= lengths[b]:
                fill_row(rh[b], zero, H)
                continue
            t = time_of(s, b, lengths, reverse)
            g = gates[t, b] if training else scratch[b]
            gates_sigm(g, ax[b], acc[b], bias, 0, 2 * H)
            grurb_rh_row(g, h[b], rh[b], H)
        packed_gemm(rh, b0, min(b1, B), U_n, acc_n, 0)
        for b in range(b0, min(b1, B)):
            if s >= lengths[b]:
                continue
            t = time_of(s, b, lengths, reverse)
            g = gates[t, b] if training else scratch[b]
            if training:
                copy_row(hprev[t, b], h[b], H)
            grurb_state_row(g, ax[b], acc[b], acc_n[b], bias, h[b], out[t, b], H)


@njit(**PARALLEL)
def grurb_forward(x, Wp, U_rz, U_n, bias, h, lengths, reverse, out, hprev, gates, training, xs, ax,
                  acc, rh, acc_n, scratch, chunk):
    """Matches reference.gru_step for 'gru_reset_before': n = tanh(xW_n + b_n + (r*h) @ U_n).

    Tape per (t, b): r, z, n (3H), h_prev (H). U_rz, U_n packed; acc, rh, acc_n and
    scratch (Bp, 3H) are workspace; rh must start zero.
    """
    Bp = h.shape[0]
    for ci in prange(-(-Bp // chunk)):
        b0, b1 = chunk_rows(ci, chunk, Bp)
        grurb_forward_rows(x, Wp, U_rz, U_n, bias, h, lengths, reverse, out, hprev, gates,
                           training, xs, ax, acc, rh, acc_n, scratch, b0, b1)


@njit(**JIT)
def grurb_bwd_row1(g, hp, dhc, dx_row, wn, H):
    """First half for 'gru_reset_before': da_n, da_z; dhc becomes z*dh."""
    one = g.dtype.type(1)
    one_h = uint64(H)
    two_h = one_h + one_h
    for j in range(one_h):
        d = dhc[j]
        z = g[one_h + j]
        n = g[two_h + j]
        dan = d * (one - z) * (one - n * n)
        dx_row[two_h + j] = dan
        dx_row[one_h + j] = d * (hp[j] - n) * z * (one - z)
        wn[j] = dan
        dhc[j] = d * z


@njit(**JIT)
def grurb_bwd_row2(g, hp, drh, dhc, dx_row, rh_row, w, H):
    """Second half: drh = da_n @ U_n^T is the gradient of r*h; gives da_r and the r*h tape."""
    one = g.dtype.type(1)
    one_h = uint64(H)
    for j in range(one_h):
        r = g[j]
        dar = drh[j] * hp[j] * r * (one - r)
        dx_row[j] = dar
        rh_row[j] = r * hp[j]
        dhc[j] += drh[j] * r
        w[j] = dar
        w[one_h + j] = dx_row[one_h + j]


@njit(**JIT)
def grurb_backward_rows(gates, hprev, UT_rz, UT_n, lengths, reverse, dh, has_dh, dh_carry, dGx,
                        rh_all, ws_n, ws_rz, drh, b0, b1):
    """The loop of :func:`grurb_backward` for the batch rows b0..b1 (whole MR-row tiles),
    on the calling thread."""
    T, B, H = hprev.shape
    zero = ws_n.dtype.type(0)
    for s in range(T - 1, -1, -1):
        for b in range(b0, min(b1, B)):
            if s >= lengths[b]:
                fill_row(ws_n[b], zero, H)
                continue
            t = time_of(s, b, lengths, reverse)
            if has_dh:
                add_row(dh_carry[b], dh[t, b], H)
            grurb_bwd_row1(gates[t, b], hprev[t, b], dh_carry[b], dGx[t, b], ws_n[b], H)
        packed_gemm(ws_n, b0, min(b1, B), UT_n, drh, 0)
        for b in range(b0, min(b1, B)):
            if s >= lengths[b]:
                fill_row(ws_rz[b], zero, 2 * H)
                continue
            t = time_of(s, b, lengths, reverse)
            grurb_bwd_row2(gates[t, b], hprev[t, b], drh[b], dh_carry[b], dGx[t, b],
                            rh_all[t, b], ws_rz[b], H)
        packed_gemm(ws_rz, b0, min(b1, B), UT_rz, dh_carry, 1)


@njit(**PARALLEL)
def grurb_backward(gates, hprev, UT_rz, UT_n, lengths, reverse, dh, has_dh, dh_carry, dGx, rh_all,
                   ws_n, ws_rz, drh, chunk):
    """Matches reference.gru_step_backward for 'gru_reset_before'. Fills dGx (T, B, 3H) and
    rh_all (T, B, H) = r * h_prev (the input of U_n, for dU). ws_n, ws_rz must start zero."""
    Bp = dh_carry.shape[0]
    for ci in prange(-(-Bp // chunk)):
        b0, b1 = chunk_rows(ci, chunk, Bp)
        grurb_backward_rows(gates, hprev, UT_rz, UT_n, lengths, reverse, dh, has_dh, dh_carry, dGx,
                            rh_all, ws_n, ws_rz, drh, b0, b1)
