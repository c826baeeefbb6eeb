"""A sweep's outputs: `results.csv` (one row per point), `summary.csv` and `summary.md`
(mean ± std over worlds and seeds, per model size; the paired differences and the keyword-vs-
judge confusion come from `tables`), `differences.csv`, and PNG plots (ASR and utility against
distance to θ₀, one colour per method, error bars over seeds; ASR against utility).

Plots use matplotlib's object API with the Agg canvas, never pyplot, so no global backend is
touched and no display is needed.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from .rows import ROW_FIELDS, Row, csv_cell

_VERDICTS = ("refused", "complied", "off_target", "degenerate")
# what identifies a group of seeds (and worlds): every setting but the seeds
GROUP_FIELDS = ("model", "experiment", "method", "match", "lr", "batch_size", "grad_accum",
                "steps", "l2_to_init", "eta", "every", "ema_updates", "matched_to")
MEASURES = ("distance", "asr", "harmful_rate", "asr_train_frames", "utility", "degenerate_rate")
SUMMARY_FIELDS = ("params", *GROUP_FIELDS, "seeds",
                  *(f"{m}_{s}" for m in MEASURES for s in ("mean", "std")),
                  "l2_to_init_range", "scale_mean", "radius_scale_mean", "matched_count",
                  "offline_online_max_abs_diff", "utility_metric",
                  *(f"judge_{v}" for v in _VERDICTS),
                  *(f"keyword_{k}_{v}" for k in ("success", "refusal") for v in _VERDICTS))
# plotting and table order; every method has one colour in every plot
METHODS = ("theta0", "finetune", "ema", "offline-ema", "path-average", "path-average-lerp",
           "anchor-lerp", "task-arithmetic", "l2-per-tensor", "l2-reg")
COLOURS = {"theta0": "#6a3d9a", "finetune": "#333333", "ema": "#1f77b4",
           "offline-ema": "#17becf", "task-arithmetic": "#ff7f0e", "l2-per-tensor": "#2ca02c",
           "l2-reg": "#d62728", "path-average": "#8c564b", "path-average-lerp": "#bcbd22",
           "anchor-lerp": "#e377c2"}
MARKERS = {"theta0": "*", "finetune": "s", "ema": "o", "offline-ema": "x",
           "task-arithmetic": "^", "l2-per-tensor": "v", "l2-reg": "D", "path-average": "P",
           "path-average-lerp": "+", "anchor-lerp": "<"}


def write_rows(rows: Sequence[dict | Row], path: Path) -> None:
    """`results.csv`: the `Row` columns in order, empty cells for fields a method does not
    have."""
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS, lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow((row if isinstance(row, Row) else Row.from_dict(row)).cells())


def read_rows(path: Path) -> list[dict]:
    """The rows of a `results.csv`, typed as the sweep produced them (`Row.from_cells`; empty
    cells: None), so that tables and plots can be redrawn without rerunning anything."""
    with Path(path).open(encoding="utf-8", newline="") as f:
        return [Row.from_cells(row).to_dict() for row in csv.DictReader(f)]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(rows: Sequence[dict]) -> list[dict]:
    """One row per group of seeds (same settings but the seed), in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = {k: row.get(k) for k in GROUP_FIELDS}
        if row.get("matched_to") is not None:  # a searched C differs by world: one group
            key["l2_to_init"] = None
        groups.setdefault(tuple(key.values()), []).append(row)
    out = []
    for key, members in groups.items():
        g = dict(zip(GROUP_FIELDS, key, strict=True))
        g["params"] = members[0].get("params")
        g["seeds"] = len(members)
        for m in MEASURES:
            g[f"{m}_mean"], g[f"{m}_std"] = _mean_std([r.get(m) for r in members])
        cs = sorted({r["l2_to_init"] for r in members if r.get("l2_to_init")})
        g["l2_to_init_range"] = (None if not cs else f"{cs[0]:.4g}" if len(cs) == 1
                                 else f"{cs[0]:.4g}–{cs[-1]:.4g}")
        for knob in ("scale", "radius_scale"):
            values = [r[knob] for r in members if r.get(knob) is not None]
            g[f"{knob}_mean"] = statistics.fmean(values) if values else None
        matched = [r["matched"] for r in members if r.get("matched") is not None]
        g["matched_count"] = f"{sum(map(bool, matched))}/{len(matched)}" if matched else None
        diffs = [r["offline_online_max_abs_diff"] for r in members
                 if r.get("offline_online_max_abs_diff") is not None]
        g["offline_online_max_abs_diff"] = max(diffs) if diffs else None
        g["utility_metric"] = members[0].get("utility_metric")
        for name in SUMMARY_FIELDS:  # judge counts and the confusion: summed over members
            if name.startswith(("judge_", "keyword_")):
                counts = [r[name] for r in members if r.get(name) is not None]
                g[name] = sum(counts) if counts else None
        out.append(g)
    return out


