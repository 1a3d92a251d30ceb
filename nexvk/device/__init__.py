"""Device layer: the only package that imports Kompute (`kp`).

probe.py lists devices without ever creating a Kompute manager in-process; manager.py owns
one Vulkan device: its buffer pool, its pipelines and its command sequence. Replacing Kompute
with another binding means rewriting manager.py alone.
"""
