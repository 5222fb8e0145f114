"""Store reliability (issue 10): --force / overwrite never deletes what is not a store,
damaged stores raise one StoreError naming the file, a store replaced under a DataLoader
is detected, and errors about the output name the path the user gave."""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import tempfile
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import seqpad.store
from seqpad.cli import cli
from seqpad.store import StoreError, TokenizedDataset, write_store
from seqpad.tokenizer import Tokenizer

RECS = [("a", "ACDE"), ("b", "KL"), ("c", "MNPQRS"), ("d", "W")]
# the same shapes as RECS (lengths, name bytes), other content and alphabet: a reader that
# took these arrays for RECS' would see no error, only different sequences
SAME_SHAPES = ([("e", "GGGG"), ("f", "TT"), ("g", "TTTTTT"), ("h", "N")],
               Tokenizer("dna"))
STORE_FILES = ["ids.npy", "meta.json", "name_offsets.npy", "names.npy", "offsets.npy"]


def run(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, [str(a) for a in args])


def contents(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    out = tmp_path / "s"
    write_store(out, RECS, Tokenizer("protein"))
    return out


@pytest.fixture
def src(tmp_path: Path) -> Path:
    p = tmp_path / "in.fa"
    p.write_text(">x\nMKV\n")
    return p


def one_error_line(r) -> str:  # type: ignore[no-untyped-def]
    assert r.exit_code == 1, r.output
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("seqpad: error: "), r.stderr
    assert "Traceback" not in r.output and "Aborted" not in r.output
    return str(r.stderr)


# ------------------------------------------------------------- --force / overwrite
def test_force_refuses_a_store_that_also_holds_a_user_file(store: Path, src: Path) -> None:
    (store / "NOTES.txt").write_text("my notes")
    before = contents(store)
    with pytest.raises(StoreError, match=r"NOTES\.txt: not part of a seqpad store"):
        write_store(store, RECS, Tokenizer("protein"), overwrite=True)
    err = one_error_line(run("tokenize", src, "-o", store, "--alphabet", "protein", "--force"))
    assert "NOTES.txt" in err and "nothing was deleted" in err
    assert contents(store) == before
    assert sorted(os.listdir(store.parent)) == ["in.fa", "s"]


def test_force_refuses_a_fake_meta_json(tmp_path: Path, src: Path) -> None:
    d = tmp_path / "thesis"
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"format": "seqpad-store"}))
    (d / "thesis.tex").write_text("years of work")
    err = one_error_line(run("tokenize", src, "-o", d, "--alphabet", "protein", "--force"))
    assert "thesis.tex" in err
    (d / "thesis.tex").unlink()  # only the fake meta.json: not a valid store either
    with pytest.raises(StoreError, match="not a valid seqpad store"):
        write_store(d, RECS, Tokenizer("protein"), overwrite=True)
    assert os.listdir(d) == ["meta.json"]


def test_no_store_inside_a_store(store: Path, src: Path) -> None:
    before = contents(store)
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="inside the seqpad store"):
            write_store(store / "inner", RECS, Tokenizer("protein"), overwrite=overwrite)
    (store / "sub").mkdir()  # deeper down too
    with pytest.raises(StoreError, match="inside the seqpad store"):
        write_store(store / "sub" / "inner", RECS, Tokenizer("protein"))
    err = one_error_line(run("tokenize", src, "-o", store / "inner", "--alphabet", "protein",
                             "--force"))
    assert "inside the seqpad store" in err
    (store / "sub").rmdir()
    assert contents(store) == before and sorted(os.listdir(store)) == STORE_FILES


def test_force_refuses_a_store_holding_a_nested_store(tmp_path: Path, store: Path) -> None:
    # a store nested inside another (as older versions allowed): never wiped with its parent
    inner = tmp_path / "inner"
    write_store(inner, [("z", "WW")], Tokenizer("protein"))
    os.rename(inner, store / "inner")
    with pytest.raises(StoreError, match=r"holds inner: not part"):
        write_store(store, RECS, Tokenizer("protein"), overwrite=True)
    assert TokenizedDataset(store / "inner").names == ["z"]


