"""build_model configs, checkpoints, dropout, and parity with natively built models."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seqpad.models import (
    ByteNetCNN,
    HybridModel,
    RNNModel,
    build_model,
    bytenet_dilations,
    load_checkpoint,
    load_model,
    save_checkpoint,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is fastest, and steady on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


V = 25


def tokens_batch(lengths: list[int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, n in enumerate(lengths):
        out[i, :n] = torch.randint(5, V, (n,), generator=g)
    return out


ALL_CONFIGS: list[dict[str, Any]] = [
    {"arch": "cnn", "vocab_size": V, "d_model": 16},
    {"arch": "cnn", "vocab_size": V, "d_model": 16, "head": "pooled", "n_out": 4,
     "pooling": "max", "bottleneck": False, "dilations": [1, 3], "kernel_size": 2},
    {"arch": "rnn", "vocab_size": V, "d_model": 16, "rnn": "gru", "bidirectional": False},
    {"arch": "rnn", "vocab_size": V, "d_model": 16, "head": "pooled", "n_out": 1,
     "mlp_hidden": 8},
    {"arch": "hybrid", "vocab_size": V, "d_model": 16, "max_dilation": 2, "n_layers": 3},
    {"arch": "hybrid", "vocab_size": V, "d_model": 16, "head": "pooled", "n_out": 2,
     "rnn_layers": 2, "rnn_hidden": 8, "causal": True},
]


# ---------------------------------------------------------------- build_model
@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: f"{c['arch']}-{c.get('head', 'token')}")
def test_build_model_json_round_trip(cfg: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    cls = {"cnn": ByteNetCNN, "rnn": RNNModel, "hybrid": HybridModel}[cfg["arch"]]
    assert type(model) is cls
    # every given key survives (resolved configs may add keys, never change given ones)
    for key, value in cfg.items():
        if key != "max_dilation":
            assert model.config[key] == value, key
    text = json.dumps(model.config)  # JSON-serialisable
    again = build_model(json.loads(text)).eval()
    assert again.config == model.config
    again.load_state_dict(model.state_dict())  # same architecture, same keys and shapes
    tokens = tokens_batch([7, 3, 5])
    with torch.no_grad():
        out = model(tokens)
        torch.testing.assert_close(again(tokens), out, rtol=0, atol=0)
    n_out = model.config["n_out"]
    if model.config["head"] == "token":
        assert out.shape == (3, n_out, 7)
    else:
        assert out.shape == (3, n_out)


def test_resolved_defaults() -> None:
    m = build_model({"arch": "cnn", "vocab_size": V, "n_layers": 6, "max_dilation": 4})
    assert m.config["dilations"] == [1, 2, 4, 1, 2, 4]
    assert m.config["n_out"] == V and m.config["d_model"] == 128
    assert m.config["d_hidden"] == 64
    assert "max_dilation" not in m.config and "pooling" not in m.config
    convs = [b.conv for b in m.encoder.blocks]
    assert [c.dilation[0] for c in convs] == [1, 2, 4, 1, 2, 4]
    assert all(c.kernel_size[0] == 5 for c in convs)
    m = build_model({"arch": "cnn", "vocab_size": V, "dilations": [1, 2, 4]})
    assert m.config["n_layers"] == 3
    r = build_model({"arch": "rnn", "vocab_size": V, "d_model": 8, "head": "pooled", "n_out": 2})
    assert r.config["pooling"] == "mean" and r.config["mlp_hidden"] == 16  # 2 directions * 8
    assert isinstance(r.encoder.rnn, nn.LSTM) and r.encoder.rnn.bidirectional
    h = build_model({"arch": "hybrid", "vocab_size": V, "d_model": 8, "rnn": "gru"})
    assert isinstance(h.encoder.rnn.rnn, nn.GRU)
    assert h.head.proj.in_channels == 16


def test_bytenet_dilations() -> None:
    assert bytenet_dilations(5, 8) == [1, 2, 4, 8, 1]
    assert bytenet_dilations(3, 1) == [1, 1, 1]
    with pytest.raises(ValueError, match="power of two"):
        bytenet_dilations(3, 6)


BAD_CONFIGS = [
    ({"vocab_size": V}, "arch"),
    ({"arch": "transformer", "vocab_size": V}, "arch"),
    ({"arch": "cnn"}, "vocab_size"),
    ({"arch": "cnn", "vocab_size": V, "n_layer": 3}, "'n_layer' \\(unknown\\)"),
    ({"arch": "cnn", "vocab_size": V, "rnn": "lstm"}, "'rnn' \\(applies to arch"),
    ({"arch": "rnn", "vocab_size": V, "kernel_size": 3}, "'kernel_size'"),
    ({"arch": "cnn", "vocab_size": V, "n_layers": 0}, "'n_layers'"),
    ({"arch": "cnn", "vocab_size": V, "d_model": True}, "'d_model'"),
    ({"arch": "cnn", "vocab_size": V, "d_model": 16.0}, "'d_model'"),
    ({"arch": "cnn", "vocab_size": V, "dilations": [1, 2], "max_dilation": 2}, "not both"),
    ({"arch": "cnn", "vocab_size": V, "dilations": [1, 2], "n_layers": 3}, "n_layers"),
    ({"arch": "cnn", "vocab_size": V, "dilations": [1, 0]}, "dilations"),
    ({"arch": "cnn", "vocab_size": V, "dilations": "1,2"}, "dilations"),
    ({"arch": "cnn", "vocab_size": V, "max_dilation": 6}, "power of two"),
    ({"arch": "cnn", "vocab_size": V, "bottleneck": False, "d_hidden": 8}, "d_hidden"),
    ({"arch": "cnn", "vocab_size": V, "head": "pooled"}, "n_out"),
    ({"arch": "cnn", "vocab_size": V, "pooling": "max"}, "pooling"),
    ({"arch": "cnn", "vocab_size": V, "head": "seq"}, "'head'"),
    ({"arch": "cnn", "vocab_size": V, "head": "pooled", "n_out": 2, "pooling": "sum"},
     "'pooling'"),
    ({"arch": "cnn", "vocab_size": V, "dropout": 1.0}, "'dropout'"),
    ({"arch": "cnn", "vocab_size": V, "activation": "tanh"}, "'activation'"),
    ({"arch": "cnn", "vocab_size": V, "pad_id": V}, "'pad_id'"),
    ({"arch": "rnn", "vocab_size": V, "rnn": "transformer"}, "'rnn'"),
    ({"arch": "rnn", "vocab_size": V, "bidirectional": 1}, "'bidirectional'"),
    ({"arch": "hybrid", "vocab_size": V, "rnn_layers": 0}, "'rnn_layers'"),
]


@pytest.mark.parametrize(("cfg", "match"), BAD_CONFIGS)
def test_bad_config_errors(cfg: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(cfg)


def test_config_must_be_a_dict() -> None:
    with pytest.raises(TypeError, match="dict"):
        build_model([("arch", "cnn")])  # type: ignore[arg-type]


def test_bad_inputs() -> None:
    m = build_model({"arch": "cnn", "vocab_size": V, "d_model": 8}).eval()
    with pytest.raises(ValueError, match="tokens"):
        m(torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        m(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="does not fit"):
        m(tokens_batch([4, 2]), torch.ones(2, 1, 5, dtype=torch.bool))


# ------------------------------------------------------------------- dropout
def test_dropout_on_in_train_off_in_eval() -> None:
    cfg = {"arch": "cnn", "vocab_size": V, "d_model": 16, "n_layers": 2, "dropout": 0.5}
    torch.manual_seed(0)
    model = build_model(cfg)
    plain = build_model({**cfg, "dropout": 0.0})
    tokens = tokens_batch([9, 6, 4])
    mask = tokens != 0
    model.train()
    with torch.no_grad():
        a, b = model(tokens), model(tokens)
    assert not torch.equal(a, b), "dropout inactive in train mode"
    assert torch.all(a.masked_select(~mask[:, None, :]) == 0), "dropout put values in padding"
    model.eval()
    plain.load_state_dict(model.state_dict())  # the train passes moved the running stats
    plain.eval()
    with torch.no_grad():
        a, b, ref = model(tokens), model(tokens), plain(tokens)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, ref, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["rnn", "hybrid"])
def test_dropout_obeys_mode_for_rnn_models(arch: str) -> None:
    cfg = {"arch": arch, "vocab_size": V, "d_model": 8, "head": "pooled", "n_out": 3,
           "dropout": 0.5}
    if arch == "rnn":
        cfg["n_layers"] = 2
    model = build_model(cfg)
    tokens = tokens_batch([9, 6, 4])
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(tokens), model(tokens))
        model.eval()
        assert torch.equal(model(tokens), model(tokens))


# --------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: f"{c['arch']}-{c.get('head', 'token')}")
def test_checkpoint_round_trip(cfg: dict[str, Any], tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tokens = tokens_batch([8, 5, 2], seed=2)
    for _ in range(3):  # move weights and running statistics off their initial values
        opt.zero_grad()
        model(tokens).square().mean().backward()
        opt.step()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, step=3, optimizer=opt.state_dict(), note="hello")
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.config == model.config
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), model(tokens), rtol=0, atol=0)
    for (k1, v1), (k2, v2) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k1 == k2 and torch.equal(v1, v2)
    payload = load_checkpoint(path)
    assert payload["step"] == 3 and payload["note"] == "hello"
    opt2 = torch.optim.Adam(loaded.parameters(), lr=1e-2)
    opt2.load_state_dict(payload["optimizer"])
    # plain torch.load with weights_only=True reads it too (no pickled code)
    raw = torch.load(path, weights_only=True)
    assert raw["config"] == model.config


def test_checkpoint_unwraps_compiled_model(tmp_path: Path) -> None:
    model = build_model({"arch": "cnn", "vocab_size": V, "d_model": 8, "n_layers": 1})
    wrapped = torch.compile(model)  # lazy: nothing is compiled until called
    save_checkpoint(tmp_path / "m.pt", wrapped)
    state = load_checkpoint(tmp_path / "m.pt")["state_dict"]
    assert state.keys() == model.state_dict().keys()


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="config"):
        save_checkpoint(tmp_path / "x.pt", nn.Linear(2, 2))
    model = build_model({"arch": "cnn", "vocab_size": V, "d_model": 8, "n_layers": 1})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "x.pt", model, config={})
    assert not (tmp_path / "x.pt").exists()
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a seqpad checkpoint"):
        load_model(tmp_path / "other.pt")
    assert list(tmp_path.iterdir()) == [tmp_path / "other.pt"]  # no temp files left


# ------------------------------------------------- parity with native layers
class _NativeBlock(nn.Module):
    """ByteNet bottleneck block from native layers, same attribute names as ByteNetBlock."""

    def __init__(self, d: int, h: int, k: int, dilation: int) -> None:
        super().__init__()
        self.norm_in, self.act_in = nn.BatchNorm1d(d), nn.ReLU()
        self.conv_in = nn.Conv1d(d, h, 1)
        self.norm, self.act = nn.BatchNorm1d(h), nn.ReLU()
        self.conv = nn.Conv1d(h, h, k, dilation=dilation, padding="same")
        self.norm_out, self.act_out = nn.BatchNorm1d(h), nn.ReLU()
        self.conv_out = nn.Conv1d(h, d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.act_in(self.norm_in(x)))
        h = self.conv(self.act(self.norm(h)))
        return x + self.conv_out(self.act_out(self.norm_out(h)))


class _NativeCNN(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        d, h, k = cfg["d_model"], cfg["d_hidden"], cfg["kernel_size"]
        self.embed = nn.Embedding(cfg["vocab_size"], d, padding_idx=0)
        self.encoder = nn.Module()
        self.encoder.blocks = nn.ModuleList(_NativeBlock(d, h, k, r) for r in cfg["dilations"])
        self.encoder.norm = nn.BatchNorm1d(d)
        self.head = nn.Module()
        self.head.proj = nn.Conv1d(d, cfg["n_out"], 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens).transpose(1, 2)
        for block in self.encoder.blocks:
            x = block(x)
        return self.head.proj(F.relu(self.encoder.norm(x)))


class _NativeRNN(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        d = cfg["d_model"]
        self.embed = nn.Embedding(cfg["vocab_size"], d, padding_idx=0)
        self.encoder = nn.Module()
        self.encoder.rnn = nn.LSTM(d, cfg["rnn_hidden"], cfg["n_layers"], batch_first=True,
                                   bidirectional=cfg["bidirectional"])
        self.head = nn.Module()
        width = cfg["rnn_hidden"] * (2 if cfg["bidirectional"] else 1)
        self.head.pool = nn.Identity()
        self.head.mlp = nn.Sequential(nn.Linear(width, cfg["mlp_hidden"]), nn.ReLU(),
                                      nn.Dropout(0.0), nn.Linear(cfg["mlp_hidden"], cfg["n_out"]))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.encoder.rnn(self.embed(tokens))
        return self.head.mlp(out.mean(dim=1))


@pytest.mark.parametrize("kind", ["cnn", "rnn"])
def test_unpadded_batch_matches_native_model(kind: str) -> None:
    """With no padding, the masked model equals the same architecture from native layers:
    outputs, parameter gradients and running statistics, in train and eval mode."""
    torch.manual_seed(3)
    if kind == "cnn":
        ours = build_model({"arch": "cnn", "vocab_size": V, "d_model": 16, "n_layers": 3,
                            "kernel_size": 4, "max_dilation": 4})
        native = _NativeCNN(ours.config)
    else:
        ours = build_model({"arch": "rnn", "vocab_size": V, "d_model": 12, "n_layers": 2,
                            "head": "pooled", "n_out": 3})
        native = _NativeRNN(ours.config)
    native.load_state_dict(ours.state_dict())  # same keys, both ways
    ours.load_state_dict(native.state_dict())
    tokens = tokens_batch([11, 11, 11], seed=4)  # no padding
    for train in (True, False):
        ours.train(train)
        native.train(train)
        ours.zero_grad()
        native.zero_grad()
        out, ref = ours(tokens), native(tokens)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        w = torch.randn_like(ref)
        (out * w).sum().backward()
        (ref * w).sum().backward()
        for (name, p), (_, q) in zip(ours.named_parameters(), native.named_parameters(),
                                     strict=True):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
    for (name, b), (_, c) in zip(ours.named_buffers(), native.named_buffers(), strict=True):
        torch.testing.assert_close(b, c, atol=1e-6, rtol=1e-5, msg=name)


def test_token_logits_feed_cross_entropy() -> None:
    """(B, V, L) logits go straight into F.cross_entropy; padding ignored via -100 targets."""
    model = build_model({"arch": "cnn", "vocab_size": V, "d_model": 8, "n_layers": 1}).eval()
    tokens = tokens_batch([6, 3])
    targets = tokens.masked_fill(tokens == 0, -100)
    logits = model(tokens)
    loss = F.cross_entropy(logits, targets, ignore_index=-100)
    per_seq = [
        F.cross_entropy(model(tokens[i : i + 1, :n]), tokens[i : i + 1, :n], reduction="sum")
        for i, n in enumerate([6, 3])
    ]
    torch.testing.assert_close(loss, sum(per_seq) / 9, atol=1e-5, rtol=1e-5)


def test_deepcopy_and_repr() -> None:
    m = build_model({"arch": "hybrid", "vocab_size": V, "d_model": 8, "n_layers": 1})
    c = copy.deepcopy(m)
    assert c.config == m.config and c.config is not m.config
    assert "arch='hybrid'" in repr(m)


@pytest.mark.parametrize("arch", ["cnn", "rnn", "hybrid"])
def test_models_run_under_cpu_bf16_autocast(arch: str) -> None:
    """Under CPU bf16 autocast: close to float32, still zero at padding, no pad gradient."""
    torch.manual_seed(5)
    model = build_model({"arch": arch, "vocab_size": V, "d_model": 16, "n_layers": 2})
    tokens = tokens_batch([20, 12, 5], seed=6)
    ref = model(tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(tokens)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)
    pad = (tokens == 0)[:, None, :].expand_as(out)
    assert torch.all(out[pad] == 0)
    out.float().square().sum().backward()
    assert torch.all(model.embed.weight.grad[0] == 0)
