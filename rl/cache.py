"""Where distillery keeps what it builds once and reuses: built bases, converted models, kernel tunings.

Standard library only, so that the jobs' input checks and the FP4 kernels can ask without importing torch or
transformers.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$DISTILLERY_CACHE`` or ``~/.cache/distillery``."""
    return Path(os.environ.get("DISTILLERY_CACHE", Path.home() / ".cache" / "distillery"))
