"""CNN / RNN models built from masked blocks (placeholder: being written)."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["build_model"]


def build_model(config: dict[str, Any]) -> nn.Module:
    raise NotImplementedError
