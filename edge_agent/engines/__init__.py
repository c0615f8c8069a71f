"""Inference engines on onnxruntime. Never imports the mesh: engines only know packs and profiles.

The request and result models an engine takes and yields are the client API's
(`edge_agent.client.schemas`); the engines import them from there.
"""