def write_summary_csv(groups: Sequence[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore",
                           lineterminator="\n")
        w.writeheader()
        for g in groups:
            w.writerow({k: csv_cell(g.get(k)) for k in SUMMARY_FIELDS})


# ---- markdown tables ------------------------------------------------------------------------


def _pm(mean: float, std: float, *, percent: bool = False, digits: int = 2,
        n: int | None = None) -> str:
    """"mean ± std"; the mean alone for one seed (`n` 1), where a spread of 0 says nothing."""
    if mean is None or math.isnan(mean):
        return ""
    scale, d = (100.0, 1) if percent else (1.0, digits)
    if n == 1:
        return f"{mean * scale:.{d}f}"
    return f"{mean * scale:.{d}f} ± {std * scale:.{d}f}"


def _stat(g: dict, name: str, *, percent: bool = False) -> str:
    """A group's `name` as mean ± std over its seeds (the mean alone for one seed)."""
    return _pm(g[f"{name}_mean"], g[f"{name}_std"], percent=percent, n=g["seeds"])


def _utility(g: dict) -> str:
    percent = g.get("utility_metric") == "task_accuracy"
    return _stat(g, "utility", percent=percent)


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
              _num(g["l2_to_init"]), g["seeds"], _stat(g, "distance"),
              _stat(g, "asr", percent=True),
              _stat(g, "degenerate_rate", percent=True),
              _utility(g)] for g in groups]
    return _table(header, lines)


def _label(g: dict) -> str:
    """A method as tables and legends name it: the utility-matched variants marked."""
    return f"{g['method']} (utility)" if g.get("match") == "utility" else g["method"]


def _knob(g: dict) -> str:
    if g["method"] == "l2-reg":
        return f"C {g.get('l2_to_init_range') or _num(g['l2_to_init'])}"
    if g.get("radius_scale_mean") is not None:
        return f"ρ {g['radius_scale_mean']:.4g}"
    return f"λ {g['scale_mean']:.4g}" if g.get("scale_mean") is not None else ""


def _matched_table(groups: Sequence[dict]) -> str:
    """EMA experiments: each EMA and the models built from it, plain fine-tuning first."""
    header = ["lr", "η", "every", "updates", "method", "distance", "ASR %", "harmful %",
              "ASR train frames %", "degenerate %", "utility", "knob", "matched"]
    order = {(g["lr"], g["batch_size"], g["grad_accum"], g["steps"]): i
             for i, g in enumerate(groups)}  # fine-tuning settings in config order

    def key(g: dict) -> tuple:
        eta = (-1.0, 0) if g["eta"] is None else (g["eta"], g["every"])
        return (order[(g["lr"], g["batch_size"], g["grad_accum"], g["steps"])], *eta,
                g.get("match") == "utility", METHODS.index(g["method"]))

    lines = []
    for g in sorted(groups, key=key):
        lines.append([_num(g["lr"]), _num(g["eta"]) if g["eta"] is not None else "1 (plain)",
                      _num(g["every"]) if g["every"] is not None else "",
                      _num(g["ema_updates"]) if g["ema_updates"] is not None
                      else _num(g["steps"]), _label(g),
                      _stat(g, "distance"),
                      _stat(g, "asr", percent=True),
                      _stat(g, "harmful_rate", percent=True),
                      _stat(g, "asr_train_frames", percent=True),
                      _stat(g, "degenerate_rate", percent=True),
                      _utility(g), _knob(g), g.get("matched_count") or ""])
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
                        f"{_stat(best, 'asr', percent=True)} "
                        f"({_setting(best)})")
        lines.append(line)
    return _table(["utility", *methods], lines)


