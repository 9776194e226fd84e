"""Device profiles shipped with the modbus driver (TOML data)."""
