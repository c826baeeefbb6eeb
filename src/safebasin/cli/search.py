"""`safebasin tune` and `safebasin landscape`."""

from __future__ import annotations
