"""Tests of specjax.tokenizers.

Reference data (llama.cpp's tokenizer test vectors and chat templates from the
llama-cpp-python 0.3.36 source archive; real SentencePiece models from the mistral-common
1.13.1 wheel) comes from the package registry once per machine: tests/reference_data.py,
cached under $SPECJAX_CACHE (default ~/.cache/specjax)/tokenizer-tests.

A test skips only when pip cannot reach the package index, and says so. The tests of the
real model GGUFs (SmolLM2, Qwen2.5-Coder-0.5B, Gemma-3) use the files that
specjax.checkpoints.sources caches under models/ and skip when they are not there
(`sources.resolve("smollm2-135m-instruct")` fetches one).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import reference_data

from specjax import tokenizers as T
from specjax.tokenizers import (
    GGUFByteLevelBPETokenizer,
    GGUFGemma4Tokenizer,
    GGUFSentencePieceTokenizer,
    SentencePieceModelTokenizer,
    Tokenizer,
    TokenizerError,
    UnsupportedTokenizerError,
    load_tokenizer,
    read_gguf_metadata,
)
from specjax.tokenizers.chat import _jinja_available
from specjax.tokenizers.vocab import _VocabTokenizer

DATA = Path(__file__).parent / "data" / "tokenizers"
SEP = "\n__ggml_vocab_test__\n"

# llama.cpp vocabularies with test vectors that specjax supports -> expected backend.
SUPPORTED_VOCABS = {
    "qwen2": GGUFByteLevelBPETokenizer,
    "qwen35": GGUFByteLevelBPETokenizer,
    "gpt-2": GGUFByteLevelBPETokenizer,
    "starcoder": GGUFByteLevelBPETokenizer,  # same pre-tokenizer as SmolLM/SmolLM2
    "refact": GGUFByteLevelBPETokenizer,
    "command-r": GGUFByteLevelBPETokenizer,
    "mpt": GGUFByteLevelBPETokenizer,
    "llama-bpe": GGUFByteLevelBPETokenizer,
    "falcon": GGUFByteLevelBPETokenizer,
    "deepseek-coder": GGUFByteLevelBPETokenizer,
    "deepseek-llm": GGUFByteLevelBPETokenizer,
    "llama-spm": GGUFSentencePieceTokenizer,
    "phi-3": GGUFSentencePieceTokenizer,
    "gemma-4": GGUFGemma4Tokenizer,
}
UNSUPPORTED_VOCABS = {"bert-bge": "bert"}  # WordPiece


@pytest.fixture(scope="session")
def llama_cpp_models() -> Path:
    """llama.cpp's models/ folder: vocabularies, test vectors, two chat templates."""
    return reference_data.llama_cpp_models()


@pytest.fixture(scope="session")
def mistral_models() -> Path:
    """Real SentencePiece .model files shipped in mistral-common."""
    return reference_data.mistral_models()


def test_the_fetched_vocabularies_are_the_tested_ones() -> None:
    assert set(reference_data.LLAMA_CPP_VOCABS) == {*SUPPORTED_VOCABS, *UNSUPPORTED_VOCABS}


def read_vectors(vocab: Path) -> list[tuple[str, list[int]]]:
    """(input text, llama.cpp ids) pairs, parsed as llama.cpp's test-tokenizer-0 does."""
    raw = Path(str(vocab) + ".inp").read_bytes().decode("utf-8")
    inputs = raw.split(SEP)
    if inputs and inputs[-1] == "":
        inputs.pop()
    lines = Path(str(vocab) + ".out").read_text(encoding="utf-8").split("\n")
    assert len(lines) >= len(inputs)
    return [(t, [int(x) for x in line.split()]) for t, line in zip(inputs, lines, strict=False)]


_LOADED: dict[str, _VocabTokenizer] = {}


def vocab_tokenizer(models: Path, name: str) -> _VocabTokenizer:
    if name not in _LOADED:
        _LOADED[name] = load_tokenizer(models / f"ggml-vocab-{name}.gguf")
    return _LOADED[name]


