"""meterhub's own JSON-over-MQTT protocol."""
