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

GGUF key/value metadata has one reader in specjax, `read_gguf_metadata` (the checkpoint
converter uses it too). Given an open `gguf.GGUFReader` it decodes the reader's fields with
the package's own `ReaderField.contents()`; given a path it parses the key/value section by
hand, because `gguf.GGUFReader` cannot do that job at a usable cost (see its docstring).
"""

from __future__ import annotations

import codecs
import heapq
import json
import mmap
import os
import re
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
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

Message = Mapping[str, Any]


class TokenizerError(ValueError):
    """A tokenizer file is unreadable or inconsistent, or a request cannot be served."""


class UnsupportedTokenizerError(TokenizerError):
    """The file describes a tokenizer type (or pre-tokenizer) that specjax does not implement."""


# --------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------


@runtime_checkable
class Tokenizer(Protocol):
    """What decoding, evaluation and the CLI need from a tokenizer.

    Ids are plain Python ints. `encode` parses special-token text such as "<|im_start|>" into
    its single id (as Hugging Face tokenizers and chat prompts require) unless
    `parse_special=False`; `add_bos=None` means "what the model's metadata asks for".
    """

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_ids(self) -> tuple[int, ...]: ...

    @property
    def pad_id(self) -> int | None: ...

    def encode(
        self, text: str, *, add_bos: bool | None = None, parse_special: bool = True
    ) -> list[int]: ...

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str: ...

    def decode_token(self, token_id: int) -> str: ...

    def token_bytes(self, token_id: int) -> bytes: ...

    def stream_decoder(self, *, skip_special: bool = False) -> StreamDecoder: ...

    def apply_chat_template(
        self, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> str: ...


# --------------------------------------------------------------------------------------
# GGUF metadata
# --------------------------------------------------------------------------------------

# GGUF value types (ggml's gguf.h; also gguf.GGUFValueType).
_GGUF_STRING = 8
_GGUF_ARRAY = 9
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
                 12: "d"}  # fmt: skip
_GGUF_DTYPES = {0: "u1", 1: "i1", 2: "u2", 3: "i2", 4: "u4", 5: "i4", 6: "f4", 7: "?", 10: "u8",
                11: "i8", 12: "f8"}  # fmt: skip


def read_gguf_metadata(source: str | os.PathLike[str] | Any) -> dict[str, Any]:
    """The key/value metadata of a GGUF file (tensors are not read).

    `source` is a path or an open `gguf.GGUFReader`. Strings come back as `str`, string
    arrays as `list[str]`, numeric arrays as numpy arrays, scalars as Python scalars. Only
    the metadata section is read, so the first part of a split file is enough.

    An open reader is decoded by the `gguf` package itself. A path is parsed here, by hand,
    because `gguf.GGUFReader` cannot do this job: opening it builds two numpy views for every
    string of the vocabulary and parses the whole tensor table, 9.7 s for Qwen2.5's 152k
    tokens where this parser takes 0.24 s (measured on the project's 2-core machine, gguf
    0.19), and a tokenizer is read on every model load (the weights come from a converted
    cache after the first). The hand parser also keeps the exact bytes of a token that is
    not valid UTF-8 (surrogateescape), where `ReaderField.contents()` raises.

    Raises:
      FileNotFoundError: no such file.
      TokenizerError: not a GGUF file, an unsupported GGUF version, or truncated metadata.
    """
    if not isinstance(source, (str, os.PathLike)):
        return _metadata_from_reader(source)
    path = Path(source)
    with open(path, "rb") as f:
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise TokenizerError(f"{path} is empty, not a GGUF file") from None
    # Errors are turned into messages first: a live traceback would keep views of the map
    # alive and make closing it fail.
    error: str | None = None
    buf = memoryview(mm)
    try:
        meta = _parse_gguf_kv(buf, path)
    except TokenizerError as e:
        error = str(e)
    except (struct.error, IndexError, ValueError) as e:
        error = f"{path}: truncated or corrupt GGUF metadata ({e})"
    buf.release()
    mm.close()
    if error is not None:
        raise TokenizerError(error)
    return meta


def _parse_gguf_kv(buf: memoryview, path: Path) -> dict[str, Any]:
    if bytes(buf[:4]) != b"GGUF":
        raise TokenizerError(f"{path} is not a GGUF file (magic {bytes(buf[:4])!r})")
    # The version tells the byte order: GGUF v3 allows big-endian files.
    (version,) = struct.unpack_from("<I", buf, 4)
    e = "<"
    if version & 0xFFFF == 0:
        e = ">"
        (version,) = struct.unpack_from(">I", buf, 4)
    if version not in (2, 3):
        raise TokenizerError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    _n_tensors, n_kv = struct.unpack_from(e + "QQ", buf, 8)
    off = 24
    u64 = struct.Struct(e + "Q").unpack_from
    size = len(buf)

    def read_str(off: int) -> tuple[str, int]:
        (n,) = u64(buf, off)
        end = off + 8 + n
        if end > size:
            raise TokenizerError(f"{path}: truncated GGUF metadata (string past end of file)")
        # surrogateescape keeps the exact bytes of a token that is not valid UTF-8.
        return str(buf[off + 8 : end], "utf-8", "surrogateescape"), end

    out: dict[str, Any] = {}
    for _ in range(n_kv):
        key, off = read_str(off)
        (vtype,) = struct.unpack_from(e + "I", buf, off)
        off += 4
        if vtype == _GGUF_STRING:
            value, off = read_str(off)
        elif vtype == _GGUF_ARRAY:
            etype, count = struct.unpack_from(e + "IQ", buf, off)
            off += 12
            if etype == _GGUF_STRING:
                # The vocabulary: hundreds of thousands of strings, so the loop is inlined.
                items: list[str] = [""] * count
                for j in range(count):
                    (n,) = u64(buf, off)
                    off += 8
                    items[j] = str(buf[off : off + n], "utf-8", "surrogateescape")
                    off += n
                if off > size:
                    raise TokenizerError(f"{path}: truncated GGUF metadata (array of {key})")
                value = items
            elif etype in _GGUF_DTYPES:
                dtype = np.dtype(_GGUF_DTYPES[etype]).newbyteorder(e)
                if off + dtype.itemsize * count > size:
                    raise TokenizerError(f"{path}: truncated GGUF metadata (array of {key})")
                value = np.frombuffer(buf, dtype, count, off).astype(dtype.newbyteorder("="))
                off += dtype.itemsize * count
            else:
                raise TokenizerError(f"{path}: unsupported GGUF array type {etype} for {key}")
        elif vtype in _GGUF_SCALARS:
            fmt = e + _GGUF_SCALARS[vtype]
            (value,) = struct.unpack_from(fmt, buf, off)
            off += struct.calcsize(fmt)
        else:
            raise TokenizerError(f"{path}: unknown GGUF value type {vtype} for key {key}")
        out[key] = value
    return out


def _metadata_from_reader(reader: Any) -> dict[str, Any]:
    """Same dict as `read_gguf_metadata`, from an open `gguf.GGUFReader`."""
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):  # the reader's pseudo-fields for the header
            continue
        try:
            value = field.contents()
        except UnicodeDecodeError:  # a token that is not UTF-8: keep its bytes, as from a path
            strings = [field.parts[i].tobytes() for i in field.data]
            value = [str(b, "utf-8", "surrogateescape") for b in strings]
            value = value if len(field.types) > 1 else value[0]
        if isinstance(value, list) and value and not isinstance(value[0], str):
            value = np.asarray(value)
        out[key] = value
    return out


# --------------------------------------------------------------------------------------
# Token attributes (llama.cpp's llama_token_attr) and the shared machinery
# --------------------------------------------------------------------------------------

ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8

# GGUF `tokenizer.ggml.token_type` values (gguf.TokenType) -> attribute bits.
_TYPE_TO_ATTR = {0: 0, 1: ATTR_NORMAL, 2: ATTR_UNKNOWN, 3: ATTR_CONTROL, 4: ATTR_USER_DEFINED,
                 5: ATTR_UNUSED, 6: ATTR_BYTE}  # fmt: skip

# Tokens that end a generation, by text (llama.cpp's list in llama_vocab::impl::load, without
# the fill-in-the-middle tokens and other vendors' exotica). llama.cpp also forces these to
# CONTROL, which decides whether text "<|endoftext|>" is parsed as the token.
_END_OF_GENERATION_TEXTS = (
    "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>",
    "<|end_of_text|>", "<EOT>", "<end_of_utterance>", "<eos>",
)  # fmt: skip
_SPECIAL_SKIP = ATTR_CONTROL | ATTR_UNKNOWN | ATTR_UNUSED
_C_ISSPACE = " \t\n\v\f\r"  # C isspace() in the "C" locale, used by llama.cpp's lstrip/rstrip


class _VocabTokenizer:
    """Shared parts of every backend: vocabulary, special tokens, decoding, chat templates.

    Subclasses fill `_tokens` (token texts), `_attrs` (attribute bits) and implement
    `_encode_text` (one fragment of raw text, no special tokens in it) and `_piece_bytes`.
    """

    _tokens: list[str]
    _attrs: list[int]
    _token_to_id: dict[str, int]
    _bos_id: int | None
    _eos_ids: tuple[int, ...]
    _pad_id: int | None
    add_bos: bool
    # SentencePiece adds a "▁" in front of the text; decoding removes that one space again.
    _strip_leading_space: bool = False
    chat_template: str | None
    chat_format: str | None
    default_system_prompt: str | None

    # ---- construction helpers ---------------------------------------------------------

    def _init_special(
        self,
        *,
        bos_id: int | None,
        eos_id: int | None,
        eot_id: int | None,
        pad_id: int | None,
        add_bos: bool,
        chat_template: str | None,
        chat_format: str | None,
        default_system_prompt: str | None,
    ) -> None:
        n = len(self._tokens)

        def valid(i: int | None) -> int | None:
            return int(i) if i is not None and 0 <= int(i) < n else None

        self._bos_id, self._pad_id = valid(bos_id), valid(pad_id)
        eos = [i for i in (valid(eos_id), valid(eot_id)) if i is not None]
        for text in _END_OF_GENERATION_TEXTS:
            tid = self._token_to_id.get(text)
            if tid is not None and self._attrs[tid] & (ATTR_CONTROL | ATTR_USER_DEFINED):
                eos.append(tid)
        self._eos_ids = tuple(dict.fromkeys(eos))
        self.add_bos = bool(add_bos) and self._bos_id is not None
        # Special tokens tried by `_partition`, longest text first (as llama.cpp sorts them).
        self._special_order = sorted(
            (
                i
                for i, a in enumerate(self._attrs)
                if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) and self._tokens[i]
            ),
            key=lambda i: (-len(self._tokens[i].encode("utf-8", "surrogateescape")), i),
        )
        self._bytes_cache: dict[int, bytes] = {}
        self.chat_template = chat_template
        fmt, default = _infer_chat_format(chat_template, self._token_to_id)
        self.chat_format = chat_format or fmt
        self.default_system_prompt = (
            default_system_prompt if default_system_prompt is not None else default
        )

    # ---- protocol properties ----------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return self._eos_ids

    @property
    def pad_id(self) -> int | None:
        return self._pad_id

    def id_to_token(self, token_id: int) -> str:
        """The token's text as stored in the vocabulary (e.g. "Ġthe", "▁the", "<0x0A>")."""
        return self._tokens[token_id]

    def token_to_id(self, text: str) -> int | None:
        """The id whose vocabulary text is exactly `text`, or None."""
        return self._token_to_id.get(text)

    def is_special(self, token_id: int) -> bool:
        """Control, unknown and unused tokens: the ones `skip_special` drops."""
        return bool(self._attrs[token_id] & _SPECIAL_SKIP)

    # ---- encoding ---------------------------------------------------------------------

    def encode(
        self, text: str, *, add_bos: bool | None = None, parse_special: bool = True
    ) -> list[int]:
        """Token ids of `text`.

        Args:
          add_bos: prepend the BOS id; None follows the file's `add_bos_token`.
          parse_special: turn the text of control tokens ("<|im_end|>", "<bos>" ...) into
            their ids. User-defined tokens are always matched, as in llama.cpp and HF.
        """
        out: list[int] = []
        if add_bos if add_bos is not None else self.add_bos:
            if self._bos_id is None:
                raise TokenizerError("add_bos=True, but this vocabulary has no BOS token")
            out.append(self._bos_id)
        prev_special = True
        for frag in self._partition(text, parse_special):
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
            else:
                self._encode_text(frag, out, after_special=prev_special)
                prev_special = False
        return out

    def _encode_text(self, text: str, out: list[int], *, after_special: bool) -> None:
        raise NotImplementedError

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Split `text` into raw-text fragments and special-token ids.

        A port of llama.cpp's `tokenizer_st_partition`: special tokens are taken one at a
        time, longest first, and each splits every remaining text fragment at all of its
        occurrences. (A single left-to-right regex would differ when tokens overlap.)
        """
        frags: list[str | int] = [text] if text else []
        if not text:
            return frags
        for tid in self._special_order:
            attr = self._attrs[tid]
            if not parse_special and attr & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue
            tok = self._tokens[tid]
            if tok not in text:  # cheap filter: most special tokens never occur
                continue
            new: list[str | int] = []
            for frag in frags:
                if isinstance(frag, int) or tok not in frag:
                    new.append(frag)
                    continue
                pos = 0
                while True:
                    m = frag.find(tok, pos)
                    if m < 0:
                        break
                    left = frag[pos:m]
                    if attr & ATTR_LSTRIP:
                        left = left.rstrip(_C_ISSPACE)
                    if left:
                        new.append(left)
                    new.append(tid)
                    pos = m + len(tok)
                    if attr & ATTR_RSTRIP:
                        while pos < len(frag) and frag[pos] in _C_ISSPACE:
                            pos += 1
                if pos < len(frag):
                    new.append(frag[pos:])
            frags = new
        return frags

    # ---- decoding ---------------------------------------------------------------------

    def _piece_bytes(self, token_id: int) -> bytes:
        raise NotImplementedError

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token contributes to decoded text (may be part of a UTF-8 char)."""
        b = self._bytes_cache.get(token_id)
        if b is None:
            if not 0 <= token_id < len(self._tokens):
                raise TokenizerError(f"token id {token_id} is outside [0, {len(self._tokens)})")
            b = self._bytes_cache[token_id] = self._piece_bytes(token_id)
        return b

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of `ids`. Control tokens appear as their text unless `skip_special`.

        Invalid UTF-8 (a sequence cut inside a character) becomes U+FFFD. Unlike llama.cpp
        no "clean up tokenization spaces" pass runs: decoding is the exact inverse of
        encoding for byte-level BPE.
        """
        stream = self.stream_decoder(skip_special=skip_special)
        return "".join(stream.push_many(ids)) + stream.flush()

    def decode_token(self, token_id: int) -> str:
        """Display text of one token on its own (a partial UTF-8 character shows as U+FFFD).

        For streaming output use `stream_decoder()`, which holds partial characters back.
        """
        return self.token_bytes(token_id).decode("utf-8", "replace")

    def stream_decoder(self, *, skip_special: bool = False) -> StreamDecoder:
        """An incremental decoder: push ids one at a time, get the new text for each."""
        return StreamDecoder(self, skip_special=skip_special)

    # ---- chat -------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = True,
        *,
        renderer: str = "auto",
        **template_kwargs: Any,
    ) -> str:
        """The prompt text of a conversation, as the model was trained to see it.

        Args:
          messages: [{"role": "system"|"user"|"assistant", "content": str}, ...].
          add_generation_prompt: end with the opening of the assistant's turn.
          renderer: "jinja" renders the file's `tokenizer.chat_template` (needs jinja2);
            "builtin" uses the hand-written format (`chat_format`); "auto" prefers jinja.
          template_kwargs: extra variables for the jinja template (e.g. tools=[...]).

        The text may start with the BOS token's text (Gemma's template does); encode it with
        `encode_chat`, which does not add a second BOS.
        """
        if renderer not in ("auto", "jinja", "builtin"):
            raise ValueError(f"renderer must be 'auto', 'jinja' or 'builtin', not {renderer!r}")
        messages = list(messages)
        if not messages:
            # Templates disagree on an empty conversation (Qwen's fails, SmolLM2's renders
            # no system turn); it is never a meaningful prompt, so refuse it everywhere.
            raise TokenizerError("apply_chat_template needs at least one message")
        use_jinja = renderer == "jinja" or (
            renderer == "auto" and self.chat_template is not None and _jinja_available()
        )
        if use_jinja:
            if self.chat_template is None:
                raise TokenizerError("this tokenizer has no chat template to render with jinja")
            return render_jinja_chat(
                self.chat_template,
                messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._special_text(self._bos_id),
                eos_token=self._special_text(self._eos_ids[0] if self._eos_ids else None),
                **template_kwargs,
            )
        if self.chat_format is None:
            hint = (
                " Install jinja2 to render the file's own template."
                if self.chat_template is not None
                else ""
            )
            raise TokenizerError(
                "no chat format is known for this tokenizer; pass chat_template= (jinja source) "
                "or chat_format= ('chatml' or 'gemma') to load_tokenizer." + hint
            )
        return render_builtin_chat(
            self.chat_format,
            messages,
            add_generation_prompt=add_generation_prompt,
            default_system_prompt=self.default_system_prompt,
            bos_token=self._special_text(self._bos_id),
        )

    def encode_chat(
        self, messages: Sequence[Message], add_generation_prompt: bool = True, **kwargs: Any
    ) -> list[int]:
        """`encode(apply_chat_template(messages))` with special tokens parsed and one BOS."""
        text = self.apply_chat_template(messages, add_generation_prompt, **kwargs)
        bos = self._special_text(self._bos_id)
        add_bos = self.add_bos and not (bos and text.startswith(bos))
        return self.encode(text, add_bos=add_bos, parse_special=True)

    def _special_text(self, token_id: int | None) -> str:
        return self._tokens[token_id] if token_id is not None else ""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, bos_id={self._bos_id}, "
            f"eos_ids={self._eos_ids}, chat_format={self.chat_format!r})"
        )


class StreamDecoder:
    """Turns a stream of token ids into text, never splitting a UTF-8 character.

    `push(id)` returns the text that became complete with this token ("" while a multi-byte
    character is still incomplete); `flush()` returns what is left at the end. Joining all
    outputs gives exactly `tokenizer.decode(ids, skip_special=...)`.
    """

    def __init__(self, tokenizer: _VocabTokenizer, *, skip_special: bool = False):
        self._tok = tokenizer
        self._skip = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._at_text_start = True

    def _bytes(self, token_id: int) -> bytes:
        tok = self._tok
        if tok._attrs[token_id] & _SPECIAL_SKIP:
            return b"" if self._skip else tok.token_bytes(token_id)
        b = tok.token_bytes(token_id)
        if self._at_text_start and b:
            self._at_text_start = False
            if tok._strip_leading_space and b[:1] == b" ":
                b = b[1:]
        return b

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._bytes(int(token_id)))

    def push_many(self, ids: Iterable[int]) -> Iterator[str]:
        for i in ids:
            yield self.push(i)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


# --------------------------------------------------------------------------------------
# GGUF backends
# --------------------------------------------------------------------------------------


def _token_attrs(meta: Mapping[str, Any], tokens: list[str]) -> list[int]:
    types = meta.get("tokenizer.ggml.token_type")
    if types is None:
        attrs = [ATTR_NORMAL] * len(tokens)
    else:
        if len(types) < len(tokens):
            raise TokenizerError(
                f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
            )
        attrs = [_TYPE_TO_ATTR.get(int(t), 0) for t in types[: len(tokens)]]
    # llama.cpp's load-time fix-ups, which change how text is split and decoded:
    # end-of-generation texts are control tokens, and control tokens named "unused" are unused.
    for i, t in enumerate(tokens):
        if t in _END_OF_GENERATION_TEXTS:
            attrs[i] |= ATTR_CONTROL
        if attrs[i] & ATTR_CONTROL and "unused" in t:
            attrs[i] |= ATTR_UNUSED
    return attrs


def _phi3_rstrip(meta: Mapping[str, Any], tokens: list[str], attrs: list[int]) -> None:
    """llama.cpp gives Phi-3's special tokens rstrip (eats following spaces), keyed on name."""
    name = str(meta.get("general.name", "")).lower()
    if "phi-3" not in name and "phi3" not in name:
        return
    for i, a in enumerate(attrs):
        if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) or tokens[i] == "</s>":
            attrs[i] |= ATTR_RSTRIP
    for t in ("<unk>", "<s>", "<|endoftext|>"):
        for i, tok in enumerate(tokens):
            if tok == t:
                attrs[i] &= ~ATTR_RSTRIP


