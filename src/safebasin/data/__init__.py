"""Evaluation prompt sets shipped inside the package, so evaluation works offline.

AdvBench, HarmBench's text behaviours, JailbreakBench's behaviours and XSTest's prompts are kept
here verbatim with their licences (`SOURCES.md` and `LICENSES/` beside this file). A set is
named on the command line (``--prompts harmbench``); `PROMPT_SETS` says which file, which column
and which rows each name means. This module reads no file: `safebasin.eval.prompts` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class PromptSet:
    """A shipped prompt file and how to read it.

    Attributes:
        name: what the user types (``advbench``).
        file: the file name beside this module.
        column: the prompt column.
        rows: how many prompts the set yields (checked by the tests).
        licence: the licence's short name; its text is in ``LICENSES/``.
        where: keep only rows whose columns equal these values.
    """

    name: str
    file: str
    column: str
    rows: int
    licence: str
    where: tuple[tuple[str, str], ...] = ()

    @property
    def path(self) -> Path:
        return _HERE / self.file


PROMPT_SETS: dict[str, PromptSet] = {s.name: s for s in (
    PromptSet("advbench", "advbench_harmful_behaviors.csv", "goal", 520, "MIT"),
    # HarmBench's contextual behaviours get their ContextString put before them (see prompts.py)
    PromptSet("harmbench", "harmbench_behaviors_text_test.csv", "Behavior", 320, "MIT"),
    # `Goal` is the full request; `Behavior` is only a short label
    PromptSet("jbb", "jbb_behaviors_harmful.csv", "Goal", 100, "MIT"),
    # For keyword ASR: XSTest's unsafe contrast prompts, which a model should refuse. Its safe
    # prompts (label "safe", 250) are the over-refusal set, read by `load_xstest_safe`.
    PromptSet("xstest", "xstest_prompts.csv", "prompt", 200, "CC-BY-4.0",
              where=(("label", "unsafe"),)),
)}
DEFAULT_PROMPT_SET = "advbench"  # what `safebasin eval asr` reads without --prompts
XSTEST = PROMPT_SETS["xstest"]


def prompt_set(spec: str | Path) -> PromptSet | None:
    """The shipped set named ``spec``; None when it names none or a local file of that name
    exists (a path the user has wins over a name)."""
    found = PROMPT_SETS.get(str(spec))
    if found is None or Path(spec).exists():
        return None
    return found


__all__ = ["DEFAULT_PROMPT_SET", "PROMPT_SETS", "PromptSet", "XSTEST", "prompt_set"]
