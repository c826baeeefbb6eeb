"""The record of one evaluation run: what `safebasin eval` writes to `summary.json`.

Written by `eval.runs` and read by `eval.report` (``safebasin eval show``) and `publish` (the
model card and the push gate), so it sits below both and imports nothing of theirs. One
`EvalSummary` type, one key order, validated when read (`EvalSummary.from_dict`) and nowhere
else:

    {"kind": "asr", <the AsrSummary fields>, "model": {"path", "hash"}, "settings", "runtime",
     "safebasin_version"}
    {"kind": "utility", "loss": <UtilitySummary or null>, "xstest": <OverRefusalSummary or null>,
     "model": ..., "settings": ..., "runtime": ..., "safebasin_version": ...}

`model`, `settings`, `runtime` and `safebasin_version` are always written; a reader accepts a
summary without them (results written by hand or by an evaluator of one's own, which the card
still shows), but never a missing or mistyped metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

KINDS = ("asr", "utility")
_COMMON = ("kind", "model", "settings", "runtime", "safebasin_version")
# the metrics a reader needs; any other metric must still be a number or null
_REQUIRED = {
    "asr": {"asr": float, "n": int},
    "loss": {"mean_loss": float, "perplexity": float, "tokens": int, "conversations": int},
    "xstest": {"over_refusal_rate": float, "n": int},
}


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_metrics(metrics: dict, required: dict[str, type], where: str) -> None:
    """Raise ValueError naming the first missing or mistyped metric in ``metrics``."""
    for name, kind in required.items():
        value = metrics.get(name)
        ok = type(value) is int and value >= 0 if kind is int else _is_number(value)
        if not ok:
            what = "missing" if name not in metrics else f"{str(value)[:40]!r}, not a number"
            raise ValueError(f"{where}{name!r} is {what}")
    for name, value in metrics.items():
        if not (value is None or _is_number(value)):
            raise ValueError(f"{where}{name!r} is {str(value)[:40]!r}, not a number or null")


def _utility_metrics(metrics: dict) -> None:
    parts = {k: metrics.get(k) for k in ("loss", "xstest")}
    extra = sorted(set(metrics) - set(parts))
    if extra:
        raise ValueError(f"unexpected field {extra[0]!r} in a utility summary")
    for name, value in parts.items():
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ValueError(f"{name!r} is not an object or null")
        _check_metrics(value, _REQUIRED[name], f"{name}.")
    if all(v is None for v in parts.values()):
        raise ValueError("a utility summary needs a 'loss' or 'xstest' object")


def _object(data: dict, key: str) -> dict | None:
    value = data.get(key)
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{key!r} is not an object")
    return value


def _string(data: dict, key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key!r} is not a string")
    return value


@dataclass(frozen=True)
class EvalSummary:
    """A parsed, validated `summary.json`.

    Attributes:
        kind: "asr" (keyword ASR) or "utility" (chat loss and/or XSTest over-refusal).
        metrics: for "asr" the `eval.AsrSummary` fields (ASR, n, Wilson interval, degenerate
            counts); for "utility" ``loss`` and ``xstest`` (an `eval.UtilitySummary` and an
            `eval.OverRefusalSummary` as dicts, or None), in the order written.
        model_path: the model as it was given (a folder or a Hub id).
        model_hash: the content hash of the weights evaluated (`checkpoint.model_content_hash`).
        settings: what a resume must match (`settings.json` of the run).
        runtime: what may change between resumes (batch size, device, input paths).
        safebasin_version: the version that wrote it.
    """

    kind: str
    metrics: dict = field(default_factory=dict)
    model_path: str | None = None
    model_hash: str | None = None
    settings: dict | None = None
    runtime: dict | None = None
    safebasin_version: str | None = None

    def to_dict(self) -> dict:
        """The JSON object, keys in the order `eval.runs` has always written them."""
        d: dict = {"kind": self.kind, **self.metrics}
        if self.model_path is not None:
            d["model"] = {"path": self.model_path, "hash": self.model_hash}
        for key in ("settings", "runtime", "safebasin_version"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d

    @classmethod
    def from_dict(cls, data: object) -> EvalSummary:
        """Validate and parse a summary's JSON object.

        Raises:
            ValueError: what is wrong, first problem only (the readers turn it into their own
                one-line error naming the file).
        """
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        kind = data.get("kind")
        if kind not in KINDS:
            raise ValueError(f"'kind' is {str(kind)[:40]!r}, expected one of {', '.join(KINDS)}")
        metrics = {k: v for k, v in data.items() if k not in _COMMON}
        if kind == "asr":
            _check_metrics(metrics, _REQUIRED["asr"], "")
        else:
            _utility_metrics(metrics)
        model = _object(data, "model")
        path = hash_ = None
        if model is not None:
            path, hash_ = _string(model, "path"), _string(model, "hash")
            if path is None or hash_ is None:
                raise ValueError("'model' needs a string 'path' and 'hash'")
        return cls(kind, metrics, path, hash_, _object(data, "settings"),
                   _object(data, "runtime"), _string(data, "safebasin_version"))


__all__ = ["KINDS", "EvalSummary"]
