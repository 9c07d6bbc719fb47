"""The `Tokenizer` protocol and the errors every backend raises."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from specjax.tokenizers.vocab import StreamDecoder


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
