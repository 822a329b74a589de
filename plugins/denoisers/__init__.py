"""Built-in denoisers."""
