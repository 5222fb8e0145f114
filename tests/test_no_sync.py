"""No host-device synchronisation in the masked layers and models (issue 9, item 1).

On a GPU, reading a tensor's value on the host (``.item()``, ``int(t)``, ``bool(t)``,
``.tolist()``...) waits for the device. On CPU there is no device to wait for, so these
tests catch the reads themselves: the Tensor methods that read a value are replaced by
ones that fail, for the forward and backward pass of a training step (and an eval
forward), so any read anywhere in seqpad's Python code fails the test, CPU or not. The
CUDA test runs a masked CNN step under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

from seqpad.masks import lengths_to_mask
from seqpad.models import build_model
from seqpad.nn import (
    MaskedBatchNorm1d,
    MaskedConv1d,
    MaskedGRU,
    MaskedLSTM,
    MaskedMaxPool,
    MaskedMeanPool,
    MaskedSumPool,
)
from seqpad.nn.batchnorm import MaskedSyncBatchNorm1d
from seqpad.nn.functional import masked_batch_norm

_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")
# Ops whose output size (or check) depends on the data: on a GPU they wait for the device.
_DATA_SIZED = ("masked_select", "nonzero", "masked_scatter", "unique")


class HostRead(AssertionError):
    pass


@contextmanager
def no_host_reads() -> Iterator[list[str]]:
    """Make every Tensor value read raise :class:`HostRead` inside the block."""
    saved = {name: getattr(torch.Tensor, name) for name in _READS + _DATA_SIZED}
    saved_fns = {name: getattr(torch, name) for name in _DATA_SIZED}

    def failing(name: str) -> Callable[..., Any]:
        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            raise HostRead(f"host read: {name} on a tensor of shape {tuple(self.shape)}")

        return read

    try:
        for name in _READS + _DATA_SIZED:
            setattr(torch.Tensor, name, failing(name))
        for name in _DATA_SIZED:
            setattr(torch, name, failing(name))
        yield []
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
        for name, fn in saved_fns.items():
            setattr(torch, name, fn)


def test_the_guard_catches_reads() -> None:
    t = torch.tensor([1.0, 2.0])
    for read in (lambda: t.sum().item(), lambda: bool(t[0]), lambda: int(t[0]),
                 lambda: float(t[0]), lambda: t.tolist(), lambda: [0, 1][t.long()[0]],
                 lambda: t.masked_select(t > 1), lambda: torch.nonzero(t)):
        with no_host_reads(), pytest.raises(HostRead):
            read()
    assert t.sum().item() == 3.0  # restored


def _batch(c: int = 8, lengths: tuple[int, ...] = (12, 7, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(len(lengths), c, max(lengths), generator=gen)
    return x, lengths_to_mask(list(lengths))


def _layers() -> dict[str, nn.Module]:
    return {
        "bn": MaskedBatchNorm1d(8),
        "bn-fused": MaskedBatchNorm1d(8, fused=True),
        "bn-momentum-none": MaskedBatchNorm1d(8, momentum=None),
        "bn-no-affine": MaskedBatchNorm1d(8, affine=False),
        "sync-bn-single-process": MaskedSyncBatchNorm1d(8),
        "conv": MaskedConv1d(8, 6, 3, dilation=2),
        "conv-causal": MaskedConv1d(8, 6, 4, causal=True),
        "lstm": MaskedLSTM(8, 5, 2, bidirectional=True),
        "gru": MaskedGRU(8, 5, bidirectional=True),
        "mean": MaskedMeanPool(),
        "max": MaskedMaxPool(),
        "sum": MaskedSumPool(),
    }


# Without a mask MaskedBatchNorm1d *is* nn.BatchNorm1d.forward, which with momentum=None
# reads num_batches_tracked on the host itself (1 / float(...)): native's own sync.
LAYER_CASES = [(name, with_mask) for name in _layers() for with_mask in (True, False)
               if (name, with_mask) != ("bn-momentum-none", False)]


@pytest.mark.parametrize(("name", "with_mask"), LAYER_CASES)
def test_layers_train_and_eval_without_host_reads(name: str, with_mask: bool) -> None:
    layer = _layers()[name]
    x, mask = _batch()
    x.requires_grad_(True)
    m = mask if with_mask else None
    # Warm up outside the guard (the fused CPU kernel is built on first use).
    layer.train()
    layer(x, m)
    with no_host_reads():
        out = layer(x, m)
        out.square().sum().backward()
        layer.eval()
        with torch.no_grad():
            layer(x, m)
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("fused", [False, True])
def test_functional_batch_norm_with_running_stats_and_2d_input(fused: bool) -> None:
    x, mask = _batch()
    x2 = x[:, :, 0].clone().requires_grad_(True)
    rm, rv, nbt = torch.zeros(8), torch.ones(8), torch.zeros((), dtype=torch.long)
    mask2 = torch.tensor([True, True, False])
    # Warm-up (builds / compiles the fused kernels for both shapes) on other buffers.
    for xi, mi in ((x, mask), (x2, mask2)):
        masked_batch_norm(xi.detach().requires_grad_(True), mi, torch.zeros(8), torch.ones(8),
                          training=True, fused=fused, momentum=None,
                          num_batches_tracked=torch.zeros((), dtype=torch.long)).sum().backward()
    with no_host_reads():
        y = masked_batch_norm(x2, mask2, rm, rv, training=True,
                              momentum=None, num_batches_tracked=nbt, fused=fused)
        y.sum().backward()
        # An all-padding batch: the update is skipped by tensor math, not by a branch.
        masked_batch_norm(x, torch.zeros_like(mask), rm, rv, training=True,
                          num_batches_tracked=nbt, fused=fused)
    assert int(nbt) == 1


CONFIGS = [
    {"arch": "cnn", "head": "token"},
    {"arch": "cnn", "head": "pooled", "n_out": 3, "pooling": "max"},
    {"arch": "cnn", "head": "pooled", "n_out": 3, "pooling": "mean", "bottleneck": False},
    {"arch": "rnn", "head": "token", "rnn": "gru"},
    {"arch": "hybrid", "head": "pooled", "n_out": 3},
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_model_training_step_without_host_reads(cfg: dict[str, Any]) -> None:
    model = build_model({"vocab_size": 25, "d_model": 16, "n_layers": 2, "dropout": 0.1, **cfg})
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, 25, (4, 20), generator=gen)
    for row, length in enumerate((20, 13, 5, 1)):
        tokens[row, length:] = 0
    model.train()
    model(tokens)  # warm-up
    with no_host_reads():
        out = model(tokens)
        out.float().square().mean().backward()
        model.eval()
        with torch.no_grad():
            model(tokens)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_one_real_value_still_raises_on_cpu() -> None:
    # The count check is torch._assert_async: immediate on CPU, native's ValueError.
    x, _ = _batch()
    mask = torch.zeros(3, 1, 12, dtype=torch.bool)
    mask[1, 0, 4] = True
    for fused in (False, True):
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            MaskedBatchNorm1d(8, fused=fused).train()(x, mask)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_masked_cnn_step_under_sync_debug_mode_error() -> None:
    torch.manual_seed(0)
    model = build_model({"arch": "cnn", "vocab_size": 25, "d_model": 32, "n_layers": 2}).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, capturable=True)
    tokens = torch.randint(1, 25, (8, 64), device="cuda")
    tokens[1, 40:] = 0
    tokens[5, 9:] = 0
    target = torch.randint(0, 25, (8, 64), device="cuda")

    def step() -> None:
        logits = model(tokens)
        loss = nn.functional.cross_entropy(logits, target, ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (allocator, cuDNN/cuBLAS handles)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        model.eval()
        model(tokens)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


def test_rnn_token_dropout_rate_scale_and_padding() -> None:
    from seqpad.nn.rnn import _token_dropout

    x = torch.ones(8, 300, 64)
    real = (torch.arange(300) < torch.tensor([250, 240, 200, 150, 100, 50, 10, 0])[:, None])
    real = real[:, :, None]
    torch.manual_seed(0)
    y = _token_dropout(x, real, 0.25)
    kept = y[real.expand_as(y)]
    assert abs((kept > 0).double().mean().item() - 0.75) < 0.01
    assert torch.allclose(kept[kept > 0], torch.tensor(1 / 0.75))
    assert not y[~real.expand_as(y)].any()
    # Same draws for the same real tokens whatever the padding.
    torch.manual_seed(0)
    assert torch.equal(_token_dropout(x[:, :250], real[:, :250], 0.25), y[:, :250])
