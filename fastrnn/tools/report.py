"""Output of the command-line tool: tables (rich, or plain text without it), progress,
the benchmark's JSON and CSV files and its plot.

rich and matplotlib are optional: without rich the tables are fixed-width text and the
progress is one line per step on stderr; without matplotlib ``--plot`` is refused up front.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

from .benchmark import BASELINES

__all__ = ["have_rich", "have_matplotlib", "Printer", "Progress", "bench_rows", "BENCH_COLUMNS",
           "write_json", "write_csv", "write_markdown", "plot_speedups", "SCHEMA", "SCHEMA_VERSION", "fmt_num"]

SCHEMA = "fastrnn-bench"
SCHEMA_VERSION = 1
WIDE = 160      # width of tables when stdout is not a terminal (files, pipes, CI logs)


def have_rich() -> bool:
    return importlib.util.find_spec("rich") is not None


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


# ----------------------------------------------------------------------------- printing

class Printer:
    """Prints lines and tables to stdout through rich when it is installed."""

    def __init__(self, use_rich: bool | None = None, file=None):
        self.file = file or sys.stdout
        self.rich = have_rich() if use_rich is None else use_rich
        if self.rich:
            from rich.console import Console
            tty = self.file.isatty() if hasattr(self.file, "isatty") else False
            self.console = Console(file=self.file, width=None if tty else WIDE,
                                   highlight=False, soft_wrap=False)

    def line(self, text: str = "", style: str | None = None) -> None:
        if self.rich:
            self.console.print(text, style=style, markup=False, soft_wrap=True)
        else:
            print(text, file=self.file)

    def table(self, title: str, columns: list[str], rows: list[list[str]],
              sections: list[int] | None = None, right: set[int] | None = None,
              styles: list[str | None] | None = None) -> None:
        """A table: ``rows`` of strings; a separator before each row index in ``sections``;
        columns in ``right`` right-aligned; ``styles`` a rich style per row (ignored in text)."""
        sections = set(sections or [])
        right = right or set()
        if self.rich:
            from rich.table import Table
            t = Table(title=title, title_justify="left", header_style="bold")
            for k, c in enumerate(columns):
                t.add_column(c, justify="right" if k in right else "left", no_wrap=True)
            for k, row in enumerate(rows):
                if k in sections and k > 0:
                    t.add_section()
                t.add_row(*row, style=styles[k] if styles else None)
            self.console.print(t)
            return
        widths = [max([len(c)] + [len(r[k]) for r in rows]) for k, c in enumerate(columns)]

        def fmt(cells):
            return "  ".join(s.rjust(w) if k in right else s.ljust(w)
                             for k, (s, w) in enumerate(zip(cells, widths))).rstrip()
        rule = "-" * len(fmt(["-" * w for w in widths]))
        print(title, file=self.file)
        print(fmt(columns), file=self.file)
        print(rule, file=self.file)
        for k, row in enumerate(rows):
            if k in sections and k > 0:
                print(rule, file=self.file)
            print(fmt(row), file=self.file)


class Progress:
    """A progress bar on stderr (rich), one line per step without rich, nothing if disabled."""

    def __init__(self, total: int, label: str, enabled: bool = True):
        self.total, self.label, self.enabled = total, label, enabled
        self.done = 0
        self._bar = None

    def __enter__(self):
        if self.enabled and have_rich():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TextColumn, TimeElapsedColumn)
            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TimeElapsedColumn(),
                                     console=Console(stderr=True), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total)
        return self

    def step(self, what: str) -> None:
        """Announce the step that starts now."""
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description=f"{self.label}: {what}")
        elif self.enabled:
            print(f"[{self.done + 1}/{self.total}] {what}", file=sys.stderr, flush=True)
        self.done += 1

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
            self._bar.__exit__(*exc)
        return False


# ----------------------------------------------------------------------------- bench table

def fmt_num(v: float | None, digits: int = 3) -> str:
    """A number with ``digits`` significant figures, never in exponent form below 1e6."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v == 0:
        return "0"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(v)))))
    return f"{v:.{decimals}f}"


