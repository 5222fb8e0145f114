"""``import seqpad.nn`` / ``seqpad.models`` stay light (issue 10, friction).

Applying ``torch.compiler.disable`` imports ``torch._dynamo``, which roughly doubles
the import time of ``torch``; seqpad applies it lazily, on first call. Not a timed test:
it checks in a fresh interpreter that ``torch._dynamo`` is not imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _modules_after(code: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        check=True, capture_output=True, text=True, env=env, cwd=REPO,
    ).stdout
    return set(out.split())


def test_import_does_not_import_dynamo() -> None:
    mods = _modules_after("import seqpad, seqpad.nn, seqpad.models, seqpad.nn.functional")
    assert "seqpad.nn.rnn" in mods and "seqpad.models" in mods
    assert "torch._dynamo" not in mods


def test_dynamo_is_imported_once_a_disabled_region_runs() -> None:
    # The guard above is meaningful: the lazy disable still happens on first use.
    mods = _modules_after(
        "import torch, seqpad.nn\n"
        "m = seqpad.nn.MaskedGRU(3, 2)\n"
        "m(torch.randn(2, 3, 4), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]))"
    )
    assert "torch._dynamo" in mods