# --------------------------------------------------------------------------------------
# llama.cpp test vectors
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SUPPORTED_VOCABS))
def test_llama_cpp_vectors(llama_cpp_models: Path, name: str) -> None:
    """Ids equal llama.cpp's for every input (add_special=false, parse_special=false)."""
    tok = vocab_tokenizer(llama_cpp_models, name)
    assert type(tok) is SUPPORTED_VOCABS[name]
    vectors = read_vectors(llama_cpp_models / f"ggml-vocab-{name}.gguf")
    assert len(vectors) >= 40
    failures = []
    for text, expected in vectors:
        got = tok.encode(text, add_bos=False, parse_special=False)
        if got != expected:
            failures.append(f"{text!r}: expected {expected}, got {got}")
    assert not failures, f"{len(failures)}/{len(vectors)} differ:\n" + "\n".join(failures[:5])


@pytest.mark.parametrize("name", sorted(SUPPORTED_VOCABS))
def test_decode_inverts_encode(llama_cpp_models: Path, name: str) -> None:
    tok = vocab_tokenizer(llama_cpp_models, name)
    for text, _ in read_vectors(llama_cpp_models / f"ggml-vocab-{name}.gguf"):
        ids = tok.encode(text, add_bos=False, parse_special=False)
        assert tok.decode(ids) == text
        # Streaming gives the same text, one complete character at a time.
        stream = tok.stream_decoder()
        pieces = [stream.push(i) for i in ids] + [stream.flush()]
        assert "".join(pieces) == text
        assert all("\ufffd" not in p for p in pieces)


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_VOCABS))
def test_unsupported_vocab_is_a_clear_error(llama_cpp_models: Path, name: str) -> None:
    with pytest.raises(UnsupportedTokenizerError, match=UNSUPPORTED_VOCABS[name]):
        load_tokenizer(llama_cpp_models / f"ggml-vocab-{name}.gguf")


def test_protocol_and_special_ids(llama_cpp_models: Path) -> None:
    qwen = vocab_tokenizer(llama_cpp_models, "qwen2")
    assert isinstance(qwen, Tokenizer)
    assert qwen.vocab_size == 151936
    # Qwen stops on <|endoftext|> (the file's eos) and <|im_end|> (end of a chat turn).
    assert qwen.eos_ids == (151643, 151645)
    assert [qwen.id_to_token(i) for i in qwen.eos_ids] == ["<|endoftext|>", "<|im_end|>"]
    assert qwen.bos_id == 151643 and qwen.pad_id == 151643 and not qwen.add_bos
    assert qwen.encode("Hi") == qwen.encode("Hi", add_bos=False)
    assert qwen.encode("Hi", add_bos=True)[0] == qwen.bos_id

    spm = vocab_tokenizer(llama_cpp_models, "llama-spm")
    assert spm.add_bos and spm.bos_id == 1 and spm.eos_ids == (2,) and spm.pad_id is None
    assert spm.encode("Hello world") == [1, 15043, 3186]
    assert spm.decode([1, 15043, 3186]) == "<s>Hello world"
    assert spm.decode([1, 15043, 3186], skip_special=True) == "Hello world"

    gemma4 = vocab_tokenizer(llama_cpp_models, "gemma-4")
    assert gemma4.bos_id == 2 and gemma4.add_bos and 1 in gemma4.eos_ids


def test_parse_special(llama_cpp_models: Path) -> None:
    tok = vocab_tokenizer(llama_cpp_models, "qwen2")
    im_start, im_end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    text = "<|im_start|>user\nhi<|im_end|>"
    ids = tok.encode(text)
    assert ids[0] == im_start and ids[-1] == im_end
    plain = tok.encode(text, parse_special=False)
    assert im_start not in plain and im_end not in plain
    assert tok.decode(plain) == tok.decode(ids) == text
    assert tok.decode(ids, skip_special=True) == "user\nhi"
    assert tok.decode_token(im_end) == "<|im_end|>"


def test_stream_decoder_holds_back_partial_characters(llama_cpp_models: Path) -> None:
    tok = vocab_tokenizer(llama_cpp_models, "llama-spm")
    ids = tok.encode("a🦙b", add_bos=False)  # the emoji is four <0xXX> byte tokens
    assert [tok.id_to_token(i) for i in ids[1:5]] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    stream = tok.stream_decoder()
    assert [stream.push(i) for i in ids] == ["a", "", "", "", "🦙", "b"]
    assert stream.flush() == ""
    assert tok.decode_token(ids[1]) == "\ufffd"  # on its own, a byte is not a character
    assert tok.token_bytes(ids[1]) == b"\xf0"


