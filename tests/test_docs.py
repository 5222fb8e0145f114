"""The docs say what the code does: ``return_state`` is a ``forward()`` keyword (issue 10,
defect 8)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_return_state_is_written_as_a_forward_keyword() -> None:
    """No doc or docstring passes return_state to a masked RNN's constructor."""
    import seqpad.nn.rnn as rnn

    ctor = re.compile(r"Masked(LSTM|GRU)\([^()]*return_state")
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in DOCS}
    texts["seqpad/nn/rnn.py docstrings"] = "\n".join(
        d or "" for d in (rnn.__doc__, rnn.MaskedLSTM.__doc__, rnn.MaskedGRU.__doc__))
    bad = {name: ctor.findall(text) for name, text in texts.items() if ctor.search(text)}
    assert not bad
    # and what the docs say is what the code does
    from seqpad.nn import MaskedLSTM

    with pytest.raises(TypeError, match="return_state"):
        MaskedLSTM(4, 8, return_state=True)  # type: ignore[call-arg]
    lstm = MaskedLSTM(4, 8)
    x, mask = torch.randn(2, 4, 5), torch.tensor([[[True] * 5], [[True] * 3 + [False] * 2]])
    out, (h, c) = lstm(x, mask, return_state=True)
    assert out.shape == (2, 8, 5) and h.shape == c.shape == (1, 2, 8)
