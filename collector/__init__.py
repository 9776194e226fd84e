"""The ingestion service: MQTT sessions, batching into the store, counters that prove nothing is lost."""