def _theta0_text(g: dict) -> str:
    worlds = f" (mean ± std over {g['seeds']} worlds)" if g["seeds"] > 1 else ""
    extra = ""
    if g.get("harmful_rate_mean") is not None and not math.isnan(g["harmful_rate_mean"]):
        extra = (f", harmful {_stat(g, 'harmful_rate', percent=True)}"
                 f" %, ASR on training frames "
                 f"{_stat(g, 'asr_train_frames', percent=True)} %")
    return (f"θ₀: ASR {_stat(g, 'asr', percent=True)} %{extra}, "
            f"degenerate {_stat(g, 'degenerate_rate', percent=True)} %, "
            f"utility {_utility(g)}{' %' if g.get('utility_metric') == 'task_accuracy' else ''}"
            f"{worlds}\n")


def _model_summary(groups: Sequence[dict]) -> list[str]:
    """One model size's tables, one per experiment."""
    parts = []
    by_experiment: dict[str, list[dict]] = {}
    for g in groups:
        if g["method"] == "theta0":
            parts.append(_theta0_text(g))
        else:
            by_experiment.setdefault(g["experiment"], []).append(g)
    for name, members in by_experiment.items():
        metric = members[0].get("utility_metric") or "utility"
        unit = " (%)" if metric == "task_accuracy" else ""
        parts.append(f"### {name}\n\nutility: {metric}{unit}; mean ± std over worlds × seeds; "
                     "harmful: the ground-truth judge's harmful-compliance rate\n")
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
    if frontier is not None and by_experiment and not any(
            g.get("match") == "utility" for g in groups):
        parts.append("### lowest ASR % at equal utility (mean ± std over seeds; setting)\n")
        parts.append(frontier + "\n")
    return parts


def summary_markdown(groups: Sequence[dict], differences: Sequence[dict] = ()) -> str:
    """Markdown tables per model size and experiment (mean ± std over worlds and seeds), then
    the paired differences and the keyword-vs-judge confusion, when there are any."""
    from .tables import confusion_markdown, differences_markdown

    models = list(dict.fromkeys(g.get("model") for g in groups))
    parts = []
    for model in models:
        members = [g for g in groups if g.get("model") == model]
        if len(models) > 1:
            params = members[0].get("params")
            parts.append(f"## model {model}" + (f" ({params:,} parameters)\n" if params
                                                  else "\n"))
        parts += _model_summary(members)
    if differences:
        parts.append(differences_markdown(differences))
    confusion = confusion_markdown(groups)
    if confusion:
        parts.append(confusion)
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
                key = (g["experiment"], g["lr"], g["batch_size"], g["grad_accum"], g["steps"],
                       g.get("match"))
                lines.setdefault(key if method != "finetune" else (), []).append(g)
        for i, members in enumerate(lines.values()):
            hollow = method == "offline-ema" or members[0].get("match") == "utility"
            members.sort(key=lambda g: g[f"{x}_mean"])
            style = _LINESTYLES[i % len(_LINESTYLES)] if connect and method != "finetune" \
                else "none"
            label = f"{_label(members[0])} ({members[0]['experiment']})" if several and \
                method != "finetune" else _label(members[0])
            ax.errorbar([g[f"{x}_mean"] * xs for g in members],
                        [g[f"{y}_mean"] * ys for g in members],
                        xerr=[g[f"{x}_std"] * xs for g in members],
                        yerr=[g[f"{y}_std"] * ys for g in members],
                        color=COLOURS[method], marker=MARKERS[method], markersize=6,
                        linestyle=style, linewidth=1, alpha=0.85, capsize=2,
                        label=label if i == 0 or several or hollow else None,
                        markerfacecolor="none" if hollow else COLOURS[method])


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


