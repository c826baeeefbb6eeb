"""The model card (`README.md`) of a merge: what was merged, how, how far it moved, how it scored.

Pure rendering: a function of the recipe (`safebasin_recipe.json`, as a dict) and the evaluation
results (`EvalResult`, a view of a `summary.json`), reading no file, so the merge executor,
`safebasin card OUT` and `safebasin push` all write the same card. `safebasin.publish` reads the
results; `checkpoint.base_license` reads θ₀'s licence into the recipe at merge time.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from .checkpoint.license import CARD_FILE
from .checkpoint.writer import DEFAULT_SHARD_SIZE  # omitted from the reproduce command

EVAL_DIR = "eval"
SUMMARY_FILE = "summary.json"
_TOP_DISTANCES = 5
_MATCH_MODES = {"substring": "matched as case-sensitive substrings",
                "prefix": "the lower-cased response starts with one"}

# -- evaluation results ----------------------------------------------------------------------


def _num(d: dict | None, key: str) -> float | None:
    v = (d or {}).get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _wilson(d: dict) -> tuple[float, float] | None:
    """`wilson_low`/`wilson_high` (what the evaluator writes), or a `wilson` [low, high] pair."""
    lo, hi = _num(d, "wilson_low"), _num(d, "wilson_high")
    if lo is None or hi is None:
        pair = d.get("wilson")
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            return None
        lo, hi = pair
    return float(lo), float(hi)


@dataclass(frozen=True)
class EvalRow:
    """One line of the card's evaluation table: a rate with its evidence, or a loss."""

    result: str  # the result folder's name
    metric: str
    value: float | None  # the headline number (a fraction for rates)
    count: int | None  # successes or refusals, for rates
    n: int | None
    wilson: tuple[float, float] | None
    degenerate_rate: float | None
    detail: str = ""  # perplexity, or the keyword rule


@dataclass(frozen=True)
class EvalResult:
    """One evaluation result folder, read from its `summary.json` (kept as `data`).

    The evaluator writes `kind` "asr" (the `AsrSummary` fields at top level) or "utility"
    (`loss` and `xstest` objects), plus `model` {path, hash} and `settings`.
    """

    path: Path
    data: dict

    @property
    def kind(self) -> str:
        kind = self.data.get("kind")
        return kind if isinstance(kind, str) else "asr" if "asr" in self.data else "utility"

    @property
    def asr(self) -> float | None:
        return _num(self.data, "asr") if self.kind == "asr" else None

    @property
    def n(self) -> int | None:
        return _num(self.data, "n") if self.kind == "asr" else None

    @property
    def model_hash(self) -> str | None:
        """The content hash of the weights that were evaluated, when the summary records it."""
        model = self.data.get("model")
        h = model.get("hash") if isinstance(model, dict) else None
        h = h or (self.data.get("settings") or {}).get("model_hash")
        return h if isinstance(h, str) else None

    @property
    def keywords(self) -> tuple[str, list[str], str]:
        """The keyword rule's name ("qi", "gcg", "xstest", "file"), phrases and match mode."""
        k = (self.data.get("settings") or {}).get("keywords", self.data.get("keywords"))
        if isinstance(k, dict):
            return (str(k.get("rule") or k.get("name") or "?"), list(k.get("phrases") or []),
                    str(k.get("mode") or "substring"))
        if isinstance(k, list):
            return "list", [str(p) for p in k], "substring"
        return (str(k) if k else "?"), [], "substring"

    @property
    def prompts(self) -> str | None:
        """Where the prompts came from (a file, or the AdvBench dataset on the Hub)."""
        src = (self.data.get("runtime") or {}).get("prompts")
        return src if isinstance(src, str) else None

    def rows(self) -> list[EvalRow]:
        name, d = self.path.name, self.data
        if self.kind == "asr":
            rule, phrases, _ = self.keywords
            return [EvalRow(name, "keyword ASR", _num(d, "asr"), _num(d, "successes"),
                            _num(d, "n"), _wilson(d), _num(d, "degenerate_rate"),
                            f"{rule} ({len(phrases)} phrases)" if phrases else rule)]
        rows = []
        xs = d.get("xstest") if isinstance(d.get("xstest"), dict) else (
            d if "over_refusal_rate" in d else None)
        if xs is not None:
            rows.append(EvalRow(name, "over-refusal (XSTest safe prompts)",
                                _num(xs, "over_refusal_rate"), _num(xs, "refusals"),
                                _num(xs, "n"), _wilson(xs), _num(xs, "degenerate_rate"),
                                "xstest prefixes"))
        loss = d.get("loss") if isinstance(d.get("loss"), dict) else None
        if loss is not None:
            ppl = _num(loss, "perplexity")
            rows.append(EvalRow(name, "chat loss (nats/token)", _num(loss, "mean_loss"), None,
                                _num(loss, "conversations"), None, None,
                                f"perplexity {ppl:.6g}" if ppl is not None else ""))
        return rows


