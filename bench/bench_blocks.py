"""Benchmark: each masked block against its native PyTorch op on the same padded batch.

What is measured, side by side in one run (interleaved repeats, medians): a training
step (forward + backward of ``out.square().mean()``) of

* ``MaskedConv1d(C, C, 5)``           vs ``nn.Conv1d(C, C, 5, padding=2)`` (mask ignored)
* ``MaskedConv1d(C, C, 4, causal)``   vs ``F.pad`` left + ``nn.Conv1d`` (mask ignored)
* ``MaskedLSTM(C, H, bidirectional)`` vs ``nn.LSTM`` over the padded ``(B, L, C)`` batch;
  also with ``return_state=True``, which packs the batch (``c_n`` at the true ends)
* ``MaskedGRU(C, H, bidirectional)``  vs ``nn.GRU`` over the padded batch
* ``MaskedMeanPool`` / ``MaskedMaxPool`` vs ``x.mean(-1)`` / ``x.amax(-1)``
* ``MaskedEmbedding(V, C)``           vs ``nn.Embedding`` + ``transpose(1, 2)``

The native ops compute the *wrong* answer at and near padding (that is why the masked
blocks exist); they are the speed floor. Lengths are those of real E. coli proteins
(``data/UP000000625-E.coli.fasta.gz``), drawn at random per batch (no bucketing, so the
batch carries realistic padding) and cropped to ``--max-len``. The masked RNN runs the
native kernel once per direction (the reverse one over each sequence reversed within its
length); the packed row shows what PyTorch's packed RNNs cost instead.

Run:  python bench/bench_blocks.py                      (CPU, small sizes)
      python bench/bench_blocks.py --device cuda --batch 64 --channels 256 --max-len 1024
"""

from __future__ import annotations

import argparse
import gzip
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqpad.masks import lengths_to_mask
from seqpad.nn.conv import MaskedConv1d
from seqpad.nn.embedding import MaskedEmbedding
from seqpad.nn.pooling import MaskedMaxPool, MaskedMeanPool
from seqpad.nn.rnn import MaskedGRU, MaskedLSTM

REPO = Path(__file__).resolve().parent.parent
PROTEOME = REPO / "data" / "UP000000625-E.coli.fasta.gz"


def protein_lengths() -> list[int]:
    """Lengths of the bundled E. coli proteins (no Biopython needed for a count)."""
    lengths: list[int] = []
    n = -1
    with gzip.open(PROTEOME, "rt") as handle:
        for line in handle:
            if line.startswith(">"):
                if n >= 0:
                    lengths.append(n)
                n = 0
            else:
                n += len(line.strip())
    if n >= 0:
        lengths.append(n)
    return lengths


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_time(fn: Callable[..., Tensor], inputs: tuple[Tensor, ...], device: torch.device) -> float:
    inputs[0].grad = None
    sync(device)
    t0 = time.perf_counter()
    fn(*inputs).square().mean().backward()
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=None, help="RNN hidden size (default C/2)")
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    all_lengths = protein_lengths()
    C, B = args.channels, args.batch
    H = args.hidden or C // 2
    V = 30

    def new_batch() -> tuple[Tensor, Tensor, Tensor]:
        lengths = [min(rng.choice(all_lengths), args.max_len) for _ in range(B)]
        L = max(lengths)
        mask = lengths_to_mask(lengths, L).to(device)
        x = torch.randn(B, C, L, device=device).masked_fill(~mask, 0).requires_grad_(True)
        ids = torch.randint(5, V, (B, L), device=device).masked_fill(~mask.squeeze(1), 0)
        return x, mask, ids

    conv = MaskedConv1d(C, C, 5).to(device)
    conv_n = nn.Conv1d(C, C, 5, padding=2).to(device)
    causal = MaskedConv1d(C, C, 4, causal=True).to(device)
    causal_n = nn.Conv1d(C, C, 4).to(device)
    lstm = MaskedLSTM(C, H, bidirectional=True).to(device)
    lstm_n = nn.LSTM(C, H, bidirectional=True, batch_first=True).to(device)
    gru = MaskedGRU(C, H, bidirectional=True).to(device)
    gru_n = nn.GRU(C, H, bidirectional=True, batch_first=True).to(device)
    emb = MaskedEmbedding(V, C).to(device)
    emb_n = nn.Embedding(V, C, padding_idx=0).to(device)
    mean, amax = MaskedMeanPool(), MaskedMaxPool()

    cases: dict[str, tuple[Callable, Callable]] = {
        "conv k=5": (lambda x, m, i: conv(x, m), lambda x, m, i: conv_n(x)),
        "causal conv k=4": (lambda x, m, i: causal(x, m),
                            lambda x, m, i: causal_n(F.pad(x, (3, 0)))),
        "bi-LSTM": (lambda x, m, i: lstm(x, m),
                    lambda x, m, i: lstm_n(x.transpose(1, 2))[0]),
        "bi-LSTM, return_state (packed)": (lambda x, m, i: lstm(x, m, return_state=True)[0],
                                           lambda x, m, i: lstm_n(x.transpose(1, 2))[0]),
        "bi-GRU": (lambda x, m, i: gru(x, m),
                   lambda x, m, i: gru_n(x.transpose(1, 2))[0]),
        "mean pool": (lambda x, m, i: mean(x, m), lambda x, m, i: x.mean(-1)),
        "max pool": (lambda x, m, i: amax(x, m), lambda x, m, i: x.amax(-1)),
        "embedding": (lambda x, m, i: emb(i, m), lambda x, m, i: emb_n(i).transpose(1, 2)),
    }
    times: dict[str, dict[str, list[float]]] = {k: {"masked": [], "native": []} for k in cases}
    pad_fracs: list[float] = []
    for r in range(args.warmup + args.repeats):
        x, m, ids = new_batch()
        pad_fracs.append(1 - float(m.float().mean()))
        for name, (masked, native) in cases.items():
            order = [("masked", masked), ("native", native)]
            if r % 2:
                order.reverse()  # interleave which runs first
            for label, fn in order:
                t = step_time(fn, (x, m, ids), device)
                if r >= args.warmup:
                    times[name][label].append(t)

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device={dev} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"B={B} C={C} H={H} max_len={args.max_len} repeats={args.repeats} "
          f"mean padding fraction={statistics.mean(pad_fracs):.2f}")
    print("| block (train step) | masked ms | native ms | masked / native |")
    print("|---|---|---|---|")
    for name, t in times.items():
        a, b = statistics.median(t["masked"]) * 1e3, statistics.median(t["native"]) * 1e3
        print(f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
