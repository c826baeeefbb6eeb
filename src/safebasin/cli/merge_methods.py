"""`safebasin merge` methods beyond the linear four.

TIES, DARE, breadcrumbs, SLERP, model stock, and running a mergekit YAML.
"""

from __future__ import annotations
