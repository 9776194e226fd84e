"""Wired M-Bus meters (EN 13757-2 link layer, EN 13757-3 application layer) on serial level converters."""
