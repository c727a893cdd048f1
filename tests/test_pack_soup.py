"""Model soups: the weight average itself, which members may be souped, the greedy recipe, and the gate
that keeps a soup only when its out-of-fold AUC is not below the best member's (tiny real timm models)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from harness.config import AudioFeatures, RunConfig, TrainConfig
from harness.errors import BadInput
from harness.modalities import build_model
from harness.pack import average_states, cv_evaluator, greedy_soup, soup_groups, try_soups
from harness.pack.model import PackMember

AUDIO = RunConfig(modality="audio", audio=AudioFeatures(width=64, n_mels=64),
                  train=TrainConfig(backbone="test_efficientnet.r160_in1k", pretrained=False, device="cpu"))


def states(cfg: RunConfig, seeds: tuple[int, ...]) -> list[dict[str, torch.Tensor]]:
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        out.append(build_model(cfg).state_dict())
    return out


def test_a_soup_averages_float_weights_and_keeps_the_counters() -> None:
    a, b, c = states(AUDIO, (0, 1, 2))
    a["bn1.num_batches_tracked"].fill_(7)
    soup = average_states([a, b, c])
    assert soup.keys() == a.keys()
    for key, value in soup.items():
        assert value.dtype == a[key].dtype
        if value.is_floating_point():
            torch.testing.assert_close(value, (a[key] + b[key] + c[key]) / 3)
        else:
            assert torch.equal(value, a[key])
    assert soup["bn1.num_batches_tracked"].item() == 7


def test_members_of_other_architectures_are_refused() -> None:
    other = dataclasses.replace(AUDIO, train=dataclasses.replace(AUDIO.train, backbone="test_byobnet.r160_in1k"))
    with pytest.raises(BadInput, match="soup ingredient 2 has other weights than the first"):
        average_states(states(AUDIO, (0,)) + states(other, (0,)))
    wider = dataclasses.replace(AUDIO, train=dataclasses.replace(AUDIO.train, loss="ce"))  # a two-logit head
    with pytest.raises(BadInput, match=r"soup ingredient 2: classifier.weight is \(2, "):
        average_states(states(AUDIO, (0,)) + states(wider, (0,)))


def test_only_members_of_one_start_and_one_input_are_grouped() -> None:
    t = AUDIO.train
    pretrained = dataclasses.replace(t, pretrained=True)
    configs = [
        dataclasses.replace(AUDIO, train=pretrained),
        dataclasses.replace(AUDIO, train=dataclasses.replace(pretrained, lr=3e-4, seed=5)),  # a fine-tune of the same start
        dataclasses.replace(AUDIO, train=dataclasses.replace(pretrained, backbone="test_efficientnet")),  # = its default tag
        dataclasses.replace(AUDIO, train=dataclasses.replace(pretrained, backbone="test_byobnet.r160_in1k")),
        dataclasses.replace(AUDIO, audio=AudioFeatures(width=32, n_mels=64), train=pretrained),  # other inputs
        AUDIO,  # random init, seed 0
        dataclasses.replace(AUDIO, train=dataclasses.replace(t, lr=1e-2)),  # the same random start
        dataclasses.replace(AUDIO, train=dataclasses.replace(t, seed=1)),  # another random start
    ]
    assert soup_groups(configs) == [[0, 1, 2], [5, 6]]


def toy(values: list[float]) -> list[list[dict[str, torch.Tensor]]]:
    """Members of one weight each, one fold."""
    return [[{"w": torch.tensor([v], dtype=torch.float64)}] for v in values]


def test_the_greedy_soup_adds_a_member_only_when_it_does_not_hurt() -> None:
    members = toy([0.25, 0.75, 0.875])
    evaluate = lambda s: 1 - abs(float(s[0]["w"]) - 0.5)  # noqa: E731 - a score peaked at w = 0.5
    outcome = try_soups(members, evaluate)
    assert outcome.member_auc == (0.75, 0.75, 0.625) and outcome.uniform.auc == 0.875
    # best first (ties: listed first): 0.25, then 0.75 (mean 0.5, score 1), then 0.875 would pull it to 0.625: left out
    assert outcome.greedy.ingredients == (0, 1) and outcome.greedy.auc == 1.0
    assert outcome.kept == outcome.greedy and float(outcome.states[0]["w"]) == 0.5
    assert outcome.message().startswith("kept the greedy soup of members [0, 1]: uniform soup of 3 0.8750")
    assert greedy_soup(members, evaluate) == outcome.greedy


def test_a_soup_worse_than_the_best_member_is_not_kept() -> None:
    members = toy([0.25, 0.75])
    evaluate = lambda s: abs(float(s[0]["w"]) - 0.5)  # noqa: E731 - averaging the two lands on the worst point
    outcome = try_soups(members, evaluate)
    assert outcome.kept is None and outcome.states is None and outcome.greedy.ingredients == (0,)
    assert outcome.message() == ("no soup kept: uniform soup of 2 0.0000, greedy soup of 1 0.2500; neither is a soup of "
                                 "2+ members at least as good as the best member (0) 0.2500")
    with pytest.raises(BadInput, match="at least 2 members"):
        try_soups(members[:1], evaluate)


def test_the_cv_evaluator_pools_each_folds_scores() -> None:
    labels = np.array([0, 1, 0, 1, 1, 0])
    folds = np.array([2, 2, 0, 0, 2, 0])
    seen = []

    def score(fold: int, state: dict[str, torch.Tensor]) -> np.ndarray:
        seen.append((fold, float(state["w"])))
        return np.array([0.1, 0.9, 0.2]) if fold == 2 else np.array([0.3, 0.4, 0.35])

    auc = cv_evaluator(score, labels, folds)([{"w": torch.tensor(0.0)}, {"w": torch.tensor(2.0)}])
    assert seen == [(0, 0.0), (2, 2.0)]  # the i-th state belongs to the i-th fold id in order
    assert auc == pytest.approx(roc_auc_score(labels, [0.1, 0.9, 0.3, 0.4, 0.2, 0.35]))


# ------------------------------------------------------------------------------- tiny real models

def clips(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise log-mels; a fake carries a faint band at a random height."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat([0, 1], n // 2))
    x = rng.integers(0, 120, size=(n, 64, 64), dtype=np.uint8)
    for i in np.flatnonzero(y):
        row = rng.integers(8, 48)
        x[i, row:row + 8] += 15
    return x, y


def member(state: dict[str, torch.Tensor] | None = None, seed: int = 0) -> PackMember:
    torch.manual_seed(seed)
    m = PackMember(AUDIO, build_model(AUDIO))
    if state is not None:
        m.model.load_state_dict(state)
    return m


def fine_tune(state: dict[str, torch.Tensor] | None, x: np.ndarray, y: np.ndarray, seed: int, steps: int,
              lr: float) -> dict[str, torch.Tensor]:
    m = member(state, seed).train()
    order = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    for _ in range(steps):
        b = torch.randperm(len(x), generator=order)[:16].numpy()
        p = m({"audio": torch.from_numpy(x[b])}).float().clamp(1e-6, 1 - 1e-6)
        loss = torch.nn.functional.binary_cross_entropy(p, torch.from_numpy(y[b]).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in m.model.state_dict().items()}


@pytest.mark.slow
def test_soups_of_tiny_timm_models_are_kept_from_one_start_and_refused_from_several() -> None:
    torch.set_num_threads(1)  # the same arithmetic on every run
    x_pre, y_pre = clips(96, 1)  # the "pretraining" data
    x, y = clips(96, 2)
    folds = np.arange(96) % 2

    def score(fold: int, state: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.inference_mode():
            return member(state).eval()({"audio": torch.from_numpy(x[folds == fold])}).numpy()

    evaluate = cv_evaluator(score, y, folds)

    def cross_validated(start: dict[str, torch.Tensor], seed: int) -> list[dict[str, torch.Tensor]]:
        return [fine_tune(start, x[folds != f], y[folds != f], seed, steps=8, lr=1e-3) for f in (0, 1)]

    start = fine_tune(None, x_pre, y_pre, 0, steps=25, lr=3e-3)
    one_start = try_soups([cross_validated(start, seed) for seed in (1, 2, 3)], evaluate)
    assert one_start.kept is not None and len(one_start.kept.ingredients) >= 2
    assert one_start.kept.auc >= max(one_start.member_auc) and evaluate(list(one_start.states)) == one_start.kept.auc
    assert one_start.greedy.ingredients[0] == one_start.best_member
    starts = [fine_tune(None, x_pre, y_pre, 10 + s, steps=25, lr=3e-3) for s in (1, 2)]
    several = try_soups([cross_validated(s, seed) for seed, s in enumerate(starts, 1)], evaluate)
    assert several.uniform.auc < max(several.member_auc) - 0.1  # averaging unrelated weights breaks the model
    assert several.kept is None and several.message().startswith("no soup kept")
