"""Helpers shared by the whole package: reporting bad input, atomic file writes, earlier module names."""
