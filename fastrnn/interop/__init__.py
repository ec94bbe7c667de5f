"""fastrnn inside other libraries' worlds; each is re-exported at a flat public path.

* :mod:`.convert` — weights from and to PyTorch, Keras 3 and course-notebook layouts
  (``fastrnn.convert``);
* :mod:`.torch_modules` — drop-in ``torch.nn`` modules (``fastrnn.torch``);
* :mod:`.biases` — the two-bias fold that PyTorch's and Keras's layouts share.

Nothing here is imported by ``import fastrnn``: each pulls in its library on first use.
"""
