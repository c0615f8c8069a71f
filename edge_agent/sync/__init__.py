"""Peer-to-peer model updates: what a household trusts (update keys, signed manifests, chunk digests)
and, on top of it, how packs travel between devices.

The trust core (`digests`, `signing`, `keys`, `manifest`, `trust`) is IO-free, bytes in and verified
objects out, like python-tuf's TrustedMetadataSet; it never imports onnxruntime or the agent config.
"""
