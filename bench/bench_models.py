"""Benchmark: a training step of seqpad's masked models vs the same models from native layers.

Measured side by side in one run, interleaved at the finest grain (for each batch the
variants run back to back, in a rotating order), medians over repeats: one training step
(forward, cross-entropy, backward, AdamW step) per batch over a fixed list of real
batches, for

* the masked ByteNet CNN (``build_model({"arch": "cnn", ...})``: MaskedEmbedding,
  MaskedBatchNorm1d, MaskedConv1d, masks passed) vs the same architecture from
  ``nn.Embedding``, ``nn.BatchNorm1d`` and ``nn.Conv1d(padding="same")`` with no masks,
  loaded with the same weights;
* the same masked CNN with MaskedBatchNorm1d's ``fused=True`` switch (``torch.compile``-d
  batch-norm kernels), when ``torch.compile`` works here;
* the masked bi-LSTM model (``build_model({"arch": "rnn", ...})``: packed sequences) vs
  ``nn.Embedding`` + ``nn.LSTM`` over the padded batch.

The native models compute the wrong answer near padding (batch statistics include pad
positions, convolutions see padded neighbours, the reverse LSTM starts in the padding):
they are the speed floor. Batches are real: the bundled E. coli proteome, tokenized into a
store, batched by ``TokenBudgetBatchSampler`` (shuffled, ``--max-tokens``) and padded by
``Collator`` (cropped to ``--max-length``), exactly what training sees.

Run:  python bench/bench_models.py                         (CPU, ~2-3 min)
      python bench/bench_models.py --quick                 (smoke test)
      python bench/bench_models.py --device cuda --max-tokens 65536 --d-model 256
      python bench/bench_models.py --profile               (where the masked CNN's time goes)
      python bench/bench_models.py --device cuda --only cnn --compiled --json out.json
                                                (+ torch.compile rows, as bench/gpu_check.sh)

``--compiled`` adds the CNNs under ``torch.compile`` (model only; masked vs native, both
compiled) and, on CUDA, the masked CNN under ``torch.compile(mode="reduce-overhead")``
(CUDA graphs); compiled rows are compared with the compiled native CNN.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, machine_note, table

from seqpad.collate import Batch, Collator
from seqpad.fasta import read_fasta
from seqpad.models import build_model
from seqpad.nn.batchnorm import MaskedBatchNorm1d
from seqpad.samplers import TokenBudgetBatchSampler
from seqpad.store import TokenizedDataset, write_store
from seqpad.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
PROTEOME = REPO / "data" / "UP000000625-E.coli.fasta.gz"
ACTS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


# ------------------------------------------------------------ native models
class NativeByteNetBlock(nn.Module):
    """:class:`seqpad.models.ByteNetBlock` from native layers (same attribute names)."""

    def __init__(self, cfg: dict[str, Any], dilation: int) -> None:
        super().__init__()
        d, k, act = cfg["d_model"], cfg["kernel_size"], ACTS[cfg["activation"]]
        self.bottleneck = cfg["bottleneck"]
        if self.bottleneck:
            h = cfg["d_hidden"]
            self.norm_in, self.act_in, self.conv_in = nn.BatchNorm1d(d), act(), nn.Conv1d(d, h, 1)
            self.norm, self.act = nn.BatchNorm1d(h), act()
            self.conv = nn.Conv1d(h, h, k, dilation=dilation, padding="same")
            self.norm_out, self.act_out = nn.BatchNorm1d(h), act()
            self.conv_out = nn.Conv1d(h, d, 1)
        else:
            self.norm, self.act = nn.BatchNorm1d(d), act()
            self.conv = nn.Conv1d(d, d, k, dilation=dilation, padding="same")
        self.dropout = nn.Dropout(cfg["dropout"])

    def forward(self, x: Tensor) -> Tensor:
        h = x
        if self.bottleneck:
            h = self.conv_in(self.act_in(self.norm_in(h)))
        h = self.conv(self.act(self.norm(h)))
        if self.bottleneck:
            h = self.conv_out(self.act_out(self.norm_out(h)))
        return x + self.dropout(h)


class NativeCNN(nn.Module):
    """:class:`seqpad.models.ByteNetCNN` (token head) from native layers, no masks."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        assert cfg["head"] == "token" and not cfg["causal"]
        d = cfg["d_model"]
        self.embed = nn.Embedding(cfg["vocab_size"], d, padding_idx=cfg["pad_id"])
        self.encoder = nn.Module()
        self.encoder.blocks = nn.ModuleList(NativeByteNetBlock(cfg, r) for r in cfg["dilations"])
        self.encoder.norm = nn.BatchNorm1d(d)
        self.encoder.act = ACTS[cfg["activation"]]()
        self.head = nn.Module()
        self.head.dropout = nn.Dropout(cfg["dropout"])
        self.head.proj = nn.Conv1d(d, cfg["n_out"], 1)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens).transpose(1, 2)
        for block in self.encoder.blocks:
            x = block(x)
        x = self.encoder.act(self.encoder.norm(x))
        return self.head.proj(self.head.dropout(x))


