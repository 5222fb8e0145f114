"""Masked batch normalisation: statistics over real positions only.

:class:`MaskedBatchNorm1d` is a drop-in :class:`torch.nn.BatchNorm1d` (same parameters,
buffers and ``state_dict``) whose ``forward`` takes a padding mask;
:class:`MaskedSyncBatchNorm1d` synchronises its statistics across ``torch.distributed``
ranks (gloo or NCCL). See ``docs/masked-batchnorm.md``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqpad.nn import _batchnorm_triton
from seqpad.nn.functional import masked_batch_norm
from seqpad.nn.segments import segment_mask

__all__ = [
    "MaskedBatchNorm1d",
    "MaskedSyncBatchNorm1d",
    "convert_masked_batchnorm",
    "convert_sync_batchnorm",
]


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` whose statistics ignore padded positions.

    Args:
        num_features: ``C``.
        eps, momentum, affine, track_running_stats, device, dtype: as
            :class:`torch.nn.BatchNorm1d` (``momentum=None``: cumulative average).
        fused: the one switch for the fused path. Training-mode normalisation runs
            fused kernels: on CPU (float32 / float64 / bfloat16, ``L >= 8``) a C++
            kernel built on first use with the system compiler and cached per user
            (``seqpad/nn/_batchnorm_cpu.py``); elsewhere ``torch.compile`` of the
            functional form (compiled once per process; needs a working
            ``torch.compile`` backend). Same results as the eager path. Also settable
            later as ``module.fused = True``.

    Shape:
        - x: ``(B, C, L)`` or ``(B, C)``; mask ``(B, 1, L)`` / ``(B, L)`` (``(B,)`` for
          2-D x), bool or 0/1, True at real tokens; or None.
        - output: like ``x``, zero at padded positions.

    With ``mask=None`` the forward pass *is* ``nn.BatchNorm1d.forward``: identical
    results, so a converted model that does not pass masks yet behaves exactly as before.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        fused: bool = False,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.fused = fused

    def _process_group(self) -> object | None:
        return None

    def forward(self, x: Tensor, mask: Tensor | None = None, *,  # type: ignore[override]
                segment_ids: Tensor | None = None) -> Tensor:
        """Normalise ``x``; ``segment_ids`` ``(B, L)`` (packed) gives the mask ``> 0``."""
        if segment_ids is not None:
            mask = segment_mask(segment_ids)
        self._check_input_dim(x)
        # nn.BatchNorm1d's message (from its own size check) when C does not match
        stat = "running_mean" if self.track_running_stats else "weight" if self.affine else None
        if stat is not None and x.shape[1] != self.num_features:
            raise RuntimeError(f"{stat} should contain {x.shape[1]} elements not "
                               f"{self.num_features}")
        group = self._process_group()
        if mask is None and group is None:
            return super().forward(x)
        if self.fused and group is None and (y := _batchnorm_triton.forward(self, x, mask)) is not None:
            return y  # CUDA + Triton: the kernels of seqpad/nn/_batchnorm_triton.py
        return masked_batch_norm(
            x,
            mask,
            self.running_mean if self.track_running_stats else None,
            self.running_var if self.track_running_stats else None,
            self.weight,
            self.bias,
            training=self.training or not self.track_running_stats,
            momentum=self.momentum,
            eps=self.eps,
            num_batches_tracked=self.num_batches_tracked if self.track_running_stats else None,
            process_group=group if (self.training or not self.track_running_stats) else None,
            fused=self.fused,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + (", fused=True" if self.fused else "")


class MaskedSyncBatchNorm1d(MaskedBatchNorm1d):
    """:class:`MaskedBatchNorm1d` with statistics synchronised across processes.

    In training every rank contributes its ``(count, mean, M2)`` over real positions;
    they are all-gathered and merged with Chan's parallel formula (in float64), and the
    backward pass all-reduces the per-channel ``sum(dy)`` and ``sum(dy * (x - mean))``.
    Ranks may hold different batch sizes and lengths, or no real token at all, but every
    rank of the group must call ``forward`` and ``backward``. Works with gloo (CPU) and
    NCCL. Outside an initialised process group, or with world size 1, it is exactly
    :class:`MaskedBatchNorm1d`. Like :class:`torch.nn.SyncBatchNorm`, weight and bias
    gradients are local; wrap the model in DDP to average them.

    Args:
        process_group: the group to synchronise over; None for the default (world) group.
        Other arguments as :class:`MaskedBatchNorm1d` (the fused path is not used for
        synchronised statistics).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: object | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        fused: bool = False,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, fused=fused
        )
        self.process_group = process_group

    def _process_group(self) -> object | None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        if dist.get_world_size(group) <= 1:
            return None
        return group


def _copy_batchnorm_state(src: nn.modules.batchnorm._BatchNorm, dst: nn.Module) -> nn.Module:
    with torch.no_grad():
        if src.affine:
            dst.weight = src.weight
            dst.bias = src.bias
        dst.running_mean = src.running_mean
        dst.running_var = src.running_var
        dst.num_batches_tracked = src.num_batches_tracked
    dst.train(src.training)
    if hasattr(src, "qconfig"):
        dst.qconfig = src.qconfig
    return dst


def convert_sync_batchnorm(module: nn.Module, process_group: object | None = None) -> nn.Module:
    """Replace every :class:`MaskedBatchNorm1d` in ``module`` by :class:`MaskedSyncBatchNorm1d`.

    The new layers share the old ones' parameters and buffers (same tensors) and keep
    their training flag and ``fused`` setting. Returns the converted module (a new
    object if ``module`` itself was a MaskedBatchNorm1d). Plain ``nn.BatchNorm*`` layers
    are left alone: convert them first with :func:`convert_masked_batchnorm`.
    """
    out = module
    if isinstance(module, MaskedBatchNorm1d) and not isinstance(module, MaskedSyncBatchNorm1d):
        out = MaskedSyncBatchNorm1d(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            process_group,
            fused=module.fused,
        )
        _copy_batchnorm_state(module, out)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, process_group))
    return out


def convert_masked_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm1d`` in ``module`` by :class:`MaskedBatchNorm1d`.

    Weights, biases and running buffers are shared (same tensors), as is the training
    flag. Layers that already are masked are kept. The surrounding model must then pass
    a mask to the new layers to get masked statistics; called as ``bn(x)`` they behave
    exactly like the ``nn.BatchNorm1d`` they replace.
    """
    out = module
    if isinstance(module, nn.BatchNorm1d) and not isinstance(module, MaskedBatchNorm1d):
        out = MaskedBatchNorm1d(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        _copy_batchnorm_state(module, out)
    for name, child in module.named_children():
        out.add_module(name, convert_masked_batchnorm(child))
    return out
