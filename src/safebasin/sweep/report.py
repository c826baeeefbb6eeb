"""A sweep's outputs: `results.csv` (one row per point), `summary.csv` and `summary.md`
(mean ± std over seeds) and PNG plots (ASR and utility against distance to θ₀, one colour per
method, error bars over seeds; ASR against utility).

Plots use matplotlib's object API with the Agg canvas, never pyplot, so no global backend is
touched and no display is needed.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

ROW_FIELDS = (
    "experiment", "method", "seed", "lr", "batch_size", "grad_accum", "steps", "l2_to_init",
    "eta", "every", "ema_updates", "matched_to", "target_distance", "scale", "distance", "asr",
    "asr_low", "asr_high", "successes", "n", "degenerate_rate", "asr_excluding_degenerate",
    "utility", "utility_metric", "offline_online_max_abs_diff", "point",
)
# what identifies a group of seeds: every setting but the seed
GROUP_FIELDS = ("experiment", "method", "lr", "batch_size", "grad_accum", "steps", "l2_to_init",
                "eta", "every", "ema_updates", "matched_to")
MEASURES = ("distance", "asr", "utility", "degenerate_rate")
SUMMARY_FIELDS = (*GROUP_FIELDS, "seeds", *(f"{m}_{s}" for m in MEASURES
                                            for s in ("mean", "std")),
                  "scale_mean", "offline_online_max_abs_diff", "utility_metric")
# plotting and table order; every method has one colour in every plot
METHODS = ("theta0", "finetune", "ema", "offline-ema", "task-arithmetic", "l2-per-tensor",
           "l2-reg")
COLOURS = {"theta0": "#6a3d9a", "finetune": "#333333", "ema": "#1f77b4",
           "offline-ema": "#17becf", "task-arithmetic": "#ff7f0e", "l2-per-tensor": "#2ca02c",
           "l2-reg": "#d62728"}
MARKERS = {"theta0": "*", "finetune": "s", "ema": "o", "offline-ema": "x",
           "task-arithmetic": "^", "l2-per-tensor": "v", "l2-reg": "D"}


def write_rows(rows: Sequence[dict], path: Path) -> None:
    """`results.csv`: `ROW_FIELDS` in order, empty cells for fields a method does not have."""
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({k: _cell(row.get(k)) for k in ROW_FIELDS})


_INTS = ("seed", "batch_size", "grad_accum", "steps", "every", "ema_updates", "successes", "n")
_TEXT = ("experiment", "method", "matched_to", "utility_metric", "point")


def read_rows(path: Path) -> list[dict]:
    """The rows of a `results.csv`, typed as the sweep produced them (empty cells: None), so
    that tables and plots can be redrawn without rerunning anything."""
    def typed(key: str, value: str) -> object:
        if value == "":
            return None
        if key in _TEXT:
            return value
        return int(value) if key in _INTS else float(value)

    with Path(path).open(encoding="utf-8", newline="") as f:
        return [{k: typed(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def _cell(v: object) -> object:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(rows: Sequence[dict]) -> list[dict]:
    """One row per group of seeds (same settings but the seed), in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in GROUP_FIELDS), []).append(row)
    out = []
    for key, members in groups.items():
        g = dict(zip(GROUP_FIELDS, key, strict=True))
        g["seeds"] = len(members)
        for m in MEASURES:
            g[f"{m}_mean"], g[f"{m}_std"] = _mean_std([r.get(m) for r in members])
        scales = [r["scale"] for r in members if r.get("scale") is not None]
        g["scale_mean"] = statistics.fmean(scales) if scales else None
        diffs = [r["offline_online_max_abs_diff"] for r in members
                 if r.get("offline_online_max_abs_diff") is not None]
        g["offline_online_max_abs_diff"] = max(diffs) if diffs else None
        g["utility_metric"] = members[0].get("utility_metric")
        out.append(g)
    return out


