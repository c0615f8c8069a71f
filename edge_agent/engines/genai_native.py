"""onnxruntime-genai through its C API, so a thinking model does not stop the agent's event loop.

The package's Python binding (0.18) keeps the GIL for the whole of every prefill and decode step.
Measured on this project's 2-core machine: a 170 ms prefill froze every other thread for 190 ms, and
while a hub streamed an answer its event loop ran once per token, so chunks queued up and reached the
requester in one burst when the answer ended (the failover gap grew with the answer's length, not
with the work left). ctypes releases the GIL around each foreign call; this module calls the same
shared library the binding wraps (`libonnxruntime-genai.so`, same weights, same tokens — tested) for
the few functions the engine needs. Other bindings of this C API: genai's own C#, Java and Go.

Not thread-safe (neither is the C API): one generation at a time per model, as the engine enforces.
"""

from __future__ import annotations

import codecs
import collections.abc
import ctypes
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import onnxruntime_genai

from edge_agent.errors import GenaiError

__all__ = ["Generator", "Model", "Tokenizer", "TokenizerStream", "generate"]

_Handle = ctypes.c_void_p
_Out = ctypes.POINTER(ctypes.c_void_p)
_Tokens = ctypes.POINTER(ctypes.c_int32)


class _Api:
    """The C functions used here, with their signatures from `ort_genai_c.h`."""

    def __init__(self, path: Path) -> None:
        self.lib = lib = ctypes.CDLL(str(path))
        p, s, c, i32 = _Handle, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_int32
        b, d = ctypes.c_bool, ctypes.c_double

        def fn(name: str, restype: Any, *argtypes: Any) -> Any:
            f = getattr(lib, name)
            f.restype, f.argtypes = restype, list(argtypes)
            return f

        self.result_error = fn("OgaResultGetError", c, p)
        self.destroy_result = fn("OgaDestroyResult", None, p)
        self.create_config = fn("OgaCreateConfig", p, c, _Out)
        self.config_clear_providers = fn("OgaConfigClearProviders", p, p)
        self.config_overlay = fn("OgaConfigOverlay", p, p, c)
        self.destroy_config = fn("OgaDestroyConfig", None, p)
        self.create_model = fn("OgaCreateModelFromConfig", p, p, _Out)
        self.destroy_model = fn("OgaDestroyModel", None, p)
        self.create_params = fn("OgaCreateGeneratorParams", p, p, _Out)
        self.params_number = fn("OgaGeneratorParamsSetSearchNumber", p, p, c, d)
        self.params_bool = fn("OgaGeneratorParamsSetSearchBool", p, p, c, b)
        self.destroy_params = fn("OgaDestroyGeneratorParams", None, p)
        self.create_generator = fn("OgaCreateGenerator", p, p, p, _Out)
        self.destroy_generator = fn("OgaDestroyGenerator", None, p)
        self.append_tokens = fn("OgaGenerator_AppendTokens", p, p, _Tokens, s)
        self.generate_next = fn("OgaGenerator_GenerateNextToken", p, p)
        self.next_tokens = fn("OgaGenerator_GetNextTokens", p, p, ctypes.POINTER(_Tokens), ctypes.POINTER(s))
        self.is_done = fn("OgaGenerator_IsDone", b, p)
        self.rewind_to = fn("OgaGenerator_RewindTo", p, p, s)
        self.create_tokenizer = fn("OgaCreateTokenizer", p, p, _Out)
        self.destroy_tokenizer = fn("OgaDestroyTokenizer", None, p)
        self.eos_ids = fn("OgaTokenizerGetEosTokenIds", p, p, ctypes.POINTER(_Tokens), ctypes.POINTER(s))
        self.create_sequences = fn("OgaCreateSequences", p, _Out)
        self.destroy_sequences = fn("OgaDestroySequences", None, p)
        self.encode = fn("OgaTokenizerEncode", p, p, c, p)
        self.sequence_length = fn("OgaSequencesGetSequenceCount", s, p, s)
        self.sequence_data = fn("OgaSequencesGetSequenceData", _Tokens, p, s)
        self.create_stream = fn("OgaCreateTokenizerStream", p, p, _Out)
        self.destroy_stream = fn("OgaDestroyTokenizerStream", None, p)
        self.stream_decode = fn("OgaTokenizerStreamDecode", p, p, i32, ctypes.POINTER(c))
        self.decode = fn("OgaTokenizerDecode", p, p, _Tokens, s, ctypes.POINTER(ctypes.c_void_p))
        self.destroy_string = fn("OgaDestroyString", None, p)

    def check(self, result: int | None, doing: str) -> None:
        if result:
            message = (self.result_error(result) or b"").decode("utf-8", "replace")
            self.destroy_result(result)
            raise GenaiError(f"onnxruntime-genai could not {doing}: {message}")


