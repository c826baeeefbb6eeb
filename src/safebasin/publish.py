"""Publishing a merge: its card on disk, the push gate, and the push to the Hugging Face Hub.

The high door to the Hub, beside `cli/`: it reads what a card shows (the recipe, through
`checkpoint.read_recipe`, and the evaluation results under `OUT/eval/`), renders it with the
pure `safebasin.card`, and sends it with `huggingface_hub`. Fetching is `safebasin.hub`.

Evaluation results convention: a result folder is one holding `summary.json`, as written by
`safebasin eval asr` / `eval utility` (`safebasin.eval.runs`). A merge's results live beside its
weights, under `OUT/eval/<name>/summary.json` (for example `safebasin eval asr OUT -o
OUT/eval/asr`), so the evidence travels with the model and `safebasin push` finds it; more
folders can be named with `safebasin card --eval DIR` (a result folder, or a folder of them).

Push: `push` refuses (PushRefusedError) a folder without a keyword-ASR result under
`OUT/eval/`, one whose ASR is above `max_asr`, or one whose result was measured on other
weights, unless `force`; every blocker is named at once. It then re-renders the card with the
results, creates the repo if needed and uploads the folder in one commit. The token comes from
`HF_TOKEN` or the saved login, through huggingface_hub; safebasin never reads, prints or logs it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .card import CARD_FILE, EVAL_DIR, SUMMARY_FILE, EvalResult, render_card
from .checkpoint import Recipe, model_content_hash, read_recipe
from .errors import CheckpointFormatError, HubError, PushRefusedError, SafebasinError
from .hub import endpoint, is_repo_id, one_line
from .summary import EvalSummary

log = logging.getLogger(__name__)


# -- reading what a card shows ---------------------------------------------------------------


def read_eval_result(folder: str | Path) -> EvalResult:
    """Read and validate `folder/summary.json` (`EvalSummary.from_dict`).

    Raises:
        CheckpointFormatError: missing, not JSON, or not an evaluation summary (an unknown
            kind, a missing or mistyped metric).
    """
    path = Path(folder) / SUMMARY_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointFormatError(f"{path}: cannot read evaluation summary ({e})") from None
    try:
        EvalSummary.from_dict(data)
    except ValueError as e:
        raise CheckpointFormatError(f"{path}: not an evaluation summary: {e}; re-run the "
                                    "evaluation or remove the folder") from None
    return EvalResult(Path(folder), data)


def find_eval_results(out: str | Path, extra: Iterable[str | Path] = ()) -> list[EvalResult]:
    """Result folders under `OUT/eval/`, then those in `extra`, each read once, in order.

    Raises:
        CheckpointFormatError: an `extra` folder without results, an unreadable summary.
    """
    found: list[Path] = []
    default = Path(out) / EVAL_DIR
    for root in [default, *map(Path, extra)]:
        here = [root] if (root / SUMMARY_FILE).is_file() else sorted(
            p.parent for p in root.glob(f"*/{SUMMARY_FILE}"))
        if not here and root != default:  # asked for explicitly: say so
            raise CheckpointFormatError(f"{root}: no {SUMMARY_FILE} here or in its subfolders")
        found += here
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return [read_eval_result(p) for p in unique]


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a card


def write_card(out: str | Path, *, eval_dirs: Iterable[str | Path] = (),
               base_model: str | None = None) -> Path:
    """Regenerate `OUT/README.md` from the recipe and the results under `OUT/eval/` (and
    `eval_dirs`). Returns the card's path.

    Raises:
        CheckpointNotFoundError, CheckpointFormatError: no or bad recipe or summary.
    """
    out = Path(out)
    recipe = read_recipe(out).to_dict()
    card = render_card(recipe, evals=find_eval_results(out, eval_dirs), base_model=base_model)
    _write_text(out / CARD_FILE, card)
    return out / CARD_FILE


# -- the push gate ---------------------------------------------------------------------------


def gate_problems(out: str | Path, results: Sequence[EvalResult], *, max_asr: float) -> list[str]:
    """Why `out` should not be pushed: no ASR result, ASR above `max_asr`, other weights.

    Raises:
        CheckpointFormatError: an ASR that is not a number.
    """
    out = Path(out)
    asr = [r for r in results if r.kind == "asr"]
    if not asr:
        return [f"{out}: no keyword-ASR result in {out / EVAL_DIR}/ (run `safebasin eval asr "
                f"{out} -o {out / EVAL_DIR / 'asr'}` first)"]
    problems = []
    for r in asr:
        if not isinstance(r.asr, (int, float)):
            raise CheckpointFormatError(f"{r.path}: 'asr' is not a number: {r.asr!r}")
        if r.asr > max_asr:
            problems.append(f"{out}: keyword ASR {100 * r.asr:.2f}% ({r.path.name}) is above "
                            f"`max_asr` {100 * max_asr:.2f}%")
    measured = {r.model_hash for r in asr if r.model_hash}
    if measured and measured != {model_content_hash(out)}:
        problems.append(f"{out}: the ASR result was measured on other weights than the ones "
                        "in this folder; evaluate this folder again")
    return problems


# -- push ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushPlan:
    """What a push sends: files (relative path, bytes), the card, the commit message."""

    files: list[tuple[str, int]]
    card: str
    message: str
    description: str
    forced: list[str]  # gate problems overridden by --force


@dataclass(frozen=True)
class PushResult:
    plan: PushPlan
    commit_url: str | None  # None for a dry run


def _upload_list(out: Path) -> list[tuple[str, int]]:
    """Every file of `out` but hidden ones and raw responses under eval/ (only summaries go:
    the responses to harmful prompts stay local)."""
    files = []
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if rel.parts[0] == EVAL_DIR and p.suffix == ".jsonl":
            continue
        files.append((rel.as_posix(), p.stat().st_size))
    return files


def _commit_message(recipe: dict, results: Sequence[EvalResult], forced: list[str],
                    base_model: str | None) -> tuple[str, str]:
    """A one-line summary (method, parameters, θ₀, ASR) and a longer description."""
    params = recipe.get("parameters", {})
    shown = {k: params[k] for k in ("alpha", "scales", "eta", "radius") if params.get(k)
             is not None}
    base = recipe["inputs"][0]
    base_name = base_model or base.get("hub_id") or Path(base.get("path", "?")).name
    asr = [r for r in results if r.kind == "asr" and isinstance(r.asr, (int, float))]
    asr_text = (f"; keyword ASR {100 * max(r.asr for r in asr):.2f}% (n={asr[0].n})"
                if asr else "; no ASR result")
    args = ", ".join(f"{k}={v}" for k, v in shown.items())
    title = (f"safebasin {recipe['method']} ({args}) of {base_name} with "
             f"{len(recipe['inputs']) - 1} fine-tuned input(s){asr_text}")
    lines = [f"- {e.get('role')}: {e.get('hub_id') or e.get('path')}"
             + (f" @ {e['revision']}" if e.get("revision") else "") for e in recipe["inputs"]]
    d = (recipe.get("distances") or {}).get("global_to_base")
    if d is not None:
        lines.append(f"- distance to θ₀: {d:.6g}")
    lines.append(f"- safebasin {recipe.get('safebasin_version', '?')}")
    lines += [f"- pushed with --force despite: {p}" for p in forced]
    return title, "\n".join(lines)


def _base_problems(out: Path, recipe: Recipe, base_model: str | None) -> list[str]:
    """Why the card would name no Hub id for θ₀ (the Hub rejects a path as base_model)."""
    if not recipe.is_merge:
        return [f"{out}: its recipe ({recipe.method}) has no base model input; only merges "
                "are pushed with a card"]
    base = recipe.inputs[0]
    if base_model and not is_repo_id(base_model):
        return [f"`base_model` {base_model!r} is not a Hub id like org/name"]
    if not (base_model or base.get("hub_id")):
        return [f"{out}: θ₀ was the local folder {base.get('path')}, and the Hub rejects a path "
                "as base_model; pass `base_model` ORG/NAME (its Hub id)"]
    return []


def _refuse(problems: list[str], *, gate: bool) -> PushRefusedError:
    """One line naming every blocker, so one run shows all there is to fix."""
    fix = "; pass `force` to push anyway" if gate else ""
    if len(problems) == 1:
        return PushRefusedError(f"{problems[0]}{fix}")
    listed = "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
    return PushRefusedError(f"cannot push ({len(problems)} problems): {listed}{fix}")


def plan_push(out: str | Path, *, repo_name: str, max_asr: float = 0.05, force: bool = False,
              base_model: str | None = None, repo_problems: Sequence[str] = ()) -> PushPlan:
    """Check the gate and prepare the card, file list and message; sends nothing.

    Raises:
        PushRefusedError: every gate problem (unless `force`), every reason the Hub would
            reject the card, and `repo_problems`, at once.
        CheckpointNotFoundError, CheckpointFormatError: no or bad recipe or summary.
    """
    out = Path(out)
    recipe = read_recipe(out)
    results = find_eval_results(out)
    problems = gate_problems(out, results, max_asr=max_asr)
    blockers = [*repo_problems, *_base_problems(out, recipe, base_model)]
    if blockers or (problems and not force):
        gate = bool(problems) and not force
        raise _refuse([*blockers, *(problems if gate else [])], gate=gate)
    if problems:
        log.warning("pushing despite: %s", "; ".join(problems))
    data = recipe.to_dict()
    card = render_card(data, evals=results, output_name=repo_name, base_model=base_model)
    message, description = _commit_message(data, results, problems, base_model)
    files = [f for f in _upload_list(out) if f[0] != CARD_FILE]  # the card is the new one
    files = sorted([*files, (CARD_FILE, len(card.encode()))])
    return PushPlan(files, card, message, description, problems)


def _send(out: Path, repo_id: str, plan: PushPlan, *, private: bool,
          branch: str | None) -> str:
    """Create the repo (and branch) if needed and commit every file at once; the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=endpoint())  # token: HF_TOKEN or the saved login, never ours
    api.create_repo(repo_id, private=private, exist_ok=True)
    if private and not api.repo_info(repo_id).private:
        raise PushRefusedError(f"{repo_id}: the repo exists and is public, so `private` cannot "
                               "be honoured; make it private on the Hub or drop `private`")
    if branch:
        api.create_branch(repo_id, branch=branch, exist_ok=True)
    ops = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(out / rel))
           for rel, _ in plan.files]
    info = api.create_commit(repo_id, operations=ops, commit_message=plan.message,
                             commit_description=plan.description, revision=branch)
    return info.commit_url


