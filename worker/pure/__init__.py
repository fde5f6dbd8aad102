"""Pure helpers: time (clock, the owner's time zone), ids, money, JSON text columns, the
per-message log ids, and the Standard Webhooks signing format.

Owns: small functions with no I/O of their own. Imports nothing else from the project (no room,
no handlers, no config): the one part of worker/ the domain (handlers/) may import.
"""
