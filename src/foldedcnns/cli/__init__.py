"""Command line: a thin layer over the Python API. One module per command."""
