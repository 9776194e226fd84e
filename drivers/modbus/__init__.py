"""Modbus TCP / RTU devices described by TOML register-map profiles."""
