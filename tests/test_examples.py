"""Run each example briefly, as a user would, in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seqpad.models import load_model
from seqpad.store import TokenizedDataset

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
# Few, small steps: the loss must still fall (it drops fast from ln(31) towards the
# amino-acid unigram entropy in the first steps).
ARGS = ["--steps", "20", "--max-tokens", "2048", "--max-length", "256", "--d-model", "32",
        "--n-layers", "2", "--log-every", "10"]
TIMEOUT = 300


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # tiny model; keeps the run steady on a busy 2-core box
    env["PYTHONWARNINGS"] = "error::UserWarning"  # no warnings from the examples' own code
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo on the loopback interface only
    return env


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n"
        f"--- stderr\n{proc.stderr}"
    )
    return proc


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the examples build (first run) and then reuse the E. coli store."""
    return tmp_path_factory.mktemp("examples") / "ecoli.store"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_train_masked_lm(store_path: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "mlm.pt"
    proc = _run([sys.executable, str(EXAMPLES / "train_masked_lm.py"), *ARGS,
                 "--store", str(store_path), "--save", str(ckpt)])
    out = proc.stdout
    assert "step 20/20 loss" in out and "tokens/s" in out
    assert ": loss fell" in out
    assert "reloaded model gives identical outputs: True" in out
    # the store it built is complete: every protein of the bundled proteome
    ds = TokenizedDataset(store_path)
    assert len(ds) == 4363
    assert ds.tokenizer.decode(ds[0]).startswith("M")
    model = load_model(ckpt)
    assert model.config["arch"] == "cnn" and model.config["n_out"] == ds.tokenizer.vocab_size
    with torch.no_grad():
        logits = model(torch.as_tensor(ds[0][None].astype("int64")))
    assert logits.shape == (1, ds.tokenizer.vocab_size, len(ds[0]))


@pytest.mark.slow
def test_ddp_train_two_processes(store_path: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ddp.pt"
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                 "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                 str(EXAMPLES / "ddp_train.py"), *ARGS, "--store", str(store_path),
                 "--save", str(ckpt)])
    out = proc.stdout
    assert "world size 2 (gloo)" in out
    assert "MaskedSyncBatchNorm1d layers" in out
    assert "ranks in sync: True" in out
    assert "tokens/s" in out and ": loss fell" in out
    assert out.count("done:") == 1  # rank 0 alone reports
    model = load_model(ckpt)  # a DDP checkpoint loads into a single process
    assert model.config["arch"] == "cnn"


def test_ddp_train_refuses_to_run_without_torchrun() -> None:
    proc = subprocess.run([sys.executable, str(EXAMPLES / "ddp_train.py"), "--steps", "1"],
                          cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert proc.returncode == 2
    assert "torchrun" in proc.stderr


def test_train_packed(store_path: Path) -> None:
    proc = _run([sys.executable, str(EXAMPLES / "train_packed.py"), "--steps", "12",
                 "--row-length", "256", "--rows", "2", "--d-model", "16", "--n-layers", "2",
                 "--log-every", "6", "--store", str(store_path)])
    out = proc.stdout
    assert "step 12/12 loss" in out and "real tokens/s" in out and "padding" in out
    assert ": loss fell" in out
    assert "packed output equals the protein run alone: True" in out
