"""Chat templates: the GGUF's jinja template, or a built-in ChatML / Gemma renderer.

Templates are rendered with jinja2 when it is installed, exactly as Hugging Face
`transformers` renders them; without jinja2 a hand-written renderer covers the formats of the
models specjax ships with (ChatML with the model's default system prompt: Qwen2.5, SmolLM2;
Gemma's `<start_of_turn>` turns).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from specjax.tokenizers.base import Message, TokenizerError

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
