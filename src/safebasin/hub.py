"""safebasin's one door to the Hugging Face Hub: Hub ids as inputs, model cards, gated push.

Only this module imports `huggingface_hub`, and only inside the functions that need it, so
`import safebasin` (and `safebasin card`) never pays for it. `checkpoint.open_checkpoint` reaches
`snapshot` through a lazy import: Hub resolution is the one place where the file layer calls up.

Hub ids: `org/name` or `org/name@revision` (branch, tag or commit), used wherever a model path
is accepted when no local path of that name exists. Only safetensors, JSON, tokenizer,
chat-template, license and model-card files are fetched, never `.bin`/`.pt` pickles; the
resolved commit sha goes into the recipe. `HF_HUB_OFFLINE`, `HF_HUB_CACHE`/`HF_HOME` and
`HF_ENDPOINT` are read when called (huggingface_hub reads them once, at import).

Push: `push` refuses (PushRefusedError) a folder without a keyword-ASR result under
`OUT/eval/`, one whose ASR is above `max_asr`, or one whose result was measured on other weights,
unless `force`. It then re-renders the card with the results, creates the repo if needed and
uploads the folder in one commit. The token comes from `HF_TOKEN` or the saved login, through
huggingface_hub; safebasin never reads, prints or logs it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .card import CARD_FILE, EVAL_DIR, EvalResult, find_eval_results, render_card
from .checkpoint import RECIPE_FILE
from .errors import (
    CheckpointFormatError,
    CheckpointNotFoundError,
    HubError,
    PushRefusedError,
    SafebasinError,
)

log = logging.getLogger(__name__)

# What a merge, an evaluation or a card needs from a model repo. Never pickles.
HUB_PATTERNS = ["*.safetensors", "*.json", "tokenizer*", "*.model", "*.tiktoken", "vocab.txt",
                "merges.txt", "*.jinja", "LICENSE*", CARD_FILE]
# org/name, each part as the Hub allows it; an optional @revision (which may hold slashes).
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})"
                     r"(?:@(?P<rev>[^\s@]+))?$")
_SHA = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "ON", "YES", "TRUE"}


# -- Hub ids as inputs -----------------------------------------------------------------------


@dataclass(frozen=True)
class HubRef:
    """A model repo on the Hub and the revision asked for (None: the default branch)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


def parse_hub_id(spec: str | os.PathLike) -> HubRef | None:
    """`org/name[@revision]` as a `HubRef`; None for anything that cannot be a Hub id."""
    m = _HUB_ID.match(str(spec))
    if m is None or ".." in m.group("repo") or "--" in m.group("repo"):
        return None
    return HubRef(m.group("repo"), m.group("rev"))


def _is_repo_id(text: str) -> bool:
    """`org/name` with no revision: what create_repo and base_model accept."""
    return parse_hub_id(text) is not None and "@" not in text


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().upper() in _TRUE
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


def _cache_dir() -> str | None:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME")
    return os.path.join(home, "hub") if home else None


def _one_line(e: BaseException, limit: int = 300) -> str:
    """A Hub error as one line: its messages run to several (status, then the server's why)."""
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    text = text or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _snapshot_error(ref: HubRef, e: BaseException) -> HubError:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = f"{str(ref)!r} is not a local path, and as a Hub model id"
    if isinstance(e, GatedRepoError):
        why = "it is gated: accept its terms on the Hub, then log in or set HF_TOKEN"
    elif isinstance(e, RepositoryNotFoundError):
        why = "no such repo (or it is private: log in or set HF_TOKEN)"
    elif isinstance(e, RevisionNotFoundError):
        why = f"it has no revision {ref.revision!r}"
    elif isinstance(e, LocalEntryNotFoundError) and _offline():
        why = ("it is not in the Hugging Face cache and HF_HUB_OFFLINE is set; download it "
               "once online, or unset HF_HUB_OFFLINE")
    else:
        why = f"it cannot be fetched and is not cached ({_one_line(e)})"
    return HubError(f"{what}: {why}")


def snapshot(ref: HubRef) -> tuple[Path, dict]:
    """Fetch (or find in the cache) a model repo's safetensors, config and tokenizer files.

    Returns:
        The local snapshot folder, and the source to record: {"hub_id", "revision" (the commit
        sha), "requested_revision"}.

    Raises:
        HubError: offline and not cached, unknown or gated repo, unknown revision, no network.
    """
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(ref.repo_id, revision=ref.revision,
                                        allow_patterns=HUB_PATTERNS, cache_dir=_cache_dir(),
                                        endpoint=_endpoint(), local_files_only=_offline()))
    except (OSError, ValueError) as e:  # HTTP, cache and validation errors are both kinds
        raise _snapshot_error(ref, e) from e
    # The cache keeps each snapshot in snapshots/<commit sha>/: the revision actually read.
    sha = folder.name if _SHA.match(folder.name) else None
    source = {"hub_id": ref.repo_id, "revision": sha}
    if ref.revision and ref.revision != sha:
        source["requested_revision"] = ref.revision
    return folder, source


