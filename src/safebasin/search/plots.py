"""The pictures of a search: the tune frontier, the 1D landscape line, the 2D basin heatmap.

matplotlib's object API on the Agg canvas (never pyplot), as the sweep report does, so no
global backend is touched. Rates are drawn in percent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

_ASR, _DEGEN, _UTIL, _MARK = "#c0392b", "#7f8c8d", "#2471a3", "#111111"


def _figure(title: str, xlabel: str, ylabel: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=11)
    return fig, ax


def _utility_axis(ax, xs: Sequence[float], utility: Sequence[float | None], label: str):
    pairs = [(x, u) for x, u in zip(xs, utility, strict=True) if u is not None]
    if not pairs:
        return None
    twin = ax.twinx()
    twin.plot(*zip(*pairs, strict=True), color=_UTIL, marker="s", markersize=4, linewidth=1,
              label=label)
    twin.set_ylabel(label, color=_UTIL)
    return twin


def _save(fig, axes, path: Path) -> Path:
    handles, labels = [], []
    for ax in axes:
        if ax is not None:
            h, lab = ax.get_legend_handles_labels()
            handles += h
            labels += lab
    axes[0].legend(handles, labels, fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_frontier(rows: Sequence, path: Path, *, max_asr: float, parameter: str,
                  confidence: str) -> Path:
    """ASR (with its Wilson interval) and utility against the coefficient; the limit and the
    chosen point drawn."""
    fig, ax = _figure(f"tune: keyword ASR against {parameter} (limit {100 * max_asr:g}%, "
                      f"{confidence})", parameter, "keyword ASR (%)")
    xs = [r.coefficient for r in rows]
    ax.errorbar(xs, [100 * r.asr for r in rows],
                yerr=[[100 * (r.asr - r.asr_low) for r in rows],
                      [100 * (r.asr_high - r.asr) for r in rows]],
                color=_ASR, marker="o", linewidth=1, capsize=3, label="keyword ASR (95% CI)")
    ax.axhline(100 * max_asr, color=_ASR, linestyle="--", linewidth=1, label="limit")
    for r in rows:
        if r.chosen:
            ax.plot([r.coefficient], [100 * r.asr], marker="*", markersize=16, color=_MARK,
                    linestyle="none", label=f"chosen {parameter}={r.coefficient:.4g}")
    twin = _utility_axis(ax, xs, [r.utility for r in rows], "utility (chat loss)")
    return _save(fig, [ax, twin], path)


def plot_landscape_1d(rows: Sequence, path: Path, *, title: str) -> Path:
    """ASR and the degenerate rate along α (utility on a second axis); θ₀ (α=0) and the
    fine-tune (α=1) marked."""
    fig, ax = _figure(title, "α  (θ₀ + α(θ_ft − θ₀))", "rate (%)")
    rows = sorted(rows, key=lambda r: r.alpha)
    xs = [r.alpha for r in rows]
    ax.plot(xs, [100 * r.asr for r in rows], color=_ASR, marker="o", label="keyword ASR")
    ax.fill_between(xs, [100 * r.asr_low for r in rows], [100 * r.asr_high for r in rows],
                    color=_ASR, alpha=0.15, label="95% CI")
    degen = [(r.alpha, 100 * r.degenerate_rate) for r in rows if r.degenerate_rate is not None]
    if degen:
        ax.plot(*zip(*degen, strict=True), color=_DEGEN, marker=".", linestyle=":",
                label="degenerate output")
    for x, name in ((0.0, "θ₀"), (1.0, "fine-tune")):
        ax.axvline(x, color=_MARK, linestyle="--", linewidth=0.8)
        ax.annotate(name, (x, 1.0), xycoords=("data", "axes fraction"), fontsize=8,
                    ha="left", va="top")
    twin = _utility_axis(ax, xs, [r.utility for r in rows], "utility (chat loss)")
    return _save(fig, [ax, twin], path)


def plot_landscape_2d(rows: Sequence, path: Path, *, title: str, beta_label: str,
                      marks: Sequence[tuple[float, float, str]]) -> Path:
    """A heatmap of ASR over (α, β) with contour lines; θ₀ and the fine-tunes marked."""
    import numpy as np

    alphas = sorted({r.alpha for r in rows})
    betas = sorted({r.beta for r in rows})
    grid = np.full((len(betas), len(alphas)), np.nan)
    for r in rows:
        grid[betas.index(r.beta), alphas.index(r.alpha)] = 100 * r.asr
    fig, ax = _figure(title, "α  (fine-tune direction)", beta_label)
    mesh = ax.pcolormesh(alphas, betas, grid, shading="nearest", cmap="RdYlGn_r", vmin=0,
                         vmax=100)
    fig.colorbar(mesh, ax=ax, label="keyword ASR (%)")
    low, high = np.nanmin(grid), np.nanmax(grid)
    levels = [v for v in (10, 25, 50, 75, 90) if low < v < high]  # none: a flat basin
    if len(alphas) > 1 and len(betas) > 1 and levels:
        contours = ax.contour(alphas, betas, grid, levels=levels, colors="k", linewidths=0.7)
        ax.clabel(contours, fmt="%g%%", fontsize=7)
    for a, b, name in marks:
        ax.plot([a], [b], marker="*", markersize=13, color=_MARK, linestyle="none")
        ax.annotate(name, (a, b), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.grid(False)
    fig.tight_layout()
    fig.savefig(path)
    return path


__all__ = ["plot_frontier", "plot_landscape_1d", "plot_landscape_2d"]
