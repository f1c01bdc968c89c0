"""A worked example of a third-party Watermark Arena package (CONTRIBUTING.md).

It holds one plugin per module, each found through its entry point in pyproject.toml:
``checkerboard.py``, a defense (group ``arena.defenses``), and ``gaussian_noise.py``,
an attack (group ``arena.attacks``). Both import only ``arena``'s stable surface, torch,
numpy and the standard library. This file imports neither, so loading one plugin never
loads the other.
"""
