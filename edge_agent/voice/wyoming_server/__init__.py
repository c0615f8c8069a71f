"""Home Assistant Assist's speech to text over the Wyoming protocol, transcribed by the household.

Home Assistant's `wyoming` integration asks ``describe`` (and wants ``info`` within about a second), then
opens one connection per utterance: ``transcribe`` (language), ``audio-start``, ``audio-chunk``...,
``audio-stop``, and reads until a ``transcript``. The answer, as wyoming 1.7+ streams it::

    transcript-start      language
    transcript-chunk ...  one per window of speech, as soon as it is transcribed (delta text: the chunks
                          joined are the whole text)
    transcript            the whole text (all a client before wyoming 1.7 reads; it ignores the rest)
    transcript-stop

Three layers, each its own module:

- `protocol`: events in and out, every size bounded; input that is not the protocol (not JSON,
  oversized, out of order) is an ``error`` event, one log line (never a traceback), the connection closed;
- `session`: one connection's utterance (idle and wall-clock bounds, one command's worth of audio,
  converted as it arrives by `edge_agent.audio.convert.SpeechStream`, the one conversion files use too),
  handed whole to the `Transcriber` (VAD, windows, routing: for Assist, only devices trusted to
  transcribe commands);
- `server`: the listening socket, the allow-list, connection limits, supervision.

Unknown event types are dropped (the protocol asks servers to, so that newer clients can send e.g.
``select-program``), up to a bound. Everything logs to this package's logger.
"""

from edge_agent.voice.wyoming_server.info import WHISPER_TINY_EN, AsrModelInfo
from edge_agent.voice.wyoming_server.server import DEFAULT_PORT, WyomingServer, WyomingServerState

__all__ = [
    "DEFAULT_PORT",
    "WHISPER_TINY_EN",
    "AsrModelInfo",
    "WyomingServer",
    "WyomingServerState",
]
