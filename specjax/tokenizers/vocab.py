"""Vocabulary-table tokenizers: token attributes, special tokens, decoding and streaming.

`_VocabTokenizer` holds what every backend shares (a token table with llama.cpp's token
attributes, special-token parsing, decode, `StreamDecoder`, chat templates);
`_GGUFTokenizer` reads that table from GGUF metadata. The backends add `_encode_text`.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from specjax.tokenizers.base import Message, TokenizerError
from specjax.tokenizers.chat import (
    _infer_chat_format,
    _jinja_available,
    render_builtin_chat,
    render_jinja_chat,
)

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
