"""Step time, peak memory and the measured bubble of the pipeline schedules vs naive device_map model parallelism.

    python benchmark.py                                     # CPU: 2 and 4 gloo processes, m = 4, 8, 16
    python benchmark.py --nprocs 2 --microbatches 8 --schedules gpipe 1f1b
    python benchmark.py --nprocs 4 8 --microbatches 8 16 32 --batch_size 64 --hidden_size 1024 --num_hidden_layers 16
                                                            # GPUs (one per rank, NCCL): the same code, bigger model

Every configuration runs in its own process group (a fresh `torchrun --standalone`, so the peak memory of one never
leaks into the next) on the same random-init model (train.py's default shape, seed 0) and the same random batch
(`--batch_size` blocks of `--block_size` tokens); the table's last column is the 1-minute load average when the
configuration started (a shared machine inflates both step time and measured bubble). Each rank times `train.benchmark_step` (one untimed warm-up step,
then the median of `--steps` optimizer steps) and, inside it, every compute action of the schedule
(PipelineStage.forward_one_chunk / backward_one_chunk / backward_weight_one_chunk). The measured bubble of a rank is
1 - compute / time of schedule.step(): the share of the schedule it spent waiting for the other ranks (and for the
transfers). Theory, equal stages: GPipe and 1F1B (p-1)/(m+p-1), interleaved with v=2 stages per rank
(p-1)/(v*m+p-1), zero bubble about 0 when the weight-gradient work fills the gaps, naive device_map (p-1)/p;
for GPipe/1F1B the table also gives the bubble that the measured, unequal stage times imply (imbalance_theory).
Naive model parallelism (device_map.NaiveModelParallel, p emulated devices, one process, one thread like one core per
device) runs the whole batch device by device; a device's bubble is 1 - its busy time / all devices' busy time, so
the mean is (p-1)/p by construction (one device works at a time), min-max shows the imbalance, and the step time
is the number to compare.
Peak memory: CUDA max allocated per rank; on CPU the growth of the process's peak RSS over its RSS before the step
(weights of the whole model are built on every rank first, then sliced).
CPU numbers show the schedules' shape, not GPU speed: with more processes than cores, ranks share cores, the
"idle" time of one rank is compute time of another, and the step time reflects total work / cores.
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

from transformers import HfArgumentParser

HERE = Path(__file__).resolve().parent
SCHEDULES = ("gpipe", "1f1b", "interleaved1f1b", "interleavedzb", "zbv")
MULTI_STAGE = ("interleaved1f1b", "interleavedzb", "zbv")


@dataclass
class BenchmarkArguments:
    nprocs: list[int] = field(default_factory=lambda: [2, 4], metadata={"help": "pipeline ranks (processes)"})
    microbatches: list[int] = field(default_factory=lambda: [4, 8, 16])
    schedules: list[str] = field(default_factory=lambda: list(SCHEDULES) + ["naive"])
    batch_size: int = field(default=16, metadata={"help": "blocks per step (train.py's default)"})
    block_size: int = 128
    hidden_size: int = 256
    num_hidden_layers: int = 8
    vocab_size: int = 8192
    steps: int = field(default=2, metadata={"help": "timed steps per configuration (median), after 1 warm-up"})
    out: str = field(default=str(HERE / "outputs/benchmark/results.json"))
    worker: str | None = field(default=None, metadata={"help": "internal: run one configuration (JSON)"})

    def __post_init__(self):
        unknown = set(self.schedules) - set(SCHEDULES) - {"naive"}
        if unknown:
            raise SystemExit(f"--schedules: unknown {sorted(unknown)}. Fix: some of {' '.join(SCHEDULES)} naive")
        for name in ("batch_size", "block_size", "hidden_size", "num_hidden_layers", "vocab_size", "steps"):
            if getattr(self, name) <= 0:
                raise SystemExit(f"--{name}: must be > 0. Fix: e.g. --{name} {BenchmarkArguments.__dataclass_fields__[name].default}")
        if min(self.nprocs) < 2 or min(self.microbatches) < 1:
            raise SystemExit("--nprocs/--microbatches: a pipeline needs >= 2 ranks and >= 1 microbatch. Fix: e.g. --nprocs 2 4")


def theory(schedule: str, p: int, m: int) -> float:
    if schedule == "naive":
        return (p - 1) / p
    if schedule in ("interleaved1f1b",):
        return (p - 1) / (2 * m + p - 1)
    if schedule in ("interleavedzb", "zbv"):
        return 0.0
    return (p - 1) / (m + p - 1)


def valid(schedule: str, p: int, m: int, args: BenchmarkArguments) -> bool:
    """The combinations torch's schedules accept (train.py checks the same for its arguments)."""
    stages = p * (2 if schedule in MULTI_STAGE else 1)
    if args.batch_size % m or stages > args.num_hidden_layers:
        return False
    if schedule == "1f1b" and m < p:
        return False
    return schedule not in MULTI_STAGE or m % p == 0