def _log_x(ax) -> None:
    """A log x axis with enough labels: matplotlib labels only powers of ten, so a range within
    one decade (distances 1.2 to 3.5) showed two labels. Within a decade: round values (1.5,
    2, 2.5, ...); over a few: 1-2-5 steps; wider: powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 0.0
    ax.xaxis.set_major_locator(
        MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]) if decades < 1
        else LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 3 else (1.0,)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


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
            _log_x(ax)
        paths.append(_save(fig, ax, out_dir / f"{name}{suffix}.png"))
    return paths


def _tradeoff_plot(groups: Sequence[dict], out_dir: Path, title: str, suffix: str = "") -> Path:
    u_label, u_percent = _utility_axis(groups)
    fig, ax = _axes(f"{title}: safety vs utility", u_label, "keyword ASR (%)")
    _plot_methods(ax, [g for g in groups if g["method"] != "theta0"], "utility", "asr",
                  y_percent=True, x_percent=u_percent, connect=False)
    for g in groups:
        if g["method"] == "theta0":
            ax.plot([g["utility_mean"] * (100.0 if u_percent else 1.0)],
                    [g["asr_mean"] * 100.0], marker="*", markersize=12, linestyle="none",
                    color=COLOURS["theta0"], label="θ₀")
    return _save(fig, ax, out_dir / f"asr_vs_utility{suffix}.png")


def _hyperparameter_plot(groups: Sequence[dict], out_dir: Path, title: str,
                         suffix: str = "") -> Path | None:
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
        _log_x(ax)
    ax_u.legend(fontsize=7, loc="best")
    return _save(fig, ax_asr, out_dir / f"hyperparameters{suffix}.png")


def _plots(groups: Sequence[dict], out_dir: Path, title: str, suffix: str) -> list[Path]:
    paths = _distance_plots(groups, out_dir, title, suffix)
    with_ema = list(dict.fromkeys(g["experiment"] for g in groups if g["eta"] is not None))
    if len(with_ema) > 1:
        theta0 = [g for g in groups if g["method"] == "theta0"]
        for exp in with_ema:
            members = theta0 + [g for g in groups if g["experiment"] == exp]
            paths += _distance_plots(members, out_dir, f"{title}, {exp}",
                                     suffix=f"{suffix}_{exp}")
    paths.append(_tradeoff_plot(groups, out_dir, title, suffix))
    hp = _hyperparameter_plot(groups, out_dir, title, suffix)
    return paths + ([hp] if hp is not None else [])


def write_plots(groups: Sequence[dict], out_dir: Path, *, title: str) -> list[Path]:
    """The plots of a sweep in `out_dir`: `asr_vs_distance.png`, `utility_vs_distance.png`
    (all experiments; plus one pair per experiment when several keep EMAs),
    `asr_vs_utility.png`, and `hyperparameters.png` for learning-rate grids; with several
    model sizes, one set per size, suffixed `_<model>`."""
    models = list(dict.fromkeys(g.get("model") for g in groups))
    if len(models) <= 1:
        return _plots(groups, out_dir, title, "")
    paths = []
    for model in models:
        members = [g for g in groups if g.get("model") == model]
        paths += _plots(members, out_dir, f"{title}, {model}", f"_{model}")
    return paths


def write_report(rows: Sequence[dict], out_dir: Path, *, title: str,
                 differences: Sequence[dict] = ()) -> dict[str, Path]:
    """Every output file of a sweep in `out_dir`; returns them by name."""
    from .differences import write_differences

    out_dir.mkdir(parents=True, exist_ok=True)
    groups = aggregate(rows)
    write_rows(rows, out_dir / "results.csv")
    write_summary_csv(groups, out_dir / "summary.csv")
    (out_dir / "summary.md").write_text(summary_markdown(groups, differences),
                                        encoding="utf-8")
    files = {p.name: p for p in write_plots(groups, out_dir, title=title)}
    if differences:
        write_differences(differences, out_dir / "differences.csv")
        files["differences.csv"] = out_dir / "differences.csv"
    return {"results.csv": out_dir / "results.csv", "summary.csv": out_dir / "summary.csv",
            "summary.md": out_dir / "summary.md", **files}
