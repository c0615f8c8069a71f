"""The household mesh: identities, certificates, envelopes and (later) transports and routing.

Never imports onnxruntime or the engines, so the Home Assistant component can use it alone.
"""
