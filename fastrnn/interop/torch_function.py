"""One recurrent layer and direction as a ``torch.autograd.Function`` running on fastrnn.

Its forward calls :func:`fastrnn.forward` on the tensors' memory (see
:mod:`.torch_bridge`) with weights prepared once per version of the parameters
(:class:`WeightCache`); its backward calls :func:`fastrnn.backward` and maps the gradients
back to torch's layout: ``weight_ih = W.T``, ``weight_hh = U.T`` and the two biases
through the fold of :mod:`.biases`.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .. import api as _api
from ..api import prepare
from .biases import fold_biases, fold_gradients

__all__ = ["Run", "WeightCache", "RecurrentFunction", "CellStepFunction", "cell_step"]


class Run:
    """What one layer-direction call needs besides its tensors: the cell, the backend and
    bridge of the tensors' device, the prepared weights, lengths and direction."""

    __slots__ = ("cell", "backend", "bridge", "weights", "lengths", "reverse", "grad_enabled",
                 "tf32")

    def __init__(self, cell, backend, bridge, weights, lengths, reverse, grad_enabled,
                 tf32=False):
        self.cell, self.backend, self.bridge, self.weights = cell, backend, bridge, weights
        self.lengths, self.reverse, self.grad_enabled = lengths, reverse, grad_enabled
        self.tf32 = tf32


def fastrnn_params(spec, br, w_ih, w_hh, b_ih, b_hh, w_hr=None) -> dict:
    """torch weights -> fastrnn params: W, U (and Wr of lstmp) as transposed views of the
    tensors' memory, the folded biases as new arrays."""
    W, U = br.array(w_ih).T, br.array(w_hh).T
    H = U.shape[1] // spec.num_gates
    biases = fold_biases(spec, None if b_ih is None else br.array(b_ih),
                         None if b_hh is None else br.array(b_hh), H, W.dtype, br.xp)
    params = {"W": W, "U": U, **biases}
    if w_hr is not None:
        params["Wr"] = br.array(w_hr).T
    return params


class WeightCache:
    """The prepared weights of one layer-direction, kept while its parameters stay the same.

    torch bumps a tensor's version counter at every in-place change that autograd can see
    (optimiser steps, ``load_state_dict``, ``copy_`` under ``no_grad``); a parameter
    replaced by another tensor no longer matches the weak reference kept here, and one whose
    ``.data`` was swapped (``module.double()``, ``.to()``) has another storage or dtype: each
    makes the next call prepare again. Inference tensors carry no version counter, so their
    weights are prepared at every call. A change made in place through ``.data`` bumps no
    counter (``torch.autograd.gradcheck`` perturbs its inputs that way), so while gradients
    flow to the weights the cache also compares their values with its snapshot, which
    costs a read of the weights instead of a new packing. Without gradients (inference) it
    trusts the counters; call the module's ``flatten_parameters()`` after changing weights
    in place through ``.data`` there. Copies and pickles of a module start with an empty cache.
    """

    __slots__ = ("_refs", "_versions", "_key", "_values", "weights")

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self._refs, self._versions, self._key, self._values, self.weights = (), (), None, (), None

    def get(self, spec, backend, bridge, tensors, verify_values: bool = False, dtype=None):
        """Prepared weights for ``tensors`` (weight_ih, weight_hh, bias_ih, bias_hh,
        weight_hr; biases and weight_hr may be None) on ``backend``; with ``verify_values``
        also when their values changed without a version bump. ``dtype``: prepare them cast
        to it (torch.autocast's dtype), else in their own."""
        cast = tensors if dtype is None else tuple(
            None if t is None else t.detach().to(dtype) for t in tensors)
        if any(t is not None and t.is_inference() for t in tensors):
            with bridge.scope(tensors[0]):
                return prepare(spec, fastrnn_params(spec, bridge, *cast), backend)
        versions = tuple(None if t is None else (t._version, t.data_ptr(), t.dtype)
                         for t in tensors)
        key = (backend.name, spec.name, dtype)
        same = (self.weights is not None and key == self._key and versions == self._versions
                and all((r is None) == (t is None) and (r is None or r() is t)
                        for r, t in zip(self._refs, tensors)))
        if same and (not verify_values or self._same_values(tensors)):
            return self.weights
        with bridge.scope(tensors[0]):
            self.weights = prepare(spec, fastrnn_params(spec, bridge, *cast), backend)
        self._refs = tuple(None if t is None else weakref.ref(t) for t in tensors)
        self._versions, self._key = versions, key
        self._values = tuple(None if t is None else t.detach().clone() for t in tensors)
        return self.weights

    def _same_values(self, tensors) -> bool:
        """The tensors hold the values they held when prepared (a copy kept for this)."""
        if len(self._values) != len(tensors):
            return False
        return all((t is None and v is None) or (t is not None and v is not None
                                                 and torch.equal(t.detach(), v))
                   for t, v in zip(tensors, self._values))

    def __reduce__(self):
        return WeightCache, ()                 # copies and pickles start empty

    def __deepcopy__(self, memo):
        return WeightCache()


