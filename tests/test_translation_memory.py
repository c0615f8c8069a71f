"""The shared translation memory's own rules: normalization, signatures, bounds, age; and the splitter."""

from __future__ import annotations

import time

import pytest
from nacl.signing import SigningKey

from edge_agent.engines.sentences import split_sentences
from edge_agent.mesh.memory import MAX_SOURCE_CHARS, TranslationMemory, fits, make_entry, normalize


def test_entries_are_signed_over_every_field() -> None:
    key = SigningKey.generate()
    entry = make_entry(key, "ab" * 16, "en-pt", "Good morning.", "Bom dia.", "bergamot-tiny11-en-pt@int8")
    assert entry.verify(key.verify_key)
    changes = {
        "translation": "Boa noite.",
        "source": "Good night.",
        "pair": "pt-en",
        "model": "other@fp32",
        "producer": "cd" * 16,
        "created": entry.created + 1,
    }
    for field, value in changes.items():
        assert not entry.model_copy(update={field: value}).verify(key.verify_key), field
    assert not entry.verify(SigningKey.generate().verify_key)


def test_bounded_by_count_age_and_length() -> None:
    key = SigningKey.generate()
    memory = TranslationMemory(max_entries=3, max_age_s=60, salt=b"household")
    for i in range(5):
        memory.put(make_entry(key, "ab" * 16, "en-pt", f"Sentence {i}.", f"Frase {i}.", "m"))
    assert len(memory) == 3 and memory.get("en-pt", "Sentence 0.") is None  # least recently used went first
    assert memory.get("en-pt", "  Sentence   4. ") is not None  # normalized lookup
    assert memory.get("pt-en", "Sentence 4.") is None  # the pair is part of the key
    stale = make_entry(key, "ab" * 16, "en-pt", "Old news.", "Notícia velha.", "m", now=time.time() - 120)
    memory.put(stale)
    assert memory.get("en-pt", "Old news.") is None
    assert not fits("Hi.", "x" * 200) and not fits("x" * (MAX_SOURCE_CHARS + 1), "y")
    assert memory.key("en-pt", "Hi.") != TranslationMemory(salt=b"other").key("en-pt", "Hi.")
    assert memory.forget_producer("ab" * 16) == 3 and len(memory) == 0


def test_an_entry_answers_only_its_audience_and_a_restriction_only_narrows() -> None:
    key = SigningKey.generate()
    memory = TranslationMemory(max_entries=2, salt=b"household")
    entry = make_entry(key, "ab" * 16, "en-pt", "Good morning.", "Bom dia.", "m")
    memory.put(entry, frozenset({"hub", "laptop"}))
    digest_of = memory.key("en-pt", "Good morning.")
    assert memory.lookup([digest_of], "hub") == [entry] and memory.lookup([digest_of], "appliance") == []
    memory.put(entry)  # for anyone: the earlier restriction stays
    memory.put(entry, frozenset({"laptop", "phone"}))  # narrowed to what both allow
    assert memory.audience("en-pt", "Good morning.") == frozenset({"laptop"})
    assert memory.get("en-pt", "Good morning.") == entry  # this device's own use is not restricted
    for i in range(2):  # evicted: its restriction goes with it, and a new entry starts unrestricted
        memory.put(make_entry(key, "ab" * 16, "en-pt", f"Other {i}.", f"Outra {i}.", "m"))
    memory.put(entry)
    assert memory.audience("en-pt", "Good morning.") is None
    assert memory.lookup([digest_of], "appliance") == [entry]


def test_normalize_keeps_case_and_punctuation() -> None:
    assert normalize("  Turn\u00a0off\tthe  lights! ") == "Turn off the lights!"
    assert normalize("Cafe\u0301") == "Café"  # NFC
    assert normalize("turn off") != normalize("Turn off")


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("Dr. Silva arrived. He sat down.", ["Dr. Silva arrived.", "He sat down."]),
        ("It costs 3.50 euros. Pay now!", ["It costs 3.50 euros.", "Pay now!"]),
        ("J. Silva wrote it. Done?", ["J. Silva wrote it.", "Done?"]),
        ('He said "Stop." Then left.', ['He said "Stop."', "Then left."]),
        ("A Sra. Ana chegou. Ótimo!", ["A Sra. Ana chegou.", "Ótimo!"]),
        ("no capital after. so one sentence", ["no capital after. so one sentence"]),
        ("Line one\nLine two", ["Line one", "Line two"]),
    ],
)
def test_sentence_splitter(text: str, sentences: list[str]) -> None:
    seg = split_sentences(text)
    assert [s for s in seg.sentences if s] == sentences
    assert seg.join(seg.sentences) == text