def write_summary_csv(groups: Sequence[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore",
                           lineterminator="\n")
        w.writeheader()
        for g in groups:
            w.writerow({k: _cell(g.get(k)) for k in SUMMARY_FIELDS})


# ---- markdown tables ------------------------------------------------------------------------


def _pm(mean: float, std: float, *, percent: bool = False, digits: int = 2) -> str:
    if mean is None or math.isnan(mean):
        return ""
    scale, d = (100.0, 1) if percent else (1.0, digits)
    return f"{mean * scale:.{d}f} ± {std * scale:.{d}f}"


def _utility(g: dict) -> str:
    percent = g.get("utility_metric") == "task_accuracy"
    return _pm(g["utility_mean"], g["utility_std"], percent=percent)


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def _num(v: object) -> str:
    return "" if v is None else f"{v:g}"


def _grid_table(groups: Sequence[dict]) -> str:
    header = ["lr", "batch", "accum", "steps", "C (L2)", "seeds", "distance", "ASR %",
              "degenerate %", "utility"]
    lines = [[_num(g["lr"]), _num(g["batch_size"]), _num(g["grad_accum"]), _num(g["steps"]),
              _num(g["l2_to_init"]), g["seeds"], _pm(g["distance_mean"], g["distance_std"]),
              _pm(g["asr_mean"], g["asr_std"], percent=True),
              _pm(g["degenerate_rate_mean"], g["degenerate_rate_std"], percent=True),
              _utility(g)] for g in groups]
    return _table(header, lines)


def _matched_table(groups: Sequence[dict]) -> str:
    """EMA experiments: each EMA and the models built at its distance, plain fine-tuning first."""
    header = ["lr", "η", "every", "updates", "method", "distance", "ASR %", "degenerate %",
              "utility", "λ or C"]
    order = {(g["lr"], g["batch_size"], g["grad_accum"], g["steps"]): i
             for i, g in enumerate(groups)}  # fine-tuning settings in config order

    def key(g: dict) -> tuple:
        eta = (-1.0, 0) if g["eta"] is None else (g["eta"], g["every"])
        return (order[(g["lr"], g["batch_size"], g["grad_accum"], g["steps"])], *eta,
                METHODS.index(g["method"]))

    lines = []
    for g in sorted(groups, key=key):
        knob = (_num(round(g["scale_mean"], 4)) if g["scale_mean"] is not None
                else _num(g["l2_to_init"]) if g["method"] == "l2-reg" else "")
        lines.append([_num(g["lr"]), _num(g["eta"]) if g["eta"] is not None else "1 (plain)",
                      _num(g["every"]) if g["every"] is not None else "",
                      _num(g["ema_updates"]) if g["ema_updates"] is not None
                      else _num(g["steps"]), g["method"],
                      _pm(g["distance_mean"], g["distance_std"]),
                      _pm(g["asr_mean"], g["asr_std"], percent=True),
                      _pm(g["degenerate_rate_mean"], g["degenerate_rate_std"], percent=True),
                      _utility(g), knob])
    return _table(header, lines)


FRONTIER = (0.5, 0.75, 0.9, 0.95)  # utility levels of the equal-utility table


def _setting(g: dict) -> str:
    parts = [f"{g['experiment']}", f"lr {g['lr']:g}"]
    if g["method"] == "finetune":
        parts.append(f"batch {g['batch_size']}×{g['grad_accum']}")
    if g["eta"] is not None:
        ema = f"η {g['eta']:g}, every {g['every']}"
        parts.append(ema if g["method"] in ("ema", "offline-ema") else f"at d of {ema}")
    return ", ".join(parts)


def _frontier_table(groups: Sequence[dict]) -> str | None:
    """The lowest mean ASR each method reaches at mean task accuracy ≥ each level: the
    comparison at equal utility (higher-is-better utilities only)."""
    groups = [g for g in groups if g["method"] != "theta0"
              and g.get("utility_metric") == "task_accuracy"]
    if not groups:
        return None
    methods = [m for m in METHODS if any(g["method"] == m for g in groups)]
    lines = []
    for level in FRONTIER:
        line = [f"≥ {level * 100:.0f}%"]
        for m in methods:
            ok = [g for g in groups if g["method"] == m and g["utility_mean"] >= level]
            best = min(ok, key=lambda g: g["asr_mean"], default=None)
            line.append("—" if best is None else
                        f"{_pm(best['asr_mean'], best['asr_std'], percent=True)} "
                        f"({_setting(best)})")
        lines.append(line)
    return _table(["utility", *methods], lines)


def summary_markdown(groups: Sequence[dict]) -> str:
    """Markdown tables, one per experiment (mean ± std over seeds)."""
    parts = []
    by_experiment: dict[str, list[dict]] = {}
    for g in groups:
        if g["method"] == "theta0":
            parts.append(f"θ₀: ASR {_pm(g['asr_mean'], g['asr_std'], percent=True)} %, "
                         f"degenerate {_pm(g['degenerate_rate_mean'], 0.0, percent=True)} %, "
                         f"utility {_utility(g)}"
                         f"{' %' if g.get('utility_metric') == 'task_accuracy' else ''}\n")
        else:
            by_experiment.setdefault(g["experiment"], []).append(g)
    for name, members in by_experiment.items():
        metric = members[0].get("utility_metric") or "utility"
        unit = " (%)" if metric == "task_accuracy" else ""
        parts.append(f"### {name}\n\nutility: {metric}{unit}; mean ± std over seeds\n")
        if any(g["eta"] is not None for g in members):
            parts.append(_matched_table(members))
            diffs = [g["offline_online_max_abs_diff"] for g in members
                     if g["offline_online_max_abs_diff"] is not None]
            if diffs:
                parts.append(f"\noffline EMA vs online EMA: max |Δθ| = {max(diffs):.3g} over "
                             f"{len(diffs)} settings")
        else:
            parts.append(_grid_table(members))
        parts.append("")
    frontier = _frontier_table(groups)
    if frontier is not None and len(by_experiment) > 0:
        parts.append("### lowest ASR % at equal utility (mean ± std over seeds; setting)\n")
        parts.append(frontier + "\n")
    return "\n".join(parts)


# ---- plots ----------------------------------------------------------------------------------

_LINESTYLES = ("-", "--", ":", "-.")


def _axes(title: str, xlabel: str, ylabel: str, *, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5 * ncols if ncols > 1 else 7.5, 5.0), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols) if ncols > 1 else [fig.add_subplot()]
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=11)
    return fig, axes if ncols > 1 else axes[0]


