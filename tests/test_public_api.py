"""The public API: every exported name resolves, and torch-free paths stay torch-free."""

from __future__ import annotations

import subprocess
import sys

import seqpad
import seqpad.nn


def test_every_exported_name_resolves() -> None:
    for name in seqpad.__all__:
        assert getattr(seqpad, name) is not None, name
    for name in seqpad.nn.__all__:
        assert getattr(seqpad.nn, name) is not None, name
    assert sorted(seqpad.__all__) == sorted([*seqpad._EXPORTS, "__version__"])


def test_cli_path_does_not_import_torch() -> None:
    # `seqpad tokenize` must start fast: importing torch costs seconds.
    code = (
        "import sys, seqpad, seqpad.cli\n"
        "from seqpad import Tokenizer, read_fasta, write_store\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_attribute_raises() -> None:
    try:
        seqpad.does_not_exist  # noqa: B018
    except AttributeError as e:
        assert "does_not_exist" in str(e)
    else:
        raise AssertionError("expected AttributeError")