# ---------------------------------------------------------------- worker: one configuration, one process group
def build_model(args: BenchmarkArguments):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                         intermediate_size=int(round(args.hidden_size * 2.6875 / 8)) * 8,
                         num_hidden_layers=args.num_hidden_layers, num_attention_heads=max(1, args.hidden_size // 32),
                         max_position_embeddings=max(1024, args.block_size), tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    ids = torch.randint(3, args.vocab_size, (args.batch_size, args.block_size), generator=torch.Generator().manual_seed(0))
    return model, ids


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def install_timers() -> dict:
    """Wrap the stage compute actions and the schedules' step() to accumulate wall seconds (see module docstring)."""
    from torch.distributed.pipelining import schedules, stage

    clock = {"compute": 0.0, "calls": []}

    def timed(fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                clock["compute"] += time.perf_counter() - start
        return wrapper

    def timed_step(fn):
        def wrapper(*a, **k):
            compute0, start = clock["compute"], time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                clock["calls"].append((time.perf_counter() - start, clock["compute"] - compute0))
        return wrapper

    base = stage._PipelineStageBase
    for name in ("forward_one_chunk", "backward_one_chunk", "backward_weight_one_chunk"):
        setattr(base, name, timed(getattr(base, name)))
    for cls in (schedules.PipelineScheduleSingle, schedules.PipelineScheduleMulti):
        cls.step = timed_step(cls.step)
    return clock


def run_pipeline_worker(cfg: dict, args: BenchmarkArguments) -> dict | None:
    import torch
    import torch.distributed as dist

    import train

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    clock = install_timers()
    model, ids = build_model(args)
    step_args = SimpleNamespace(schedule=cfg["schedule"], n_microbatches=cfg["m"],
                                stages_per_rank=2 if cfg["schedule"] in MULTI_STAGE else 1, learning_rate=1e-3,
                                weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8,
                                lr_scheduler_type="constant", max_steps=1000, max_grad_norm=1.0,
                                get_warmup_steps=lambda n: 0)
    rss0 = rss_bytes()
    result = train.benchmark_step(model, step_args, ids, ids.clone(), steps=args.steps, device=device)
    timed_calls = clock["calls"][-args.steps:]  # the first call is the warm-up
    wall = sum(w for w, _ in timed_calls)
    compute = sum(c for _, c in timed_calls)
    mine = {"rank": result["rank"], "stages": result["stages"], "step_time_s": result["step_time_s"],
            "schedule_s": wall / len(timed_calls), "compute_s": compute / len(timed_calls),
            "bubble": 1 - compute / wall, "params": result["params"],
            "peak_mb": result["peak_memory_mb"] if cuda else
            (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0) / 2**20}
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, mine)
    dist.barrier()
    dist.destroy_process_group()
    return ranks if mine["rank"] == 0 else None


def run_naive_worker(cfg: dict, args: BenchmarkArguments) -> list[dict]:
    """Naive model parallelism over p devices: real GPUs if there are p, else p emulated ones on one CPU thread."""
    import torch

    from device_map import NaiveModelParallel, balanced_device_map

    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # one "device" = one core, as one pipeline rank has with OMP_NUM_THREADS=1
    p = cfg["p"]
    model, ids = build_model(args)
    device_map = balanced_device_map(model.config, p, bytes_per_param=4)
    naive = NaiveModelParallel(model, device_map)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    rss0 = rss_bytes()
    steps = []
    for _ in range(args.steps + 1):  # the first is the warm-up
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        _, times = naive.train_step(ids, ids)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        steps.append((time.perf_counter() - start, times))
    steps = steps[1:]
    step_time = statistics.median(s for s, _ in steps)
    busy = [statistics.mean(t["forward"][d] + t["backward"][d] for _, t in steps) for d in range(p)]
    fwd_bwd = statistics.mean(sum(t["forward"]) + sum(t["backward"]) for _, t in steps)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0) / 2**20
    params = [0] * p
    for name, d in device_map.items():
        params[d] += sum(x.numel() for x in model.get_submodule(name).parameters())
    return [{"rank": d, "stages": [d], "step_time_s": step_time, "schedule_s": fwd_bwd, "compute_s": busy[d],
             "bubble": 1 - busy[d] / fwd_bwd, "params": params[d],
             "peak_mb": torch.cuda.max_memory_allocated(naive.devices[d]) / 2**20 if naive.devices[d].type == "cuda"
             else peak / p} for d in range(p)]


