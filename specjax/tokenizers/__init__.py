"""Tokenizers: one `Tokenizer` protocol over GGUF-embedded vocabularies and SentencePiece files.

A speculative decoder only needs ids in and text out, but it needs *exactly* the ids the
model was trained and converted with: a target and a draft must agree token for token, and
a researcher comparing against llama.cpp must see the same prompt ids. So every backend
here reproduces llama.cpp's tokenizer (`src/llama-vocab.cpp`), and the test suite checks
the ids against llama.cpp's own test vectors (`models/ggml-vocab-*.gguf.inp/.out`).

Backends, chosen by `load_tokenizer(path)`:

* `GGUFByteLevelBPETokenizer`: `tokenizer.ggml.model == "gpt2"` (Qwen2/2.5, SmolLM2, GPT-2,
  StarCoder ...). GPT-2 byte-level BPE built with the Hugging Face `tokenizers` library from
  `tokenizer.ggml.tokens` / `merges`; the pre-tokenizer regexes are llama.cpp's for the
  file's `tokenizer.ggml.pre`.
* `GGUFSentencePieceTokenizer`: `tokenizer.ggml.model == "llama"` (Gemma 1-3, Llama 1/2,
  Mistral v1, Phi-3): SentencePiece-style BPE driven by per-token scores, with `<0xXX>` byte
  fallback. A direct port of llama.cpp's `llm_tokenizer_spm`.
* `GGUFGemma4Tokenizer`: `tokenizer.ggml.model == "gemma4"`: SentencePiece-style BPE given
  as merges (spaces become "▁", no byte-level mapping, `<0xXX>` byte fallback).
* `SentencePieceModelTokenizer`: a SentencePiece `.model` file, via the `sentencepiece`
  library.

Everything a decoding loop needs is on the protocol: `encode`, `decode`, per-token display
text for streaming (`decode_token`, `stream_decoder`), `bos_id`, `eos_ids` (instruct models
stop on several ids), `pad_id`, `vocab_size` and `apply_chat_template`. Chat templates are
rendered from the GGUF's `tokenizer.chat_template` with jinja2 when it is installed, exactly
as Hugging Face `transformers` renders them; without jinja2 a hand-written renderer covers
the formats of the models specjax ships with (ChatML with the model's default system prompt:
Qwen2.5, SmolLM2; Gemma's `<start_of_turn>` turns).

Modules, one job each (the public names are re-exported here):
`base` the protocol and errors; `vocab` the shared token table, special tokens, decoding and
streaming; `bpe` the merge-list BPE backends; `sentencepiece` the score-driven and `.model`
backends; `chat` chat templates; `gguf_metadata` the one GGUF key/value reader in specjax
(the checkpoint converter uses it too); this file the factory, `load_tokenizer`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from specjax.tokenizers.base import Message, Tokenizer, TokenizerError, UnsupportedTokenizerError
from specjax.tokenizers.bpe import GGUFByteLevelBPETokenizer, GGUFGemma4Tokenizer
from specjax.tokenizers.chat import (
    QWEN25_DEFAULT_SYSTEM,
    SMOLLM2_DEFAULT_SYSTEM,
    render_builtin_chat,
    render_jinja_chat,
)
from specjax.tokenizers.gguf_metadata import read_gguf_metadata
from specjax.tokenizers.sentencepiece import GGUFSentencePieceTokenizer, SentencePieceModelTokenizer
from specjax.tokenizers.vocab import StreamDecoder, _VocabTokenizer

__all__ = [
    "QWEN25_DEFAULT_SYSTEM",
    "SMOLLM2_DEFAULT_SYSTEM",
    "Message",
    "tokenizer_from_gguf_metadata",
    "GGUFByteLevelBPETokenizer",
    "GGUFGemma4Tokenizer",
    "GGUFSentencePieceTokenizer",
    "SentencePieceModelTokenizer",
    "StreamDecoder",
    "Tokenizer",
    "TokenizerError",
    "UnsupportedTokenizerError",
    "load_tokenizer",
    "read_gguf_metadata",
    "render_builtin_chat",
    "render_jinja_chat",
]

# --------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------

_GGUF_BACKENDS = {
    "gpt2": GGUFByteLevelBPETokenizer,
    "llama": GGUFSentencePieceTokenizer,
    "gemma": GGUFSentencePieceTokenizer,
    "gemma4": GGUFGemma4Tokenizer,
}


def tokenizer_from_gguf_metadata(meta: Mapping[str, Any], **kwargs: Any) -> _VocabTokenizer:
    """The tokenizer described by GGUF metadata (see `read_gguf_metadata`)."""
    model = meta.get("tokenizer.ggml.model")
    if model is None:
        raise TokenizerError("GGUF metadata has no tokenizer (tokenizer.ggml.model is missing)")
    backend = _GGUF_BACKENDS.get(str(model))
    if backend is None:
        raise UnsupportedTokenizerError(
            f"GGUF tokenizer type {model!r} is not supported; supported types: "
            f"{', '.join(sorted(_GGUF_BACKENDS))} (byte-level BPE, SentencePiece BPE)"
        )
    return backend(meta, **kwargs)


def load_tokenizer(
    source: str | os.PathLike[str] | Any,
    *,
    chat_template: str | None = None,
    chat_format: str | None = None,
    default_system_prompt: str | None = None,
) -> _VocabTokenizer:
    """Load the tokenizer of a GGUF file or a SentencePiece `.model` file.

    Args:
      source: a `.gguf` file (any GGUF whose metadata holds a vocabulary, including the
        first part of a split file), a SentencePiece model file, a directory holding
        exactly one of those, a file opened by `specjax.checkpoints.gguf.open_gguf`, or an
        open `gguf.GGUFReader`.
      chat_template: jinja source to use instead of the file's `tokenizer.chat_template`.
      chat_format: built-in renderer ("chatml", "gemma") when jinja2 is missing or there is
        no template; by default inferred from the template or the vocabulary.
      default_system_prompt: for "chatml"; by default read from the template.

    Raises:
      FileNotFoundError: the path does not exist.
      UnsupportedTokenizerError: a tokenizer type or pre-tokenizer specjax does not implement.
      TokenizerError: anything else wrong with the file.
    """
    kwargs: dict[str, Any] = dict(
        chat_template=chat_template,
        chat_format=chat_format,
        default_system_prompt=default_system_prompt,
    )
    if not isinstance(source, (str, os.PathLike)):
        return tokenizer_from_gguf_metadata(read_gguf_metadata(source), **kwargs)
    path = Path(source).expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.gguf")) + sorted(path.glob("*.model"))
        if len(found) != 1:
            raise TokenizerError(
                f"{path} is a directory with {len(found)} .gguf/.model files; pass one file"
            )
        path = found[0]
    if not path.exists():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"GGUF":
        return tokenizer_from_gguf_metadata(read_gguf_metadata(path), **kwargs)
    if path.name.endswith(".json"):
        raise UnsupportedTokenizerError(
            f"{path}: Hugging Face tokenizer.json files are not supported; use the model's GGUF "
            "file or its SentencePiece .model"
        )
    # SentencePiece models are serialized protobufs with no magic number: try to load.
    return SentencePieceModelTokenizer(path, **kwargs)
