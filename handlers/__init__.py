"""What to do when X happens: one module per event family, one registry table (registry.py)."""
