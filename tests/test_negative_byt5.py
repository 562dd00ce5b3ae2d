"""Issue 13, class 8: with CFG the negative branch's byT5 input is empty (zeros, mask 0) whatever the
negative prompt quotes, as in upstream HY-WorldPlay; the positive branch keeps its glyph text."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.generation.camera import parse_pose
from pipeline.generation.rollout import ARRollout
from pipeline.generation.engine import GenerationRequest


@pytest.fixture
def captured(monkeypatch):
    seen = []
    original = ARRollout.__init__

    def spy(self, transformer, scheduler, inputs, **kwargs):
        seen.append(inputs)  # the RolloutInputs the world's AR rollout runs on
        return original(self, transformer, scheduler, inputs, **kwargs)

    monkeypatch.setattr(ARRollout, "__init__", spy)
    return seen


def _image() -> Image.Image:
    y, x = np.mgrid[0:48, 0:64]
    return Image.fromarray(np.stack([x * 3 % 256, y * 5 % 256, (x + y) % 256], -1).astype(np.uint8))


@pytest.mark.parametrize("negative_prompt", ['blurry, the words "CLOSED" and “EXIT”', "", "plain text"])
def test_negative_branch_gets_empty_byt5(tiny_pipeline, captured, negative_prompt):
    request = GenerationRequest(prompt='a shop, a sign reads "OPEN"', negative_prompt=negative_prompt,
                                image=_image(), camera=parse_pose("w-3"), guidance_scale=3.0, seed=1)
    result = tiny_pipeline.generate(request)
    assert result.frames.shape[0] == 13
    inputs = captured[-1]
    positive, negative = inputs.positive, inputs.negative
    assert negative is not None and inputs.guidance_scale == 3.0
    assert int(positive.byt5_mask.sum()) > 0  # the prompt's quoted text reaches byT5
    assert negative.byt5.shape == positive.byt5.shape
    assert negative.byt5_mask.shape == positive.byt5_mask.shape
    assert int(negative.byt5_mask.sum()) == 0
    assert not torch.any(negative.byt5)
    # the Qwen text of the negative branch still comes from the negative prompt
    expected = tiny_pipeline.encoders.encode_prompt(negative_prompt)
    assert torch.equal(negative.text, expected.text)
    if '"' in negative_prompt:  # what the old code fed to byT5: the negative prompt's quoted text
        assert int(expected.byt5_mask.sum()) > 0


def test_without_cfg_there_is_no_negative_branch(tiny_pipeline, captured):
    request = GenerationRequest(prompt='a sign reads "OPEN"', negative_prompt='"CLOSED"', image=_image(),
                                camera=parse_pose("w-3"), guidance_scale=1.0, seed=1)
    tiny_pipeline.generate(request)
    assert captured[-1].negative is None
    assert int(captured[-1].positive.byt5_mask.sum()) > 0
