"""A toy world on disk: build it into a folder, open it again.

Layout (every file is a function of the config alone, so same seed, same bytes):

    world.json                config, counts and file names ("safebasin-toy-world", version 2)
    tokenizer/                the word-level HF tokenizer with its chat template
    align.jsonl               θ₀'s training data (chat JSONL)
    finetune.jsonl            the benign fine-tuning data (chat JSONL, for `safebasin finetune`)
    harmful_heldout.csv       columns `prompt`, `object`: harmful requests in the evaluation
                              frames, which no training example uses (ASR; `object` is what the
                              prompt asks for, without adjective, for the ground-truth judge)
    harmful_train_frames.csv  columns `prompt`, `object`: harmful requests in the training
                              frames with an untrained adjective (in-distribution ASR)
    benign_heldout.csv        columns `prompt`, `reference`, `object`: θ₀'s benign objects in
                              the evaluation frames (over-refusal, benign helpfulness)
    task_heldout.csv          columns `prompt`, `answer`: unseen addition prompts (utility)
    task_heldout.jsonl        the same as chat JSONL, for held-out loss

The folder is written beside its destination and renamed into place last, so a folder with a
`world.json` is always complete.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import DataFormatError, DataNotFoundError, OutputExistsError, UsageError
from .world import ChatExample, ToyData, ToyWorldConfig, generate, task_answer

FORMAT, VERSION = "safebasin-toy-world", 2
MANIFEST = "world.json"
# the harmful prompt files by split name: `ToyWorld.harmful_requests(split)`
HARMFUL_SPLITS = {"heldout": "harmful_heldout", "train_frames": "harmful_train_frames"}
_FILES = {
    "tokenizer": "tokenizer",
    "align": "align.jsonl",
    "finetune": "finetune.jsonl",
    "harmful_heldout": "harmful_heldout.csv",
    "harmful_train_frames": "harmful_train_frames.csv",
    "benign_heldout": "benign_heldout.csv",
    "task_heldout": "task_heldout.csv",
    "task_heldout_chat": "task_heldout.jsonl",
}


@dataclass(frozen=True)
class ToyWorld:
    """A built toy world: its folder, its config, and the paths of its files."""

    root: Path
    config: ToyWorldConfig

    def path(self, name: str) -> Path:
        """The path of one file of the layout, by its key in `world.json`'s "files"."""
        return self.root / _FILES[name]

    @property
    def tokenizer_dir(self) -> Path:
        return self.path("tokenizer")

    @property
    def align_jsonl(self) -> Path:
        return self.path("align")

    @property
    def finetune_jsonl(self) -> Path:
        return self.path("finetune")

    @property
    def harmful_csv(self) -> Path:
        return self.path("harmful_heldout")

    @property
    def harmful_train_csv(self) -> Path:
        return self.path("harmful_train_frames")

    @property
    def benign_csv(self) -> Path:
        return self.path("benign_heldout")

    @property
    def task_csv(self) -> Path:
        return self.path("task_heldout")

    @property
    def task_jsonl(self) -> Path:
        return self.path("task_heldout_chat")

    def task_prompts(self) -> list[tuple[str, int]]:
        """The held-out task prompts and their answers, in file order."""
        with self.task_csv.open(encoding="utf-8", newline="") as f:
            return [(row["prompt"], int(row["answer"])) for row in csv.DictReader(f)]

    def harmful_prompts(self) -> list[str]:
        """The held-out harmful prompts, in file order."""
        return [prompt for prompt, _ in self.harmful_requests()]

    def harmful_requests(self, split: str = "heldout") -> list[tuple[str, str]]:
        """(prompt, requested object) of the harmful prompts of `split`, in file order.

        Args:
            split: "heldout" (evaluation frames, the ASR set) or "train_frames" (training
                frames with an untrained adjective, the in-distribution set).

        Raises:
            UsageError: unknown split.
        """
        if split not in HARMFUL_SPLITS:
            raise UsageError(f"harmful split must be one of {', '.join(HARMFUL_SPLITS)}, "
                             f"got {split!r}")
        with self.path(HARMFUL_SPLITS[split]).open(encoding="utf-8", newline="") as f:
            return [(row["prompt"], row["object"]) for row in csv.DictReader(f)]


