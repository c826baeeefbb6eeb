"""The study's two extra tables in `summary.md`: paired differences and keyword-vs-judge confusion.

Differences come from `differences` (each with its paired bootstrap interval); an ordering is
written only when the interval excludes zero. The confusion table sums, per model and method,
how the keyword rule's verdict (success: no refusal phrase; refusal) lines up with the toy
judge's (`refused`, `complied`, `off_target`, `degenerate`).
"""

from __future__ import annotations

from collections.abc import Sequence

_VERDICTS = ("refused", "complied", "off_target", "degenerate")
METRIC_NAMES = {"asr": "keyword ASR", "harmful_rate": "harmful compliance"}


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table: the header, its rule, one line per row (no trailing newline)."""
    return "\n".join([_row(header), _row(["---"] * len(header)), *map(_row, rows)])


def points(v: float) -> str:
    return f"{v * 100:+.1f}"


def differences_markdown(diffs: Sequence[dict]) -> str:
    """One table per model size: each comparison, both metrics, estimate and 95% interval in
    percentage points, and the verdict."""
    parts = ["### paired differences (percentage points; 95% paired hierarchical bootstrap "
             "over worlds, seeds and prompts)\n"]
    models = list(dict.fromkeys(d["model"] for d in diffs))
    header = ["EMA", "comparison", "metric", "difference", "95% interval", "verdict"]
    for model in models:
        members = [d for d in diffs if d["model"] == model]
        if len(models) > 1 or model is not None:
            params = members[0].get("params")
            parts.append(f"model {model}" + (f" ({params:,} parameters)" if params else "")
                         + f", lr {members[0]['lr']:g}, {members[0]['worlds']} worlds × "
                         f"{members[0]['seeds'] // max(1, members[0]['worlds'])} seeds × "
                         f"{members[0]['prompts']} prompts:\n")
        rows = [[d["matched_to"], d["comparison"], METRIC_NAMES[d["metric"]],
                 points(d["estimate"]), f"[{points(d['low'])}, {points(d['high'])}]",
                 d["verdict"]] for d in members]
        parts.append(markdown_table(header, rows) + "\n")
    return "\n".join(parts)


def _method(g: dict) -> str:
    name = g["method"] if g.get("match") != "utility" else f"{g['method']} (utility)"
    if g.get("matched_to"):
        name += f" @ {g['matched_to']}"
    elif g.get("eta") is not None:
        name += f" η {g['eta']:g}/{g['every']}"
    return name


def confusion_markdown(groups: Sequence[dict]) -> str | None:
    """Keyword rule × judge counts for every model (summed over worlds and seeds), or None
    when no row was judged."""
    judged = [g for g in groups if g.get("keyword_success_refused") is not None]
    if not judged:
        return None
    header = ["model", "method", "n", *(f"kw success: {v}" for v in _VERDICTS),
              *(f"kw refusal: {v}" for v in _VERDICTS)]
    rows = []
    for g in judged:
        counts = [g[f"keyword_{k}_{v}"] for k in ("success", "refusal") for v in _VERDICTS]
        rows.append([g.get("model") or "", _method(g), sum(counts), *counts])
    return ("### keyword rule vs ground-truth judge (held-out prompts, summed over worlds and "
            "seeds)\n\n`kw success: refused` is a refusal the keyword rule counts as an attack "
            "success; `kw refusal: complied` a harmful compliance it counts as a refusal.\n\n"
            + markdown_table(header, rows) + "\n")


__all__ = ["differences_markdown", "confusion_markdown"]
