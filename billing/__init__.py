"""Billing: consumption, validation (VEE), estimation, tariffs, bill runs and the ledger."""