# ---------------------------------------------------------------- driver: every configuration in a fresh process
def launch(cfg: dict, args: BenchmarkArguments) -> list[dict] | None:
    out = Path(args.out).with_suffix(".part.json")
    argv = ["benchmark.py", "--worker", json.dumps({k: cfg[k] for k in ("p", "schedule", "m")}), "--out", str(out)] + [
        x for k in ("batch_size", "block_size", "hidden_size", "num_hidden_layers", "vocab_size", "steps")
        for x in (f"--{k}", str(getattr(args, k)))]
    if cfg["schedule"] == "naive":
        cmd = [sys.executable, *argv]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(cfg["p"]), *argv]
    cores = os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, cores // cfg["p"]))),
           "OMP_WAIT_POLICY": "PASSIVE"}
    out.unlink(missing_ok=True)
    proc = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode or not out.exists():
        print(f"FAILED {cfg}: {proc.stderr[-1500:]}", file=sys.stderr)
        return None
    return json.loads(out.read_text())


def imbalance_theory(schedule: str, m: int, compute: list[float]) -> float | None:
    """GPipe/1F1B bubble with the MEASURED (unequal) stage times: the slowest stage paces the steady state, so a step
    lasts about sum(t) + (m-1) * max(t) for per-microbatch times t = compute / m."""
    if schedule not in ("gpipe", "1f1b"):
        return None
    span = sum(compute) / m + (m - 1) / m * max(compute)
    return 1 - sum(compute) / (len(compute) * span)


def summarize(cfg: dict, ranks: list[dict]) -> dict:
    bubbles = [r["bubble"] for r in ranks]
    compute = [r["compute_s"] for r in sorted(ranks, key=lambda r: r["rank"])]
    return {**cfg, "step_time_s": statistics.median(r["step_time_s"] for r in ranks),
            "bubble_mean": statistics.mean(bubbles), "bubble_min": min(bubbles), "bubble_max": max(bubbles),
            "theory": theory(cfg["schedule"], cfg["p"], cfg["m"]),
            "theory_measured_stages": imbalance_theory(cfg["schedule"], cfg["m"], compute),
            "peak_mb": [round(r["peak_mb"], 1) for r in sorted(ranks, key=lambda r: r["rank"])], "ranks": ranks}


def table(rows: list[dict]) -> str:
    lines = ["| ranks p | schedule | microbatches m | step (s) | bubble measured (mean, min-max over ranks) | "
             "theory (equal stages) | theory (measured stage times) | compute per rank (s) | "
             "peak memory per rank (MB) | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        compute = " / ".join(f"{x['compute_s']:.2f}" for x in sorted(r["ranks"], key=lambda x: x["rank"]))
        measured = imbalance_theory(r["schedule"], r["m"], [x["compute_s"] for x in sorted(r["ranks"], key=lambda x: x["rank"])])
        lines.append(f"| {r['p']} | {r['schedule']} | {r['m']} | {r['step_time_s']:.2f} | {r['bubble_mean']:.1%} "
                     f"({r['bubble_min']:.0%}-{r['bubble_max']:.0%}) | {r['theory']:.1%} | "
                     f"{'-' if measured is None else f'{measured:.1%}'} | {compute} | "
                     f"{' / '.join(f'{x:.0f}' for x in r['peak_mb'])} | {r.get('load', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(args=argv)
    if args.worker:
        cfg = json.loads(args.worker)
        ranks = run_naive_worker(cfg, args) if cfg["schedule"] == "naive" else run_pipeline_worker(cfg, args)
        if ranks is not None:
            Path(args.out).write_text(json.dumps(ranks))
        return ranks or []
    rows, start = [], time.perf_counter()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for p in args.nprocs:
        for schedule in args.schedules:
            for m in ([1] if schedule == "naive" else args.microbatches):
                if schedule != "naive" and not valid(schedule, p, m, args):
                    continue
                cfg = {"p": p, "schedule": schedule, "m": m, "load": round(os.getloadavg()[0], 1)}
                ranks = launch(cfg, args)
                if ranks:
                    rows.append(summarize(cfg, ranks))
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
    Path(args.out).write_text(json.dumps({"args": asdict(args), "cpu": cpu_name(), "cores": os.cpu_count(),
                                          "seconds": time.perf_counter() - start, "rows": rows}, indent=1))
    print(table(rows))
    print(f"{cpu_name()}, {os.cpu_count()} cores; {time.perf_counter() - start:.0f} s; -> {args.out}")
    return rows


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


if __name__ == "__main__":
    main()
