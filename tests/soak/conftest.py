"""Reused fixtures: the hostile catalogue's certificates (its peers are part of the soak)."""

from tests.hostile.conftest import hostile_material

__all__ = ["hostile_material"]
