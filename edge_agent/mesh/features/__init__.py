"""Mesh features: message handlers that plug into the endpoint (`MeshEndpoint.register`)."""
