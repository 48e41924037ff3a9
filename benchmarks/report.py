"""One benchmark case as JSON and as a table: lamina, its baselines and the floor, side by side.

>>> from lamina.benchmarks.timing import Timing
>>> c = CaseResult("kernels", "demo", {"n": 3})
>>> _ = c.add("lamina", "lamina kernel", "lamina", Timing(1.0, (1.0,), 10.0, 10.0))
>>> _ = c.add("numpy", "course NumPy", "baseline", Timing(50.0, (50.0,), 10.0, 10.0))
>>> c.to_json()["ratios"]
{'lamina/numpy': 0.02}
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from .timing import Timing, load_average, ratio

Role = Literal["lamina", "baseline", "floor", "extra"]


@dataclasses.dataclass
class Variant:
    label: str  # what was timed, in words
    role: Role  # lamina | baseline | floor | extra (another lamina configuration)
    timing: Timing
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # tokens/s, MFU, extrapolation, ...


@dataclasses.dataclass
class CaseResult:
    section: str  # capture | kernels | scaling
    case: str
    params: dict[str, Any]
    variants: dict[str, Variant] = dataclasses.field(default_factory=dict)
    checks: dict[str, Any] = dataclasses.field(default_factory=dict)  # agreement of lamina with the baselines
    notes: list[str] = dataclasses.field(default_factory=list)
    load_average: dict[str, float | None] = dataclasses.field(default_factory=dict)  # 1-min load, start / end

    def start(self) -> CaseResult:
        """Record the load average before the case runs; returns self."""
        self.load_average["start"] = load_average()
        return self

    def finish(self) -> CaseResult:
        """Record the load average after the case ran; returns self."""
        self.load_average["end"] = load_average()
        return self

    def add(self, name: str, label: str, role: Role, timing: Timing, **extra: Any) -> Variant:
        v = Variant(label, role, timing, dict(extra))
        self.variants[name] = v
        return v

    def seconds(self, name: str) -> float | None:
        v = self.variants.get(name)
        return None if v is None else v.timing.seconds

    @property
    def lamina_name(self) -> str | None:
        return next((n for n, v in self.variants.items() if v.role == "lamina"), None)

    def ratios(self, of: str = "median") -> dict[str, float | None]:
        """lamina seconds / each other variant's seconds (< 1: lamina is faster), of the medians
        (or of the fastest repeats, ``of="min"``)."""
        lam = self.lamina_name
        if lam is None:
            return {}
        pick = (lambda t: t.seconds) if of == "median" else (lambda t: t.min_s)
        mine = pick(self.variants[lam].timing)
        return {f"lamina/{n}": _round(ratio(mine, pick(v.timing))) for n, v in self.variants.items() if n != lam}

    def to_json(self) -> dict[str, Any]:
        lam = self.lamina_name
        floors = [n for n, v in self.variants.items() if v.role == "floor"]
        return {
            "case": self.case,
            "params": self.params,
            "lamina_s": self.seconds(lam) if lam else None,
            "floor_s": self.seconds(floors[0]) if floors else None,
            "baselines_s": {n: v.timing.seconds for n, v in self.variants.items() if v.role in ("baseline", "extra")},
            "ratios": self.ratios(),
            "ratios_of_min": self.ratios(of="min"),
            "variants": {n: {"label": v.label, "role": v.role, **v.timing.to_json(), **v.extra}
                         for n, v in self.variants.items()},
            "checks": self.checks,
            "notes": self.notes,
            "load_average_1min": self.load_average,
        }

    def table(self) -> str:
        """Fixed-width text: one row per variant, lamina first."""
        lam = self.lamina_name
        head = f"{self.section} / {self.case}: " + ", ".join(f"{k}={v}" for k, v in self.params.items())
        if self.load_average:
            head += " (load " + " -> ".join(_fmt(x) for x in self.load_average.values()) + ")"
        rows = [head, (f"  {'variant':<44} {'seconds':>10} {'cpu s':>9} {'lamina/x':>9} {'x/lamina':>9} "
                       f"{'peak RSS MiB':>13} {'n':>2} {'spread':>6}  extra")]
        order = sorted(self.variants, key=lambda n: {"lamina": 0, "floor": 1, "extra": 2, "baseline": 3}[self.variants[n].role])
        for n in order:
            v = self.variants[n]
            r = ratio(self.seconds(lam), v.timing.seconds) if lam else None
            inv = ratio(v.timing.seconds, self.seconds(lam)) if lam else None
            extra = ", ".join(f"{k}={_fmt(x)}" for k, x in v.extra.items())
            cpu = "-" if v.timing.cpu_seconds is None else f"{v.timing.cpu_seconds:.3f}"
            rows.append(f"  {(n + ': ' + v.label)[:44]:<44} {v.timing.seconds:>10.4f} {cpu:>9} {_fmt(r):>9} "
                        f"{_fmt(inv):>9} {v.timing.peak_rss_mib:>13,.0f} {len(v.timing.times):>2} "
                        f"{100 * v.timing.spread:>5.0f}%  {extra}")
        for k, x in self.checks.items():
            rows.append(f"  check {k}: {_fmt(x)}")
        for note in self.notes:
            rows.append(f"  note: {note}")
        return "\n".join(rows)


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x == 0:
            return "0"
        if abs(x) >= 1e4 or abs(x) < 1e-3:
            return f"{x:.3g}"
        return f"{x:.3f}" if abs(x) < 10 else f"{x:,.1f}"
    return str(x)