def download_file(repo_id: str, filename: str, *, repo_type: str = "dataset") -> Path:
    """One file of a Hub repo (the default AdvBench prompts), from the cache when offline.

    Raises:
        HubError: offline and not cached, no network, unknown repo or file.
    """
    from huggingface_hub import hf_hub_download

    offline = _offline()
    try:
        return Path(hf_hub_download(repo_id, filename, repo_type=repo_type, cache_dir=_cache_dir(),
                                    endpoint=_endpoint(), local_files_only=offline))
    except (OSError, ValueError) as e:  # HTTP, cache and validation errors are both kinds
        why = "offline and not in the cache" if offline else _one_line(e)
        raise HubError(f"cannot fetch {filename!r} from {repo_type} {repo_id!r}: {why}") from e


# -- the card of a merge on disk -------------------------------------------------------------


def load_recipe(out: str | Path) -> dict:
    """The recipe of a safebasin output folder.

    Raises:
        CheckpointNotFoundError: no recipe (not a safebasin merge output).
        CheckpointFormatError: a recipe that is not a JSON object with method and inputs.
    """
    path = Path(out) / RECIPE_FILE
    if not path.is_file():
        raise CheckpointNotFoundError(f"{out}: no {RECIPE_FILE}; only folders written by "
                                      "`safebasin merge` have a recipe to describe")
    try:
        recipe = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointFormatError(f"{path}: malformed recipe ({e})") from None
    if not isinstance(recipe, dict) or "method" not in recipe or "inputs" not in recipe:
        raise CheckpointFormatError(f"{path}: not a safebasin recipe (no method or inputs)")
    return recipe


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
    recipe = load_recipe(out)
    card = render_card(recipe, evals=find_eval_results(out, eval_dirs), base_model=base_model)
    _write_text(out / CARD_FILE, card)
    return out / CARD_FILE


# -- the push gate ---------------------------------------------------------------------------


def _weights_hash(out: Path) -> str:
    from .eval.loading import model_content_hash  # the evaluator's own hash, same format

    return model_content_hash(out)


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
                            f"--max-asr {100 * max_asr:.2f}%")
    measured = {r.model_hash for r in asr if r.model_hash}
    if measured and measured != {_weights_hash(out)}:
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


def plan_push(out: str | Path, *, repo_name: str, max_asr: float = 0.05, force: bool = False,
              base_model: str | None = None) -> PushPlan:
    """Check the gate and prepare the card, file list and message; sends nothing.

    Raises:
        PushRefusedError: a gate problem without `force`, or a card the Hub would reject.
        CheckpointNotFoundError, CheckpointFormatError: no or bad recipe or summary.
    """
    out = Path(out)
    recipe = load_recipe(out)
    results = find_eval_results(out)
    problems = gate_problems(out, results, max_asr=max_asr)
    if problems and not force:
        raise PushRefusedError(f"{problems[0]}; pass --force to push anyway")
    card = render_card(recipe, evals=results, output_name=repo_name, base_model=base_model)
    base = recipe["inputs"][0]
    if base_model and not _is_repo_id(base_model):
        raise PushRefusedError(f"--base-model {base_model!r} is not a Hub id like org/name")
    if not (base_model or base.get("hub_id")):
        raise PushRefusedError(f"{out}: θ₀ was the local folder {base.get('path')}, and the Hub "
                               "rejects a path as base_model; pass --base-model ORG/NAME (its "
                               "Hub id)")
    if problems:
        log.warning("pushing despite: %s", "; ".join(problems))
    message, description = _commit_message(recipe, results, problems, base_model)
    files = [f for f in _upload_list(out) if f[0] != CARD_FILE]  # the card is the new one
    files = sorted([*files, (CARD_FILE, len(card.encode()))])
    return PushPlan(files, card, message, description, problems)


def _send(out: Path, repo_id: str, plan: PushPlan, *, private: bool,
          branch: str | None) -> str:
    """Create the repo (and branch) if needed and commit every file at once; the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=_endpoint())  # token: HF_TOKEN or the saved login, never ours
    api.create_repo(repo_id, private=private, exist_ok=True)
    if private and not api.repo_info(repo_id).private:
        raise PushRefusedError(f"{repo_id}: the repo exists and is public, so --private cannot "
                               "be honoured; make it private on the Hub or drop --private")
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
    if not _is_repo_id(repo_id):
        raise PushRefusedError(f"--repo-id {repo_id!r} is not a Hub repo id like org/name")
    plan = plan_push(out, repo_name=repo_id.split("/")[1], max_asr=max_asr, force=force,
                     base_model=base_model)
    if dry_run:
        return PushResult(plan, None)
    _write_text(out / CARD_FILE, plan.card)
    try:
        url = _send(out, repo_id, plan, private=private, branch=branch)
    except SafebasinError:
        raise
    except (OSError, ValueError) as e:  # HfHubHTTPError is an OSError; bad metadata a ValueError
        raise HubError(f"push to {repo_id!r} failed: {_one_line(e)}") from e
    log.info("pushed %s to %s", out, url)
    return PushResult(plan, url)


__all__ = ["HUB_PATTERNS", "HubRef", "PushPlan", "PushResult", "gate_problems", "load_recipe",
           "parse_hub_id", "plan_push", "push", "snapshot", "write_card"]
