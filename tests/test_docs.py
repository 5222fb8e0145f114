"""The docs run as written and say what the code does.

Every page (README.md, docs/*.md) is run as a reader would run it, top to bottom, in a
fresh directory holding a copy of ``data/`` (the bundled proteome cut to its first
records, so the whole file stays fast): in ```` ```bash ```` blocks, each ``seqpad ...``
command (also after ``&&``) runs as ``python -m seqpad ...``; every ```` ```python ````
block runs, in one namespace per page (``__name__ == "__main__"``) with warnings as
errors. A block that is a signature or a fragment is fenced ```` ```python no-run ````
(GitHub still highlights it as Python); other languages and plain fences never run.
"""

from __future__ import annotations

import gzip
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```", re.S | re.M)
PROTEOME = "UP000000625-E.coli.fasta.gz"
TINY_RECORDS = 40


def blocks(page: Path) -> list[tuple[str, int, str]]:
    """The runnable blocks of a page: ``(kind, line, text)``, kind "python" or "seqpad"
    (one command line each), in page order."""
    text = page.read_text()
    out: list[tuple[str, int, str]] = []
    for m in FENCE.finditer(text):
        lang, info, body = m.group(1), m.group(2).split(), m.group(3)
        line = text.count("\n", 0, m.start()) + 2
        if "no-run" in info:
            continue
        if lang == "python":
            out.append(("python", line, body))
        elif lang in ("bash", "sh", "console"):
            for i, cmd_line in enumerate(body.splitlines()):
                cmd_line = cmd_line.split(" #")[0]
                for part in cmd_line.split("&&"):
                    if part.strip().startswith("seqpad "):
                        out.append(("seqpad", line + i, part.strip()))
    return out


RUNNABLE = [p for p in DOCS if blocks(p)]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/`` with the proteome cut to its first records."""
    data = tmp_path_factory.mktemp("docs") / "data"
    data.mkdir()
    shutil.copy(ROOT / "data" / "README.md", data / "README.md")
    with gzip.open(ROOT / "data" / PROTEOME, "rt") as src, \
            gzip.open(data / PROTEOME, "wt") as dst:
        n = 0
        for line in src:
            if line.startswith(">"):
                n += 1
                if n > TINY_RECORDS:
                    break
            dst.write(line)
    return data


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_page_runs_as_written(page: Path, tiny_data: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(tiny_data, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    namespace: dict[str, object] = {"__name__": "__main__"}
    for kind, line, text in blocks(page):
        where = f"{page.relative_to(ROOT)}:{line}"
        if kind == "seqpad":
            args = shlex.split(text)[1:]
            r = subprocess.run([sys.executable, "-m", "seqpad", *args], env=env,
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, f"{where}: {text}\n{r.stderr}"
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. pin_memory=True on a machine without GPU
            exec(compile(text, where, "exec"), namespace)
    out = capsys.readouterr().out
    if page.name == "README.md":  # the training loop shows its progress
        assert re.search(r"^epoch 1 batch 0/\d+: logits \(\d+, 31, \d+\)$", out, re.M), out


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


def test_one_store_name_for_the_proteome_everywhere() -> None:
    """Every page that tokenizes the bundled proteome calls the store the same."""
    outputs = {}
    for page in RUNNABLE:
        for kind, line, text in blocks(page):
            if kind == "seqpad" and PROTEOME in text:
                args = shlex.split(text)
                outputs[f"{page.name}:{line}"] = args[args.index("-o") + 1]
    assert len(outputs) >= 4 and set(outputs.values()) == {"ecoli.store"}, outputs


def _line(exc: BaseException) -> str:
    t = type(exc)
    name = t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"
    return f"{name}: {exc}"


def test_error_lines_shown_in_the_docs_are_the_real_ones() -> None:
    """The example error / warning lines of the "Errors" sections are what the code says."""
    import numpy as np

    from seqpad import Collator, TokenBudgetBatchSampler, Tokenizer
    from seqpad.nn import MaskedBatchNorm1d, MaskedEmbedding, MaskedLSTM

    tok = Tokenizer("protein")
    calls = {
        "batching.md": [
            lambda: Collator("protein"),
            lambda: Collator(tok)([np.array([5, 40])]),
            lambda: Collator(tok, max_length=4, crop="error")(["MKVLA"]),
            lambda: Collator(tok)([]),
            lambda: TokenBudgetBatchSampler([5, 6, 7], 100, num_replicas=4, rank=0),
            lambda: TokenBudgetBatchSampler([100] * 5, 100, num_replicas=3, rank=0),
            lambda: TokenBudgetBatchSampler([100] * 10, 200, num_replicas=8, rank=0,
                                            drop_last=True),
            lambda: TokenBudgetBatchSampler(["MKV", "MK"], 100),
        ],
        "models.md": [
            lambda: MaskedEmbedding(31, 8)(torch.tensor([[5, 40]])),
            lambda: MaskedBatchNorm1d(8)(torch.randn(2, 9, 5),
                                         torch.ones(2, 1, 5, dtype=torch.bool)),
            lambda: MaskedLSTM(4, 8)(torch.randn(1, 4, 3), torch.tensor([[[True, False, True]]])),
            lambda: MaskedLSTM(4, 8, return_state=True),
        ],
    }
    for page, fns in calls.items():
        text = (ROOT / "docs" / page).read_text()
        for fn in fns:
            with pytest.raises(Exception) as e:
                fn()
            assert _line(e.value) in text, (page, _line(e.value))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Collator(tok, add_bos=True, add_eos=True)([tok.encode("MKV", add_bos=True, add_eos=True)])
        Collator(tok, max_length=6, crop="start")([tok.encode("MKVLAGHIKL", add_bos=True,
                                                              add_eos=True)])
    text = (ROOT / "docs" / "batching.md").read_text()
    assert len(caught) == 3
    for w in caught:
        assert f"UserWarning: {w.message}" in text
