"""Benchmark tooling for accelerators: the decode-loop profiler (`profile`), its trace reader
(`trace`) and HLO kernel counter (`kernels`).

Nothing in the library's core imports this package; `experiments/profile.py` is its command
line. Importing it starts no JAX backend.
"""
