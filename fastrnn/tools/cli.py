"""The ``fastrnn`` command: ``fastrnn bench``, ``fastrnn check``, ``fastrnn info``.

Also runs as ``python -m fastrnn``. :func:`main` takes an argv list and returns the exit
code: 0 success, 1 a failed check / a measurement that failed or disagreed with the
reference, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import secrets
import sys
import time

from .. import __version__

__all__ = ["main", "build_parser", "bench_config"]

# Backends that a working install must be able to run (numba is a hard dependency).
REQUIRED_BACKENDS = ("numba",)

BENCH_EPILOG = """\
sizes (T, B, I, H): tiny (100,1,32,32), small (100,16,64,128), medium (100,64,256,256),
large (50,64,512,512), or explicit TxBxIxH such as 200x8x32x64. List options take
comma-separated values and may be repeated: --sizes tiny,small --sizes 200x8x32x64.

runners: the fastrnn backends (numpy = the reference, numba, cupy) and the PyTorch peers
torch (CPU, oneDNN) and torch-cuda (cuDNN), all on the same inputs and weights.
train = forward + backward with a random dh; infer = forward without a tape (no_grad).

protocol: one warm-up call per runner (its extra time, JIT compilation included, is
reported separately), then rounds: each runner, in rotating order, gets one untimed
settling call and 2 timed calls back to back (thread pools of BLAS and PyTorch disturb
each other otherwise; see fastrnn/benchmark.py). A problem
stops after --repeat rounds, or earlier once --budget seconds are spent and at least
min(3, --repeat) rounds ran. Medians, IQR; speedups are ratios of medians; % peak is
against an n x n GEMM measured at start. The defaults (3 cells x 4 sizes x 2 modes,
float32, repeat 7, budget 2 s) finish in about a minute on a 2-core machine.

