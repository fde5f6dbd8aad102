"""The queue: the Dramatiq broker (set up explicitly), the thin actors, what the broker holds,
dead letters, and the supervisor that keeps the worker pool running.

Owns: moving ids between processes. Actors call the other rooms (intake, delivery, stripe,
scheduling); may import every room except web and console, plus handlers, config.
"""