# --------------------------------------------------------------------------------------
# GGUF metadata reader and errors
# --------------------------------------------------------------------------------------


def test_metadata_reader_agrees_with_gguf_reader(llama_cpp_models: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = llama_cpp_models / "ggml-vocab-phi-3.gguf"
    ours = read_gguf_metadata(path)
    theirs = read_gguf_metadata(gguf.GGUFReader(path))
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, theirs[key])
        else:
            assert value == theirs[key], key
    # A tokenizer built from an open GGUFReader is the same tokenizer.
    a, b = load_tokenizer(path), load_tokenizer(gguf.GGUFReader(path))
    text = "Hello <|user|> wörld 🦙"
    assert a.encode(text) == b.encode(text)


def _write_gguf(path: Path, **kv: object) -> Path:
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in kv.items():
        key = key.replace("__", ".")
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_array(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_metadata_reader_value_types(tmp_path: Path) -> None:
    path = _write_gguf(
        tmp_path / "t.gguf", a__str="héllo", a__int=7, a__flag=True, a__f=0.5,
        a__strs=["x", "", "ÿ"], a__ints=[1, 2, 3],
    )  # fmt: skip
    meta = read_gguf_metadata(path)
    assert meta["a.str"] == "héllo" and meta["a.int"] == 7 and meta["a.flag"] is True
    assert meta["a.f"] == 0.5 and meta["a.strs"] == ["x", "", "ÿ"]
    assert list(meta["a.ints"]) == [1, 2, 3]
    assert meta["general.architecture"] == "llama"


def test_metadata_reader_keeps_non_utf8_tokens_either_way(tmp_path: Path) -> None:
    """One reader, two sources: a token that is not valid UTF-8 keeps its bytes whether the
    file is parsed from its path or decoded from an open gguf.GGUFReader (whose own
    `contents()` raises on it)."""
    gguf = pytest.importorskip("gguf")
    path = _write_gguf(tmp_path / "bytes.gguf", tokenizer__ggml__tokens=["a", b"\xf0\x9f", "c"])
    from_path = read_gguf_metadata(path)
    from_reader = read_gguf_metadata(gguf.GGUFReader(path))
    assert from_path["tokenizer.ggml.tokens"] == ["a", "\udcf0\udc9f", "c"]
    assert from_reader["tokenizer.ggml.tokens"] == from_path["tokenizer.ggml.tokens"]
    assert from_path["tokenizer.ggml.tokens"][1].encode("utf-8", "surrogateescape") == b"\xf0\x9f"


def test_errors(tmp_path: Path, llama_cpp_models: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing.gguf")
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(TokenizerError, match="empty"):
        read_gguf_metadata(tmp_path / "empty.gguf")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\x00\x01not a tokenizer" * 10)
    with pytest.raises(TokenizerError):
        load_tokenizer(junk)
    # Truncated inside the vocabulary.
    data = (llama_cpp_models / "ggml-vocab-gpt-2.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:200_000])
    with pytest.raises(TokenizerError, match="truncated"):
        load_tokenizer(tmp_path / "cut.gguf")
    # A directory with several candidates is ambiguous.
    (tmp_path / "two").mkdir()
    for name in ("a.gguf", "b.gguf"):
        shutil.copy(llama_cpp_models / "ggml-vocab-phi-3.gguf", tmp_path / "two" / name)
    with pytest.raises(TokenizerError, match="2 .gguf"):
        load_tokenizer(tmp_path / "two")
    # Unknown tokenizer type / pre-tokenizer, missing vocabulary.
    toks = ["a", "b", "ab"]
    bad_type = _write_gguf(tmp_path / "rwkv.gguf", tokenizer__ggml__model="rwkv",
                           tokenizer__ggml__tokens=toks)  # fmt: skip
    with pytest.raises(UnsupportedTokenizerError, match="'rwkv'"):
        load_tokenizer(bad_type)
    bad_pre = _write_gguf(tmp_path / "pre.gguf", tokenizer__ggml__model="gpt2",
                          tokenizer__ggml__pre="martian", tokenizer__ggml__tokens=toks,
                          tokenizer__ggml__merges=["a b"])  # fmt: skip
    with pytest.raises(UnsupportedTokenizerError, match="'martian'"):
        load_tokenizer(bad_pre)
    no_vocab = _write_gguf(tmp_path / "none.gguf", general__name="weights only")
    with pytest.raises(TokenizerError, match="no tokenizer"):
        load_tokenizer(no_vocab)


# --------------------------------------------------------------------------------------
# SentencePiece: real .model files, and the GGUF port against the sentencepiece library
# --------------------------------------------------------------------------------------


def _corpus(extra: list[str]) -> list[str]:
    import inspect
    import json as json_module

    texts = [inspect.getsource(json_module)[:20_000], inspect.getsource(random)[:20_000]]
    texts += extra
    rng = random.Random(0)
    alphabet = ["abc", "xyz", "ÄÖü", "é", "日本語", "한국어", "😀🚀", "\n", "\t", "  ", "∑∫", "'",
                '"', "123", "ᾀ", "\u00a0", "\u3000", "\u0301", "▁", "<s>", "[INST]"]  # fmt: skip
    for _ in range(300):
        n = rng.randint(1, 25)
        texts.append("".join(rng.choice(alphabet) + " " * rng.randint(0, 2) for _ in range(n)))
    return texts


def _gguf_meta_from_sentencepiece(tok: SentencePieceModelTokenizer) -> dict[str, object]:
    """The GGUF metadata llama.cpp's converter writes for a SentencePiece model."""
    sp = tok._sp
    types = [3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 5 if sp.is_unused(i)
             else 6 if sp.is_byte(i) else 1 for i in range(tok.vocab_size)]  # fmt: skip
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(tok.vocab_size)],
        "tokenizer.ggml.scores": np.array(
            [sp.get_score(i) for i in range(tok.vocab_size)], np.float32
        ),
        "tokenizer.ggml.token_type": np.array(types, np.int32),
        "tokenizer.ggml.bos_token_id": sp.bos_id(),
        "tokenizer.ggml.eos_token_id": sp.eos_id(),
    }


@pytest.mark.parametrize("version", ["v1", "v3"])
def test_sentencepiece_model_file(
    mistral_models: Path, llama_cpp_models: Path, version: str
) -> None:
    tok = load_tokenizer(mistral_models / f"tokenizer.model.{version}")
    assert isinstance(tok, SentencePieceModelTokenizer) and isinstance(tok, Tokenizer)
    assert tok.vocab_size == 32000 if version == "v1" else 32768
    assert tok.bos_id == 1 and tok.eos_ids == (2,) and tok.add_bos
    sp = tok._sp
    port = GGUFSentencePieceTokenizer(_gguf_meta_from_sentencepiece(tok))
    vectors = read_vectors(llama_cpp_models / "ggml-vocab-llama-spm.gguf")
    mismatches = []
    for text in _corpus([t for t, _ in vectors]):
        ids = tok.encode(text, add_bos=False, parse_special=False)
        assert ids == sp.encode(text)
        # llama.cpp's SPM algorithm (ported) == Google's sentencepiece on the same vocabulary.
        if port.encode(text, add_bos=False, parse_special=False) != ids:
            mismatches.append(text)
        assert tok.decode(ids) == sp.decode(ids)
    assert not mismatches, f"{len(mismatches)} texts differ, e.g. {mismatches[:3]}"
    assert tok.encode("Hello") == [1, *sp.encode("Hello")]
    assert tok.decode(tok.encode("Hello world"), skip_special=True) == "Hello world"
    if version == "v3":  # control tokens such as [INST] are parsed from text
        inst = tok.token_to_id("[INST]")
        assert inst is not None and tok.encode("[INST] Hi [/INST]")[:2] == [1, inst]
        assert inst not in tok.encode("[INST] Hi [/INST]", parse_special=False)


def test_sentencepiece_without_chat_format_is_a_clear_error(mistral_models: Path) -> None:
    tok = load_tokenizer(mistral_models / "tokenizer.model.v1")
    with pytest.raises(TokenizerError, match="chat_template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


# --------------------------------------------------------------------------------------
# Chat templates
# --------------------------------------------------------------------------------------

CONVERSATIONS = [
    [{"role": "user", "content": "Write a Python function that reverses a string."}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": " Sum 2+2 \n"},
    ],
    [{"role": "user", "content": "Ünïcödé, <b>tags</b> and\n\nnewlines  "}],
]


def _load_with_template(models: Path, vocab: str, template: str) -> _VocabTokenizer:
    return load_tokenizer(models / f"ggml-vocab-{vocab}.gguf", chat_template=template)


@pytest.mark.parametrize(
    "template_file, default_system",
    [
        ("qwen2.5-coder-1.5b-instruct.chat_template.jinja", T.QWEN25_DEFAULT_SYSTEM),
        ("smollm2-135m-instruct.chat_template.jinja", T.SMOLLM2_DEFAULT_SYSTEM),
        ("Qwen-Qwen2.5-7B-Instruct.jinja", T.QWEN25_DEFAULT_SYSTEM),
    ],
)
def test_chatml_builtin_matches_real_template(
    llama_cpp_models: Path, template_file: str, default_system: str
) -> None:
    path = DATA / template_file
    if not path.exists():
        path = llama_cpp_models / template_file
    tok = _load_with_template(llama_cpp_models, "qwen2", path.read_text(encoding="utf-8"))
    assert tok.chat_format == "chatml" and tok.default_system_prompt == default_system
    pytest.importorskip("jinja2", reason="jinja2 renders the real templates")
    for conversation in CONVERSATIONS:
        for gen in (True, False):
            expected = tok.apply_chat_template(conversation, gen, renderer="jinja")
            assert tok.apply_chat_template(conversation, gen, renderer="builtin") == expected
    prompt = tok.apply_chat_template(CONVERSATIONS[0])
    assert prompt.startswith(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tok.encode_chat(CONVERSATIONS[0])
    assert ids[0] == tok.token_to_id("<|im_start|>") and ids.count(tok.bos_id) == 0
    assert tok.decode(ids) == prompt


def test_gemma_builtin_matches_real_template(llama_cpp_models: Path) -> None:
    template = (llama_cpp_models / "google-gemma-2-2b-it.jinja").read_text(encoding="utf-8")
    tok = _load_with_template(llama_cpp_models, "gemma-4", template)
    assert tok.chat_format == "gemma"
    pytest.importorskip("jinja2", reason="jinja2 renders the real templates")
    for conversation in (CONVERSATIONS[0], CONVERSATIONS[2], CONVERSATIONS[1][1:]):
        for gen in (True, False):
            expected = tok.apply_chat_template(conversation, gen, renderer="jinja")
            assert tok.apply_chat_template(conversation, gen, renderer="builtin") == expected
    # Gemma 3 puts a system message in front of the first user turn.
    text = tok.apply_chat_template(CONVERSATIONS[1], renderer="builtin")
    assert text == (
        "<bos><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nSum 2+2<end_of_turn>\n<start_of_turn>model\n"
    )
    ids = tok.encode_chat(CONVERSATIONS[1], renderer="builtin")
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1  # the template's own <bos>
    with pytest.raises(TokenizerError, match="alternate"):
        tok.apply_chat_template([{"role": "assistant", "content": "x"}], renderer="builtin")


def test_builtin_chat_formats_without_template() -> None:
    chat = [{"role": "user", "content": "Hi"}]
    assert T.render_builtin_chat("chatml", chat, default_system_prompt="S") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert T.render_builtin_chat("chatml", chat, add_generation_prompt=False) == (
        "<|im_start|>user\nHi<|im_end|>\n"
    )
    assert T.render_builtin_chat("gemma", chat, bos_token="<bos>") == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    )
    with pytest.raises(TokenizerError, match="unknown chat format"):
        T.render_builtin_chat("vicuna", chat)
    with pytest.raises(TokenizerError, match="role"):
        T.render_builtin_chat("chatml", [{"role": "tool", "content": "x"}])


# --------------------------------------------------------------------------------------
# The real SmolLM2 GGUF, when specjax.checkpoints has already cached it
# --------------------------------------------------------------------------------------

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_smollm2_real_gguf() -> None:
    path = reference_data.cache_root() / "models" / SMOLLM2
    if not path.exists():
        pytest.skip(f"{path} is not cached (fetch it with specjax.checkpoints.sources)")
    tok = load_tokenizer(path)
    assert isinstance(tok, GGUFByteLevelBPETokenizer) and tok.pre_tokenizer == "smollm"
    assert tok.vocab_size == 49152 and tok.eos_ids == (2, 0) and not tok.add_bos
    assert tok.default_system_prompt == T.SMOLLM2_DEFAULT_SYSTEM
    assert tok.chat_template == (DATA / "smollm2-135m-instruct.chat_template.jinja").read_text(
        encoding="utf-8"
    )
    prompts = [
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return fib(n-1) + fib(n-2)",
        "What is 1234 * 5678? Think step by step.",
        "Ünïcödé — “quotes” and emoji 🦙 too",
    ]
    for prompt in prompts:
        ids = tok.encode(prompt)
        assert tok.decode(ids) == prompt
        digits = [tok.decode([i]) for i in tok.encode("1234")]
        assert digits == ["1", "2", "3", "4"]  # SmolLM splits every digit
    ids = tok.encode_chat([{"role": "user", "content": prompts[1]}])
    assert ids[:2] == [1, 9690]  # <|im_start|> system
    if _jinja_available():
        for conversation in CONVERSATIONS:
            assert tok.apply_chat_template(conversation, renderer="jinja") == (
                tok.apply_chat_template(conversation, renderer="builtin")
            )


QWEN_05B = "qwen2.5-coder-0.5b-instruct.gguf"
GEMMA3 = "gemma-3-270m-q4_k_m.gguf"


def _cached_model(filename: str) -> Path:
    path = reference_data.cache_root() / "models" / filename
    if not path.exists():
        pytest.skip(f"{path} is not cached (fetch it with specjax.checkpoints.sources)")
    return path


def test_qwen25_coder_real_gguf(llama_cpp_models: Path) -> None:
    """The real Qwen2.5-Coder vocabulary gives llama.cpp's qwen2 test-vector ids."""
    tok = load_tokenizer(_cached_model(QWEN_05B))
    assert isinstance(tok, GGUFByteLevelBPETokenizer) and tok.pre_tokenizer == "qwen2"
    assert tok.vocab_size == 151936 and not tok.add_bos
    assert [tok.id_to_token(i) for i in tok.eos_ids] == ["<|im_end|>", "<|endoftext|>"]
    for text, expected in read_vectors(llama_cpp_models / "ggml-vocab-qwen2.gguf"):
        assert tok.encode(text, parse_special=False) == expected, text
    assert tok.default_system_prompt == T.QWEN25_DEFAULT_SYSTEM
    if _jinja_available():
        for conversation in CONVERSATIONS:
            assert tok.apply_chat_template(conversation, renderer="jinja") == (
                tok.apply_chat_template(conversation, renderer="builtin")
            )
    ids = tok.encode_chat([{"role": "user", "content": "Reverse a string in Python."}])
    assert ids[:3] == [151644, 8948, 198]  # <|im_start|> system \n
    assert ids[-3:] == [151644, 77091, 198]  # <|im_start|> assistant \n
    # <tool_call> is a user-defined token: matched even when control tokens are not parsed.
    assert tok.encode("<tool_call>", parse_special=False) == [tok.token_to_id("<tool_call>")]


def test_gemma3_real_gguf() -> None:
    tok = load_tokenizer(_cached_model(GEMMA3))
    assert isinstance(tok, GGUFSentencePieceTokenizer) and not tok.add_space_prefix
    assert tok.vocab_size == 262144 and tok.bos_id == 2 and tok.add_bos and tok.pad_id == 0
    assert [tok.id_to_token(i) for i in tok.eos_ids] == ["<eos>", "<end_of_turn>"]
    assert tok.chat_format == "gemma"  # the base model's file has no template: built-in one
    assert tok.encode("Hello world") == [2, 9259, 1902]
    text = "def f(x):\n    return x**2  # ünïcödé 😀\n\n\nEnd."
    ids = tok.encode(text)
    assert tok.decode(ids, skip_special=True) == text
    # Runs of spaces and newlines are user-defined tokens of their own.
    assert tok.id_to_token(ids[7]) == "    " and tok.id_to_token(ids[-3]) == "\n\n\n"
    chat = tok.encode_chat([{"role": "user", "content": "Hi"}])
    assert chat == [2, 105, 2364, 107, 10979, 106, 107, 105, 4368, 107]
