"""The engine's C-API binding of onnxruntime-genai: same answers as the package's Python binding, and
the GIL let go while the model runs (the reason it exists)."""

from __future__ import annotations

import json
import threading

import onnxruntime_genai as og
import pytest

from edge_agent.engines import genai_native
from edge_agent.engines.chat_template import render_chat
from edge_agent.engines.generate import GenerateEngine
from edge_agent.errors import GenaiError

pytestmark = pytest.mark.slow  # inference on the built packs

PROMPT = "Describe a kitchen in three sentences."


@pytest.fixture(scope="module")
def int4(pack):  # type: ignore[no-untyped-def]
    return pack("smollm2-135m-instruct@int4")


def test_same_tokens_and_text_as_the_python_binding(int4) -> None:  # type: ignore[no-untyped-def]
    prompt = render_chat(str(int4.manifest.task_info["chat_template"]), [{"role": "user", "content": PROMPT}])
    session = {"intra_op_num_threads": 1, "inter_op_num_threads": 1}
    overlay = {"model": {"decoder": {"session_options": session}}}

    config = og.Config(str(int4.path))
    config.clear_providers()
    config.overlay(json.dumps(overlay))
    ref_model = og.Model(config)
    ref_tokenizer = og.Tokenizer(ref_model)
    ref_ids = [int(i) for i in ref_tokenizer.encode(prompt)]
    params = og.GeneratorParams(ref_model)
    n = len(ref_ids) + 32  # min_length = max_length: the answer length is forced, not the model's choice
    params.set_search_options(max_length=n, min_length=n, do_sample=False)
    ref_gen = og.Generator(ref_model, params)
    ref_gen.append_tokens(ref_ids)
    ref_tokens: list[int] = []
    while not ref_gen.is_done():
        ref_gen.generate_next_token()
        ref_tokens.append(int(ref_gen.get_next_tokens()[0]))
    ref_stream = ref_tokenizer.create_stream()
    ref_text = "".join(ref_stream.decode(t) for t in ref_tokens)

    with genai_native.Model(int4.path, overlay) as model, genai_native.Tokenizer(model) as tokenizer:
        ids = tokenizer.encode(prompt)
        assert ids == ref_ids
        assert sorted(tokenizer.eos_token_ids) == sorted(int(t) for t in ref_tokenizer.eos_token_ids)
        with genai_native.Generator(model, {"max_length": n, "min_length": n, "do_sample": False}) as gen:
            gen.append_tokens(ids)
            tokens = []
            while not gen.is_done():
                tokens.append(gen.generate_next_token())
        assert tokens == ref_tokens and len(tokens) == 32
        with tokenizer.stream() as stream:
            assert "".join(stream.decode(t) for t in tokens) == ref_text


def test_other_threads_run_while_the_model_runs(llm_int4: GenerateEngine) -> None:
    """A prompt of ~1,500 tokens takes the model seconds to read. Polled from this thread with a yield
    each time, the worker is seen inside that one C call many times over; with the GIL held through
    the call (the Python binding) this thread could only run at its edges."""
    words = " ".join(f"item {i}," for i in range(500))
    ids = llm_int4.tokenizer.encode(words)
    assert len(ids) > 1000
    inside = threading.Event()
    finished = threading.Event()

    def prefill() -> None:
        with genai_native.Generator(llm_int4.model, {"max_length": len(ids) + 1}) as gen:
            inside.set()
            gen.append_tokens(ids)
            inside.clear()
        finished.set()

    worker = threading.Thread(target=prefill)
    worker.start()
    inside.wait(10)
    seen_inside = 0
    while inside.is_set() and seen_inside < 50:
        seen_inside += 1
        threading.Event().wait(0.0005)  # gives up the GIL, as an event loop's select does
    worker.join(60)
    assert finished.is_set()
    assert seen_inside == 50


def test_a_closed_object_is_a_clear_error(int4) -> None:  # type: ignore[no-untyped-def]
    model = genai_native.Model(int4.path, {})
    model.close()
    model.close()  # idempotent
    with pytest.raises(GenaiError, match="this Model is closed"):
        genai_native.Tokenizer(model)


def test_a_missing_pack_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(GenaiError, match=f"could not read {tmp_path}"):
        genai_native.Model(tmp_path, {})