def _meta_int(meta: Mapping[str, Any], key: str) -> int | None:
    v = meta.get(key)
    return None if v is None else int(v)


class _GGUFTokenizer(_VocabTokenizer):
    """Reads tokens, types and special ids common to every GGUF tokenizer."""

    def __init__(
        self,
        meta: Mapping[str, Any],
        *,
        default_add_bos: bool,
        chat_template: str | None = None,
        chat_format: str | None = None,
        default_system_prompt: str | None = None,
    ):
        tokens = meta.get("tokenizer.ggml.tokens")
        if not tokens:
            raise TokenizerError("GGUF metadata has no tokenizer.ggml.tokens")
        # llama.cpp renames empty tokens so that every id keeps a distinct text.
        self._tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        # Later duplicates win, as in llama.cpp's token_to_id map.
        self._token_to_id = {t: i for i, t in enumerate(self._tokens)}
        self._attrs = _token_attrs(meta, self._tokens)
        _phi3_rstrip(meta, self._tokens, self._attrs)
        self.metadata_name = str(meta.get("general.name", ""))
        add_bos = meta.get("tokenizer.ggml.add_bos_token")
        self._init_special(
            bos_id=_meta_int(meta, "tokenizer.ggml.bos_token_id"),
            eos_id=_meta_int(meta, "tokenizer.ggml.eos_token_id"),
            eot_id=_meta_int(meta, "tokenizer.ggml.eot_token_id"),
            pad_id=_meta_int(meta, "tokenizer.ggml.padding_token_id"),
            add_bos=default_add_bos if add_bos is None else bool(add_bos),
            chat_template=chat_template
            if chat_template is not None
            else meta.get("tokenizer.chat_template"),
            chat_format=chat_format,
            default_system_prompt=default_system_prompt,
        )

    def _byte_token(self, byte: int) -> int | None:
        """The `<0xXX>` token of a byte (SentencePiece byte fallback), as llama.cpp finds it."""
        tid = self._token_to_id.get(f"<0x{byte:02X}>")
        if tid is None:
            tid = self._token_to_id.get(chr(byte)) if byte < 128 else None
        return tid

    def _spm_piece_bytes(self, token_id: int) -> bytes:
        """Decoding of a SentencePiece-style token: "▁" is a space, `<0xXX>` is a byte."""
        attr, text = self._attrs[token_id], self._tokens[token_id]
        if attr & ATTR_BYTE:
            return bytes([int(text[3:5], 16)])
        if attr & (ATTR_NORMAL | ATTR_USER_DEFINED):
            return text.replace("\u2581", " ").encode("utf-8", "surrogateescape")
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN):
            return text.encode("utf-8", "surrogateescape")
        return b""  # unused / undefined tokens have no text (as in llama.cpp)


