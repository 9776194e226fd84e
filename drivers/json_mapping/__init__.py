"""Other platforms' JSON payloads, mapped to readings by configuration."""
