"""Thin edges: MQTT, folders and HTTP turn their input into commands on the agent's bus."""
