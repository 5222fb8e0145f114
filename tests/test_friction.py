"""Errors and warnings a newcomer meets (issue 10, "Friction to remove"): each one clear
sentence, or a warning given once, checked against the exact behaviour asked for."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

from seqpad.collate import Collator
from seqpad.tokenizer import Tokenizer

TOK = Tokenizer("protein")


def test_collator_given_a_string_says_to_build_a_tokenizer() -> None:
    with pytest.raises(TypeError, match=r"^Collator needs a seqpad Tokenizer as its first "
                       r"argument, got str 'protein'; use Collator\(Tokenizer\('protein'\)\)$"):
        Collator("protein")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"got NoneType None$"):
        Collator(None)  # type: ignore[arg-type]


def _stored(seq: str, bos: bool, eos: bool) -> np.ndarray:
    """Ids as a store written with --bos / --eos holds them."""
    return TOK.encode(seq, add_bos=bos, add_eos=eos)


@pytest.mark.parametrize(("bos", "eos"), [(True, False), (False, True), (True, True)])
def test_double_specials_warn_once(bos: bool, eos: bool) -> None:
    col = Collator(TOK, add_bos=bos, add_eos=eos)
    items = [_stored("MKV", bos, eos), _stored("MK", bos, eos)]
    with pytest.warns(UserWarning, match="get a second (bos|eos)") as rec:
        batch = col(items)
    assert len(rec) == int(bos) + int(eos)
    # the ids really do carry the specials twice (what the warning is about)
    row = batch.tokens[0].tolist()
    if bos:
        assert row[:2] == [TOK.bos_id, TOK.bos_id]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        col(items)  # once per Collator
        pickle.loads(pickle.dumps(col))(items)  # a worker's copy does not warn again
        # ids without stored specials, and text, never warn
        fresh = Collator(TOK, add_bos=bos, add_eos=eos)
        fresh([("a", _stored("MKV", False, False)), ("x", "MK")])
        fresh(["MKV"])


def test_crop_that_removes_stored_specials_warns_once() -> None:
    ids = _stored("MKVLAGHIKL", True, True)  # 12 ids: bos, 10 residues, eos
    col = Collator(TOK, max_length=6, crop="start")
    with pytest.warns(UserWarning, match=r"batch item 0: cropping to max_length=6 removes "
                      "the bos/eos stored"):
        batch = col([ids])
    assert batch.tokens[0].tolist() == ids[:6].tolist()  # eos cut off
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        col([ids])
        # nothing stored to lose: no warning
        Collator(TOK, max_length=6, crop="start")([_stored("MKVLAGHIKL", False, False)])
        # a crop that keeps both (short enough) does not warn either
        Collator(TOK, max_length=12, crop="random", seed=0)([ids])


@pytest.mark.parametrize("kw", [{}, {"track_running_stats": False}, {"affine": False},
                                {"affine": False, "track_running_stats": False}])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(2, 9, 5), (4, 9)])
def test_masked_batchnorm_wrong_channels_gives_native_message(kw, training, shape) -> None:
    import torch

    from seqpad.nn import MaskedBatchNorm1d

    x = torch.randn(*shape)
    mask = torch.ones(shape[0], 1, shape[2], dtype=torch.bool) if len(shape) == 3 else \
        torch.ones(shape[0], dtype=torch.bool)
    native = torch.nn.BatchNorm1d(8, **kw).train(training)
    ours = MaskedBatchNorm1d(8, **kw).train(training)
    try:
        expected = native(x)
    except RuntimeError as e:
        with pytest.raises(RuntimeError) as got:
            ours(x, mask)
        assert str(got.value) == str(e)
        with pytest.raises(RuntimeError, match=f"^{e}$"):
            ours(x)  # the native path itself
    else:  # no affine, no running stats: any C works, as natively
        torch.testing.assert_close(ours(x, mask), expected)


def test_embedding_ids_outside_the_vocabulary() -> None:
    import torch

    from seqpad.nn import MaskedEmbedding

    emb = MaskedEmbedding(31, 4)
    with pytest.raises(IndexError, match=r"^token id 40 at position \(1, 2\) of ids of shape "
                       r"\(2, 3\) is outside \[0, 31\), the embedding's num_embeddings "
                       r"\(Tokenizer.vocab_size\)"):
        emb(torch.tensor([[5, 6, 0], [5, 6, 40]]))
    with pytest.raises(IndexError, match="token id -1 at position"):
        emb(torch.tensor([[-1, 6]]))
    # positions masked out are never looked up: whatever they hold is fine
    out = emb(torch.tensor([[5, 40]]), torch.tensor([[[True, False]]]))
    assert torch.equal(out[0, :, 1], torch.zeros(4))
    emb(torch.zeros(0, 5, dtype=torch.long))  # empty: nothing to check


def test_embedding_id_check_without_host_sync_when_compiling(monkeypatch) -> None:
    """Off CPU (and while compiling) the check is torch._assert_async: same words."""
    import torch

    from seqpad.nn import MaskedEmbedding

    calls = []
    real = torch._assert_async

    def spy(cond, msg):
        calls.append(msg)
        return real(cond, msg)

    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(torch, "_assert_async", spy)
    emb = MaskedEmbedding(31, 4)
    emb(torch.tensor([[5, 30]]))
    with pytest.raises(RuntimeError, match=r"^a token id is outside \[0, 31\)"):
        emb(torch.tensor([[5, 31]]))
    assert len(calls) == 2


def test_dir_seqpad_lists_each_public_name_once() -> None:
    import seqpad

    seqpad.Tokenizer  # noqa: B018  (cached in the module's globals now)
    seqpad.TokenizedDataset  # noqa: B018
    names = dir(seqpad)
    assert len(names) == len(set(names))
    assert not {"Any", "TYPE_CHECKING", "importlib", "annotations"} & set(names)
    assert set(seqpad.__all__) <= set(names) and {"nn", "models"} <= set(names)
    public = [n for n in names if not n.startswith("_")]
    assert sorted(public) == sorted({*seqpad.__all__, "nn", "models"} - {"__version__"})


def test_embedding_id_check_compiles_without_graph_break() -> None:
    import torch

    from seqpad.nn import MaskedEmbedding

    emb = MaskedEmbedding(31, 8)
    compiled = torch.compile(emb, backend="aot_eager", fullgraph=True)  # a break would raise
    ids = torch.randint(0, 31, (4, 10))
    torch.testing.assert_close(compiled(ids), emb(ids), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match=r"a token id is outside \[0, 31\)"):
        compiled(torch.tensor([[5, 40]] * 4))