exit status: 0 ok; 1 a runner failed or disagreed with the numpy reference; 2 bad arguments.
"""


# ----------------------------------------------------------------------------- arguments

def _list_of(parse_one, what: str):
    """argparse type: comma-separated values, each parsed (and checked) by ``parse_one``."""
    def parse(text: str) -> list:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected at least one {what}, got {text!r}")
        try:
            return [parse_one(s) for s in items]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = what
    return parse


def _choice(choices_fn, what: str):
    def parse_one(s: str) -> str:
        choices = choices_fn()
        key = s.lower()
        if key not in choices:
            raise ValueError(f"unknown {what} {s!r}; expected one of {', '.join(choices)}")
        return key
    return parse_one


def _cell(s: str) -> str:
    from ..core.cells import get_cell
    return get_cell(s).name          # ValueError lists the valid names


def _runner_names() -> list[str]:
    from ..backends import backend_names
    from .benchmark import PEERS
    return backend_names() + list(PEERS)


def _backend_names() -> list[str]:
    from ..backends import backend_names
    return backend_names()


def _positive_int(what: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{what} must be at least 1, got {v}")
        return v
    parse.__name__ = what
    return parse


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"budget must be 0 (no limit) or more seconds, got {text}")
    return v


def _flat(values, default) -> list:
    """Flatten repeated list options, drop duplicates, keep order; ``default`` when absent."""
    if values is None:
        return list(default)
    return list(dict.fromkeys(v for group in values for v in group))


def build_parser() -> argparse.ArgumentParser:
    from .benchmark import DEFAULT_CELLS, DEFAULT_SIZES, DTYPES, MODES, parse_size
    from .sysinfo import usable_cores
    p = argparse.ArgumentParser(prog="fastrnn", description="fastrnn: fast RNN / LSTM / GRU "
                                "forward and backward passes. Benchmarks, checks, machine info.")
    p.add_argument("--version", action="version", version=f"fastrnn {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{bench,check,info}", required=True)

    b = sub.add_parser("bench", help="time the backends and PyTorch on a grid of problems",
                       description="Time fastrnn's backends against each other and against "
                       "PyTorch on the same problems.", epilog=BENCH_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    cells = _list_of(_cell, "cell")
    runners = _list_of(_choice(_runner_names, "backend"), "backend")
    b.add_argument("--cells", type=cells, action="append", metavar="LIST",
                   help=f"cells to time (default: {','.join(DEFAULT_CELLS)})")
    b.add_argument("--sizes", type=_list_of(parse_size, "size"), action="append", metavar="LIST",
                   help=f"size names or TxBxIxH (default: {','.join(DEFAULT_SIZES)})")
    b.add_argument("--backends", type=runners, action="append", metavar="LIST",
                   help="numpy,numba,cupy,torch,torch-cuda (default: all that run here)")
    b.add_argument("--mode", type=_list_of(_choice(lambda: list(MODES), "mode"), "mode"),
                   action="append", metavar="LIST", help="train,infer (default: both)")
    b.add_argument("--dtype", type=_list_of(_choice(lambda: list(DTYPES), "dtype"), "dtype"),
                   action="append", metavar="LIST", help="float32,float64 (default: float32)")
    b.add_argument("--repeat", type=_positive_int("repeat"), default=7, metavar="N",
                   help="most timed rounds per problem (default: 7)")
    b.add_argument("--budget", type=_seconds, default=2.0, metavar="SECONDS",
                   help="stop repeating a problem after this long, once min(3, N) rounds "
                   "ran; 0 = always N rounds (default: 2)")
    b.add_argument("--threads", type=_positive_int("threads"), default=None, metavar="N",
                   help=f"threads for BLAS, PyTorch and Numba (default: all {usable_cores()} "
                   "usable cores)")
    b.add_argument("--seed", type=int, default=0, help="seed of the inputs (default: 0)")
    b.add_argument("--in-program", action="store_true",
                   help="also time each runner right after a NumPy product or a PyTorch "
                        "training step, as a program meets it (column 'in-program ×')")
    b.add_argument("--json", metavar="PATH", help="write every record as JSON (bench/README.md)")
    b.add_argument("--markdown", metavar="PATH", help="write the results table as Markdown")
    b.add_argument("--csv", metavar="PATH", help="write one CSV row per record")
    b.add_argument("--plot", metavar="PATH", help="draw speedup against size (needs matplotlib)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    c = sub.add_parser("check", help="compare every backend with the numpy reference",
                       description="Run every backend that can run here against the NumPy "
                       "reference on fresh random problems: every cell, float32 and float64, "
                       "plain / lengths / reverse / both, forward outputs and all gradients. "
                       "Exit status 1 on any failure.")
    c.add_argument("--backends", type=_list_of(_choice(_backend_names, "backend"), "backend"),
                   action="append", metavar="LIST",
                   help="backends to check (default: every one that runs here, but numpy)")
    c.add_argument("--cells", type=cells, action="append", metavar="LIST",
                   help="cells to check (default: all)")
    c.add_argument("--quick", action="store_true",
                   help="two sizes and three variants instead of three sizes and four")
    c.add_argument("--seed", type=int, default=None,
                   help="seed of the random problems (default: fresh; printed for reruns)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    sub.add_parser("info", help="versions, machine, and which backends run here (and why not)",
                   description="Versions, machine, and which backends run here (and why not).")
    return p


# ----------------------------------------------------------------------------- commands

def _unavailable_requested(parser, option: str, names: list[str], status: dict) -> None:
    """Exit 2 naming the first requested runner that cannot run here, and why."""
    for name in names:
        why = status.get(name)
        if why:
            if not why.startswith(f"backend {name!r}"):
                why = f"{name!r} cannot run here: {why}"
            parser.error(f"argument {option}: {why}")


def _header(out, machine: dict, runners: list[str], status: dict) -> None:
    blas = "; ".join(f"{d['library']} {d['version'] or ''} ({d['architecture'] or '?'}, "
                     f"{d['threads']} threads)" for d in machine["blas"] if d["api"] == "blas")
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items()
                         if k in ("fastrnn", "numpy", "numba", "torch", "cupy") and v)
    out.line(f"CPU: {machine['cpu']}, {machine['cores']} cores usable, "
             f"{machine['threads']} threads   GPU: {machine['gpu'] or 'none'}")
    out.line(f"BLAS: {blas or 'unknown'}")
    out.line(f"versions: {versions}   ({machine['platform']}, Python {machine['python']})")
    out.line(f"runners: {', '.join(runners)}")
    load = machine.get("load_avg")
    if load is not None and load >= 0.5 * machine["cores"]:
        out.line(f"warning: the machine is busy (load average {load:.1f} on {machine['cores']} "
                 f"cores before this run); timings will be noisy, and threaded runners can "
                 f"stall when other processes hold their cores", style="yellow")
    for name, why in status.items():
        if why and name not in runners:
            out.line(f"  not run: {name}: {why}", style="dim")


def bench_config(args, parser):
    """The :class:`~fastrnn.tools.benchmark.BenchConfig` of parsed ``bench`` arguments, and the
    status of every runner; exits 2 (through ``parser.error``) on what parsing cannot see."""
    from . import benchmark as bm
    from . import report
    from .sysinfo import usable_cores

    status = bm.runner_status()
    requested = _flat(args.backends, [n for n, why in status.items() if not why])
    _unavailable_requested(parser, "--backends", requested, status)
    if args.plot and not report.have_matplotlib():
        parser.error("argument --plot: matplotlib is not installed; "
                     "pip install matplotlib (or 'fastrnn[bench]')")
    config = bm.BenchConfig(cells=_flat(args.cells, bm.DEFAULT_CELLS),
                            sizes=_flat(args.sizes, [bm.parse_size(s) for s in bm.DEFAULT_SIZES]),
                            backends=requested, modes=_flat(args.mode, bm.MODES),
                            dtypes=_flat(args.dtype, ["float32"]), repeat=args.repeat,
                            min_rounds=min(3, args.repeat), budget_s=args.budget,
                            threads=args.threads or usable_cores(), seed=args.seed,
                            in_program=args.in_program)
    return config, status


def cmd_bench(args, parser) -> int:
    from . import benchmark as bm
    from . import report
    from .sysinfo import machine_info, set_threads

    config, status = bench_config(args, parser)
    requested = config.backends
    out = report.Printer()
    started = time.perf_counter()
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with set_threads(config.threads) as applied:
        machine = machine_info(config.threads)
        machine["threads_applied"] = applied
        _header(out, machine, requested, status)
        devices = list(dict.fromkeys(bm.runner_device(n) for n in requested))
        peaks = bm.measure_peaks(config.dtypes, devices)
        machine["gemm_peak_gflops"] = {d: {t: peaks[(d, t)] for t in config.dtypes}
                                       for d in devices}
        out.line("GEMM peak: " + ", ".join(f"{d} {t} {v:.0f} GFLOP/s"
                                           for (d, t), v in peaks.items()))
        records = []
        with report.Progress(config.n_problems, "bench", enabled=not args.no_progress) as prog:
            for p in bm.problems(config):
                prog.step(f"{p.cell.name} {p.size.name} {p.mode} {p.dtype}")
                records += bm.measure_problem(p, requested, config, peaks)
    duration = time.perf_counter() - started
    _print_bench(out, records, requested, duration)
    unavailable = {n: why for n, why in status.items() if why}
    if args.json:
        report.write_json(args.json, machine=machine, config=config.to_dict(),
                          unavailable=unavailable, records=records, created=created,
                          duration_s=duration, command=["fastrnn", *args.argv])
        out.line(f"wrote {args.json}")
    if args.csv:
        report.write_csv(args.csv, records)
        out.line(f"wrote {args.csv}")
    if args.markdown:
        report.write_markdown(args.markdown, machine=machine, records=records,
                              baselines=[b for b in bm.BASELINES if b in requested],
                              created=created,
                              command=["fastrnn", *args.argv])
        out.line(f"wrote {args.markdown}")
    rc = 0
    if args.plot:
        try:
            base = report.plot_speedups(args.plot, records, [s.name for s in config.sizes])
            out.line(f"wrote {args.plot} (speedup over {base})")
        except ValueError as exc:
            out.line(f"no plot written: {exc}", style="red")
            rc = 1
    failed = [r for r in records if r.status == "error"]
    if failed:
        out.line(f"{len(failed)} measurement(s) failed:", style="red")
        for r in failed:
            out.line(f"  {r.backend} {r.cell} {r.size} {r.mode} {r.dtype}: {r.note}", style="red")
        rc = 1
    return rc


def _print_bench(out, records, runners, duration) -> None:
    from .benchmark import BASELINES
    from .report import bench_rows
    baselines = [b for b in BASELINES if b in runners]
    columns, rows, sections, styles, notes = bench_rows(records, baselines)
    right = set(range(5, len(columns)))
    out.table("fastrnn bench", columns, rows, sections, right, styles)
    out.line("median ms: of the timed rounds; IQR ±: half the interquartile range, in % of the "
             "median; % peak: of the GEMM peak above; × X: X's median time over this one's")
    for k, note in enumerate(notes, 1):
        out.line(f"[{k}] {note}", style="dim")
    compile_s: dict[str, float] = {}
    for r in records:
        if r.compile_s is not None:
            compile_s[r.backend] = compile_s.get(r.backend, 0.0) + r.compile_s
    out.line("first-call overhead over the steady median (JIT compile, lazy init), summed: "
             + ", ".join(f"{b} {s:.2f} s" for b, s in compile_s.items()))
    out.line(f"{len(records)} measurements in {duration:.1f} s")


def cmd_check(args, parser) -> int:
    from . import report
    from ..backends import available_backends, unavailable_reasons
    from ..core.cells import cell_names
    from .check import count_steps, run_check, summarize
    from ..core.tolerances import TOLERANCES

    reasons = unavailable_reasons()
    if args.backends is None:
        names = [n for n in available_backends() if n != "numpy"]
        missing = {n: reasons[n] for n in REQUIRED_BACKENDS if n in reasons}
    else:
        names = _flat(args.backends, [])
        _unavailable_requested(parser, "--backends", names, reasons)
        missing = {}
    cells = _flat(args.cells, cell_names())
    seed = secrets.randbits(32) if args.seed is None else args.seed
    dtypes = ["float32", "float64"]
    out = report.Printer()
    out.line(f"fastrnn check: {', '.join(names) or 'no backend'} against the numpy reference; "
             f"{'quick, ' if args.quick else ''}seed {seed} (rerun with --seed {seed})")
    total = count_steps(len(names), cells, dtypes, args.quick)
    with report.Progress(total, "check", enabled=not args.no_progress) as prog:
        results = run_check(names, cells, dtypes, args.quick, seed, on_step=prog.step)
    summaries = summarize(results)
    rows, styles = [], []
    for s in summaries:
        f, g = s.worst("forward"), s.worst("grad")
        tol = TOLERANCES[s.dtype]
        rows.append([s.backend, s.cell, s.dtype, str(len(s.results)),
                     f"{f.fwd_err:.1e}", f"{f.fwd_what} ({f.variant})", f"{tol['forward']:.0e}",
                     f"{g.grad_err:.1e}", f"{g.grad_what} ({g.variant})", f"{tol['grad']:.0e}",
                     "pass" if s.passed else f"FAIL ({s.failures})"])
        styles.append(None if s.passed else "bold red")
    if rows:
        out.table("worst relative errors against the numpy reference", ["backend", "cell", "dtype",
                  "cases", "forward", "where", "tol", "gradient", "where", "tol", "result"],
                  rows, sections=[k for k in range(len(rows)) if k == 0 or
                                  summaries[k].backend != summaries[k - 1].backend],
                  right={3, 4, 6, 7, 9}, styles=styles)
    for s in summaries:
        for e in s.errors:
            out.line(f"{s.backend} {s.cell} {s.dtype} {e}", style="red")
    for name, why in reasons.items():
        if name not in names and name != "numpy":
            out.line(f"not checked: {why}", style="red" if name in missing else "dim")
    failed = sum(not s.passed for s in summaries)
    if missing:
        out.line(f"FAIL: required backend(s) {', '.join(missing)} cannot run", style="bold red")
    if failed:
        out.line(f"FAIL: {failed} of {len(summaries)} groups failed", style="bold red")
    if failed or missing:
        return 1
    if not summaries:
        out.line("nothing to check: no backend besides the numpy reference was selected")
        return 0
    out.line(f"all {len(results)} comparisons passed", style="bold green")
    return 0


def cmd_info(args, parser) -> int:
    from .benchmark import runner_status
    from .report import Printer
    from .sysinfo import machine_info

    m = machine_info()
    out = Printer()
    out.line(f"fastrnn {__version__}   Python {m['python']}   {m['platform']}")
    out.line(f"CPU: {m['cpu']}, {m['cores']} cores usable   GPU: {m['gpu'] or 'none'}")
    for d in m["blas"]:
        out.line(f"{d['api']}: {d['library']} {d['version'] or ''} "
                 f"({d['architecture'] or '?'}, {d['threads']} threads)")
    out.line("libraries: " + ", ".join(f"{k} {v or '-'}" for k, v in m["versions"].items()))
    status = runner_status()
    from .benchmark import PEERS
    for title, names in (("backends", [n for n in status if n not in PEERS]),
                         ("benchmark peers", list(PEERS))):
        out.line(f"{title}:")
        for n in names:
            why = status[n]
            out.line(f"  {n:<11} {'available' if why is None else 'unavailable: ' + why}",
                     style=None if why is None else "dim")
    return 0


def main(argv=None) -> int:
    """Run the ``fastrnn`` command with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    parser = build_parser()
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = parser.parse_args(argv)
        args.argv = argv
        command = {"bench": cmd_bench, "check": cmd_check, "info": cmd_info}[args.command]
        return command(args, parser)
    except SystemExit as exc:        # argparse: --help (0) or a bad argument (2)
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
