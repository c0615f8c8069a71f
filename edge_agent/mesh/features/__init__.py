"""Mesh features: message handlers that plug into the endpoint through `features.port.FeaturePort`."""