def test_force_through_a_symlink_replaces_the_target_in_place(tmp_path: Path,
                                                              store: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(store)
    with pytest.raises(StoreError, match="already exists"):
        write_store(link, [("new", "WW")], Tokenizer("protein"))
    write_store(link, [("new", "WW")], Tokenizer("protein"), overwrite=True)
    assert link.is_symlink() and os.readlink(link) == str(store)
    assert TokenizedDataset(store).names == ["new"]  # replaced where the link points
    assert sorted(os.listdir(tmp_path)) == ["link", "s"]  # no second store, no leftovers
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(StoreError, match="symlink to a missing path"):
        write_store(tmp_path / "dangling", RECS, Tokenizer("protein"), overwrite=True)
    assert not (tmp_path / "nowhere").exists()
    (store / "NOTES.txt").write_text("x")
    with pytest.raises(StoreError, match=r"a symlink to .*NOTES\.txt"):
        write_store(link, RECS, Tokenizer("protein"), overwrite=True)


def test_a_file_added_during_the_replacement_is_kept(tmp_path: Path) -> None:
    old = tmp_path / ".s.old-x"
    (old / "store").mkdir(parents=True)
    for name in STORE_FILES:
        (old / "store" / name).write_text("x")
    (old / "store" / "late.txt").write_text("keep me")
    with pytest.warns(RuntimeWarning, match="kept in"):
        seqpad.store._remove_old_store(old)
    assert os.listdir(old / "store") == ["late.txt"]


# ------------------------------------------------------------------ damaged arrays
@pytest.mark.parametrize("name", ["ids.npy", "offsets.npy", "names.npy", "name_offsets.npy"])
@pytest.mark.parametrize("damage", ["empty", "cut"])
def test_an_unreadable_array_is_a_store_error_naming_it(store: Path, name: str,
                                                        damage: str) -> None:
    raw = (store / name).read_bytes()
    (store / name).write_bytes(b"" if damage == "empty" else raw[:len(raw) - 1])
    with pytest.raises(StoreError, match=re.escape(str(store / name))):
        TokenizedDataset(store)
    err = one_error_line(run("info", store))
    assert name in err


# ------------------------------------------------------------ damaged tokenizer
@pytest.mark.parametrize("damage", ["vocab", "null", "missing_key", "policy", "duplicate",
                                    "alphabet_name", "unknown_name"])
def test_a_damaged_tokenizer_section_is_caught_at_open(store: Path, damage: str) -> None:
    meta_path = store / "meta.json"
    meta = json.loads(meta_path.read_text())
    if damage == "vocab":
        meta["tokenizer"]["vocab"][7] = "Z"
    elif damage == "null":
        meta["tokenizer"] = None
    elif damage == "policy":
        meta["tokenizer"]["unknown"] = "ignore"
    elif damage == "duplicate":
        t = meta["tokenizer"]
        t["symbols"] = t["symbols"][:-1] + t["symbols"][0]
        t["vocab"] = [*t["vocab"][:-1], t["symbols"][0]]
    elif damage == "alphabet_name":  # protein symbols called dna
        meta["tokenizer"]["alphabet"] = "dna" if meta["tokenizer"]["alphabet"] != "dna" else "rna"
    elif damage == "unknown_name":
        meta["tokenizer"]["alphabet"] = "proteins"
    else:
        del meta["tokenizer"]["symbols"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=re.escape(f"{meta_path}: damaged 'tokenizer'")):
        TokenizedDataset(store)  # at open, not when .tokenizer is first used
    err = one_error_line(run("info", store))
    assert "meta.json: damaged 'tokenizer' section" in err


def test_counts_in_meta_json_are_checked(store: Path) -> None:
    meta = json.loads((store / "meta.json").read_text())
    (store / "meta.json").write_text(json.dumps({**meta, "n_tokens": "13"}))
    with pytest.raises(StoreError, match="n_tokens is '13', not a count"):
        TokenizedDataset(store)


# ------------------------------------------------------------------ bad offsets
def _save_offsets(store: Path, name: str, values: list[int]) -> None:
    np.save(store / name, np.asarray(values, dtype="<i8"))


def test_offsets_out_of_order_or_out_of_bounds(store: Path) -> None:
    # RECS: lengths 4, 2, 6, 1 -> offsets 0 4 6 12 13
    for values, message in [
        ([0, 4, 2, 12, 13], "record 1 ends at 2, before it starts (4): offsets decrease"),
        ([0, 40, 6, 12, 13], "record 0 ends at 40, past the end of ids.npy (13)"),
        ([1, 4, 6, 12, 13], "record 0 starts at 1, not 0"),
        ([0, 4, 6, 12, 12], "ends at 12, but ids.npy holds 13"),
    ]:
        _save_offsets(store, "offsets.npy", values)
        with pytest.raises(StoreError, match=re.escape(f"{store / 'offsets.npy'}: {message}")):
            TokenizedDataset(store)
    _save_offsets(store, "offsets.npy", [0, 4, 6, 12, 13])
    assert TokenizedDataset(store).lengths.tolist() == [4, 2, 6, 1]


def test_name_offsets_are_checked_when_names_are_first_read(store: Path) -> None:
    _save_offsets(store, "name_offsets.npy", [0, 2, 1, 3, 4])  # names "abcd": 0 1 2 3 4
    ds = TokenizedDataset(store)  # ids need no names
    assert ds[2].tolist() == Tokenizer("protein").encode("MNPQRS").tolist()
    with pytest.raises(StoreError, match=r"name_offsets\.npy: record 1 ends at 1"):
        _ = ds.names
    with pytest.raises(StoreError, match=r"name_offsets\.npy: record 1"):
        TokenizedDataset(store, with_names=True)[3]  # even for a record that looks fine
    _save_offsets(store, "name_offsets.npy", [0, 1, 2, 3, 9])
    with pytest.raises(StoreError, match=r"name_offsets\.npy: record 3 ends at 9, past"):
        TokenizedDataset(store)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 5), min_size=1, max_size=8),
       edits=st.lists(st.tuples(st.integers(0, 8), st.integers(-3, 30)), max_size=3))
