"""The procedural world: scenes, captions, masks and splits (issue 3)."""
