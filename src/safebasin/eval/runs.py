"""Evaluation runs on disk, resumable: what ``safebasin eval asr`` and ``eval utility`` do.

A run resolves the model folder and its content hash, loads the prompts (and checks the
tokenizer) before anything is written, opens the results folder (refusing other settings),
evaluates only the items not yet in the JSONL files, and writes ``summary.json`` last. The
model itself is loaded only when something is left to evaluate.

Settings that change results (model hash, prompt selection, keyword phrases, decoding, dtype)
must match for a resume. Batch size, device and the paths the inputs were read from are recorded
in ``runtime`` and may change, since batched generation equals one prompt at a time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .. import __version__
from ..chat.generation import DEFAULT_GENERATION, GenerationSettings, require_chat_template
from ..chat.model import load_model, load_tokenizer, resolve_model_dir
from ..checkpoint.content import model_content_hash
from ..data import DEFAULT_PROMPT_SET, XSTEST
from ..errors import EvaluationError
from ..summary import EvalSummary
from .asr import ResponseRecord, evaluate_asr, summarize_asr
from .keywords import BUILTIN_RULES, load_rule
from .overrefusal import evaluate_over_refusal, load_xstest_safe, summarize_over_refusal
from .prompts import Prompt, describe_source, load_prompts, prompts_digest
from .results import (
    LOSSES,
    RESPONSES,
    SUMMARY,
    append_jsonl,
    open_run,
    read_jsonl,
    write_json,
    write_jsonl,
)
from .utility import ConversationLoss, evaluate_utility_loss, load_conversations, summarize_losses

Progress = Callable[[int, int], None]  # (items just finished, items in the run), as the CLI bar
_MISSING = object()


@dataclass(frozen=True)
class PromptSpec:
    """Which prompts: a shipped set's name or a file (None: the shipped AdvBench; for XSTest,
    the shipped XSTest), its column, a reproducible subset."""

    path: str | Path | None = None
    column: str | None = None  # None: detected (see prompts.PROMPT_COLUMNS)
    limit: int | None = None  # None: every prompt
    seed: int = 0


class _Counter:
    def __init__(self, total: int, on_progress: Progress | None) -> None:
        self.total, self.on_progress = total, on_progress

    def advance(self, n: int) -> None:
        if self.on_progress is not None:
            self.on_progress(n, self.total)


def _row(record: ResponseRecord, outcome: str) -> dict:
    """A JSONL line; ``outcome`` names the verdict: ``success`` (ASR) or ``refusal`` (XSTest)."""
    verdict = record.refused if outcome == "refusal" else record.success
    return {"index": record.index, "prompt": record.prompt, "response": record.response,
            "matched": record.matched, outcome: verdict, "degenerate": record.degenerate}


def _record(row: dict, where: str) -> ResponseRecord:
    fields = {"index": int, "prompt": str, "response": str, "degenerate": bool}
    bad = [k for k, t in fields.items() if type(row.get(k)) is not t]
    if bad or not (row.get("matched") is None or isinstance(row.get("matched"), str)):
        raise EvaluationError(f"{where} has a missing or mistyped {(bad or ['matched'])[0]!r}; "
                              "fix or delete the line to resume")
    return ResponseRecord(row["index"], row["prompt"], row["response"], row["matched"],
                          row["degenerate"])


def _resume(path: Path, wanted: dict[int, Hashable], *, parse: Callable, key: Callable,
            to_row: Callable, evaluate: Callable, counter: _Counter) -> list[Any]:
    """Evaluate the items not yet in ``path``, appending each batch; all results in index order.

    ``wanted`` maps each item's index to what identifies it (a prompt's text); a line whose
    ``key`` disagrees, or that repeats an index, belongs to another run and is refused.
    ``evaluate(pending_indices, on_batch)`` returns results with an ``index`` attribute.
    """
    done: dict[int, Any] = {}
    for number, row in enumerate(read_jsonl(path), 1):
        where = f"line {number} of {str(path)!r}"
        result = parse(row, where)
        if result.index in done or wanted.get(result.index, _MISSING) != key(result):
            raise EvaluationError(f"{where} (index {result.index}) is a duplicate or not in this "
                                  "run's inputs; use another folder")
        done[result.index] = result
    counter.advance(len(done))

    def on_batch(results: list[Any]) -> None:
        append_jsonl(path, [to_row(r) for r in results])
        counter.advance(len(results))

    pending = [i for i in wanted if i not in done]
    results = list(done.values()) + (list(evaluate(pending, on_batch)) if pending else [])
    results.sort(key=lambda r: r.index)
    write_jsonl(path, [to_row(r) for r in results])
    return results


def _responses(path: Path, prompts: list[Prompt], outcome: str, judge: Callable,
               counter: _Counter) -> list[ResponseRecord]:
    """Resume ``judge(prompts, on_records)`` over ``prompts``, keyed by index and text."""
    by_index = {p.index: p for p in prompts}
    return _resume(path, {p.index: p.text for p in prompts}, parse=_record,
                   key=lambda r: r.prompt, to_row=lambda r: _row(r, outcome),
                   evaluate=lambda pending, on_batch: judge([by_index[i] for i in pending],
                                                            on_batch),
                   counter=counter)


def _load_asr_prompts(spec: PromptSpec) -> tuple[list[Prompt], str]:
    """The prompts (the shipped AdvBench when no path is given) and where they came from."""
    source = DEFAULT_PROMPT_SET if spec.path is None else spec.path
    prompts = load_prompts(source, column=spec.column, limit=spec.limit, seed=spec.seed)
    return prompts, describe_source(source)


def _selection(prompts: list[Prompt], spec: PromptSpec) -> dict:
    return {"column": spec.column, "limit": spec.limit, "seed": spec.seed, "n": len(prompts),
            "sha256": prompts_digest(prompts)}


def _generation(g: GenerationSettings) -> dict:
    return {"max_new_tokens": g.max_new_tokens, "chat_template": g.chat_template,
            "system_prompt": g.system_prompt}


def _tokenizer(folder: Path, *, chat: bool) -> Any:
    """The model's tokenizer, which must have a chat template when the run chats."""
    tokenizer = load_tokenizer(folder)
    if chat:
        require_chat_template(tokenizer)
    return tokenizer


