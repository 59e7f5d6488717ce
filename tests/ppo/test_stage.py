"""The stage's glue: a RewardScorer as PPOTrainer's reward callable."""

from __future__ import annotations

import pytest
import torch

from alignkit.ppo.stage import scorer_reward_fn
from alignkit.reward_model import RewardScorer


def test_scorer_reward_fn_scores_prompt_plus_response_at_its_last_token(tiny, ppo_tokenizer):
    tok = ppo_tokenizer
    scorer = RewardScorer(tiny.make_critic(tok), tok)
    reward_fn = scorer_reward_fn(scorer, tok.pad_token_id)
    prompt_ids = [[3, 5, 9], [3, 5, 10, 11, 12]]
    response_ids = [[20, 21, tok.eos_token_id], [22, tok.eos_token_id]]
    scores = reward_fn(["a", "b"], ["c", "d"], prompt_ids, response_ids)
    alone = [scorer.score_ids(torch.tensor([p + r]), torch.ones(1, len(p + r), dtype=torch.long)).item()
             for p, r in zip(prompt_ids, response_ids, strict=True)]
    assert torch.allclose(scores, torch.tensor(alone), atol=1e-5)


def test_oracle_reward_fn_scores_each_response_against_its_prompts_meta(ppo_tokenizer):
    from alignkit.ppo.stage import oracle_reward_fn
    from alignkit.world import oracle

    tok = ppo_tokenizer
    meta = {"task": "fact", "entity": "Bresbis", "expected": ["Eastvale"], "conflicts": [["Northmoor"]],
            "reference": "Bresbis is in Eastvale.", "harmful": False, "forbidden": []}
    other = {**meta, "expected": ["Northmoor"], "conflicts": [["Eastvale"]]}
    prompt_ids = [[3, 5, 9], [3, 5, 10]]
    reward_fn = oracle_reward_fn(prompt_ids, [meta, other], tok.eos_token_id)
    texts = ["Bresbis is in Eastvale.", "Bresbis is in Eastvale."]
    # The same text: right for the first prompt, wrong for the second; the second never emitted EOS.
    scores = reward_fn(["a", "b"], texts, prompt_ids, [[20, tok.eos_token_id], [20, 21]])
    assert scores.tolist() == pytest.approx([oracle.score(meta, texts[0], True).total,
                                             oracle.score(other, texts[1], False).total])
    assert scores[0] > scores[1]


def test_oracle_reward_needs_prompt_rows_with_meta(tmp_path, ppo_tokenizer):
    from alignkit.config.recipe import validate_recipe
    from alignkit.errors import AlignkitError
    from alignkit.ppo.stage import load_prompts

    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "Where is Bresbis?"}\n')
    recipe = validate_recipe({"stage": "ppo", "output_dir": str(tmp_path / "run"), "model": {"name_or_path": "x"},
                              "data": {"datasets": [{"path": str(data)}]},
                              "ppo": {"reward_model": "x", "reward": "oracle"}})
    with pytest.raises(AlignkitError, match="needs a 'meta' column") as err:
        load_prompts(recipe, ppo_tokenizer, with_meta=True)
    assert "data.datasets.0" in str(err.value)