# torch.compile must not trace into the numba and NumPy work: it runs between graphs,
# like any custom autograd Function (dynamo would otherwise follow numba's dispatcher).
# The disabling wrapper costs microseconds a call, so eager calls go around it.
_forward_outside_graph = torch.compiler.disable(_api.forward_unchecked)
_backward_outside_graph = torch.compiler.disable(_api.backward_unchecked)


def _forward(*args, **kwargs):
    if torch.compiler.is_compiling():
        return _forward_outside_graph(*args, **kwargs)
    return _api.forward_unchecked(*args, **kwargs)


def _backward(*args, **kwargs):
    if torch.compiler.is_compiling():
        return _backward_outside_graph(*args, **kwargs)
    return _api.backward_unchecked(*args, **kwargs)


def _graph_kept() -> bool:
    """Whether the running backward keeps the graph (retain_graph=True); True if unknown."""
    probe = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    if probe is None:
        return True
    try:
        return bool(probe())
    except RuntimeError:
        return True


class RecurrentFunction(torch.autograd.Function):
    """One layer, one direction: fastrnn.forward in forward, fastrnn.backward in backward.

    Inputs: run (:class:`Run`), x (T, B, I), h0 (B, P) or None, c0 (B, H) or None (lstm),
    weight_ih (G*H, I), weight_hh (G*H, P), bias_ih and bias_hh (G*H,) or None, weight_hr
    (P, H) or None (lstmp only); P = H without a projection. The weights are passed so that
    autograd computes their gradients and guards their versions, while the computation
    reads ``run.weights``, prepared from them.
    Outputs: h (T, B, P) and h_n (B, P), plus c_n (B, H) for lstm and lstmp.
    """

    @staticmethod
    def forward(ctx, run, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
        spec, br = run.cell, run.bridge
        training = run.grad_enabled and any(ctx.needs_input_grad[1:])
        with br.scope(x):
            xp = br.xp
            res = _forward(spec, run.backend, xp.ascontiguousarray(br.array(x)), run.weights,
                           None if h0 is None else xp.ascontiguousarray(br.array(h0)),
                           None if c0 is None else xp.ascontiguousarray(br.array(c0)),
                           lengths=run.lengths, reverse=run.reverse, training=training,
                           tf32=run.tf32)
            h = br.output_tensor(res.h) if training else br.tensor(res.h)
            outs = [h, br.tensor(res.h_n, avoid=res.h)]
            if spec.has_cell_state:
                outs.append(br.tensor(res.c_n, avoid=res.h))
        ctx.set_materialize_grads(False)
        if training:
            ctx.run, ctx.tape = run, res.tape
            # Saved only so torch's version counters refuse a backward after any of them
            # changed in place (the tape holds x and h themselves, and the weights' snapshot).
            ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, h)
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, dh, dh_n, dc_n=None):
        x = ctx.saved_tensors[0]                    # raises if a saved tensor was modified
        run, tape = ctx.run, ctx.tape
        if tape is None:
            raise RuntimeError("fastrnn.torch: backward through this layer a second time; "
                               "pass retain_graph=True to the first backward to allow it")
        spec, br = run.cell, run.bridge
        need = ctx.needs_input_grad
        with br.scope(x):
            g = _backward(tape, *(None if t is None else br.array(t)
                                  for t in (dh, dh_n, dc_n)))
            if not _graph_kept():
                ctx.tape = None                     # free the saved activations now, like torch
            xp = br.xp
            dx = br.tensor(g.dx) if need[1] else None
            dh0 = br.tensor(g.dh0) if need[2] else None
            dc0 = br.tensor(g.dc0) if need[3] else None
            dw_ih = br.tensor(xp.ascontiguousarray(g.params["W"].T)) if need[4] else None
            dw_hh = br.tensor(xp.ascontiguousarray(g.params["U"].T)) if need[5] else None
            db_ih, db_hh = fold_gradients(spec, g.params["b"], g.params.get("bn"), xp)
            db_ih = br.tensor(db_ih) if need[6] else None
            db_hh = br.tensor(db_hh) if need[7] else None
            dw_hr = br.tensor(xp.ascontiguousarray(g.params["Wr"].T)) if need[8] else None
        return None, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr


_zero_biases: dict = {}


