"""The theory the benchmark and the diagram compare against: the simulated GPipe/1F1B timelines (torch's per-rank
action orders, F = 1 and B = 2 time units, cross-rank data dependencies) have exactly the bubble (p-1)/(m+p-1), and
1F1B keeps p - rank microbatches' activations instead of m. Pure functions, no processes."""
import pytest
from torch.distributed.pipelining.schedules import ScheduleGPipe, _ComputationType

import benchmark
from diagram import bubble, peak_in_flight, rank_order, simulate


@pytest.mark.parametrize("p, m", [(2, 1), (2, 4), (4, 4), (4, 8), (4, 16), (8, 32)])
def test_simulated_bubble_is_the_textbook_formula(p, m):
    for schedule in ("gpipe", "1f1b"):
        timeline = simulate(schedule, p, m)
        assert bubble(timeline) == pytest.approx((p - 1) / (m + p - 1)) == pytest.approx(benchmark.theory(schedule, p, m))
        assert all(sorted(i for k, i, *_ in ev if k == kind) == list(range(m)) for ev in timeline.values() for kind in "FB")
    assert peak_in_flight(simulate("gpipe", p, m)) == [m] * p
    assert peak_in_flight(simulate("1f1b", p, m)) == [min(m, p - r) for r in range(p)]


def test_gpipe_order_is_torchs():
    schedule = object.__new__(ScheduleGPipe)  # only the order: no stage, no process group
    schedule._num_stages, schedule._n_microbatches = 4, 6
    for rank, actions in schedule._get_pipeline_order().items():
        kinds = {_ComputationType.FORWARD: "F", _ComputationType.FULL_BACKWARD: "B"}
        torch_order = [(kinds[a.computation_type], a.microbatch_index) for a in actions
                       if a is not None and a.computation_type in kinds]
        assert torch_order == rank_order("gpipe", rank, 4, 6)


def test_benchmark_skips_what_the_schedules_refuse():
    args = benchmark.BenchmarkArguments()
    assert benchmark.valid("1f1b", 4, 4, args) and not benchmark.valid("1f1b", 4, 2, args)
    assert not benchmark.valid("interleaved1f1b", 4, 6, args)  # not a multiple of the ranks
    assert not benchmark.valid("zbv", 8, 8, args)  # 16 stages > 8 layers
    assert benchmark.theory("naive", 4, 1) == 0.75 and benchmark.theory("interleaved1f1b", 2, 4) == pytest.approx(1 / 9)
    with pytest.raises(SystemExit, match="--schedules"):
        benchmark.BenchmarkArguments(schedules=["pipedream"])


@pytest.mark.parametrize("p, m", [(2, 4), (4, 8), (4, 16)])
def test_imbalance_theory_is_the_formula_for_equal_stages_and_grows_with_imbalance(p, m):
    assert benchmark.imbalance_theory("1f1b", m, [2.0] * p) == pytest.approx((p - 1) / (m + p - 1))
    uneven = [1.0] * (p - 1) + [2.0]  # the last stage (the head) twice as slow
    assert benchmark.imbalance_theory("gpipe", m, uneven) > (p - 1) / (m + p - 1)
    assert benchmark.imbalance_theory("zbv", m, uneven) is None
