"""ScriptedModel: plays back harmony completions as a real model would stream them."""

from __future__ import annotations

import pytest

from harmony_agent.model import Model, Sampling, ScriptedModel, ScriptExhausted, harmony_encoding

STOP = {200002, 200012}


def test_streams_a_turn_up_to_and_including_the_stop_token() -> None:
    model = ScriptedModel(["<|channel|>final<|message|>Hi!<|return|><|start|>ignored"])
    tokens = list(model.generate([1, 2, 3], stop_tokens=STOP, max_tokens=100))
    assert harmony_encoding().decode(tokens) == "<|channel|>final<|message|>Hi!<|return|>"
    assert model.prompts == [[1, 2, 3]]
    assert isinstance(model, Model)


def test_max_tokens_cuts_the_turn() -> None:
    model = ScriptedModel(["<|channel|>final<|message|>" + "a b c " * 20 + "<|return|>"])
    assert len(list(model.generate([], stop_tokens=STOP, max_tokens=7))) == 7


def test_token_id_turns_and_prompt_recording() -> None:
    model = ScriptedModel([[5, 6, 200012, 7], [8]])
    assert list(model.generate([1], stop_tokens=STOP, max_tokens=10)) == [5, 6, 200012]
    assert list(model.generate([1, 2], stop_tokens=STOP, max_tokens=10)) == [8]
    assert model.prompts == [[1], [1, 2]] and model.remaining == 0


def test_running_out_of_turns_is_a_clear_error() -> None:
    model = ScriptedModel(["<|channel|>final<|message|>x<|return|>"])
    list(model.generate([], stop_tokens=STOP, max_tokens=10))
    with pytest.raises(ScriptExhausted, match="called 2 times but only 1 turns were scripted"):
        model.generate([], stop_tokens=STOP, max_tokens=10)


def test_sampling_validation() -> None:
    assert Sampling(temperature=0).temperature == 0
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        Sampling(temperature=-1)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        Sampling(top_p=0)
