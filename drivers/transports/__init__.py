"""Transports: they only move bytes (or Modbus PDUs) between the collector and a line or socket."""