_api: _Api | None = None


def _lib() -> _Api:
    global _api
    if _api is None:
        # Importing the package first lets it set up its onnxruntime dependency as it always does.
        _api = _Api(Path(onnxruntime_genai.__file__).parent / "libonnxruntime-genai.so")
    return _api


class _Owned:
    """A C object this wrapper destroys exactly once (on close, or when collected)."""

    _handle: int | None = None

    def _destroy(self, handle: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle:
            self._destroy(handle)

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def handle(self) -> int:
        if not self._handle:
            raise GenaiError(f"this {type(self).__name__} is closed")
        return self._handle


class Model(_Owned):
    def __init__(self, pack_dir: Path, overlay: Mapping[str, Any], *, clear_providers: bool = True) -> None:
        api = _lib()
        config = _Handle()
        api.check(api.create_config(str(pack_dir).encode(), ctypes.byref(config)), f"read {pack_dir}")
        self._config: int | None = config.value  # kept as long as the model: the C API does not say it copies
        if clear_providers:
            api.check(api.config_clear_providers(config), "clear the execution providers")
        api.check(api.config_overlay(config, json.dumps(overlay).encode()), "apply the session options")
        model = _Handle()
        api.check(api.create_model(config, ctypes.byref(model)), f"load the model in {pack_dir}")
        self._handle = model.value

    def _destroy(self, handle: int) -> None:
        _lib().destroy_model(handle)

    def close(self) -> None:
        super().close()
        config, self._config = getattr(self, "_config", None), None
        if config:
            _lib().destroy_config(config)


class TokenizerStream(_Owned):
    """Incremental detokenizer: text as soon as whole characters are known."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        api = _lib()
        stream = _Handle()
        api.check(api.create_stream(tokenizer.handle, ctypes.byref(stream)), "create a detokenizer")
        self._handle = stream.value
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._tokenizer = tokenizer  # keeps the tokenizer alive as long as the stream

    def _destroy(self, handle: int) -> None:
        _lib().destroy_stream(handle)

    def decode(self, token: int) -> str:
        api = _lib()
        out = ctypes.c_char_p()
        api.check(api.stream_decode(self.handle, token, ctypes.byref(out)), f"decode token {token}")
        return self._utf8.decode(out.value or b"")


class Tokenizer(_Owned):
    def __init__(self, model: Model) -> None:
        api = _lib()
        tokenizer = _Handle()
        api.check(api.create_tokenizer(model.handle, ctypes.byref(tokenizer)), "load the tokenizer")
        self._handle = tokenizer.value
        self._model = model

    def _destroy(self, handle: int) -> None:
        _lib().destroy_tokenizer(handle)

    def encode(self, text: str) -> list[int]:
        api = _lib()
        sequences = _Handle()
        api.check(api.create_sequences(ctypes.byref(sequences)), "allocate a token sequence")
        try:
            api.check(api.encode(self.handle, text.encode(), sequences), "encode the prompt")
            n = api.sequence_length(sequences, 0)
            return api.sequence_data(sequences, 0)[:n]  # type: ignore[no-any-return]
        finally:
            api.destroy_sequences(sequences)

    def decode(self, tokens: list[int]) -> str:
        api = _lib()
        array = (ctypes.c_int32 * len(tokens))(*tokens)
        out = ctypes.c_void_p()
        api.check(api.decode(self.handle, array, len(tokens), ctypes.byref(out)), "decode tokens")
        try:
            return ctypes.string_at(out.value).decode("utf-8", "replace") if out.value else ""
        finally:
            if out.value:
                api.destroy_string(out.value)

    @property
    def eos_token_ids(self) -> list[int]:
        api = _lib()
        ids, n = _Tokens(), ctypes.c_size_t()
        api.check(api.eos_ids(self.handle, ctypes.byref(ids), ctypes.byref(n)), "read the end-of-text ids")
        return ids[: n.value]

    def stream(self) -> TokenizerStream:
        return TokenizerStream(self)


class Generator(_Owned):
    """One sequence being generated; search options as genai names them (max_length, do_sample, ...)."""

    def __init__(self, model: Model, options: Mapping[str, float | int | bool]) -> None:
        api = _lib()
        params = _Handle()
        api.check(api.create_params(model.handle, ctypes.byref(params)), "create generator parameters")
        self._params: int | None = params.value  # outlives the generator, which refers to it
        self._model = model
        for name, value in options.items():
            if isinstance(value, bool):
                api.check(api.params_bool(params, name.encode(), value), f"set {name}")
            else:
                api.check(api.params_number(params, name.encode(), float(value)), f"set {name}")
        generator = _Handle()
        api.check(api.create_generator(model.handle, params, ctypes.byref(generator)), "create a generator")
        self._handle = generator.value

    def _destroy(self, handle: int) -> None:
        _lib().destroy_generator(handle)

    def close(self) -> None:
        super().close()
        params, self._params = getattr(self, "_params", None), None
        if params:
            _lib().destroy_params(params)

    def append_tokens(self, tokens: list[int]) -> None:
        """Run the model over ``tokens`` (prefill), with the GIL released."""
        api = _lib()
        array = (ctypes.c_int32 * len(tokens))(*tokens)
        api.check(api.append_tokens(self.handle, array, len(tokens)), "run the prompt")

    def generate_next_token(self) -> int:
        """One decode step, with the GIL released; the chosen token."""
        api = _lib()
        api.check(api.generate_next(self.handle), "generate the next token")
        ids, n = _Tokens(), ctypes.c_size_t()
        api.check(api.next_tokens(self.handle, ctypes.byref(ids), ctypes.byref(n)), "read the next token")
        if n.value < 1:
            raise GenaiError("onnxruntime-genai produced no token")
        return int(ids[0])

    def is_done(self) -> bool:
        return bool(_lib().is_done(self.handle))

    def rewind_to(self, length: int) -> None:
        """Forget every token after the first ``length`` (their KV cache too)."""
        api = _lib()
        api.check(api.rewind_to(self.handle, length), f"rewind to {length} tokens")


def generate(
    model: Model,
    tokenizer: Tokenizer,
    options: Mapping[str, float | int | bool],
    prompt: list[int],
    resumed: list[int],
    eos: frozenset[int],
) -> collections.abc.Generator[tuple[int, str], None, None]:
    """One generation as one generator, so the engine's decode loop crosses into this module once per
    token instead of four times (done? next token, its text).

    Yields, in order: ``(-1, the resumed tokens' text)`` before any model work (the engine checks it
    against what its caller saw); ``(-1, "")`` once ``prompt`` and then ``resumed`` are in (the
    prefill, one step per resumed token, as they were first produced: a batched prefill takes other
    kernels whose rounding can flip a greedy choice later); then ``(token, its text)`` per decode step
    until genai is done (max_length), an end-of-text token with "" (not detokenized). Closing it frees
    the C objects."""
    with TokenizerStream(tokenizer) as detok, Generator(model, options) as generator:
        try:
            yield -1, "".join(detok.decode(t) for t in resumed)
            generator.append_tokens(prompt)
            for token in resumed:
                generator.append_tokens([token])
            yield -1, ""
            while not generator.is_done():
                token = generator.generate_next_token()
                yield token, "" if token in eos else detok.decode(token)
        finally:
            del detok, generator  # collected as the `with` ends, here, not in the engine's frame
