"""The folder prometheus-client's multiprocess mode shares between processes.

prometheus-client decides at its first import whether values live in process memory or in
files under ``PROMETHEUS_MULTIPROC_DIR``; so this module never imports it, and a launcher calls
``prepare_multiprocess_dir`` before anything else does.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(purpose: str) -> Path:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at an empty folder (made here unless already set) for
    this process and its children."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prepare the metrics folder before prometheus_client is imported")
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        path = Path(configured)
        # values of an earlier run would be summed into this one's
        if path.is_dir():
            shutil.rmtree(path)
    else:
        path = Path(tempfile.mkdtemp(prefix=f"gradlab-{purpose}-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)
    return path