def _gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


_BYTE_TO_CHAR = _gpt2_bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}

# llama.cpp's pre-tokenizer regexes (src/llama-vocab.cpp, llm_tokenizer_bpe), applied in
# sequence: each splits every piece left by the previous one, keeping matches and the text
# between them (HF `Split(..., behavior="isolated")`). Copied verbatim; llama.cpp already
# rewrote "(?i:'s|...)" into case classes.
_RE_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_RE_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_RE_QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_RE_QWEN35 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+"
    r"|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# deepseek-llm's letter class, verbatim (escaped so no editor can normalize it).
_RE_DEEPSEEK_LLM_LETTERS = (
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293"
    "\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c"
    "\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5"
    "\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59"
    "\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc"
    "\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107"
    "\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee"
    "\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e"
    "\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f"
    "\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2"
    "\U000118a0-\U000118df\U0001e900-\U0001e943]+"
)

_RE_DEEPSEEK_PUNCT = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
_RE_DEEPSEEK_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"

# tokenizer.ggml.pre -> (regexes, ignore_merges). Only pre-tokenizers whose llama.cpp test
# vectors pass are listed (tests/test_tokenizers.py); others raise UnsupportedTokenizerError.
_BPE_PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool]] = {
    # Qwen2 / Qwen2.5 (and the pre-tokenizers llama.cpp maps onto the same regex).
    "qwen2": ((_RE_QWEN2,), False),
    "deepseek-r1-qwen": ((_RE_QWEN2,), False),
    "stablelm2": ((_RE_QWEN2,), False),
    # GPT-2 and friends.
    "gpt-2": ((_RE_GPT2,), False),
    "phi-2": ((_RE_GPT2,), False),
    "mpt": ((_RE_GPT2,), False),
    "olmo": ((_RE_GPT2,), False),
    "jais": ((_RE_GPT2,), False),
    # SmolLM / StarCoder family: every digit on its own, then GPT-2.
    "smollm": ((r"\p{N}", _RE_GPT2), False),
    "starcoder": ((r"\p{N}", _RE_GPT2), False),
    "refact": ((r"\p{N}", _RE_GPT2), False),
    "command-r": ((r"\p{N}", _RE_GPT2), False),
    "codeshell": ((r"\p{N}", _RE_GPT2), False),
    # Llama 3: ignore_merges takes a whole pre-token that is itself a token.
    "llama3": ((_RE_LLAMA3,), True),
    "llama-v3": ((_RE_LLAMA3,), True),
    "llama-bpe": ((_RE_LLAMA3,), True),
    "dbrx": ((_RE_LLAMA3,), False),
    "smaug-bpe": ((_RE_LLAMA3,), False),
    "qwen35": ((_RE_QWEN35,), False),
    "deepseek-coder": (
        (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _RE_DEEPSEEK_CJK, r"\p{N}"),
        False,
    ),
    "deepseek-llm": (
        (
            r"[\r\n]",
            _RE_DEEPSEEK_LLM_LETTERS,
            _RE_DEEPSEEK_PUNCT,
            r"\s+$",
            _RE_DEEPSEEK_CJK,
            r"\p{N}+",
        ),
        False,
    ),  # fmt: skip
    "falcon": ((r"[\p{P}\$\+<=>\^~\|`]+", _RE_GPT2, r"[0-9][0-9][0-9]"), False),
    "default": ((r"[\p{P}\$\+<=>\^~\|]+", _RE_GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"), False),
}


def _split_merge(merge: str) -> tuple[str, str]:
    # llama.cpp splits at the first space after position 0 (a token may start with a space).
    pos = merge.find(" ", 1)
    if pos < 0:
        raise TokenizerError(f"malformed BPE merge {merge!r} (no separating space)")
    return merge[:pos], merge[pos + 1 :]


def _hf_bpe(tokens: list[str], merges: list[str], **kwargs: Any) -> Any:
    """An HF `tokenizers` BPE model from GGUF tokens and merges."""
    from tokenizers import models

    if _is_valid_unicode("".join(tokens)):
        vocab = {t: i for i, t in enumerate(tokens)}
    else:
        # The Rust side needs valid Unicode; a token that is not valid UTF-8 can never be
        # produced by merging valid text, so it may safely stand in under a unique name.
        vocab = {t if _is_valid_unicode(t) else f"[INVALID_UTF8_{i}]": i
                 for i, t in enumerate(tokens)}  # fmt: skip
    # str.split is 3x faster than _split_merge; they agree unless a merge starts with " ".
    pairs = [m.split(" ", 1) if m[:1] != " " else _split_merge(m) for m in merges]
    if any(len(p) != 2 for p in pairs):
        bad = next(m for m, p in zip(merges, pairs, strict=True) if len(p) != 2)
        raise TokenizerError(f"malformed BPE merge {bad!r} (no separating space)")
    pairs = [(a, b) for a, b in pairs]
    return models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, **kwargs)


def _is_valid_unicode(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class GGUFByteLevelBPETokenizer(_GGUFTokenizer):
    """GPT-2 byte-level BPE from GGUF metadata (`tokenizer.ggml.model == "gpt2"`).

    Qwen2/2.5 (pre-tokenizer "qwen2"), SmolLM/SmolLM2 ("smollm"), GPT-2, StarCoder, Llama 3.
    Encoding runs in the HF `tokenizers` library; ids match llama.cpp's for the listed
    pre-tokenizers.
    """

    def __init__(self, meta: Mapping[str, Any], **kwargs: Any):
        pre = str(meta.get("tokenizer.ggml.pre") or "default")
        spec = _BPE_PRE_TOKENIZERS.get(pre)
        if spec is None:
            raise UnsupportedTokenizerError(
                f"GGUF byte-level BPE with pre-tokenizer {pre!r} is not supported; supported: "
                f"{', '.join(sorted(_BPE_PRE_TOKENIZERS))}"
            )
        self.pre_tokenizer = pre
        super().__init__(meta, default_add_bos=pre in ("llama3", "llama-v3", "llama-bpe"),
                         **kwargs)  # fmt: skip
        merges = meta.get("tokenizer.ggml.merges")
        if not merges:
            raise TokenizerError("GGUF byte-level BPE vocabulary has no tokenizer.ggml.merges")
        from tokenizers import Regex, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        regexes, ignore_merges = spec
        hf = HFTokenizer(_hf_bpe(self._tokens, merges, ignore_merges=ignore_merges))
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        self._hf = hf

    def _encode_text(self, text: str, out: list[int], *, after_special: bool) -> None:
        out.extend(self._hf.encode(text, add_special_tokens=False).ids)

    def _piece_bytes(self, token_id: int) -> bytes:
        attr, text = self._attrs[token_id], self._tokens[token_id]
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED):
            return text.encode("utf-8", "surrogateescape")  # stored as plain text
        if attr & ATTR_NORMAL:
            try:
                return bytes(_CHAR_TO_BYTE[c] for c in text)
            except KeyError:  # not a byte-level token (a broken vocabulary): show it as is
                return text.encode("utf-8", "surrogateescape")
        if attr & ATTR_BYTE:
            return bytes([int(text[3:5], 16)])
        return b""


class GGUFSentencePieceTokenizer(_GGUFTokenizer):
    """SentencePiece-style BPE with scores from GGUF (`tokenizer.ggml.model == "llama"`).

    Gemma 1-3, Llama 1/2, Mistral v1, Phi-3. A port of llama.cpp's `llm_tokenizer_spm`:
    spaces become "▁" (and, with `add_space_prefix`, one is put in front of the text and of
    every fragment after a special token); starting from single characters, the adjacent
    pair whose concatenation is a token with the highest score is merged (ties: leftmost)
    until none is left; characters outside the vocabulary fall back to `<0xXX>` byte tokens.
    """

    def __init__(self, meta: Mapping[str, Any], **kwargs: Any):
        super().__init__(meta, default_add_bos=True, **kwargs)
        scores = meta.get("tokenizer.ggml.scores")
        if scores is None:
            self._scores = [0.0] * len(self._tokens)
        else:
            if len(scores) < len(self._tokens):
                raise TokenizerError(
                    f"tokenizer.ggml.scores has {len(scores)} entries for {len(self._tokens)} "
                    "tokens"
                )
            self._scores = np.asarray(scores, dtype=np.float64)[: len(self._tokens)].tolist()
        add_prefix = meta.get("tokenizer.ggml.add_space_prefix")
        self.add_space_prefix = True if add_prefix is None else bool(add_prefix)
        self._strip_leading_space = self.add_space_prefix
        if meta.get("tokenizer.ggml.remove_extra_whitespaces"):
            raise UnsupportedTokenizerError(
                "SentencePiece vocabularies with remove_extra_whitespaces are not supported"
            )

    def _encode_text(self, text: str, out: list[int], *, after_special: bool) -> None:
        if self.add_space_prefix and after_special:
            text = " " + text
        self._spm_merge(text.replace(" ", "\u2581"), out)

    def _spm_merge(self, text: str, out: list[int]) -> None:
        if not text:
            return
        tok2id, scores = self._token_to_id, self._scores
        sym = list(text)  # one symbol per code point; "" once merged into its left neighbour
        n = len(sym)
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        heap: list[tuple[float, int, int, int]] = []

        def push(left: int, right: int) -> None:
            merged = sym[left] + sym[right]
            tid = tok2id.get(merged)
            if tid is not None:
                # Highest score first, then the leftmost pair (llama.cpp's comparator).
                heapq.heappush(heap, (-scores[tid], left, right, len(merged)))

        for i in range(1, n):
            push(i - 1, i)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            # Stale entry: one side was merged since (its text, hence its length, changed).
            if not sym[left] or not sym[right] or len(sym[left]) + len(sym[right]) != size:
                continue
            sym[left] += sym[right]
            sym[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            if prev[left] >= 0:
                push(prev[left], left)
            if nxt[left] >= 0:
                push(left, nxt[left])
        i = 0
        while i != -1:
            piece = sym[i]
            tid = tok2id.get(piece)
            if tid is not None:
                out.append(tid)
            else:  # only single characters can be missing: emit their UTF-8 bytes
                for byte in piece.encode("utf-8", "surrogateescape"):
                    bt = self._byte_token(byte)
                    if bt is None:
                        raise TokenizerError(
                            f"character {piece!r} is not in the vocabulary and there is no "
                            f"byte token <0x{byte:02X}>"
                        )
                    out.append(bt)
            i = nxt[i]

    def _piece_bytes(self, token_id: int) -> bytes:
        return self._spm_piece_bytes(token_id)


class GGUFGemma4Tokenizer(_GGUFTokenizer):
    """SentencePiece-style BPE given as merges (`tokenizer.ggml.model == "gemma4"`).

    As in llama.cpp: spaces become "▁", text is split into runs of newlines and runs of
    anything else, a newline run that is itself a token is taken whole, other pieces are
    merged by rank on raw UTF-8 (no byte-level map), with `<0xXX>` byte fallback.
    """

    _NEWLINE_SPLIT = re.compile(r"[^\n]+|\n+")

    def __init__(self, meta: Mapping[str, Any], **kwargs: Any):
        # llama.cpp forces add_bos for Gemma 4 (its files sometimes say false).
        super().__init__(meta, default_add_bos=True, **kwargs)
        if self._bos_id is not None:
            self.add_bos = True
        merges = meta.get("tokenizer.ggml.merges")
        if not merges:
            raise TokenizerError("GGUF gemma4 vocabulary has no tokenizer.ggml.merges")
        from tokenizers import Tokenizer as HFTokenizer

        self._hf = HFTokenizer(_hf_bpe(self._tokens, merges, byte_fallback=True))

    def _encode_text(self, text: str, out: list[int], *, after_special: bool) -> None:
        text = text.replace(" ", "\u2581")
        for piece in self._NEWLINE_SPLIT.findall(text):
            if piece[0] == "\n":
                tid = self._token_to_id.get(piece)
                if tid is not None:
                    out.append(tid)
                    continue
            out.extend(self._hf.encode(piece, add_special_tokens=False).ids)

    def _piece_bytes(self, token_id: int) -> bytes:
        return self._spm_piece_bytes(token_id)


# --------------------------------------------------------------------------------------
# SentencePiece .model files
# --------------------------------------------------------------------------------------


class SentencePieceModelTokenizer(_VocabTokenizer):
    """A SentencePiece `.model` file (e.g. Llama 2 / Mistral `tokenizer.model`).

    Encoding is the `sentencepiece` library's own; special-token text is split out first
    (SentencePiece itself never parses "<s>" as a control token), and each text fragment
    gets SentencePiece's dummy-prefix space, as llama.cpp does after a special token.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        add_bos: bool = True,
        chat_template: str | None = None,
        chat_format: str | None = None,
        default_system_prompt: str | None = None,
    ):
        import sentencepiece as spm

        self.path = Path(path)
        try:
            sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"{self.path} is not a SentencePiece model: {e}") from None
        self._sp = sp
        n = sp.get_piece_size()
        self._tokens = [sp.id_to_piece(i) for i in range(n)]
        self._token_to_id = {t: i for i, t in enumerate(self._tokens)}
        attrs = []
        for i in range(n):
            if sp.is_control(i):
                a = ATTR_CONTROL
            elif sp.is_unknown(i):
                a = ATTR_UNKNOWN
            elif sp.is_unused(i):
                a = ATTR_UNUSED
            elif sp.is_byte(i):
                a = ATTR_BYTE
            else:
                # User-defined pieces are matched by sentencepiece itself; NORMAL keeps
                # `_partition` from splitting them a second time.
                a = ATTR_NORMAL
            attrs.append(a)
        self._attrs = attrs
        self._strip_leading_space = True
        bos, eos, pad = sp.bos_id(), sp.eos_id(), sp.pad_id()
        self._init_special(
            bos_id=bos if bos >= 0 else None,
            eos_id=eos if eos >= 0 else None,
            eot_id=None,
            pad_id=pad if pad >= 0 else None,
            add_bos=add_bos,
            chat_template=chat_template,
            chat_format=chat_format,
            default_system_prompt=default_system_prompt,
        )

    def _encode_text(self, text: str, out: list[int], *, after_special: bool) -> None:
        out.extend(self._sp.encode(text, out_type=int))

    def _piece_bytes(self, token_id: int) -> bytes:
        attr, text = self._attrs[token_id], self._tokens[token_id]
        if attr & ATTR_BYTE:
            return bytes([int(text[3:5], 16)])
        if attr & ATTR_UNKNOWN:
            return " \u2047 ".encode()  # what sentencepiece's decoder prints for <unk>
        if attr & ATTR_CONTROL:
            return text.encode("utf-8")
        if attr & ATTR_UNUSED:
            return b""
        return text.replace("\u2581", " ").encode("utf-8")


# --------------------------------------------------------------------------------------
# Chat templates
# --------------------------------------------------------------------------------------

CHAT_FORMATS = ("chatml", "gemma")

# Default system prompts of the ChatML models specjax ships with, for when the template
# text is not available to read them from.
QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# In a ChatML template, the literal system turn that is emitted when the conversation has no
# system message: '<|im_start|>system\n' + text + '<|im_end|>' inside one string literal
# (the newline is written either as "\n" or as a real newline). Quotes and jinja braces are
# excluded so that "... + messages[0]['content'] + ..." is not taken for a literal.
_CHATML_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system(?:\\n|\n)([^'\"{}\n\\]+)<\|im_end\|>")


def _infer_chat_format(
    template: str | None, vocab: Mapping[str, int]
) -> tuple[str | None, str | None]:
    """(builtin format, default system prompt) matching a jinja template or a vocabulary."""
    if template is not None:
        if "<start_of_turn>" in template:
            return "gemma", None
        if "<|im_start|>" in template:
            m = _CHATML_DEFAULT_SYSTEM.search(template)
            return "chatml", m.group(1) if m else None
        return None, None
    if "<start_of_turn>" in vocab and "<end_of_turn>" in vocab:
        return "gemma", None
    if "<|im_start|>" in vocab and "<|im_end|>" in vocab:
        return "chatml", None
    return None, None


def _message_text(message: Message) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    raise TokenizerError(f"message content must be a string, got {type(content).__name__}")


def render_builtin_chat(
    chat_format: str,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    default_system_prompt: str | None = None,
    bos_token: str = "",
) -> str:
    """Hand-written renderers; each reproduces its model's jinja template character for
    character for plain text conversations (tests compare them with the real templates).

    * "chatml" (Qwen2.5, SmolLM2): `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message,
      preceded by a system turn with `default_system_prompt` when the conversation does not
      start with a system message (and a default is given).
    * "gemma" (Gemma 2/3): BOS, then `<start_of_turn>{user|model}\\n{content}<end_of_turn>\\n`
      with content stripped; a system message is prepended to the first user turn,
      separated by a blank line; roles must alternate user/assistant.
    """
    for m in messages:
        if m.get("role") not in ("system", "user", "assistant"):
            raise TokenizerError(
                f"role {m.get('role')!r} is not supported by the built-in chat formats "
                "(system, user, assistant); install jinja2 to use the model's own template"
            )
    parts: list[str] = []
    if chat_format == "chatml":
        if default_system_prompt is not None and (not messages or messages[0]["role"] != "system"):
            parts.append(f"<|im_start|>system\n{default_system_prompt}<|im_end|>\n")
        for m in messages:
            parts.append(f"<|im_start|>{m['role']}\n{_message_text(m)}<|im_end|>\n")
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
    elif chat_format == "gemma":
        parts.append(bos_token)
        prefix = ""
        if messages and messages[0]["role"] == "system":
            prefix = _message_text(messages[0]) + "\n\n"
            messages = messages[1:]
        for i, m in enumerate(messages):
            if (m["role"] == "user") != (i % 2 == 0):
                raise TokenizerError(
                    "Conversation roles must alternate user/assistant/user/assistant/..."
                )
            role = "model" if m["role"] == "assistant" else m["role"]
            first = prefix if i == 0 else ""
            parts.append(f"<start_of_turn>{role}\n{first}{_message_text(m).strip()}<end_of_turn>\n")
        if add_generation_prompt:
            parts.append("<start_of_turn>model\n")
    else:
        raise TokenizerError(
            f"unknown chat format {chat_format!r}; built-in formats: {', '.join(CHAT_FORMATS)}"
        )
    return "".join(parts)


def _jinja_available() -> bool:
    try:
        import jinja2  # noqa: F401
    except ImportError:
        return False
    return True


_JINJA_CACHE: dict[str, Any] = {}


def render_jinja_chat(
    template: str,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **kwargs: Any,
) -> str:
    """Render a Hugging Face chat template the way `transformers` does.

    Same environment as `transformers` (sandboxed, trim_blocks, lstrip_blocks, the
    loopcontrols extension, `raise_exception`, `strftime_now`, a `tojson` that keeps
    non-ASCII text), so templates written for HF render identically.
    """
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise TokenizerError(
            "rendering a chat template needs jinja2 (pip install jinja2)"
        ) from None
    compiled = _JINJA_CACHE.get(template)
    if compiled is None:

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        def tojson(
            x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False,
        ) -> str:  # fmt: skip
            return json.dumps(
                x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                sort_keys=sort_keys,
            )  # fmt: skip

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        compiled = _JINJA_CACHE[template] = env.from_string(template)
    try:
        return compiled.render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **kwargs,
        )
    except jinja2.exceptions.TemplateError as e:
        raise TokenizerError(f"chat template error: {e}") from e


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
        exactly one of those, or an open `gguf.GGUFReader`.
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
        return tokenizer_from_gguf_metadata(_metadata_from_reader(source), **kwargs)
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
