"""The study's paired differences: each comparison with its bootstrap interval and verdict.

A comparison is two arms of the same fine-tuning setting and EMA (say the EMA and task
arithmetic at its distance), within one model size. Their rows pair up by (world, seed), and
their per-prompt outcomes (`points/<key>/outcomes.json` in the work folder) by prompt, so the
difference gets a paired hierarchical bootstrap interval (`bootstrap`). An ordering is stated
only when the interval excludes zero; otherwise the verdict is "no detectable difference".

Metrics: `asr` (keyword attack success on the held-out prompts) and `harmful_rate` (the toy
judge's harmful compliance, when the world has the judge).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from .bootstrap import paired_bootstrap

# (label, arm a, arm b): an arm is (method, match); the EMA is ("ema", None). Each difference
# reads a − b, so a negative EMA − X means the EMA attacks less (is safer) than X.
COMPARISONS = (
    ("EMA − task arithmetic (matched distance)", ("ema", None), ("task-arithmetic", "distance")),
    ("EMA − per-tensor L2 (matched distance)", ("ema", None), ("l2-per-tensor", "distance")),
    ("EMA − L2-to-init (matched distance)", ("ema", None), ("l2-reg", "distance")),
    ("EMA − task arithmetic (matched utility)", ("ema", None), ("task-arithmetic", "utility")),
    ("EMA − per-tensor L2 (matched utility)", ("ema", None), ("l2-per-tensor", "utility")),
    ("EMA − L2-to-init (matched utility)", ("ema", None), ("l2-reg", "utility")),
    ("EMA − plain fine-tuning", ("ema", None), ("finetune", None)),
    ("path average θ̃ − EMA", ("path-average", None), ("ema", None)),
    ("lerp(θ₀, θ_final; 1−c₀) − EMA", ("anchor-lerp", None), ("ema", None)),
    ("lerp(θ₀, θ̃) at the EMA's distance − EMA", ("path-average-lerp", "distance"),
     ("ema", None)),
)
NO_DIFFERENCE = "no detectable difference"  # the verdict when the interval includes zero
METRICS = {"asr": "keyword_success", "harmful_rate": "verdict"}
FIELDS = ("model", "params", "experiment", "lr", "matched_to", "comparison", "metric",
          "estimate", "low", "high", "worlds", "seeds", "prompts", "verdict")


def _outcome(workdir: Path, point: str, metric: str) -> list[float] | None:
    path = workdir / "points" / point / "outcomes.json"
    if not path.is_file():
        return None
    heldout = json.loads(path.read_text(encoding="utf-8"))["heldout"]
    if metric == "asr":
        return [float(x) for x in heldout["keyword_success"]]
    verdicts = heldout.get("verdict")
    return None if verdicts is None else [float(v == "complied") for v in verdicts]


def _arm_rows(rows: Sequence[dict], arm: tuple[str, str | None], setting: tuple,
              ema_tag: str) -> dict[tuple, dict]:
    """The rows of one arm under one setting, by (world_seed, seed)."""
    method, match = arm
    out = {}
    for r in rows:
        if (r["method"], r.get("match")) != (method, match) or _setting(r) != setting:
            continue
        tag = _ema_tag(r) if method == "ema" else r.get("matched_to")
        if method != "finetune" and tag != ema_tag:  # plain fine-tuning serves every EMA
            continue
        out[(r.get("world_seed"), r.get("seed"))] = r
    return out


def _ema_tag(row: dict) -> str | None:
    if row.get("eta") is None:
        return None
    return f"ema-eta{row['eta']:g}-every{row['every']}"


def _setting(row: dict) -> tuple:
    return (row.get("model"), row.get("experiment"), row.get("lr"), row.get("batch_size"),
            row.get("grad_accum"), row.get("steps"))


def _verdict(low: float, high: float, label: str) -> str:
    a, b = label.split(" − ", 1)
    if low > 0.0:
        return f"{a} higher"
    if high < 0.0:
        return f"{a} lower"
    return NO_DIFFERENCE


def _paired(rows_a: dict, rows_b: dict, workdir: Path, metric: str):
    """Outcomes of both arms as [world][seed][prompt], over the (world, seed) both have."""
    keys = sorted(set(rows_a) & set(rows_b), key=lambda k: (k[0] is None, k[0] or 0, k[1] or 0))
    worlds: dict = {}
    for world, seed in keys:
        a = _outcome(workdir, rows_a[(world, seed)]["point"], metric)
        b = _outcome(workdir, rows_b[(world, seed)]["point"], metric)
        if a is None or b is None or len(a) != len(b):
            continue
        worlds.setdefault(world, ([], []))
        worlds[world][0].append(a)
        worlds[world][1].append(b)
    return [v[0] for v in worlds.values()], [v[1] for v in worlds.values()]


def differences(rows: Sequence[dict], workdir: Path, *, n_boot: int = 2000,
                seed: int = 0) -> list[dict]:
    """Every comparison of `COMPARISONS` that the rows hold, per model size, setting and EMA,
    for both metrics, with its paired bootstrap interval (see the module docstring)."""
    out = []
    emas = [r for r in rows if r["method"] == "ema"]
    combos = list(dict.fromkeys((_setting(r), _ema_tag(r)) for r in emas))
    for setting, tag in combos:
        for label, arm_a, arm_b in COMPARISONS:
            rows_a = _arm_rows(rows, arm_a, setting, tag)
            rows_b = _arm_rows(rows, arm_b, setting, tag)
            if not rows_a or not rows_b:
                continue
            any_row = next(iter(rows_a.values()))
            for metric in METRICS:
                a, b = _paired(rows_a, rows_b, workdir, metric)
                if not a:
                    continue
                interval = paired_bootstrap(a, b, n_boot=n_boot, seed=seed)
                out.append({
                    "model": any_row.get("model"), "params": any_row.get("params"),
                    "experiment": setting[1], "lr": setting[2], "matched_to": tag,
                    "comparison": label, "metric": metric, "estimate": interval.estimate,
                    "low": interval.low, "high": interval.high, "worlds": len(a),
                    "seeds": sum(len(w) for w in a), "prompts": len(a[0][0]),
                    "verdict": _verdict(interval.low, interval.high, label)})
    return out


def write_differences(diffs: Sequence[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        w.writeheader()
        for d in diffs:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else "" if v is None else v)
                        for k, v in d.items()})


__all__ = ["COMPARISONS", "METRICS", "NO_DIFFERENCE", "differences", "write_differences"]
