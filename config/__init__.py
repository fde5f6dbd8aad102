"""Configuration: settings from the environment and the dunning policy file."""