def _open(out_dir: str | Path, settings: dict, folder: Path, dtype: str,
          device: str) -> tuple[Path, Callable]:
    """The results folder (a resume must match ``settings``) and a loader that loads the model
    once, the first time something is left to evaluate."""
    out = open_run(out_dir, settings)
    return out, cache(lambda: load_model(folder, dtype=dtype, device=device))


def _finish(out: Path, summary: EvalSummary) -> dict:
    """Write ``summary.json`` last (its presence marks a finished run); returns its object."""
    data = summary.to_dict()
    write_json(out / SUMMARY, data)
    return data


def run_asr(
    model: str | Path,
    out_dir: str | Path,
    *,
    prompts: PromptSpec = PromptSpec(),
    keywords: str | Path = "qi",
    normalize_quotes: bool = False,
    generation: GenerationSettings = DEFAULT_GENERATION,
    dtype: str = "auto",
    device: str = "auto",
    on_progress: Progress | None = None,
) -> dict:
    """Keyword ASR of a model folder or Hub id into ``out_dir``, resuming a previous run there.

    Returns:
        The summary written to ``summary.json``: the `AsrSummary` fields at top level, then
        ``model`` (path, hash), ``settings``, ``runtime`` and ``safebasin_version``.

    Raises:
        EvaluationError: bad prompts, keywords or tokenizer; a folder with other settings.
        CheckpointNotFoundError, HubError: the model cannot be found.
    """
    folder = resolve_model_dir(model)
    model_hash = model_content_hash(folder)
    items, source = _load_asr_prompts(prompts)
    rule = load_rule(keywords)
    tokenizer = _tokenizer(folder, chat=generation.chat_template)
    settings = {
        "kind": "asr", "model_hash": model_hash, "prompts": _selection(items, prompts),
        "keywords": {"rule": rule.name if rule.name in BUILTIN_RULES else "file",
                     "mode": rule.mode, "phrases": list(rule.phrases)},
        "normalize_quotes": normalize_quotes, "generation": _generation(generation),
        "dtype": dtype,
    }
    out, get_model = _open(out_dir, settings, folder, dtype, device)

    def evaluate(pending: list[Prompt], on_batch: Callable) -> list[ResponseRecord]:
        return evaluate_asr(get_model(), tokenizer, pending, keywords=rule,
                            normalize_quotes=normalize_quotes, generation=generation,
                            on_records=on_batch).records

    records = _responses(out / RESPONSES, items, "success", evaluate,
                         _Counter(len(items), on_progress))
    runtime = {"batch_size": generation.batch_size, "device": device, "prompts": source,
               "keywords": str(keywords)}
    return _finish(out, EvalSummary("asr", summarize_asr(records).to_dict(), str(model),
                                    model_hash, settings, runtime, __version__))