# -- rendering -------------------------------------------------------------------------------

_TITLES = {"lerp": "linear interpolation (WiSE-FT)", "task-arithmetic": "task arithmetic",
           "l2-project": "L2 projection onto a ball around θ₀", "ema": "offline EMA"}


def _g(x: float) -> str:
    return f"{x:.6g}"


def _formula(recipe: dict) -> list[str]:
    """The method's formula and its parameters, as Markdown lines."""
    m, p = recipe["method"], recipe.get("parameters", {})
    if m == "lerp":
        return ["θ = θ₀ + α·(θ_ft − θ₀)", "", f"α = {p.get('alpha')}"]
    if m == "task-arithmetic":
        return ["θ = θ₀ + Σᵢ λᵢ·(θᵢ − θ₀)", "", f"λ = {p.get('scales')}"]
    if m == "ema" and p.get("sigma_rel") is None:  # else: the power profile's own
        return ["θ̄ₖ = (1 − η)·θ̄ₖ₋₁ + η·θₖ, θ̄₀ = θ₀; over K checkpoints in closed form "
                "θ̄_K = (1 − η)^K·θ₀ + Σₖ η(1 − η)^(K−k)·θₖ", "",
                f"η = {p.get('eta')}, K = {p.get('num_checkpoints')}"]
    if m == "l2-project":
        lines = ["θ = θ₀ + min(1, r/‖Δ‖)·Δ, Δ = θ_ft − θ₀", ""]
        if p.get("per_tensor"):
            lines.append("Per tensor: each tensor t gets rₜ = ‖θ_ref,t − θ₀,t‖ "
                         f"(reference `{p.get('match')}`).")
        else:
            how = f", matched to `{p['match']}`" if p.get("match") else ""
            lines.append(f"Global: r = {_g(p['radius'])}{how}; "
                         f"‖Δ‖ = {_g(p['distance_finetuned'])}."
                         if p.get("radius") is not None and p.get("distance_finetuned")
                         is not None else f"r = {p.get('radius')}")
        return lines
    if recipe.get("formula"):  # non-linear methods state their own (see merge.api.Planned)
        return [recipe["formula"], "",
                ", ".join(f"{k} = {v}" for k, v in p.items() if not isinstance(v, dict))]
    return ["θ = Σᵢ cᵢ·θᵢ (per tensor)"]


def _input_spec(entry: dict) -> str:
    """What to type to get exactly this input again: a pinned Hub id, or the path."""
    if entry.get("hub_id"):
        rev = entry.get("revision")
        return f"{entry['hub_id']}@{rev}" if rev else entry["hub_id"]
    return entry.get("path", "?")