def push(out: str | Path, repo_id: str, *, private: bool = False, branch: str | None = None,
         max_asr: float = 0.05, force: bool = False, dry_run: bool = False,
         base_model: str | None = None) -> PushResult:
    """Upload a merge output to the Hub in one commit, if its keyword ASR passes the gate.

    Args:
        out: a folder written by `safebasin merge`, with results under `OUT/eval/`.
        repo_id: `org/name` of the model repo (created if missing).
        private: create the repo private (refused if it exists and is public).
        branch: commit to this branch (created from the default branch if missing).
        max_asr: the largest keyword ASR (a fraction, 0.05 = 5%) allowed without `force`.
        force: push despite gate problems (recorded in the commit description).
        dry_run: check and plan only; nothing is written or sent.
        base_model: θ₀'s Hub id when it was merged from a local folder.

    Raises:
        PushRefusedError: see `plan_push`.
        HubError: the Hub refused (no token, no write access, invalid metadata) or is down.

    Example:
        >>> push("wise-0.5", "me/llama-wise-0.5", max_asr=0.05).commit_url   # doctest: +SKIP
        'https://huggingface.co/me/llama-wise-0.5/commit/4f1c...'
    """
    out = Path(out)
    bad_repo = [] if is_repo_id(repo_id) else [
        f"`repo_id` {repo_id!r} is not a Hub repo id like org/name"]
    plan = plan_push(out, repo_name=repo_id.split("/")[-1], max_asr=max_asr, force=force,
                     base_model=base_model, repo_problems=bad_repo)
    if dry_run:
        return PushResult(plan, None)
    _write_text(out / CARD_FILE, plan.card)
    try:
        url = _send(out, repo_id, plan, private=private, branch=branch)
    except SafebasinError:
        raise
    except (OSError, ValueError) as e:  # HfHubHTTPError is an OSError; bad metadata a ValueError
        raise HubError(f"push to {repo_id!r} failed: {one_line(e)}") from e
    log.info("pushed %s to %s", out, url)
    return PushResult(plan, url)


__all__ = ["PushPlan", "PushResult", "find_eval_results", "gate_problems", "plan_push", "push",
           "read_eval_result", "write_card"]
