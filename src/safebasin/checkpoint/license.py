"""The licence of a model folder, as its model card declares it.

The Hub keeps a model's licence in the YAML front matter of its `README.md` (`license`, and
`license_name`, `license_link` for "other"), which a Hub snapshot includes. Neither config.json
nor safetensors metadata records one. A merge carries θ₀'s licence into its recipe and card.
"""

from __future__ import annotations

from pathlib import Path

import yaml

CARD_FILE = "README.md"  # a model card, on the Hub and in a model folder
_LICENSE_KEYS = ("license", "license_name", "license_link")


def _front_matter(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return {}
    if not text.startswith("---"):
        return {}
    head, sep, _ = text[3:].partition("\n---")
    try:
        meta = yaml.safe_load(head) if sep else None
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def base_license(folder: str | Path) -> dict:
    """`license` (and `license_name`, `license_link`) from the front matter of `folder`'s
    README.md; {} when there is no card or it names no licence (a card we cannot parse
    included)."""
    meta = _front_matter(Path(folder) / CARD_FILE) if Path(folder).is_dir() else {}
    return {k: meta[k] for k in _LICENSE_KEYS if isinstance(meta.get(k), str)}


__all__ = ["CARD_FILE", "base_license"]