def _zeros(n: int, dtype) -> np.ndarray:
    """A zero bias (n,) kept per size and dtype: the biases ride in torch.addmm instead."""
    key = (n, dtype)
    z = _zero_biases.get(key)
    if z is None:
        z = _zero_biases[key] = np.zeros(n, dtype=dtype)
    return z


def cell_step(step, x, h0, c0, w_ih, w_hh, b_ih, b_hh, training=False):
    """The forward of :class:`CellStepFunction` without autograd (what a cell under
    ``torch.no_grad`` runs): (outputs, the backend's saved step or None, (x, h0, w_ih,
    w_hh) as the backward reads them)."""
    spec, be = step
    B, H = x.shape[0], w_hh.shape[1]
    x, w_ih, w_hh = x.detach(), w_ih.detach(), w_hh.detach()
    h0 = x.new_zeros((B, H)) if h0 is None else h0.detach().contiguous()
    if spec.has_cell_state:
        c0 = x.new_zeros((B, H)) if c0 is None else c0.detach().contiguous()
    # x @ W_ih^T + b_ih and h0 @ W_hh^T + b_hh: torch.nn's two halves of every gate, so
    # the pass adds no bias of its own (gru's n gate reads r * (h0 @ W_hn^T + b_hn)).
    ax = torch.mm(x, w_ih.t()) if b_ih is None else torch.addmm(b_ih.detach(), x, w_ih.t())
    ah = torch.mm(h0, w_hh.t()) if b_hh is None else torch.addmm(b_hh.detach(), h0, w_hh.t())
    ax, ah = ax.numpy(), ah.numpy()
    h, c, saved = be.step_rows_forward(spec, ax, ah, _zeros(ax.shape[1], ax.dtype),
                                       _zeros(H, ax.dtype) if spec.has_recurrent_bias else None,
                                       h0.numpy(), None if c0 is None else c0.numpy(),
                                       training)
    h = torch.from_numpy(h)
    outs = (h,) if c is None else (h, torch.from_numpy(c))
    return outs, saved, (x, h0, w_ih, w_hh)


class CellStepFunction(torch.autograd.Function):
    """One cell step on the CPU: the products by torch, the cell's math by fastrnn.

    A step this small is mostly fixed cost, and its products are single GEMMs: they run
    as ``torch.addmm`` on the parameters as they are now, biases included (torch's GEMMs
    on torch's thread pool, which another pool beside it would fight for the cores), and
    the cell's pointwise math, forward and backward, is one compiled pass of the
    backend's (``step_rows_forward`` / ``step_rows_backward``: the numba backend's row
    functions that its sequence kernels use) instead of torch's dozen small operations
    and autograd nodes. Nothing is prepared or cached, so every change to the parameters
    is seen. The module has made torch.nn's checks; the API's are skipped.

    Inputs: (spec, backend), x (B, I), h0 (B, H) or None, c0 (B, H) or None (lstm),
    weight_ih (G*H, I), weight_hh (G*H, H), bias_ih and bias_hh (G*H,) or None.
    Outputs: h' (B, H), plus c' for lstm.
    """

    @staticmethod
    def forward(ctx, step, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        training = any(ctx.needs_input_grad[1:])
        outs, saved, kept = cell_step(step, x, h0, c0, w_ih, w_hh, b_ih, b_hh, training)
        ctx.set_materialize_grads(False)
        if training:
            ctx.step, ctx.saved = step, saved
            # x, h0 and the weights meet the gradients in backward; h' is saved so that
            # torch's version counter refuses a backward after an in-place change to it.
            ctx.save_for_backward(*kept, outs[0])
        return outs

    @staticmethod
    @once_differentiable
    def backward(ctx, dh, dc=None):
        x, h0, w_ih, w_hh, _ = ctx.saved_tensors      # raises if one was modified in place
        need = ctx.needs_input_grad
        dG, dR, direct, dc0 = ctx.step[1].step_rows_backward(
            ctx.saved, None if dh is None else dh.detach().numpy(),
            None if dc is None else dc.detach().numpy())
        same = dR is dG
        dG = torch.from_numpy(dG)
        dR = dG if same else torch.from_numpy(dR)
        dx = torch.mm(dG, w_ih) if need[1] else None
        dh0 = None
        if need[2]:
            dh0 = torch.mm(dR, w_hh)
            if direct is not None:
                dh0 += torch.from_numpy(direct)
        return (None, dx, dh0,
                torch.from_numpy(dc0) if need[3] and dc0 is not None else None,
                torch.mm(dG.t(), x) if need[4] else None,
                torch.mm(dR.t(), h0) if need[5] else None,
                dG.sum(0) if need[6] else None,           # d(bias_ih): every gate's dG
                dR.sum(0) if need[7] else None)           # d(bias_hh): what met h0's half