def _plot_methods(ax, groups: Sequence[dict], x: str, y: str, *, y_percent: bool,
                  x_percent: bool = False, connect: bool = True) -> None:
    """One colour per method; one line per (method, experiment, fine-tuning settings), sorted
    along x, in a line style of its own."""
    ys, xs = (100.0 if y_percent else 1.0), (100.0 if x_percent else 1.0)
    several = len({g["experiment"] for g in groups}) > 1
    for method in METHODS[1:]:
        lines: dict[tuple, list[dict]] = {}
        for g in groups:
            if g["method"] == method:
                key = (g["experiment"], g["lr"], g["batch_size"], g["grad_accum"], g["steps"])
                lines.setdefault(key if method != "finetune" else (), []).append(g)
        for i, members in enumerate(lines.values()):
            members.sort(key=lambda g: g[f"{x}_mean"])
            style = _LINESTYLES[i % len(_LINESTYLES)] if connect and method != "finetune" \
                else "none"
            label = f"{method} ({members[0]['experiment']})" if several and method != \
                "finetune" else method
            ax.errorbar([g[f"{x}_mean"] * xs for g in members],
                        [g[f"{y}_mean"] * ys for g in members],
                        xerr=[g[f"{x}_std"] * xs for g in members],
                        yerr=[g[f"{y}_std"] * ys for g in members],
                        color=COLOURS[method], marker=MARKERS[method], markersize=6,
                        linestyle=style, linewidth=1, alpha=0.85, capsize=2,
                        label=label if i == 0 or several else None,
                        markerfacecolor="none" if method == "offline-ema" else COLOURS[method])


def _theta0_line(ax, groups: Sequence[dict], y: str, percent: bool) -> None:
    for g in groups:
        if g["method"] == "theta0" and not math.isnan(g[f"{y}_mean"]):
            ax.axhline(g[f"{y}_mean"] * (100.0 if percent else 1.0), color=COLOURS["theta0"],
                       linestyle="--", linewidth=1, label="θ₀")


def _save(fig, ax, path: Path) -> Path:
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _utility_axis(groups: Sequence[dict]) -> tuple[str, bool]:
    metric = next((g["utility_metric"] for g in groups if g.get("utility_metric")), "utility")
    percent = metric == "task_accuracy"
    return ("task accuracy (%)" if percent else metric), percent


def _distance_plots(groups: Sequence[dict], out_dir: Path, title: str,
                    suffix: str = "") -> list[Path]:
    u_label, u_percent = _utility_axis(groups)
    moved = [g for g in groups if g["method"] != "theta0" and g["distance_mean"] > 0]
    paths = []
    for y, label, percent, name in (("asr", "keyword ASR (%)", True, "asr_vs_distance"),
                                    ("utility", u_label, u_percent, "utility_vs_distance")):
        fig, ax = _axes(f"{title}: {'ASR' if y == 'asr' else 'utility'} vs distance to θ₀",
                        "global L2 distance to θ₀ (log scale)", label)
        _plot_methods(ax, moved, "distance", y, y_percent=percent)
        _theta0_line(ax, groups, y, percent)
        if moved:
            ax.set_xscale("log")
        paths.append(_save(fig, ax, out_dir / f"{name}{suffix}.png"))
    return paths


