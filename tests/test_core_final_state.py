"""The core hands out the hidden state of the users whose episode ended, taken before they are replaced."""

from __future__ import annotations

import numpy as np
import pytest

import envs


@pytest.mark.parametrize("env_id", envs.registered_ids())
def test_final_hidden_state_is_taken_before_the_finished_users_are_replaced(env_id):
    core = envs.make_core(env_id, num_users=8)
    before_reset = []
    replace_users = core.user_model.reset_users

    def spy(state, mask, rng):
        before_reset.append(core.hidden_state())
        replace_users(state, mask, rng)

    core.reset(seed=1)
    core.user_model.reset_users = spy
    slates = np.tile(np.arange(core.slate_size), (8, 1))
    finished_steps = 0
    for _ in range(400):
        result = core.step(slates)
        done = result.terminated | result.truncated
        assert (result.final_hidden_state is None) == (result.final_observation is None) == (not done.any())
        if done.any():
            finished_steps += 1
            expected = before_reset.pop()
            assert result.final_hidden_state.keys() == expected.keys()
            for key, value in expected.items():
                np.testing.assert_array_equal(result.final_hidden_state[key], value)
            # the rows still alive are as they are now; the finished rows differ from their replacements
            alive = core.hidden_state()
            np.testing.assert_array_equal(result.final_hidden_state["time_left"][~done], alive["time_left"][~done])
            assert not np.array_equal(result.final_hidden_state["time_left"][done], alive["time_left"][done])
        if finished_steps >= 3:
            break
    assert finished_steps >= 3
