"""The ground floor: what every package of ours may import.

Errors the user fixes, progress lines and the quiet log, path and
atomic-write helpers, the plotting setup, pixel scalings and the class list.
Nothing here imports another module of ours outside `parallelnet.core`, nor
JAX, TensorFlow or the models, so the data pipeline can use it cheaply
(DESIGN.md, "Dependencies").
"""