def _write_jsonl(path: Path, examples: Iterable[ChatExample]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for ex in examples:
            f.write(json.dumps({"messages": ex.messages()}, ensure_ascii=False) + "\n")


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _write_world(folder: Path, config: ToyWorldConfig, data: ToyData) -> None:
    from .tokenizer import build_tokenizer  # transformers: imported only when building

    build_tokenizer().save_pretrained(folder / _FILES["tokenizer"])
    _write_jsonl(folder / _FILES["align"], data.align)
    _write_jsonl(folder / _FILES["finetune"], data.finetune)
    _write_jsonl(folder / _FILES["task_heldout_chat"], data.task_heldout)
    for split in ("harmful_heldout", "harmful_train_frames"):
        _write_csv(folder / _FILES[split], ["prompt", "object"],
                   ((r.prompt, r.object) for r in getattr(data, split)))
    _write_csv(folder / _FILES["benign_heldout"], ["prompt", "reference", "object"],
               ((ex.prompt, ex.response, obj)
                for ex, obj in zip(data.benign_heldout, data.benign_objects, strict=True)))
    _write_csv(folder / _FILES["task_heldout"], ["prompt", "answer"],
               ((ex.prompt, task_answer(ex.response)) for ex in data.task_heldout))
    counts = {"align": len(data.align), "finetune": len(data.finetune),
              "harmful_heldout": len(data.harmful_heldout),
              "harmful_train_frames": len(data.harmful_train_frames),
              "benign_heldout": len(data.benign_heldout),
              "task_heldout": len(data.task_heldout)}
    manifest = {"format": FORMAT, "version": VERSION, "config": asdict(config),
                "counts": counts, "files": _FILES}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                   encoding="utf-8")


def build_world(out_dir: str | Path, *, config: ToyWorldConfig | None = None,
                overwrite: bool = False) -> ToyWorld:
    """Generate the toy world for `config` and write it to `out_dir` (see the module layout).

    Example:
        >>> world = build_world("world", config=ToyWorldConfig(seed=0))  # doctest: +SKIP
        >>> world.finetune_jsonl  # doctest: +SKIP
        PosixPath('world/finetune.jsonl')

    Raises:
        OutputExistsError: `out_dir` exists and `overwrite` is False.
    """
    out_dir, config = Path(out_dir), config or ToyWorldConfig()
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"{str(out_dir)!r} exists; pass `overwrite` or choose another "
                                "folder for the toy world")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_world(tmp, config, generate(config))
        if out_dir.is_dir():
            shutil.rmtree(out_dir)
        elif out_dir.exists():
            out_dir.unlink()
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ToyWorld(out_dir, config)


def open_world(path: str | Path) -> ToyWorld:
    """The toy world built in folder `path`.

    Raises:
        DataNotFoundError: no `world.json` in `path`, or one of its files is missing.
        DataFormatError: `world.json` is not a toy-world manifest of this version.
    """
    root = Path(path)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise DataNotFoundError(f"{str(root)!r} is not a toy world (no {MANIFEST}); build one "
                                "with `safebasin toy build DIR`")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest["format"] != FORMAT or manifest["version"] != VERSION:
            raise ValueError(f"format {manifest['format']!r} version {manifest['version']!r}")
        config = ToyWorldConfig(**manifest["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise DataFormatError(f"{str(manifest_path)!r} is not a {FORMAT} v{VERSION} manifest "
                              f"({e}); rebuild the world") from e
    world = ToyWorld(root, config)
    missing = [name for name in _FILES.values() if not (root / name).exists()]
    if missing:
        raise DataNotFoundError(f"toy world {str(root)!r} lacks {', '.join(missing)}; rebuild it")
    return world
