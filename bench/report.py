"""Figures of a benchmark run: each measured value beside its target, a printed table, the JSON record and
the PNG plots (matplotlib, Agg backend) in bench/results/.

A benchmark module returns `Figure`s (one printed row each) and `Series` (the samples behind a latency
distribution or a scaling curve, summarised in the JSON and drawn in the plots). Every value comes from a
measurement of the run; a figure without a target is shown for information.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.common import pct


@dataclass
class Figure:
    section: str  # "lease", "dispatch", "idle gap", "scaling", "read path", "memory"
    name: str
    value: float
    unit: str
    db: str  # "postgres", "sqlite" or "-" (no database involved)
    op: str = ""  # "<=" or ">=" against `target`; empty: no target
    target: float | None = None
    note: str = ""

    @property
    def ok(self) -> bool | None:
        if not self.op or self.target is None:
            return None
        if isinstance(self.value, float) and math.isnan(self.value):
            return False
        return self.value <= self.target if self.op == "<=" else self.value >= self.target

    def verdict(self) -> str:
        return {None: "", True: "PASS", False: "MISS"}[self.ok]

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    @classmethod
    def from_dict(cls, data: dict) -> Figure:
        data = {k: v for k, v in data.items() if k != "ok"}
        if data.get("value") is None:
            data["value"] = float("nan")
        return cls(**data)


@dataclass
class Series:
    """Samples for a plot: latencies in seconds (`kind="latency"`), or a curve of (x, y) points
    (`kind="curve"`) drawn in the panel of its section and y label."""

    section: str
    name: str
    kind: str
    values: list[float] = field(default_factory=list)
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    db: str = "-"
    xlabel: str = ""
    ylabel: str = ""

    def summary(self) -> dict:
        if self.kind != "latency":
            return {"x": self.x, "y": self.y}
        v = self.values
        return {
            "n": len(v),
            "p50_ms": _ms(pct(v, 50)),
            "p90_ms": _ms(pct(v, 90)),
            "p99_ms": _ms(pct(v, 99)),
            "max_ms": _ms(max(v)) if v else None,
            "mean_ms": _ms(statistics.fmean(v)) if v else None,
        }

    def as_dict(self, with_values: bool = True) -> dict:
        data = {k: v for k, v in asdict(self).items() if k not in ("values", "x", "y")}
        data["summary"] = self.summary()
        if with_values:
            data |= {"values": self.values, "x": self.x, "y": self.y}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Series:
        return cls(**{k: v for k, v in data.items() if k != "summary"})


def _ms(seconds: float) -> float | None:
    return None if seconds is None or math.isnan(seconds) else round(seconds * 1000, 2)


def format_value(value: float, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit in ("ms", "MB", "%"):
        return f"{value:.1f} {unit}"
    if unit == "cycles/s" or unit == "tasks/s":
        return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    if float(value).is_integer():
        return f"{int(value)} {unit}".rstrip()
    return f"{value:.2f} {unit}".rstrip()


def table(figures: list[Figure]) -> str:
    rows = [("section", "measure", "measured", "target", "", "db")]
    for f in figures:
        target = f"{f.op} {format_value(f.target, f.unit)}" if f.op else ""
        rows.append((f.section, f.name, format_value(f.value, f.unit), target, f.verdict(), f.db))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for index, r in enumerate(rows):
        cells = [
            r[0].ljust(widths[0]),
            r[1].ljust(widths[1]),
            r[2].rjust(widths[2]),
            r[3].ljust(widths[3]),
            r[4].ljust(widths[4]),
            r[5],
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"  {f.section} / {f.name}: {f.note}" for f in figures if f.note]
    if notes:
        lines += ["", "notes:", *notes]
    passed = sum(1 for f in figures if f.ok is True)
    missed = [f for f in figures if f.ok is False]
    lines += ["", f"{passed} PASS, {len(missed)} MISS of {passed + len(missed)} targets"]
    return "\n".join(lines)


def write_json(path: Path, meta: dict, figures: list[Figure], series: list[Series]) -> None:
    """The run's record: metadata, every figure, and per series its summary (raw samples of small ones)."""
    record = {
        **meta,
        "figures": [f.as_dict() for f in figures],
        "series": [s.as_dict(with_values=len(s.values) <= 2000) for s in series],
    }
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")


def plot(stem: Path, series: list[Series], title: str) -> list[Path]:
    """`<stem>-latency.png` (one panel per section, empirical CDFs on a log axis) and `<stem>-scaling.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    latency = [s for s in series if s.kind == "latency" and s.values]
    sections = list(dict.fromkeys(s.section for s in latency))
    if sections:
        cols = 2 if len(sections) > 1 else 1
        rows = math.ceil(len(sections) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.6 * rows), squeeze=False)
        for ax, section in zip(axes.flat, sections, strict=False):
            for s in (s for s in latency if s.section == section):
                values = sorted(max(v * 1000, 0.01) for v in s.values)
                ys = [(i + 1) / len(values) for i in range(len(values))]
                ax.step(values, ys, where="post", label=f"{s.name} (n={len(values)}, {s.db})")
            ax.set_xscale("log")
            ax.set_xlabel("ms (log scale; values <= 0, e.g. a prompt that beat the submit's answer, at 0.01)")
            ax.set_ylabel("fraction ≤ x")
            ax.set_title(section)
            ax.grid(True, which="both", alpha=0.3)
            ax.axhline(0.99, color="grey", linewidth=0.6, linestyle=":")
            ax.legend(fontsize=7, loc="lower right")
        for ax in list(axes.flat)[len(sections) :]:
            ax.set_visible(False)
        fig.suptitle(f"Latency distributions — {title}", fontsize=10)
        fig.tight_layout()
        path = Path(f"{stem}-latency.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)

    curves = [s for s in series if s.kind == "curve" and s.x]
    panels = list(dict.fromkeys((s.section, s.ylabel) for s in curves))
    if panels:
        cols = min(3, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.8 * rows), squeeze=False)
        for ax, (section, ylabel) in zip(axes.flat, panels, strict=False):
            for s in (s for s in curves if (s.section, s.ylabel) == (section, ylabel)):
                if s.name.startswith("ideal"):
                    ax.plot(s.x, s.y, linestyle="--", color="grey", linewidth=0.8, label=s.name)
                else:
                    ax.plot(s.x, s.y, marker="o", label=f"{s.name} ({s.db})")
            if "%" in ylabel:
                ax.axhline(95, color="red", linewidth=0.8, linestyle=":", label="target 95 %")
                ax.set_ylim(0, 105)
            ax.set_xlabel(next(s.xlabel for s in curves if (s.section, s.ylabel) == (section, ylabel)))
            ax.set_ylabel(ylabel)
            ax.set_title(section)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        fig.suptitle(f"Scaling and growth — {title}", fontsize=10)
        fig.tight_layout()
        path = Path(f"{stem}-scaling.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
