"""The public API: every exported name resolves, and torch-free paths stay torch-free."""

from __future__ import annotations

import seqpad
import seqpad.nn


def test_every_exported_name_resolves() -> None:
    for name in seqpad.__all__:
        assert getattr(seqpad, name) is not None, name
    for name in seqpad.nn.__all__:
        assert getattr(seqpad.nn, name) is not None, name
    assert sorted(seqpad.__all__) == sorted([*seqpad._EXPORTS, "__version__"])


def test_unknown_attribute_raises() -> None:
    try:
        seqpad.does_not_exist  # noqa: B018
    except AttributeError as e:
        assert "does_not_exist" in str(e)
    else:
        raise AssertionError("expected AttributeError")
