"""Split a paragraph into sentences, and put translated sentences back with the original spacing.

Sentence-level models (Bergamot is trained on single sentences) lose words when fed a whole paragraph,
so every text is cut at sentence ends. The rule is conservative: a break needs end punctuation, then
whitespace, then an upper-case letter or digit (maybe after a quote); abbreviations ("Dr.", "e.g.",
"Sra."), decimals ("3.5") and initials ("J. Silva") never break. Line breaks always break and are kept
verbatim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Lower-cased, without the final dot. English and Portuguese titles and Latin short forms.
ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "sra",
        "srs",
        "sras",
        "srta",
        "jr",
        "st",
        "mt",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "cf",
        "approx",
        "no",
        "nº",
        "n.º",
        "av",
        "rua",
        "pág",
        "pag",
        "tel",
        "fig",
        "ex",
        "exa",
        "dra",
        "eng",
        "gen",
        "cap",
        "ltda",
        "inc",
        "co",
        "corp",
        "dept",
        "est",
        "min",
        "máx",
        "max",
        "aprox",
        "p.ex",
        "obs",
        "a.m",
        "p.m",
    ]
)
_CLOSERS = "\"'\u201d\u2019\u00bb)\\]"  # quotes and brackets that may follow the end punctuation
_OPENERS = "\"'\u201c\u2018\u00ab(\\[\u00bf\u00a1"
_CANDIDATE = re.compile(
    f"([.!?\u2026]+[{_CLOSERS}]*)(\\s+)(?=[{_OPENERS}]?[A-Z\u00c0-\u00d6\u00d8-\u00de0-9])"
)
_LINES = re.compile(r"(\s*\n\s*)")


@dataclass(frozen=True)
class Segments:
    """A text as alternating pieces: ``parts[0::2]`` are sentences, ``parts[1::2]`` the gaps between."""

    parts: list[str]

    @property
    def sentences(self) -> list[str]:
        return self.parts[0::2]

    def join(self, translated: list[str]) -> str:
        if len(translated) != len(self.sentences):
            raise ValueError(f"{len(translated)} translations for {len(self.sentences)} sentences")
        out = list(self.parts)
        out[0::2] = translated
        return "".join(out)


def _is_break(text: str, end: int) -> bool:
    """Whether the punctuation ending at ``end`` (exclusive, at the dot) closes a sentence."""
    before = text[:end]
    word = re.search(r"(\S+)$", before)
    if word is None:
        return True
    token = word.group(1).lower().rstrip(".")
    if token in ABBREVIATIONS:
        return False
    return not (len(token) == 1 and token.isalpha() and text[end] == ".")  # an initial: "J. Silva"


def split_sentences(text: str) -> Segments:
    leading = text[: len(text) - len(text.lstrip())]
    trailing = text[len(text.rstrip()) :]
    body = text.strip()
    parts: list[str] = ["", leading] if leading else []  # an empty "sentence" keeps the alternation
    pieces = _LINES.split(body) if body else [""]
    for i, piece in enumerate(pieces):
        if i % 2:  # a line break gap
            parts.append(piece)
            continue
        start = 0
        for m in _CANDIDATE.finditer(piece):
            punct_end = m.end(1)
            dot = m.start(1)
            if not _is_break(piece, dot):
                continue
            parts += [piece[start:punct_end], m.group(2)]
            start = m.end(2)
        parts.append(piece[start:])
    if trailing:
        parts += [trailing, ""]
    return Segments(parts)