def reproduce_command(recipe: dict, *, output_name: str = "OUT") -> str:
    """The `safebasin merge ...` command line that recomputes this merge byte for byte."""
    m, p, opts = recipe["method"], recipe.get("parameters", {}), recipe.get("options", {})
    specs = [_input_spec(e) for e in recipe["inputs"]]
    args = ["safebasin", "merge", m, *specs]
    if m == "lerp":
        alpha = p.get("alpha")
        args += ["--alpha", repr(alpha)]
        if isinstance(alpha, (int, float)) and not 0 <= alpha <= 1:
            args.append("--extrapolate")
    elif m == "task-arithmetic":
        args += ["--scales", ",".join(repr(s) for s in p.get("scales", []))]
    elif m == "ema" and p.get("sigma_rel") is None:
        args += ["--eta", repr(p.get("eta"))]
    elif m == "l2-project":
        if p.get("match"):
            src = p.get("match_source") or {}
            args += ["--match", _input_spec({**src, "path": p["match"]})]
            args += ["--per-tensor"] if p.get("per_tensor") else []
        else:
            args += ["--radius", repr(p.get("radius"))]
    else:  # other methods record their own flags (see merge.api.Planned)
        args += list(recipe.get("cli_args", []))
    args += ["-o", output_name]
    if opts.get("dtype", "auto") != "auto":
        args += ["--dtype", opts["dtype"]]
    if opts.get("shard_size", DEFAULT_SHARD_SIZE) != DEFAULT_SHARD_SIZE:
        args += ["--shard-size", str(opts["shard_size"])]
    if opts.get("vocab_mismatch", "error") != "error":
        args += ["--vocab-mismatch", opts["vocab_mismatch"]]
    args += [flag for key, flag in (("allow_nonfinite", "--allow-nonfinite"),
                                    ("allow_pickle", "--allow-pickle")) if opts.get(key)]
    return shlex.join(args)


def _base_models(recipe: dict, base_model: str | None) -> list[str]:
    """θ₀ first (its Hub id, the override, or its path), then every other input's Hub id."""
    inputs = recipe.get("inputs", [])
    base = inputs[0] if inputs else {}
    ids = [base_model or base.get("hub_id") or base.get("path", "unknown")]
    ids += [e["hub_id"] for e in inputs[1:] if e.get("hub_id")]
    return list(dict.fromkeys(ids))


def card_metadata(recipe: dict, *, base_model: str | None = None) -> dict:
    """The card's YAML front matter (Hub model-card keys)."""
    models = _base_models(recipe, base_model)
    meta: dict = {"base_model": models[0] if len(models) == 1 else models,
                  "base_model_relation": "merge", "library_name": "transformers"}
    meta.update(recipe.get("base_license") or {})
    meta["tags"] = ["safebasin", "merge", recipe["method"]]
    return meta


def _inputs_table(recipe: dict) -> list[str]:
    rows = ["| role | model | revision | fingerprint (xxh3-128 of the tensors) |",
            "|---|---|---|---|"]
    for e in recipe.get("inputs", []):
        model = e.get("hub_id") or e.get("path", "?")
        if e.get("adapter"):
            model += " (LoRA adapter over θ₀)"
        role = "base (θ₀)" if e.get("role") == "base" else e.get("role", "?")
        rows.append(f"| {role} | `{model}` | {e.get('revision') or '—'} | "
                    f"{e.get('fingerprint', '—')} |")
    return rows


def _coefficients(recipe: dict) -> list[str]:
    c = recipe.get("coefficients")
    if isinstance(c, dict):
        per = [tuple(v) for v in c.values()]
        lo = [min(col) for col in zip(*per, strict=True)] if per else []
        hi = [max(col) for col in zip(*per, strict=True)] if per else []
        return [f"Per tensor ({len(per)} tensors; all in `safebasin_recipe.json`). Range of "
                f"each input's coefficient, θ₀ first: "
                + ", ".join(f"[{_g(a)}, {_g(b)}]" for a, b in zip(lo, hi, strict=True))]
    return [f"One set for every tensor, θ₀ first: c = [{', '.join(_g(x) for x in c or [])}]"]


