"""Tests for the development tools (the stand-in upstream and its samples)."""
