"""The command-line tooling: ``fastrnn bench``, ``fastrnn check``, ``fastrnn info``.

* :mod:`.cli` — argument parsing and the commands (the ``fastrnn`` entry point);
* :mod:`.benchmark` — timing runs of the backends and their peers;
* :mod:`.check` — every backend against the reference on fresh random problems;
* :mod:`.problems` — the random problems that the tests, ``check`` and ``bench`` share;
* :mod:`.report` — tables, JSON, CSV, Markdown and plots of the results;
* :mod:`.sysinfo` — the machine: cores, threads, GEMM peak, PyTorch.
"""
