"""`safebasin merge` safety merges: RESTA and Safe LoRA."""

from __future__ import annotations
