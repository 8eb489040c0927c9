"""What a model runs on: device and dtype, CPU features, low-precision kernels, heap, memory.

Holds ``device`` (device and dtype resolution), ``cpu_features`` (feature flags and
instruction-set caps), ``lowp`` (low-precision weight copies for text queries),
``cpu_heap`` (keeping freed activations in the process, glibc) and ``memory`` (free memory,
batch sizes from it, out-of-memory detection). Nothing here knows GME's recipe.

May import: torch, numpy and the standard library; of PageLens, only its own modules.
"""
