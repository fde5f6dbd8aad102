"""Pure helpers every layer may use: time (clock), ids, money.

Owns: naive-UTC time, application ids, amounts for owners. Imports nothing else from the project
(no worker room, no handlers, no config): it is the leaf the domain (handlers/) may depend on.
"""
