"""``envs.block_random.BlockRandom``: the generator's numbers in blocks, deterministic, checkpointable."""

from __future__ import annotations

import numpy as np

import envs
from envs.block_random import BLOCK_SIZE, BlockRandom


def requests(rng, steps: int = 700) -> list[np.ndarray]:
    """A mixed sequence of requests like the core's (scalars, rows of candidates, batches, pass-through)."""
    out = []
    for step in range(steps):
        out.append(np.atleast_1d(rng.random()))
        out.append(rng.integers(0, 10_000, size=(1, 10)).ravel().astype(float))
        if step % 7 == 0:
            out.append(rng.random(5))
            out.append(rng.integers(3, size=4).astype(float))
            out.append(np.atleast_1d(rng.standard_normal()))
        if step % 101 == 0:
            out.append(rng.integers(0, 10_000, size=(600, 10)).ravel().astype(float))  # bigger than a block
    return out


def test_numbers_are_the_generators_in_blocks():
    rng = BlockRandom(np.random.default_rng(0))
    scalars = [rng.random() for _ in range(BLOCK_SIZE + 3)]
    reference = np.random.default_rng(0).random(2 * BLOCK_SIZE)
    np.testing.assert_array_equal(scalars, reference[: BLOCK_SIZE + 3])
    assert isinstance(scalars[0], float)
    rows = BlockRandom(np.random.default_rng(1))
    first, second = rows.integers(0, 50, size=(1, 10)), rows.integers(0, 50, size=(1, 10))
    block = np.random.default_rng(1).integers(0, 50, size=(BLOCK_SIZE // 10, 10))
    np.testing.assert_array_equal(np.concatenate([first, second]), block[:2])
    assert first.shape == (1, 10) and first.dtype == np.int64


def test_same_seed_same_stream_and_shapes_ranges_as_the_generator():
    a, b, c = (requests(BlockRandom(np.random.default_rng(seed))) for seed in (5, 5, 6))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    rng = BlockRandom(np.random.default_rng(0))
    assert rng.random(3).shape == (3,) and rng.random((2, 3)).shape == (2, 3)
    assert isinstance(rng.integers(7), int) and 0 <= rng.integers(7) < 7
    draws = rng.integers(-2, 3, size=5000)
    assert draws.min() == -2 and draws.max() == 2
    assert rng.random(2, dtype=np.float32).dtype == np.float32  # keyword arguments: straight to the generator
    assert rng.normal(size=3).shape == (3,)


def test_returned_arrays_are_copies():
    rng, twin = BlockRandom(np.random.default_rng(2)), BlockRandom(np.random.default_rng(2))
    first = rng.integers(0, 100, size=(1, 10))
    first[:] = -1
    uniforms = rng.random(4)
    uniforms[:] = -1.0
    twin.integers(0, 100, size=(1, 10))
    twin.random(4)
    np.testing.assert_array_equal(rng.integers(0, 100, size=(1, 10)), twin.integers(0, 100, size=(1, 10)))
    np.testing.assert_array_equal(rng.random(4), twin.random(4))


def test_state_round_trip_continues_mid_block():
    rng = BlockRandom(np.random.default_rng(3))
    requests(rng, steps=45)  # part of the way into the blocks
    state = rng.get_state()
    expected = requests(rng)
    for x, y in zip(requests(BlockRandom.from_state(state)), expected, strict=True):
        np.testing.assert_array_equal(x, y)


def test_core_checkpoint_resumes_one_user_identically():
    from agents.checkpoint import capture_core_state, restore_core_state

    core = envs.make_core("longrec/InterestEvolution-v0", num_users=1)
    core.reset(seed=0)
    slates = np.random.default_rng(0).permuted(np.tile(np.arange(10), (300, 1)), axis=1)[:, :2]
    for slate in slates[:37]:
        core.step(slate[None])
    saved = capture_core_state(core)
    first = [core.step(slate[None]) for slate in slates[37:]]
    restore_core_state(core, saved)
    for result, slate in zip(first, slates[37:], strict=True):
        again = core.step(slate[None])
        np.testing.assert_array_equal(again.observation["candidate_item_ids"], result.observation["candidate_item_ids"])
        assert again.reward[0] == result.reward[0]
