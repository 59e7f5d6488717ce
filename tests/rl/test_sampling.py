"""Row-seeded sampling: the Gumbel-max draw is softmax sampling, and a row's response ignores how rows are batched."""

from __future__ import annotations

import copy

import pytest
import torch

from alignkit.rl.sampling import RowSeededSampler, row_seed
from alignkit.rl.trainer import RLConfig, RLTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


def draws(sampler: RowSeededSampler, logits: torch.Tensor, n: int) -> torch.Tensor:
    """n successive argmax draws of the sampler's perturbed logits, one row."""
    ids = torch.zeros(1, 1, dtype=torch.long)
    return torch.stack([sampler(ids, logits.clone()).argmax(-1)[0] for _ in range(n)])


def test_gumbel_argmax_samples_the_tempered_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    picks = draws(RowSeededSampler([row_seed(0, 0, 0)], "cpu", temperature=2.0), logits, 4000)
    freq = torch.bincount(picks, minlength=4).float() / len(picks)
    expected = torch.softmax(logits[0] / 2.0, -1)
    assert torch.allclose(freq, expected, atol=0.03), (freq, expected)  # ~5 standard errors
    top2 = draws(RowSeededSampler([1], "cpu", top_k=2), logits, 500)
    assert set(top2.tolist()) == {0, 1}  # top_k keeps the two largest, both drawn


def test_row_streams_are_independent_of_the_batch_around_them():
    logits = torch.zeros(3, 50)
    ids = torch.zeros(3, 1, dtype=torch.long)
    seeds = [row_seed(7, 2, r) for r in range(3)]
    together = RowSeededSampler(seeds, "cpu")(ids, logits.clone()).argmax(-1)
    alone = [RowSeededSampler([s], "cpu")(ids[:1], logits[:1].clone()).argmax(-1).item() for s in seeds]
    assert together.tolist() == alone
    assert len({row_seed(7, 2, r) for r in range(1000)} | {row_seed(7, 3, r) for r in range(1000)}) == 2000


def test_forward_batch_size_does_not_change_the_sampled_responses(tiny, ppo_tokenizer):
    tok = ppo_tokenizer
    policy = tiny.make_policy(tok)
    responses = []
    for chunk in (None, 3):
        cfg = RLConfig(advantage_estimator="rloo", num_generations=4, rollout_batch_size=12, mini_batch_size=12,
                       max_new_tokens=6, forward_batch_size=chunk)
        trainer = RLTrainer(cfg, policy, copy.deepcopy(policy), None, tiny.target_reward(tok), tok,
                            tiny.make_prompts(tok))
        responses.append(trainer.worker.sample(1, policy).responses)
    assert torch.equal(responses[0], responses[1])
    assert len({tuple(r.tolist()) for r in responses[0][:4]}) > 1  # a group's samples differ: real sampling
