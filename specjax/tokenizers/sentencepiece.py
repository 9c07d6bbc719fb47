"""SentencePiece tokenizers: score-driven BPE from GGUF metadata and `.model` files.

`GGUFSentencePieceTokenizer` is a direct port of llama.cpp's `llm_tokenizer_spm` (Gemma 1-3,
Llama 1/2, Mistral v1, Phi-3), with `<0xXX>` byte fallback; `SentencePieceModelTokenizer`
reads a SentencePiece `.model` file through the `sentencepiece` library.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from specjax.tokenizers.base import TokenizerError, UnsupportedTokenizerError
from specjax.tokenizers.vocab import (
    ATTR_BYTE,
    ATTR_CONTROL,
    ATTR_NORMAL,
    ATTR_UNKNOWN,
    ATTR_UNUSED,
    _GGUFTokenizer,
    _VocabTokenizer,
)


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
