"""The demo model: a tiny gpt-oss trained on the synthetic tool task (`model.demo.task`).

It ships as one compact file (`demo.safetensors`: the kept vocabulary rows, MXFP4 experts) and is
expanded on first use into an ordinary checkpoint folder in the cache directory, which
`load_model` reads like any other. How it was made: `model/demo/README.md`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..gpt_oss import GptOss

WEIGHTS = Path(__file__).with_name("demo.safetensors")


def demo_model_path(weights: str | os.PathLike[str] | None = None) -> Path:
    """A checkpoint folder holding the demo model (expanded once, then reused)."""
    from harmony_agent.encoding import cache_dir

    from ..compact import expand_compact

    source = Path(weights) if weights is not None else WEIGHTS
    if not source.is_file():
        raise FileNotFoundError(f"{source}: the demo model's weights are missing")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    for base in (cache_dir(), Path(tempfile.gettempdir()) / "harmony-agent"):
        folder = base / f"demo-{digest}"
        if (folder / "config.json").is_file():
            return folder
        try:
            base.mkdir(parents=True, exist_ok=True)
            # Expand into a private folder and rename it: a concurrent or interrupted
            # expansion never leaves a half-written checkpoint under the final name.
            tmp = Path(tempfile.mkdtemp(dir=base, prefix=folder.name + "."))
            expand_compact(source, tmp)
            try:
                tmp.rename(folder)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
            return folder
        except OSError:
            continue  # read-only cache dir: try the temp dir
    raise OSError(f"could not expand the demo model into {cache_dir()} or the temp dir")


def load_demo_model(weights: str | os.PathLike[str] | None = None, **kwargs: Any) -> GptOss:
    """`load_model` on the demo model; keyword arguments go to `load_model`."""
    from ..loading import load_model

    return load_model(demo_model_path(weights), **kwargs)


from .task import DEMO_CURRENT_DATE  # noqa: E402 - re-exported for the agent's demo default

__all__ = ["DEMO_CURRENT_DATE", "WEIGHTS", "demo_model_path", "load_demo_model"]
