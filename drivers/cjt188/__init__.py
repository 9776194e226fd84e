"""CJ/T 188 household meter protocol (2004 and 2018 editions)."""