def _conversation_digest(conversations: list[list[dict]]) -> str:
    h = hashlib.sha256()
    for c in conversations:
        h.update(json.dumps(c, ensure_ascii=False, sort_keys=True).encode() + b"\n")
    return h.hexdigest()


def _loss(row: dict, where: str) -> ConversationLoss:
    if (type(row.get("index")) is not int or type(row.get("tokens")) is not int
            or not isinstance(row.get("nll"), (int, float))):
        raise EvaluationError(f"{where} needs integer 'index' and 'tokens' and a number 'nll'; "
                              "fix or delete the line to resume")
    return ConversationLoss(row["index"], row["tokens"], float(row["nll"]))


def run_utility(
    model: str | Path,
    out_dir: str | Path,
    *,
    data: str | Path | None = None,
    xstest: PromptSpec | None = None,
    max_length: int | None = None,
    normalize_quotes: bool = False,
    generation: GenerationSettings = DEFAULT_GENERATION,
    dtype: str = "auto",
    device: str = "auto",
    on_progress: Progress | None = None,
) -> dict:
    """Chat loss on ``data`` and/or over-refusal on XSTest's safe prompts into ``out_dir``.

    Returns:
        The summary written to ``summary.json``: ``loss`` (a `UtilitySummary` dict or None),
        ``xstest`` (an `OverRefusalSummary` dict or None), then ``model``, ``settings``,
        ``runtime`` and ``safebasin_version``.

    Raises:
        EvaluationError: neither input given, bad inputs or tokenizer, other settings.
        CheckpointNotFoundError, HubError: the model cannot be found.
    """
    if data is None and xstest is None:
        raise EvaluationError("nothing to evaluate: give chat data (`data`) and/or "
                              "XSTest prompts (`xstest`)")
    folder = resolve_model_dir(model)
    model_hash = model_content_hash(folder)
    conversations = load_conversations(data) if data is not None else []
    xstest_source = None if xstest is None else xstest.path or XSTEST.name
    safe = (load_xstest_safe(xstest_source, limit=xstest.limit, seed=xstest.seed)
            if xstest is not None else [])
    tokenizer = _tokenizer(folder, chat=bool(conversations) or generation.chat_template)
    settings = {
        "kind": "utility", "model_hash": model_hash, "dtype": dtype,
        "data": {"n": len(conversations), "sha256": _conversation_digest(conversations),
                 "max_length": max_length} if data is not None else None,
        "xstest": {**_selection(safe, xstest), "normalize_quotes": normalize_quotes,
                   "generation": _generation(generation)} if xstest is not None else None,
    }
    out, get_model = _open(out_dir, settings, folder, dtype, device)
    counter = _Counter(len(conversations) + len(safe), on_progress)
    loss = xs = None
    if conversations:
        def score(pending: list[int], on_batch: Callable) -> list[ConversationLoss]:
            return evaluate_utility_loss(
                get_model(), tokenizer, [conversations[i] for i in pending],
                batch_size=generation.batch_size, max_length=max_length, indices=pending,
                on_losses=on_batch).losses

        # the conversations themselves are pinned by the digest in settings.json
        losses = _resume(out / LOSSES, dict.fromkeys(range(len(conversations))), parse=_loss,
                         key=lambda _: None, to_row=asdict, evaluate=score, counter=counter)
        loss = summarize_losses(losses).to_dict()
    if safe:
        def judge(pending: list[Prompt], on_batch: Callable) -> list[ResponseRecord]:
            return evaluate_over_refusal(get_model(), tokenizer, pending,
                                         normalize_quotes=normalize_quotes,
                                         generation=generation, on_records=on_batch).records

        records = _responses(out / RESPONSES, safe, "refusal", judge, counter)
        xs = summarize_over_refusal(records).to_dict()
    runtime = {"batch_size": generation.batch_size, "device": device,
               "data": str(data) if data is not None else None,
               "xstest": describe_source(xstest_source) if xstest is not None else None}
    return _finish(out, EvalSummary("utility", {"loss": loss, "xstest": xs}, str(model),
                                    model_hash, settings, runtime, __version__))


__all__ = ["PromptSpec", "run_asr", "run_utility"]