def bench_columns(baselines: list[str], in_program: bool = False) -> list[str]:
    return (["cell", "mode", "dtype", "size (TxBxIxH)", "backend", "median ms", "IQR ±",
             "GFLOP/s", "% peak"] + (["in-program ×"] if in_program else [])
            + [f"× {b}" for b in baselines])


BENCH_COLUMNS = bench_columns(list(BASELINES))


def bench_rows(records: list, baselines: list[str]):
    """(columns, rows, section starts, styles, notes) of the results table.

    Records come grouped by problem (cell, mode, dtype, size); the cell/mode/dtype and the
    size are printed only where they change. A record that did not run shows its status
    and a note number; ``notes`` are the texts, numbered from 1, each once.
    """
    rows, sections, styles, notes = [], [], [], []
    last_group = last_size = None
    in_program = any(r.in_program_median_s is not None for r in records)
    for r in records:
        group = (r.cell, r.mode, r.dtype)
        size = (group, r.size)
        new_group = group != last_group
        if new_group:
            sections.append(len(rows))
        dims = f"{r.size} ({r.T}x{r.B}x{r.I}x{r.H})" if r.size[0].isalpha() else r.size
        row = [r.cell if new_group else "", r.mode if new_group else "",
               r.dtype if new_group else "", dims if size != last_size else "", r.backend]
        if r.status == "ok":
            iqr = 50.0 * (r.q3_s - r.q1_s) / r.median_s
            row += [fmt_num(r.median_s * 1e3), f"{iqr:.0f}%", fmt_num(r.gflops),
                    "-" if r.pct_peak is None else f"{r.pct_peak:.0f}%"]
            if in_program:
                row.append("-" if r.in_program_ratio is None else f"{r.in_program_ratio:.2f}×")
            row += [f"{r.speedup[b]:.2f}×" if b in r.speedup else "" for b in baselines]
            styles.append("bold" if r.speedup and all(v > 1 for v in r.speedup.values())
                          else None)
        else:
            text = f"{r.backend}: {r.note}"
            if text not in notes:
                notes.append(text)
            row += ([r.status, f"[{notes.index(text) + 1}]", "", ""] + [""] * in_program
                    + [""] * len(baselines))
            styles.append("red" if r.status == "error" else "dim")
        rows.append(row)
        last_group, last_size = group, size
    return bench_columns(baselines, in_program), rows, sections, styles, notes


# ----------------------------------------------------------------------------- files

def _ensure_parent(path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path, *, machine: dict, config: dict, unavailable: dict, records: list,
               created: str, duration_s: float, command: list[str]) -> None:
    """The run as one JSON document (schema in bench/README.md)."""
    doc = {"schema": SCHEMA, "version": SCHEMA_VERSION, "created": created,
           "duration_s": duration_s, "command": command, "machine": machine,
           "config": config, "unavailable": unavailable,
           "records": [r.to_dict() for r in records]}
    _ensure_parent(path).write_text(json.dumps(_finite(doc), indent=1, allow_nan=False) + "\n")