def test_any_offsets_give_valid_records_or_an_error(lengths: list[int],
                                                    edits: list[tuple[int, int]]) -> None:
    """Whatever offsets.npy holds, the reader either refuses the store or gives records
    that tile ids.npy exactly (plain-Python reference check), never overlapping slices."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "s"
        write_store(out, [(f"r{i}", "A" * n) for i, n in enumerate(lengths)],
                    Tokenizer("dna"), min_length=0)
        off = np.load(out / "offsets.npy").tolist()
        for i, v in edits:
            off[i % len(off)] = v
        _save_offsets(out, "offsets.npy", off)
        total = sum(lengths)
        valid = off[0] == 0 and off[-1] == total and all(a <= b for a, b in pairwise(off))
        if not valid:
            with pytest.raises(StoreError, match=r"offsets\.npy: "):
                TokenizedDataset(out)
            return
        ds = TokenizedDataset(out)
        assert ds.lengths.tolist() == [b - a for a, b in pairwise(off)]
        assert sum(len(ds[i]) for i in range(len(ds))) == total


def test_opening_checks_offsets_without_reading_them_per_item(store: Path) -> None:
    ds = TokenizedDataset(store)
    blob = pickle.dumps(ds)
    assert b"lengths" not in blob or ds.__getstate__()["_lengths"] is None
    again = pickle.loads(blob)
    assert again.lengths.tolist() == ds.lengths.tolist() == [4, 2, 6, 1]


# ------------------------------------------------- a store replaced under a reader
def test_store_id_is_unique_per_write_and_the_only_difference(tmp_path: Path) -> None:
    write_store(tmp_path / "a", RECS, Tokenizer("protein"))
    write_store(tmp_path / "b", RECS, Tokenizer("protein"))
    ma, mb = (json.loads((tmp_path / x / "meta.json").read_text()) for x in "ab")
    assert re.fullmatch("[0-9a-f]{32}", ma["store_id"]) and ma["store_id"] != mb["store_id"]
    del ma["store_id"], mb["store_id"]
    assert ma == mb


@pytest.mark.parametrize("old_style", [False, True])
def test_a_replaced_store_is_detected_when_reopened(store: Path, old_style: bool) -> None:
    if old_style:  # a store written before store_id: identified by a hash of meta.json
        meta = json.loads((store / "meta.json").read_text())
        del meta["store_id"]
        (store / "meta.json").write_text(json.dumps(meta))
    ds = TokenizedDataset(store, with_names=True)
    blob = pickle.dumps(ds)
    assert pickle.loads(blob)[2][0] == "c"  # the same store: reopened fine
    write_store(store, *SAME_SHAPES, overwrite=True)
    assert TokenizedDataset(store)[2].tolist() != ds[2][1].tolist()
    with pytest.raises(StoreError, match=r"replaced .*since the dataset was opened"):
        pickle.loads(blob)[2]
    assert ds[2][0] == "c"  # this process still maps the old files: consistent


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_dataloader_workers_refuse_a_replaced_store(store: Path, method: str) -> None:
    import multiprocessing as mp

    if method not in mp.get_all_start_methods():
        pytest.skip(f"no {method} here")
    ds = TokenizedDataset(store)
    ds[0]  # mapped in this process: workers reopen by path
    write_store(store, *SAME_SHAPES, overwrite=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1,
                                         multiprocessing_context=method,
                                         collate_fn=np.array)
    with pytest.raises(StoreError, match="replaced"):
        list(loader)


# ----------------------------------------------------------- errors about the output
def test_no_space_left_names_the_output(tmp_path: Path, src: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self, arr):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(seqpad.store._NpyAppender, "append", full)
    out = tmp_path / "out.store"
    with pytest.raises(OSError) as info:
        write_store(out, RECS, Tokenizer("protein"))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(out)
    err = one_error_line(run("tokenize", src, "-o", out, "--alphabet", "protein"))
    assert err == f"seqpad: error: {out}: No space left on device\n"
    assert sorted(os.listdir(tmp_path)) == ["in.fa"]


def test_unwritable_directory_names_the_output(tmp_path: Path, src: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.store"
    if os.geteuid() != 0:  # a real read-only directory (root may write anyway)
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            err = one_error_line(run("tokenize", src, "-o", ro / "s", "--alphabet", "protein"))
            assert err == f"seqpad: error: {ro / 's'}: Permission denied\n"
        finally:
            ro.chmod(0o755)
    real = tempfile.mkdtemp

    def denied(prefix: str = "", dir: str | None = None, **kw):  # type: ignore[no-untyped-def]
        raise PermissionError(errno.EACCES, "Permission denied",
                              os.path.join(str(dir), prefix + "abcd"))

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    err = one_error_line(run("tokenize", src, "-o", out, "--alphabet", "protein"))
    assert err == f"seqpad: error: {out}: Permission denied\n"
    with pytest.raises(PermissionError) as info:
        write_store(out, RECS, Tokenizer("protein"))
    assert info.value.filename == str(out) and ".tmp-" not in str(info.value)
    monkeypatch.setattr(tempfile, "mkdtemp", real)


def test_input_errors_keep_their_own_file_name(tmp_path: Path) -> None:
    def broken():  # type: ignore[no-untyped-def]
        yield "a", "ACDE"
        raise OSError(errno.EIO, "Input/output error", "/data/in.fa")

    with pytest.raises(OSError) as info:
        write_store(tmp_path / "s", broken(), Tokenizer("protein"))
    assert info.value.filename == "/data/in.fa"


# -------------------------------------------------------------------- small APIs
def test_truncate_needs_max_length(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="truncate=True needs max_length"):
        write_store(tmp_path / "s", RECS, Tokenizer("protein"), truncate=True)
    assert os.listdir(tmp_path) == []


def test_indices_must_be_integers(store: Path) -> None:
    ds = TokenizedDataset(store)
    for bad in (1.0, "1", None):
        with pytest.raises(TypeError, match="indices must be integers"):
            ds[bad]  # type: ignore[index]
    ref = ds[1].tolist()
    assert ds[np.int64(1)].tolist() == ds[torch.tensor(1)].tolist() == ref
    assert ds[-3].tolist() == ref
    with pytest.raises(IndexError):
        ds[-5]


def test_a_damaged_summary_does_not_break_info(store: Path) -> None:
    meta = json.loads((store / "meta.json").read_text())
    for damaged in (None, {"skipped": None, "truncated": "x"}, {"skipped": {"empty": "2"}}):
        (store / "meta.json").write_text(json.dumps({**meta, "summary": damaged}))
        r = run("info", store)
        assert r.exit_code == 0, r.output
        assert "records written   4" in r.stdout and "residues          13" in r.stdout
