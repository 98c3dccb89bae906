"""Random draws fetched from a ``numpy.random.Generator`` in blocks.

A call into a ``Generator`` costs about 1.5 us for one uniform and about 15 us
for ``integers(..., size=...)``, however few numbers it returns. A one-user
step needs two uniforms and C candidate ids, so at B = 1 these calls were a
fifth of the step. ``BlockRandom`` draws uniforms and bounded integers a block
at a time and hands them out in order; every other method (``normal``,
``uniform``, ``standard_normal``, ...) goes straight to the generator.

The numbers are the generator's, only requested in bigger pieces: the stream
is a deterministic function of the seed and of the sequence of requests, so
every view over one simulator core (they all make the same requests) sees the
same trajectory. It is not the stream of calling the generator directly, and
the buffered numbers are state: ``get_state``/``from_state`` save and restore
them with the generator's (for checkpoints).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np

BLOCK_SIZE = 1024
"""numbers drawn per block"""

MIN_REQUESTS_PER_BLOCK = 4
"""requests bigger than a quarter of a block are drawn directly"""

Size = int | tuple[int, ...] | None
_SHAPE_TYPES = (tuple, list)


class BlockRandom:
    """A ``Generator`` whose ``random`` and ``integers`` are served from pre-drawn blocks.

    There is one block per kind of request: the method, its range, and the
    shape of one row (``size[1:]``; ``random()`` scalars have their own block,
    ``integers`` scalars are one-row requests). A request
    takes the next ``size[0]`` rows of its block; when fewer are left, the rest
    is dropped and a new block of ``BLOCK_SIZE`` numbers is drawn. A request
    for more than a quarter of a block is drawn directly. Arrays returned are
    copies (callers may write to them). Other attributes are the generator's.
    """

    def __init__(self, generator: np.random.Generator) -> None:
        self.generator = generator
        # kind of request -> [block, index of its next unused row]
        self._blocks: dict[tuple[Any, ...], list[Any]] = {}
        # the scalar uniforms of ``random()`` (a one-user step's hot path), as Python floats
        self._uniforms: list[float] = []
        self._next_uniform = 0

    def __getattr__(self, name: str) -> Any:
        # only reached for names not defined here: the generator's other methods
        if name.startswith("_") or name == "generator":
            raise AttributeError(name)
        return getattr(self.generator, name)

    def random(self, size: Size = None, **kwargs: Any) -> float | np.ndarray:
        """Uniforms on [0, 1) as ``Generator.random`` (a Python float for ``size=None``)."""
        if kwargs:  # dtype/out: not buffered
            return self.generator.random(size, **kwargs)
        if size is not None:
            return self._rows(("random",), size, self.generator.random)
        index = self._next_uniform
        if index == len(self._uniforms):
            self._uniforms, index = self.generator.random(BLOCK_SIZE).tolist(), 0
        self._next_uniform = index + 1
        return self._uniforms[index]

    def integers(self, low: int, high: int | None = None, size: Size = None, **kwargs: Any) -> int | np.ndarray:
        """Integers on [low, high) (int64) as ``Generator.integers`` (an ``int`` for ``size=None``)."""
        if high is None:
            low, high = 0, low
        if kwargs:  # dtype/endpoint: not buffered
            return self.generator.integers(low, high, size, **kwargs)
        if size is None:
            return int(self._rows(("integers", low, high), 1, self.generator.integers, low, high)[0])
        return self._rows(("integers", low, high), size, self.generator.integers, low, high)

    def _rows(self, kind: tuple[Any, ...], size: Size, draw: Callable[..., np.ndarray], *args: Any) -> np.ndarray:
        """The next ``size[0]`` rows of shape ``size[1:]`` of the block of ``kind`` (drawn by ``draw(*args, shape)``)."""
        shape = tuple(size) if isinstance(size, _SHAPE_TYPES) else (int(size),)
        if not shape:
            return draw(*args, shape)
        rows, row_shape = shape[0], shape[1:]
        key = (*kind, row_shape)
        entry = self._blocks.get(key)
        if entry is None or entry[1] + rows > len(entry[0]):
            rows_per_block = max(1, BLOCK_SIZE // max(1, math.prod(row_shape)))
            if rows * MIN_REQUESTS_PER_BLOCK > rows_per_block:  # too big to be worth buffering
                return draw(*args, shape)
            entry = self._blocks[key] = [draw(*args, (rows_per_block, *row_shape)), 0]
        block, start = entry
        entry[1] = start + rows
        return block[start : start + rows].copy()

    # -- checkpoints ---------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """The generator's state and the unused buffered numbers (a deep copy)."""
        return copy.deepcopy(
            {
                "bit_generator": self.generator.bit_generator.state,
                "uniforms": self._uniforms[self._next_uniform :],
                "blocks": {key: block[start:] for key, (block, start) in self._blocks.items()},
            }
        )

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BlockRandom:
        """A ``BlockRandom`` that continues exactly where the one ``get_state`` was taken from."""
        generator = np.random.default_rng()
        generator.bit_generator.state = copy.deepcopy(state["bit_generator"])
        rng = cls(generator)
        rng._uniforms = list(state["uniforms"])
        rng._blocks = {key: [block.copy(), 0] for key, block in state["blocks"].items()}
        return rng