def _tradeoff_plot(groups: Sequence[dict], out_dir: Path, title: str) -> Path:
    u_label, u_percent = _utility_axis(groups)
    fig, ax = _axes(f"{title}: safety vs utility", u_label, "keyword ASR (%)")
    _plot_methods(ax, [g for g in groups if g["method"] != "theta0"], "utility", "asr",
                  y_percent=True, x_percent=u_percent, connect=False)
    for g in groups:
        if g["method"] == "theta0":
            ax.plot([g["utility_mean"] * (100.0 if u_percent else 1.0)],
                    [g["asr_mean"] * 100.0], marker="*", markersize=12, linestyle="none",
                    color=COLOURS["theta0"], label="θ₀")
    return _save(fig, ax, out_dir / "asr_vs_utility.png")


def _hyperparameter_plot(groups: Sequence[dict], out_dir: Path, title: str) -> Path | None:
    """ASR and utility against the learning rate, one line per batch × accumulation, for
    plain fine-tuning grids with more than one learning rate."""
    with_ema = {g["experiment"] for g in groups if g["eta"] is not None}
    grid = [g for g in groups if g["method"] == "finetune" and g["lr"] is not None
            and g["experiment"] not in with_ema]
    if len({g["lr"] for g in grid}) < 2:
        return None
    u_label, u_percent = _utility_axis(groups)
    fig, (ax_asr, ax_u) = _axes(f"{title}: plain fine-tuning hyper-parameters",
                                "learning rate (log scale)", "", ncols=2)
    ax_asr.set_ylabel("keyword ASR (%)")
    ax_u.set_ylabel(u_label)
    shapes = sorted({(g["experiment"], g["batch_size"], g["grad_accum"], g["steps"])
                     for g in grid})
    for i, (exp, batch, accum, steps) in enumerate(shapes):
        members = sorted((g for g in grid if (g["experiment"], g["batch_size"], g["grad_accum"],
                                              g["steps"]) == (exp, batch, accum, steps)),
                         key=lambda g: g["lr"])
        lrs = [g["lr"] for g in members]
        label = f"batch {batch} × accum {accum}, {steps} steps" + (
            f" ({exp})" if len({s[0] for s in shapes}) > 1 else "")
        for ax, y, scale in ((ax_asr, "asr", 100.0), (ax_u, "utility",
                                                      100.0 if u_percent else 1.0)):
            ax.errorbar(lrs, [g[f"{y}_mean"] * scale for g in members],
                        yerr=[g[f"{y}_std"] * scale for g in members], marker="os^vD"[i % 5],
                        capsize=2, linewidth=1, label=label)
    for ax in (ax_asr, ax_u):
        ax.set_xscale("log")
    ax_u.legend(fontsize=7, loc="best")
    return _save(fig, ax_asr, out_dir / "hyperparameters.png")


def write_plots(groups: Sequence[dict], out_dir: Path, *, title: str) -> list[Path]:
    """The plots of a sweep in `out_dir`: `asr_vs_distance.png`, `utility_vs_distance.png`
    (all experiments; plus one pair per experiment when several keep EMAs),
    `asr_vs_utility.png`, and `hyperparameters.png` for learning-rate grids."""
    paths = _distance_plots(groups, out_dir, title)
    with_ema = list(dict.fromkeys(g["experiment"] for g in groups if g["eta"] is not None))
    if len(with_ema) > 1:
        theta0 = [g for g in groups if g["method"] == "theta0"]
        for exp in with_ema:
            members = theta0 + [g for g in groups if g["experiment"] == exp]
            paths += _distance_plots(members, out_dir, f"{title}, {exp}", suffix=f"_{exp}")
    paths.append(_tradeoff_plot(groups, out_dir, title))
    hp = _hyperparameter_plot(groups, out_dir, title)
    return paths + ([hp] if hp is not None else [])


def write_report(rows: Sequence[dict], out_dir: Path, *, title: str) -> dict[str, Path]:
    """Every output file of a sweep in `out_dir`; returns them by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = aggregate(rows)
    write_rows(rows, out_dir / "results.csv")
    write_summary_csv(groups, out_dir / "summary.csv")
    (out_dir / "summary.md").write_text(summary_markdown(groups), encoding="utf-8")
    files = {p.name: p for p in write_plots(groups, out_dir, title=title)}
    return {"results.csv": out_dir / "results.csv", "summary.csv": out_dir / "summary.csv",
            "summary.md": out_dir / "summary.md", **files}