class NativeRNN(nn.Module):
    """:class:`seqpad.models.RNNModel` (token head) from native layers, no packing."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        assert cfg["head"] == "token"
        d, h = cfg["d_model"], cfg["rnn_hidden"]
        cls = nn.LSTM if cfg["rnn"] == "lstm" else nn.GRU
        self.embed = nn.Embedding(cfg["vocab_size"], d, padding_idx=cfg["pad_id"])
        self.encoder = nn.Module()
        self.encoder.rnn = cls(d, h, cfg["n_layers"], batch_first=True,
                               bidirectional=cfg["bidirectional"],
                               dropout=cfg["dropout"] if cfg["n_layers"] > 1 else 0.0)
        self.head = nn.Module()
        self.head.dropout = nn.Dropout(cfg["dropout"])
        self.head.proj = nn.Conv1d(h * (2 if cfg["bidirectional"] else 1), cfg["n_out"], 1)

    def forward(self, tokens: Tensor) -> Tensor:
        out, _ = self.encoder.rnn(self.embed(tokens))
        return self.head.proj(self.head.dropout(out.transpose(1, 2)))


# ----------------------------------------------------------------- harness
def real_batches(args: argparse.Namespace) -> tuple[list[Batch], Tokenizer]:
    store = WORK / "E.coli.models.store"
    if not store.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        write_store(store, read_fasta(PROTEOME), Tokenizer("protein"))
    ds = TokenizedDataset(store)
    sampler = TokenBudgetBatchSampler(ds.lengths.clip(max=args.max_length), args.max_tokens,
                                      shuffle=True, seed=args.seed)
    collator = Collator(ds.tokenizer, max_length=args.max_length, crop="random", seed=args.seed)
    batches = []
    for idx in sampler:
        batches.append(collator([ds[i] for i in idx]))
        if len(batches) == args.batches:
            break
    return batches, ds.tokenizer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Variant:
    """One model + optimizer; ``run(batches)`` does one training step per batch."""

    def __init__(self, name: str, model: nn.Module, masked: bool, device: torch.device,
                 compile_kw: dict[str, Any] | None = None) -> None:
        self.name, self.masked, self.device = name, masked, device
        self.model = model.to(device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        if compile_kw is not None:
            self.model = torch.compile(self.model, **compile_kw)  # type: ignore[assignment]

    def step(self, batch: Batch) -> None:
        targets = batch.tokens.masked_fill(~batch.mask[:, 0], -100)
        logits = self.model(batch.tokens, batch.mask) if self.masked else self.model(batch.tokens)
        loss = F.cross_entropy(logits, targets, ignore_index=-100)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def run(self, batches: list[Batch]) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        for b in batches:
            self.step(b)
        sync(self.device)
        return time.perf_counter() - t0


def make_variants(args: argparse.Namespace, vocab: int, pad_id: int,
                  device: torch.device) -> dict[str, Variant]:
    torch.manual_seed(args.seed)
    cnn_cfg = {"arch": "cnn", "vocab_size": vocab, "pad_id": pad_id, "d_model": args.d_model,
               "n_layers": args.n_layers, "kernel_size": args.kernel_size,
               "max_dilation": args.max_dilation}
    masked_cnn = build_model(cnn_cfg)
    native_cnn = NativeCNN(masked_cnn.config)
    native_cnn.load_state_dict(masked_cnn.state_dict())
    rnn_cfg = {"arch": "rnn", "vocab_size": vocab, "pad_id": pad_id, "d_model": args.d_model,
               "n_layers": args.rnn_layers, "rnn": "lstm", "rnn_hidden": args.d_model // 2,
               "bidirectional": True}
    masked_rnn = build_model(rnn_cfg)
    native_rnn = NativeRNN(masked_rnn.config)
    native_rnn.load_state_dict(masked_rnn.state_dict())
    variants = {
        "cnn masked": Variant("cnn masked", masked_cnn, True, device),
        "cnn native": Variant("cnn native", native_cnn, False, device),
        "rnn masked": Variant("rnn masked", masked_rnn, True, device),
        "rnn native": Variant("rnn native", native_rnn, False, device),
    }
    if not args.no_fused and hasattr(MaskedBatchNorm1d(1), "fused"):
        fused = copy.deepcopy(masked_cnn)
        for m in fused.modules():
            if isinstance(m, MaskedBatchNorm1d):
                m.fused = True
        variants["cnn masked fused-BN"] = Variant("cnn masked fused-BN", fused, True, device)
    if args.compiled:
        kw: dict[str, Any] = {"backend": args.compile_backend}
        variants["cnn native compiled"] = Variant(
            "cnn native compiled", copy.deepcopy(native_cnn), False, device, kw)
        variants["cnn masked compiled"] = Variant(
            "cnn masked compiled", copy.deepcopy(masked_cnn), True, device, kw)
        if device.type == "cuda":
            variants["cnn masked reduce-overhead"] = Variant(
                "cnn masked reduce-overhead", copy.deepcopy(masked_cnn), True, device,
                {"mode": "reduce-overhead"})
    return variants


def profile(variants: dict[str, Variant], batches: list[Batch], rows: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    acts = [ProfilerActivity.CPU]
    if variants["cnn masked"].device.type == "cuda":
        acts.append(ProfilerActivity.CUDA)
    key = "self_cuda_time_total" if len(acts) > 1 else "self_cpu_time_total"
    for name in ("cnn masked", "cnn native"):
        v = variants[name]
        v.run(batches[:2])
        with tprofile(activities=acts) as prof:
            v.run(batches)
        print(f"\n=== profile: {name} ({len(batches)} steps) ===")
        print(prof.key_averages().table(sort_by=key, row_limit=rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-tokens", type=int, default=8192, help="padded tokens per batch")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batches", type=int, default=8, help="batches per timed pass")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layers", type=int, default=8)
    ap.add_argument("--kernel-size", type=int, default=5)
    ap.add_argument("--max-dilation", type=int, default=8)
    ap.add_argument("--rnn-layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-fused", action="store_true", help="skip the fused-BN row")
    ap.add_argument("--only", choices=["cnn", "rnn"], default=None)
    ap.add_argument("--profile", action="store_true", help="profile the CNNs instead")
    ap.add_argument("--quick", action="store_true", help="2 batches, 2 repeats")
    ap.add_argument("--md", type=Path, default=None, help="also write the table here")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--compiled", action="store_true",
                    help="add torch.compile rows (and reduce-overhead on CUDA)")
    ap.add_argument("--compile-backend", default="inductor",
                    help="backend of the --compiled rows (aot_eager: CPU smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.batches, args.repeats = 2, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    batches, tok = real_batches(args)
    batches = [b.to(device) for b in batches]
    variants = make_variants(args, tok.vocab_size, tok.pad_id, device)
    if args.only:
        variants = {k: v for k, v in variants.items() if k.startswith(args.only)}
    # fused-BN and the compiled rows compile on first use; drop a row if that fails here
    for name in [k for k in variants if "fused" in k or "compiled" in k or "overhead" in k]:
        try:
            variants[name].run(batches[:1])
        except Exception as exc:  # e.g. no C++ compiler for inductor on CPU
            print(f"{name} row skipped: {type(exc).__name__}: {exc}"[:300])
            del variants[name]
    if args.profile:
        profile(variants, batches, rows=25)
        return

    real = sum(int(b.lengths.sum()) for b in batches)
    padded = sum(b.tokens.numel() for b in batches)
    # steps[name][r][i]: time of the training step on batch i in repeat r. For every
    # batch the variants run back to back, in an order that rotates with (r, i), so a
    # masked step and its native twin see the same batch and the same machine state.
    names = list(variants)
    steps: dict[str, list[list[float]]] = {k: [] for k in names}
    for r in range(args.warmup + args.repeats):
        row: dict[str, list[float]] = {k: [] for k in names}
        for i, batch in enumerate(batches):
            k = (r + i) % len(names)
            for name in names[k:] + names[:k]:
                row[name].append(variants[name].run([batch]))
        if r >= args.warmup:
            for name in names:
                steps[name].append(row[name])

    # time per pass over all batches: median over repeats
    med = {k: statistics.median(sum(rep) for rep in v) for k, v in steps.items()}

    def paired(a: str, b: str) -> float:
        """Median over (repeat, batch) of the ratio of two steps run back to back."""
        return statistics.median(
            x / y
            for ra, rb in zip(steps[a], steps[b], strict=True)
            for x, y in zip(ra, rb, strict=True)
        )

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    head = (f"device={dev} torch={torch.__version__} threads={torch.get_num_threads()} "
            f"d_model={args.d_model} cnn_layers={args.n_layers} k={args.kernel_size} "
            f"lstm_layers={args.rnn_layers} max_tokens={args.max_tokens} "
            f"max_length={args.max_length} batches={len(batches)} repeats={args.repeats} "
            f"padding={1 - real / padded:.1%} ({machine_note()})")
    rows = []
    results = []
    for name in names:
        base = name.split()[0] + " native"
        if ("compiled" in name or "overhead" in name) and f"{base} compiled" in med:
            base += " compiled"
        ms = med[name] / len(batches) * 1e3
        rec: dict[str, Any] = {"name": name, "base": base, "ms": ms}
        if name == base:
            ratio = "1 (reference)"
        else:
            rec["ratio"], rec["paired"] = med[name] / med[base], paired(name, base)
            ratio = f"{rec['ratio']:.2f}x (paired {rec['paired']:.2f}x) vs {base}"
        rows.append([name, f"{ms:.1f}", f"{real / med[name]:,.0f}", ratio])
        results.append(rec)
    out = "\n".join([head, "", table(["model (train step)", "ms / step", "real tokens/s",
                                      "masked / native"], rows),
                    "",
                    "ms / step and tokens/s: median over repeats of a pass over all batches; "
                    "masked / native: ratio of those medians; paired: median over every "
                    "(repeat, batch) of the ratio of the two steps run back to back."])
    print(out)
    if args.md:
        args.md.write_text(out + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": dev, "results": results}, indent=1))


if __name__ == "__main__":
    main()
