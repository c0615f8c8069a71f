"""What the server tells Home Assistant about itself: the ``info`` answer to ``describe``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from edge_agent import __version__

with warnings.catch_warnings():
    # wyoming.audio imports the stdlib audioop (deprecated on 3.11-3.12; we never call it).
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    from wyoming.info import AsrModel, AsrProgram, Attribution, Info

HEARTH_URL = "https://github.com/hearth-edge/hearth"


class AsrModelInfo(BaseModel):
    """One speech-to-text model as ``info`` shows it to Home Assistant (which lists its languages)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    languages: list[str] = Field(min_length=1, max_length=100)
    version: str | None = Field(default=None, max_length=64)
    description: str = Field(default="", max_length=200)
    attribution_name: str = Field(min_length=1, max_length=100)
    attribution_url: str = Field(min_length=1, max_length=200)
    installed: bool = True

    def wyoming(self) -> AsrModel:
        return AsrModel(
            name=self.name,
            attribution=Attribution(name=self.attribution_name, url=self.attribution_url),
            installed=self.installed,
            description=self.description or None,
            version=self.version,
            languages=list(self.languages),
        )


WHISPER_TINY_EN = AsrModelInfo(
    name="whisper-tiny.en",
    languages=["en"],
    version="tiny.en",
    description="Whisper tiny.en (OpenAI, MIT licence), on this household's devices",
    attribution_name="OpenAI",
    attribution_url="https://github.com/openai/whisper",
)


def languages_of(models: Sequence[AsrModelInfo]) -> list[str]:
    """The languages served, in the models' order, without repeats (installed models only)."""
    return list(dict.fromkeys(lang for m in models if m.installed for lang in m.languages))


def server_info(name: str, models: Sequence[AsrModelInfo]) -> Info:
    return Info(
        asr=[
            AsrProgram(
                name=name,
                attribution=Attribution(name="Hearth", url=HEARTH_URL),
                installed=True,
                description="Speech to text on this household's devices (VAD here, Whisper wherever "
                "routing allows)",
                version=__version__,
                models=[m.wyoming() for m in models],
                supports_transcript_streaming=True,  # a transcript-chunk per window, as it is done
                requires_external_vad=True,  # the client says when the utterance ends (audio-stop)
            )
        ]
    )
