"""fastrnn inside other libraries' worlds; each is re-exported at a flat public path.

* :mod:`.convert` — weights from and to PyTorch, Keras 3 and course-notebook layouts
  (``fastrnn.convert``);
* :mod:`.torch_modules` — drop-in ``torch.nn`` modules and cells (``fastrnn.torch``), on
  :mod:`.torch_function` (the autograd Function, the weight cache) and :mod:`.torch_bridge`
  (tensors as NumPy or CuPy arrays);
* :mod:`.notebook` — the course notebook's functions (``fastrnn.notebook``);
* :mod:`.dask` — sharded batches on dask (``fastrnn.dask``);
* :mod:`.biases` — the two-bias fold that PyTorch's and Keras's layouts share.

Nothing here is imported by ``import fastrnn``: each pulls in its library on first use.
"""
