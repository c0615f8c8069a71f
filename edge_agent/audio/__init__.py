"""Audio input: recordings and raw PCM streams become 16 kHz mono float32 for the speech engines."""

from edge_agent.audio.decode import CLIP_WARN_FRACTION, Audio, from_pcm16, load_audio
from edge_agent.audio.pcm import Samples, float_to_pcm16, iter_pcm16, pcm16_to_float

__all__ = [
    "CLIP_WARN_FRACTION",
    "Audio",
    "Samples",
    "float_to_pcm16",
    "from_pcm16",
    "iter_pcm16",
    "load_audio",
    "pcm16_to_float",
]
