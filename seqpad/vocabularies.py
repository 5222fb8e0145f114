"""Pretrained vocabularies: tokenizers whose ids match a published model's.

``pretrained_tokenizer("esm2")`` (also ``"esm1b"``) has exactly the ids of fair-esm's
ESM-1b / ESM-2 alphabet, which Hugging Face's ESM-2 checkpoints share::

    <cls> 0 (bos)   <pad> 1   <eos> 2   <unk> 3
    L A G V S E R T I D P K Q N F Y M H W C X B U Z O . -   4 .. 30
    <null_1> 31     <mask> 32

``Collator(tok, add_bos=True, add_eos=True)`` then gives the token tensor fair-esm's
``BatchConverter`` gives. Differences, all where fair-esm fails: a lowercase residue
gets the id of its uppercase form (fair-esm raises ``KeyError``; pass
``case_sensitive=True`` to treat it as unknown); a symbol outside the vocabulary (``J``,
``*``) follows the ``unknown`` policy (fair-esm raises ``KeyError``; Hugging Face's
``EsmTokenizer`` gives ``<unk>``, as ``unknown="unk"`` does). fair-esm strips
whitespace and reads ``<mask>`` written inside a sequence string as the mask token;
seqpad sequences hold residues only.
"""

from __future__ import annotations

from seqpad.tokenizer import Tokenizer, UnknownPolicy

__all__ = ["ESM_TOKENS", "PRETRAINED_VOCABS", "pretrained_tokenizer"]

#: fair-esm's ``Alphabet.from_architecture("ESM-1b").all_toks``, in id order.
ESM_TOKENS: tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    *"LAGVSERTIDPKQNFYMHWCXBUZO.-",
    "<null_1>", "<mask>",
)

_ESM = {"tokens": ESM_TOKENS, "pad": "<pad>", "unk": "<unk>", "mask": "<mask>",
        "bos": "<cls>", "eos": "<eos>"}

#: Names :func:`pretrained_tokenizer` knows, and their vocabularies.
PRETRAINED_VOCABS: dict[str, dict[str, object]] = {"esm2": _ESM, "esm1b": _ESM}


def pretrained_tokenizer(name: str, *, unknown: UnknownPolicy = "error",
                         case_sensitive: bool = False) -> Tokenizer:
    """The tokenizer of a published model's vocabulary (see the module docstring).

    Args:
        name: ``"esm2"`` or ``"esm1b"`` (the same ids), case-insensitive.
        unknown: policy for symbols outside the vocabulary (``"unk"`` gives ``<unk>``,
            like Hugging Face's ``EsmTokenizer``).
        case_sensitive: if False (default), lowercase residues get their uppercase ids.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    key = name.lower().replace("-", "")
    if key not in PRETRAINED_VOCABS:
        raise ValueError(f"unknown pretrained vocabulary {name!r}; known: "
                         f"{', '.join(sorted(PRETRAINED_VOCABS))}")
    spec = PRETRAINED_VOCABS[key]
    return Tokenizer.from_vocab(
        spec["tokens"], pad=spec["pad"], unk=spec["unk"], mask=spec["mask"],  # type: ignore[arg-type]
        bos=spec["bos"], eos=spec["eos"], unknown=unknown,  # type: ignore[arg-type]
        case_sensitive=case_sensitive, name=key)
