"""Entry points. They only compose configs (Hydra) and hand them to `tasks`."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
CONF_DIR = str(REPO_ROOT / "conf")
os.environ.setdefault("SLMLAB_ROOT", str(REPO_ROOT))
