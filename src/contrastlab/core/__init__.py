"""The lowest layer: config dataclasses and their validation, registries, distributed
primitives, optimisers and the learning-rate schedule. Imports nothing else of contrastlab."""