def _finite(v):
    """NaN and inf (a broken runner's error) become null: JSON has no spelling for them."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


CSV_FIELDS = ["cell", "size", "T", "B", "I", "H", "mode", "dtype", "backend", "device", "status",
              "median_s", "q1_s", "q3_s", "min_s", "max_s", "samples", "first_call_s",
              "compile_s", "flops", "gflops", "peak_gflops", "pct_peak", "in_program_median_s",
              "in_program_ratio"] + \
             [f"speedup_vs_{b.replace('-', '_')}" for b in BASELINES] + \
             ["rel_err", "tolerance", "agrees", "note"]


def write_csv(path, records: list) -> None:
    """One row per record; speedups spread into ``speedup_vs_<baseline>`` columns."""
    with _ensure_parent(path).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in records:
            d = r.to_dict()
            d["samples"] = len(d.pop("times_s"))
            d.pop("in_program_times_s")
            for b in BASELINES:
                d[f"speedup_vs_{b.replace('-', '_')}"] = r.speedup.get(b)
            d.pop("speedup")
            w.writerow({k: ("" if v is None else v) for k, v in d.items()})


def write_markdown(path, *, machine: dict, records: list, baselines: list[str], created: str,
                   command: list[str]) -> None:
    """The results table as Markdown, under a short header naming the machine and command."""
    columns, rows, _, _, notes = bench_rows(records, baselines)
    blas = ", ".join(f"{b['library']} {b['version']}"
                     + (f" ({b['architecture']})" if b.get("architecture") else "")
                     for b in machine.get("blas", []) if b.get("library") and b.get("version"))
    versions = ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items() if v)
    peaks = "; ".join(f"{d} {t} {v:.0f} GFLOP/s"
                      for d, per in machine.get("gemm_peak_gflops", {}).items()
                      for t, v in per.items())
    lines = [f"# fastrnn bench, {created}", "",
             f"`{' '.join(command)}`", "",
             f"- CPU: {machine.get('cpu')}, {machine.get('cores')} cores usable, "
             f"{machine.get('threads')} threads; GPU: {machine.get('gpu') or 'none'}",
             f"- BLAS: {blas or 'unknown'}; GEMM peak: {peaks or 'not measured'}",
             f"- versions: {versions}", "",
             "| " + " | ".join(columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    lines += [""] + [f"[{i}] {text}" for i, text in enumerate(notes, 1)]
    _ensure_parent(path).write_text("\n".join(lines).rstrip() + "\n")


def plot_speedups(path, records: list, sizes: list[str]) -> str:
    """Speedup against size per backend, one subplot per (cell, mode); returns the baseline.

    The baseline is the NumPy reference when it was measured, else the first PyTorch peer.
    Dtypes other than the first are drawn dashed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    ok = [r for r in records if r.status == "ok"]
    measured = {r.backend for r in ok}
    baseline = next((b for b in BASELINES if b in measured), None)
    if baseline is None:
        raise ValueError("--plot: nothing to plot against; measure numpy, torch or torch-cuda")
    backends = list(dict.fromkeys(r.backend for r in ok if r.backend != baseline))
    if not backends:
        raise ValueError(f"--plot: only {baseline} was measured; nothing to compare it with")
    cells = list(dict.fromkeys(r.cell for r in ok))       # a row of panels per cell,
    modes = list(dict.fromkeys(r.mode for r in ok))       # a column per mode
    dtypes = list(dict.fromkeys(r.dtype for r in ok))
    fig = Figure(figsize=(4.6 * len(modes), 3.2 * len(cells)), layout="constrained")
    FigureCanvasAgg(fig)
    colors = {b: f"C{k}" for k, b in enumerate(backends)}
    for k, (cell, mode) in enumerate((c, m) for c in cells for m in modes):
        ax = fig.add_subplot(len(cells), len(modes), k + 1)
        for b in backends:
            for d in dtypes:
                pts = [(sizes.index(r.size), r.speedup[baseline]) for r in ok
                       if (r.cell, r.mode, r.dtype, r.backend) == (cell, mode, d, b)
                       and baseline in r.speedup]
                if pts:
                    xs, ys = zip(*sorted(pts))
                    label = b if len(dtypes) == 1 else f"{b} {d}"
                    ax.plot(xs, ys, marker="o", color=colors[b],
                            linestyle="-" if d == dtypes[0] else "--", label=label)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_yscale("log")
        times = FuncFormatter(lambda v, _: f"{v:g}×")
        ax.yaxis.set_major_formatter(times)
        ax.yaxis.set_minor_formatter(times)
        ax.margins(x=0.08)
        ax.set_xticks(range(len(sizes)), sizes, rotation=20)
        ax.set_title(f"{cell} {mode}")
        ax.set_ylabel(f"speedup over {baseline}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, f"no speedup over {baseline} measured", transform=ax.transAxes,
                    ha="center", color="grey")
    fig.savefig(_ensure_parent(path), dpi=110)
    return baseline
