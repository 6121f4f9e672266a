"""Seeds derived from a user seed and a purpose, so that independent draws never share a stream."""

from __future__ import annotations

import zlib

import numpy as np
import torch


def derive_seed(seed: int, *keys: int | str) -> int:
    """Return a 63-bit seed that depends only on ``seed`` and ``keys`` (in order).

    The mixing is numpy's ``SeedSequence`` (stable across platforms and versions), so that
    nearby inputs such as ``(0, 1)`` and ``(1, 0)`` give unrelated seeds. String keys are hashed
    with CRC32.
    """
    words = [zlib.crc32(key.encode()) if isinstance(key, str) else key for key in keys]
    state = np.random.SeedSequence(seed, spawn_key=words).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


def seeded_generator(seed: int, *keys: int | str) -> torch.Generator:
    """Return a CPU ``torch.Generator`` seeded with ``derive_seed(seed, *keys)``."""
    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, *keys))
    return generator
