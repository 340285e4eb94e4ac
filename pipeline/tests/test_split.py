"""balance_stages as a pure function: contiguous, every unit once, embedding first / head last, a layer per stage,
optimal (brute force on small cases), and better balanced than equal layer counts when the vocabulary is big."""
import itertools
import random

import pytest

from model import balance_stages, equal_layer_split, split_table, stage_layers


def check_valid(split, costs, n_stages):
    n = len(costs)
    assert len(split) == n_stages
    assert split[0].start == 0 and split[-1].stop == n  # embedding in stage 0, norm+head in the last
    assert all(a.stop == b.start for a, b in zip(split, split[1:]))  # contiguous, monotone, nothing skipped
    assert all(len(stage_layers(r, n - 2)) >= 1 for r in split)  # every stage holds a decoder layer


def brute_force_max(costs, n_stages):
    """Smallest possible largest stage over all valid cut points."""
    n, best = len(costs), float("inf")
    for cuts in itertools.combinations(range(2, n - 1), n_stages - 1):
        bounds = [0, *cuts, n]
        best = min(best, max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:])))
    return best


def stage_costs(split, costs):
    return [sum(costs[u] for u in r) for r in split]


def test_random_costs_are_split_optimally():
    rng = random.Random(0)
    for _ in range(200):
        n_layers = rng.randint(1, 9)
        costs = [rng.randint(1, 50) for _ in range(n_layers + 2)]
        for n_stages in range(1, n_layers + 1):
            split = balance_stages(costs, n_stages)
            check_valid(split, costs, n_stages)
            assert max(stage_costs(split, costs)) == brute_force_max(costs, n_stages), (costs, n_stages)


def test_more_stages_never_make_the_largest_stage_bigger():
    costs = [900] + [100] * 12 + [950]
    largest = [max(stage_costs(balance_stages(costs, k), costs)) for k in range(1, 13)]
    assert largest == sorted(largest, reverse=True)


def test_big_vocab_beats_equal_layer_counts():
    # Llama-2 shapes at hidden 256: an embedding / head of 32000 x 256 = 8.2M vs 0.79M per decoder layer
    layer, embed = 4 * 256 * 256 + 3 * 256 * 688 + 2 * 256, 32000 * 256
    costs = [embed] + [layer] * 8 + [embed + 256]
    for n_stages, strictly in ((2, False), (3, True), (4, True)):  # 2 stages: 4 + 4 layers is already the best
        ours, equal = balance_stages(costs, n_stages), equal_layer_split(8, n_stages)
        check_valid(equal, costs, n_stages)
        ours_max, equal_max = max(stage_costs(ours, costs)), max(stage_costs(equal, costs))
        assert ours_max < equal_max if strictly else ours_max <= equal_max, (n_stages, ours_max, equal_max)
    # 4 stages: one layer each next to the embedding and the head, the other six in the middle two (3 + 3)
    assert [len(stage_layers(r, 8)) for r in balance_stages(costs, 4)] == [1, 3, 3, 1]
    table = split_table(balance_stages(costs, 4), costs)
    assert table.splitlines()[2].startswith("0 | embed + 0-0 |") and "norm+head" in table.splitlines()[-1]
    assert "%" in table


def test_uniform_costs_give_equal_layers_and_bad_requests_fail():
    assert balance_stages([1] * 10, 4) == balance_stages([1] * 10, 4)  # deterministic
    assert [len(stage_layers(r, 8)) for r in balance_stages([0] + [5] * 8 + [0], 4)] == [2, 2, 2, 2]
    with pytest.raises(ValueError):
        balance_stages([1, 1, 1, 1], 3)  # 2 layers, 3 stages
