"""MQTT: a plain client (pairing, tests) and the mesh transport built on it."""

from edge_agent.mesh.transports.mqtt.client import MqttClient
from edge_agent.mesh.transports.mqtt.inbox import Frame
from edge_agent.mesh.transports.mqtt.transport import MqttConnector, MqttTransport

__all__ = ["Frame", "MqttClient", "MqttConnector", "MqttTransport"]
