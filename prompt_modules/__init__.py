"""Pure-torch library."""
