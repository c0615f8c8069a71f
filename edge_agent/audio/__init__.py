"""Audio input: recordings and raw PCM streams become 16 kHz mono (float32 for the speech engines, s16le
bytes on the way to them), through one conversion (`convert`) whatever the source."""

from edge_agent.audio.convert import SpeechStream
from edge_agent.audio.decode import CLIP_WARN_FRACTION, Audio, from_pcm16, load_audio
from edge_agent.audio.pcm import Samples, float_to_pcm16, iter_pcm16, pcm16_to_float

__all__ = [
    "CLIP_WARN_FRACTION",
    "Audio",
    "Samples",
    "SpeechStream",
    "float_to_pcm16",
    "from_pcm16",
    "iter_pcm16",
    "load_audio",
    "pcm16_to_float",
]
