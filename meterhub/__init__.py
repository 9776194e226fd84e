"""meterhub: gas meter telemetry, valve control and billing on PostgreSQL."""

__version__ = "0.1.0"
