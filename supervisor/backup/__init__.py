"""Backup bundles: create, catalog, verify, restore and exports."""