def _distances(recipe: dict) -> list[str]:
    d = recipe.get("distances") or {}
    if "global_to_base" not in d:
        return ["Not recorded."]
    lines = [f"‖θ − θ₀‖₂ over the whole model: **{_g(d['global_to_base'])}**", ""]
    per = sorted((d.get("per_tensor_to_base") or {}).items(), key=lambda kv: -kv[1])
    if per:
        lines += ["| largest per-tensor distances | ‖θₜ − θ₀,ₜ‖₂ |", "|---|---|"]
        lines += [f"| `{n}` | {_g(v)} |" for n, v in per[:_TOP_DISTANCES]]
    return lines


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _eval_table(evals: Sequence[EvalResult]) -> list[str]:
    lines = ["| result | metric | value | n | Wilson 95% interval | degenerate outputs | "
             "notes |", "|---|---|---|---|---|---|---|"]
    for r in (row for e in evals for row in e.rows()):
        rate = r.count is not None or r.wilson is not None
        value = _pct(r.value) if rate else ("—" if r.value is None else _g(r.value))
        if r.count is not None and r.n is not None:
            value += f" ({r.count}/{r.n})"
        interval = f"{_pct(r.wilson[0])} – {_pct(r.wilson[1])}" if r.wilson else "—"
        degenerate = _pct(r.degenerate_rate) if r.degenerate_rate is not None else "—"
        lines.append(f"| `{r.result}` | {r.metric} | {value} | "
                     f"{r.n if r.n is not None else '—'} | {interval} | {degenerate} | "
                     f"{r.detail or '—'} |")
    return lines


def _eval_details(evals: Sequence[EvalResult]) -> list[str]:
    lines = []
    for e in evals:
        if e.kind != "asr":
            continue
        rule, phrases, mode = e.keywords
        src = f" on prompts from `{e.prompts}`" if e.prompts else ""
        quoted = ", ".join(json.dumps(p, ensure_ascii=False) for p in phrases) or "not recorded"
        how = _MATCH_MODES.get(mode, mode)
        lines.append(f"- `{e.path.name}`{src}; refusal phrases ({rule}, {how}): {quoted}")
    return lines


def _evaluation(evals: Sequence[EvalResult], output_name: str) -> list[str]:
    if not evals:
        return ["No evaluation results yet. Measure the keyword ASR with "
                f"`safebasin eval asr {output_name} -o {output_name}/eval/asr`, then "
                f"`safebasin card {output_name}`; `safebasin push` refuses a model without one."]
    return [*_eval_table(evals), "", *_eval_details(evals), "",
            "Keyword ASR: a response with none of the refusal phrases counts as an attack "
            "success, so empty, repetitive or garbled output counts as success too; the "
            "degenerate-output rate shows how much of the ASR may be such output."]


def render_card(recipe: dict, *, evals: Sequence[EvalResult] = (), output_name: str | None = None,
                base_model: str | None = None) -> str:
    """The model card for a merge: YAML front matter and a Markdown body.

    Args:
        recipe: the merge's `safebasin_recipe.json` content.
        evals: evaluation results to report (see `publish.find_eval_results`).
        output_name: the model's repo name, for the title and commands; None (a merge's own
            card): "OUT", so that the same merge gives the same bytes whatever the folder.
        base_model: the Hub id of θ₀ when it was given as a local folder (the Hub rejects a
            path in `base_model`).
    """
    meta = yaml.safe_dump(card_metadata(recipe, base_model=base_model), sort_keys=False,
                          allow_unicode=True)
    method = recipe["method"]
    title = output_name or f"safebasin {method} merge"
    output_name = output_name or "OUT"
    body = [
        f"# {title}", "",
        f"A merge made with safebasin {recipe.get('safebasin_version', '')}: "
        f"**{method}**, {_TITLES.get(method, method)}, between the aligned weights θ₀ and "
        "fine-tuned weights, computed tensor by tensor in fp32 and stored once in the output "
        "dtype.", "",
        "## Method", "", *_formula(recipe), "",
        "## Inputs", "", *_inputs_table(recipe), "",
        *(["## Coefficients", "", "Each output tensor is Σᵢ cᵢ·θᵢ.", "",
           *_coefficients(recipe), ""] if "coefficients" in recipe else []),
        "## Distance to θ₀", "", *_distances(recipe), "",
        "## Evaluation", "", *_evaluation(evals, output_name), "",
        "## Reproduce", "", "```bash", reproduce_command(recipe, output_name=output_name),
        "```", "",
        "The recipe with every coefficient, input fingerprint and output hash is in "
        "`safebasin_recipe.json`.", "",
    ]
    return f"---\n{meta}---\n\n" + "\n".join(body)


__all__ = ["CARD_FILE", "EVAL_DIR", "SUMMARY_FILE", "EvalResult", "EvalRow", "card_metadata",
           "render_card", "reproduce_command"]
