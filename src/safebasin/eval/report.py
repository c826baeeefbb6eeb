"""A finished run as a small text table (``safebasin eval show``), read from its summary.json."""

from __future__ import annotations

from pathlib import Path

from ..errors import EvaluationError
from ..summary import EvalSummary
from .results import SUMMARY, read_json


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _rate(rate: float, low: float, high: float, count: int, n: int) -> str:
    return f"{_pct(rate)}  [{_pct(low)}, {_pct(high)}]  ({count}/{n})"


def _asr_rows(s: dict) -> list[tuple[str, str]]:
    kw = s["settings"]["keywords"]
    return [
        ("prompts", f"{s['n']} from {s['runtime']['prompts']}"),
        ("keywords", f"{kw['rule']} ({len(kw['phrases'])} phrases, {kw['mode']})"),
        ("ASR (Wilson 95%)", _rate(s["asr"], s["wilson_low"], s["wilson_high"],
                                   s["successes"], s["n"])),
        ("degenerate", f"{_pct(s['degenerate_rate'])}  ({s['degenerate']}/{s['n']})"),
        ("ASR excl. degenerate", f"{_pct(s['asr_excluding_degenerate'])}  "
                                 f"({s['successes_excluding_degenerate']}/"
                                 f"{s['n_excluding_degenerate']})"),
    ]


def _utility_rows(s: dict) -> list[tuple[str, str]]:
    rows = []
    if s.get("loss"):
        loss = s["loss"]
        rows += [("chat loss (nats/token)", f"{loss['mean_loss']:.4f}"),
                 ("perplexity", f"{loss['perplexity']:.3f}"),
                 ("scored tokens", f"{loss['tokens']} in {loss['conversations']} conversations")]
    if s.get("xstest"):
        x = s["xstest"]
        rows += [("XSTest over-refusal", _rate(x["over_refusal_rate"], x["wilson_low"],
                                               x["wilson_high"], x["refusals"], x["n"])),
                 ("XSTest degenerate", f"{_pct(x['degenerate_rate'])}  ({x['degenerate']}/"
                                       f"{x['n']})")]
    return rows


def _parse(data: object, where: str) -> EvalSummary:
    try:
        return EvalSummary.from_dict(data)
    except ValueError as e:
        raise EvaluationError(f"{where} is not an evaluation summary: {e}; re-run the "
                              "evaluation") from None


def format_summary(summary: dict | EvalSummary) -> str:
    """Two aligned columns: what was measured, and the figure.

    Raises:
        EvaluationError: a malformed summary (see `EvalSummary.from_dict`), or one without the
            model, settings and runtime fields `eval.runs` writes.
    """
    if not isinstance(summary, EvalSummary):
        summary = _parse(summary, "the summary")
    kind, data = summary.kind, summary.to_dict()
    try:
        rows = [("model", data["model"]["path"]), ("hash", data["model"]["hash"])]
        rows += _asr_rows(data) if kind == "asr" else _utility_rows(data)
    except (KeyError, TypeError) as e:
        raise EvaluationError(f"summary of kind {kind!r} lacks the field {e}") from e
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def show(results_dir: str | Path) -> str:
    """The table of the run in ``results_dir``.

    Raises:
        EvaluationError: no summary.json there (an unfinished run), or a malformed one.
    """
    path = Path(results_dir) / SUMMARY
    if not path.exists():
        raise EvaluationError(f"no {SUMMARY} in {str(results_dir)!r}; is the run finished?")
    return format_summary(_parse(read_json(path), repr(str(path))))


__all__ = ["format_summary", "show"]
