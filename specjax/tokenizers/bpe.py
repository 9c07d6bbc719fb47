"""Merge-list BPE backends of GGUF files: GPT-2 byte-level BPE and Gemma 4's SentencePiece BPE.

Both are built with the Hugging Face `tokenizers` library from `tokenizer.ggml.tokens` /
`merges`; the byte-level pre-tokenizer regexes are llama.cpp's for the file's
`tokenizer.ggml.pre` (src/llama-vocab.cpp, llm_tokenizer_bpe).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from specjax.tokenizers.base import TokenizerError, UnsupportedTokenizerError
from specjax.tokenizers.vocab import (
    ATTR_BYTE,
    ATTR_CONTROL,
    ATTR_NORMAL,
    ATTR_UNKNOWN,
    ATTR_USER_DEFINED,
    _GGUFTokenizer,
)


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
