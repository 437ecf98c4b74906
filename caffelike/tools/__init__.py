"""Implementations of the `caffelike` subcommands, one module per verb."""
