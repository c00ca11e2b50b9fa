"""Pure analysis code: numpy arrays in, numpy arrays and plain values out.

Nothing in this package imports the rest of the service, reads files or talks to a
network, so every step can be tested and benchmarked on its own.

Axis order everywhere: ``(t, z, y, x)`` for time series and ``(z, y, x)`` for volumes.
"""
