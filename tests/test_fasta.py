"""seqpad.fasta against Biopython's own parse, hand-checked records and real edge-case files."""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

import pytest
from Bio import SeqIO
from hypothesis import given, settings
from hypothesis import strategies as st

from seqpad.fasta import FastaFormatError, read_fasta

DATA = Path(__file__).parent / "data"


def biopython_records(path: Path) -> list[tuple[str, str]]:
    """Independent reference: Bio.SeqIO.parse(..., "fasta") on the same file."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8")
    return [(r.id, str(r.seq)) for r in SeqIO.parse(io.StringIO(text), "fasta")]


# Files Biopython's "fasta" parser reads; ours must give exactly the same records.
VALID = [
    "biopython/f002", "biopython/flowers.pro.gz", "biopython/aster.pro",
    "biopython/aster_no_wrap.pro", "biopython/fa01", "biopython/NC_000932.faa",
    "biopython/protein_lib.fa", "biopython/sequence.fa", "biopython/seqs.fasta",
    "biopython/NC_001802lc.fna", "biopython/dups.fasta", "biopython/centaurea.nu",
    "scikit-bio/fasta_multi_seq", "scikit-bio/fasta_multi_seq_spaces",
    "scikit-bio/fasta_prot_seqs_odd_labels", "scikit-bio/fasta_invalid_blank_line_within_sequence",
    "scikit-bio/empty", "seqkit/empty_id_and_seq.fa", "seqkit/a.fa", "htslib/faidx.fa",
    "needletail/test.fa", "needletail/test.fa.gz", "pyfastx/test.fa.gz",
    "indexedfasta-js/volvox.fa.gz", "indexedfasta-js/no-newline.fa", "FASTX.jl/seqs.fna.gz",
]


@pytest.mark.parametrize("name", VALID)
def test_same_records_as_biopython(name: str) -> None:
    path = DATA / name
    assert list(read_fasta(path)) == biopython_records(path)


def test_f002_lengths_and_ids_from_manifest() -> None:
    # Biopython's test suite: 3 records of 633, 413, 471; no final newline; Ctrl-A in title.
    recs = list(read_fasta(DATA / "biopython/f002"))
    assert [len(s) for _, s in recs] == [633, 413, 471]
    assert [n for n, _ in recs] == ["gi|1348912|gb|G26680|G26680", "gi|1348917|gb|G26685|G26685",
                                    "gi|1592936|gb|G29385|G29385"]
    assert recs[0][1].startswith("CGGACCAGACGGACACAGGGAGAAGCTAGTTTCTTTCATGTGATTGANATNATGAC")


def test_empty_names_and_empty_records_are_kept() -> None:
    # seqkit counts 11 records here; bare ">" gives name "", headers without lines "" seqs.
    recs = list(read_fasta(DATA / "seqkit/empty_id_and_seq.fa"))
    assert recs == [("s1", "A"), ("s2", ""), ("s3", "C"), ("", ""), ("s5", "T"), ("", ""),
                    ("s7", "G"), ("s8", ""), ("", "N"), ("s10", "C"), ("s11", "C")]


def test_mixed_crlf_lf_and_leading_spaces_in_header() -> None:
    recs = list(read_fasta(DATA / "htslib/faidx.fa"))
    assert [n for n, _ in recs] == ["", "trailingblank1", "trailingblank2", "trailingblank3",
                                    "foo", "bar"]
    assert recs[3][1] == "ACGTA"  # CRLF record: no \r left in the sequence
    assert all("\r" not in s and "\n" not in s for _, s in recs)
    full = [n for n, _ in read_fasta(DATA / "htslib/faidx.fa", full_title=True)]
    assert full[2] == "trailingblank2 with last dna line the same length"
    assert full[3] == "trailingblank3 with cr-lf style line endings"
    assert full[4] == "  foo"


# scikit-bio's expected records, except that "> desc3" is named "desc3" (Biopython's id:
# first word of the title) where scikit-bio gives id "" and description "desc3".
SKBIO_SIX = [("seq1", "ACGT-acgt."), ("_____seq__2_", "A"), ("desc3", "AACGGuA"),
             ("", "ACGTTGCAccGG"), ("", "ACGUU"), ("proteinseq", "pQqqqPPQQQ")]


@pytest.mark.parametrize("name", ["scikit-bio/fasta_multi_seq",
                                  "scikit-bio/fasta_5_blanks_start_of_file",
                                  "scikit-bio/fasta_6_ws_lines_start_of_file"])
def test_leading_blank_lines_are_skipped(name: str) -> None:
    # scikit-bio's reader accepts leading blank / whitespace-only lines; so do we.
    assert list(read_fasta(DATA / name)) == SKBIO_SIX


def test_soft_masking_is_preserved() -> None:
    recs = dict(read_fasta(DATA / "biopython/sequence.fa"))
    assert any(c.islower() for s in recs.values() for c in s)
    lc = list(read_fasta(DATA / "biopython/NC_001802lc.fna"))
    assert lc[0][0] == "gi|9629357|ref|nc_001802.1|" and len(lc[0][1]) == 9181
    assert set(lc[0][1]) <= set("acgt")


@pytest.mark.parametrize("name", ["scikit-bio/empty", "scikit-bio/whitespace_only",
                                  "seqkit/blank1.fx"])
def test_empty_and_blank_files_have_no_records(name: str) -> None:
    assert list(read_fasta(DATA / name)) == []


@pytest.mark.parametrize(("name", "line", "snippet"), [
    ("biopython/aster_pearson.pro", 1, "'Some header'"),
    ("biopython/aster_blast.pro", 1, "'# Some header'"),
    ("needletail/bad_test.fa", 1, "This is not a valid FASTA"),
    ("scikit-bio/fasta_invalid_missing_header", 1, "seq1 desc1"),
    ("scikit-bio/fasta_invalid_legacy_format", 1, "; legacy"),
])
def test_text_before_first_header_is_an_error(name: str, line: int, snippet: str) -> None:
    with pytest.raises(FastaFormatError) as info:
        list(read_fasta(DATA / name))
    e = info.value
    assert e.line == line and e.path == str(DATA / name)
    assert f"{DATA / name}: line {line}: expected a FASTA header" in str(e)
    assert snippet in str(e)


def test_first_non_blank_line_counts_blank_lines(tmp_path: Path) -> None:
    p = tmp_path / "x.fa"
    p.write_bytes(b"\n \r\n\t\nACGT\n>x\nAC\n")
    with pytest.raises(FastaFormatError) as info:
        list(read_fasta(p))
    assert info.value.line == 4


def test_unsupported_compression_is_named() -> None:
    with pytest.raises(FastaFormatError, match="bzip2-compressed input is not supported"):
        read_fasta(DATA / "needletail/test.fa.bz2")


def test_gzip_detected_by_magic_bytes_not_suffix(tmp_path: Path) -> None:
    p = tmp_path / "reads.txt"
    p.write_bytes((DATA / "needletail/test.fa.gz").read_bytes())
    assert list(read_fasta(p)) == [("test", "AGCTGATCGA"), ("test2", "TAGC")]


def test_bgzf_multi_member_gzip() -> None:
    recs = list(read_fasta(DATA / "indexedfasta-js/volvox.fa.gz"))
    assert [len(s) for _, s in recs] == [50001, 6079]


def test_truncated_gzip_names_file_and_line(tmp_path: Path) -> None:
    raw = (DATA / "biopython/flowers.pro.gz").read_bytes()
    p = tmp_path / "cut.fa.gz"
    p.write_bytes(raw[: len(raw) // 2])
    good_lines = gzip.decompress(raw).count(b"\n")
    with pytest.raises(FastaFormatError) as info:
        list(read_fasta(p))
    e = info.value
    assert "truncated" in str(e) and str(p) in str(e)
    assert e.line is not None and 1 < e.line < good_lines


def test_binary_file_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "model.pt"
    p.write_bytes(b">not really\n" + bytes(range(256)) * 4)
    with pytest.raises(FastaFormatError, match="binary data") as info:
        list(read_fasta(p))
    assert info.value.line == 2


def test_nul_byte_late_in_file_names_its_line(tmp_path: Path) -> None:
    p = tmp_path / "x.fa"
    body = b"".join(b">r%d\nACGT\n" % i for i in range(20000))  # > 64 KiB before the NUL
    p.write_bytes(body + b">bad\nAC\x00GT\n>after\nAAAA\n")
    with pytest.raises(FastaFormatError, match="NUL") as info:
        list(read_fasta(p))
    assert info.value.line == 40002


def test_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = (DATA / "biopython/flowers.pro.gz").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    reader = read_fasta("-")
    assert reader.path == "<stdin>" and reader.size is None
    assert list(reader) == biopython_records(DATA / "biopython/flowers.pro.gz")


def test_bytes_read_reaches_file_size() -> None:
    for name in ["pyfastx/test.fa.gz", "biopython/NC_000932.faa"]:
        path = DATA / name
        reader = read_fasta(path)
        assert reader.size == path.stat().st_size
        first = next(reader)
        assert first
        for _ in reader:
            pass
        assert reader.bytes_read == path.stat().st_size
        assert reader.records_read == len(biopython_records(path))


def test_locate_header_and_residue_lines() -> None:
    reader = read_fasta(DATA / "biopython/f002")
    list(reader)
    assert reader.locate(1) == 12  # header of the 2nd record
    assert reader.locate(1, 1) == 13
    assert reader.locate(1, 71) == 14  # 70-column lines
    assert reader.locate(2, 471) == 26  # last residue: last line of the file
    assert reader.locate(5) is None


def test_directory_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FastaFormatError, match="directory"):
        read_fasta(tmp_path)
    with pytest.raises(FileNotFoundError, match="No such file") as info:
        read_fasta(tmp_path / "nope.fa")
    assert info.value.filename == str(tmp_path / "nope.fa")


# ----------------------------------------------------------------- property: round trip
_names = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=12)
_seqs = st.text(st.sampled_from("ACDEFGHIKLMNPQRSTVWYacgtnx-*"), max_size=200)


@settings(max_examples=40, deadline=None)
@given(records=st.lists(st.tuples(_names, _seqs), max_size=8),
       width=st.integers(1, 80), crlf=st.booleans(), final_newline=st.booleans(),
       blank=st.booleans(), gz=st.booleans())
def test_write_read_round_trip(records: list[tuple[str, str]], width: int, crlf: bool,
                               final_newline: bool, blank: bool, gz: bool) -> None:
    eol = "\r\n" if crlf else "\n"
    out = []
    for name, seq in records:
        out.append(f">{name} some description{eol}" if name else f">{eol}")
        out.extend(seq[i: i + width] + eol for i in range(0, len(seq), width))
        if blank:
            out.append(eol)
    text = "".join(out)
    if not final_newline:
        text = text.rstrip("\r\n")
    data = text.encode()
    if gz:
        data = gzip.compress(data)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "r.fa"
        p.write_bytes(data)
        assert list(read_fasta(p)) == records




def test_fasta_format_error_pickles_with_its_attributes() -> None:
    import pickle

    e = FastaFormatError("in.fa", 12, "binary data (NUL byte)", record="r1")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is FastaFormatError and str(back) == str(e)
    assert (back.path, back.line, back.reason, back.record) == ("in.fa", 12,
                                                                "binary data (NUL byte)", "r1")
