"""The core: the contract every other layer of fastrnn builds on.

* :mod:`.cells` — the cell math: gate layouts, parameter shapes, init, FLOP counts;
* :mod:`.api` — ``forward``, ``backward``, ``readout``: validation, backend choice, results;
* :mod:`.validation` — argument checks whose errors name the argument;
* :mod:`.tolerances` — how close two computations of the same function must agree;
* :mod:`.arrays` — what kind of array an object is, without importing CuPy or torch;
* :mod:`.config` — every tunable, and the environment variables that set them.

Nothing here imports the layers, the interop modules or the tools built on it.
"""
