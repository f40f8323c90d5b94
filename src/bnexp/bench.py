"""Benchmarks: how fast bnexp is, each figure a ratio against a reference measured beside it.

    python -m bnexp.bench                        # everything: a table, and bench.json
    python -m bnexp.bench --out FILE.json        # the same figures, flat, plus machine info
    python -m bnexp.bench --only step,norm       # some of: norm step data logging vectorized startup scaling
    python -m bnexp.bench --quick                # a smoke run of the same code at tiny sizes
    python -m bnexp.bench --device cuda          # the norm, step and vectorized sections on a GPU (wall time)

How it measures, so that a busy machine (other jobs on the same cores) distorts little:
  * one intra-op thread (torch.set_num_threads(1)) unless a figure says otherwise, and freed memory kept
    (bnexp.runtime.keep_freed_memory), as in every bnexp run;
  * a candidate and its reference run side by side in one process, in alternating blocks of
    calls (the order flips every round), and a figure is the median over rounds; a ratio is the
    median of the per-round ratios, so a slow spell slows both sides of it alike;
  * timings are CPU time (time.thread_time for one thread, time.process_time where a background
    thread works too, e.g. TensorBoard's writer): time spent waiting for a core that another job
    holds is not counted. Figures named *_wall are wall-clock time; start-up figures are CPU
    seconds of fresh `bnexp` processes, with their wall time beside them.
Timings are never assertions of the test suite; tests/test_bench.py only runs --quick.

Sections (the table marks each judged figure ok / MISSED):
  norm      our BatchNorm (its fast and textbook kernels) vs torch.nn.BatchNorm, forward + backward in
            training mode: reported, not judged
  step      the whole SGD step (forward, backward, update) of the BN paper's MNIST network and of the default
            CNN with our BatchNorm vs torch_bn, through the engine's stepper (MLP ≤ 1.15×, CNN ≤ 1.0×)
  data      the engine's batches vs torchvision MNIST + ToTensor + DataLoader (≥ 5×)
  logging   a run with the default logging vs the same run with logging off (≤ +10 %)
  vectorized  K runs in one program (hydra/launcher=vectorized) vs one after another (≥ 2× at K = 8)
  startup   the default `bnexp` run in a fresh process: start-up vs training (training ≥ half)
  scaling   run time vs steps; step time vs batch size, width, norm, memory layout and threads;
            where the time of one MLP and one CNN step goes (top ops, our BatchNorm)
"""

import argparse
import copy
import functools
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import yaml
from omegaconf import OmegaConf
from torch import nn

SECTIONS = ("norm", "step", "data", "logging", "vectorized", "startup", "scaling")
DEVICE_SECTIONS = (
    "norm",
    "step",
    "vectorized",
)  # the ones that run on a GPU (--device cuda); the rest: CPU work
NORM_SHAPES = [(60, 100), (256, 1024), (128, 64, 16, 16), (8, 32, 32, 32)]
QUICK_NORM_SHAPES = [(8, 6), (4, 6, 3, 3)]


# ---- recording results ---------------------------------------------------------------------------


@dataclass
class Row:
    key: str  # the flat metric name, also the JSON key
    value: object  # a number, or a short string
    unit: str = ""
    target: str = ""  # e.g. "<= 1.2"; empty for figures that only inform
    ok: bool | None = None


class Results:
    def __init__(self, judge: bool = True):
        self.rows: list[Row] = []
        self.judge = judge  # --quick: sizes too small for the targets to mean anything

    def add(self, key: str, value, unit: str = "", at_most=None, at_least=None) -> Row:
        target, ok = "", None
        if at_most is not None:
            target, ok = f"<= {at_most:g}", value <= at_most
        elif at_least is not None:
            target, ok = f">= {at_least:g}", value >= at_least
        row = Row(key, value, unit, target, ok if self.judge else None)
        self.rows.append(row)
        return row

    def flat(self) -> dict:
        return {row.key: row.value for row in self.rows}


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {
        "machine.cpu": cpu,
        "machine.logical_cpus": os.cpu_count(),
        "machine.platform": platform.platform(),
        "machine.python": platform.python_version(),
        "machine.torch": torch.__version__,
        "machine.torch_threads": torch.get_num_threads(),
        "machine.date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine.timer": "CPU time of the measuring thread or process; *_wall: wall clock",
    }
    if hasattr(os, "getloadavg"):
        info["machine.loadavg_1min_start"] = round(os.getloadavg()[0], 2)
    return info


# ---- measuring -----------------------------------------------------------------------------------


def timers(device: torch.device) -> tuple[Callable[[], float], Callable[[], object]]:
    """(clock, sync) for work on `device`: the measuring thread's CPU time on the CPU; on a GPU, whose
    work runs asynchronously, wall time after waiting for the queued work."""
    if device.type == "cuda":
        return time.perf_counter, lambda: torch.cuda.synchronize(device)
    return time.thread_time, lambda: None


def interleaved(
    candidates: dict[str, Callable[[], object]],
    rounds: int,
    block_s: float,
    clock: Callable[[], float] = time.thread_time,
    before_block: dict[str, Callable[[], object]] | None = None,
    sync: Callable[[], object] = lambda: None,
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, one value per round.

    Every round runs a block of calls of each candidate; the order flips every round. The number
    of calls per block is calibrated per candidate so that a block lasts about block_s.
    before_block[name], if given, runs (untimed) before each of that candidate's blocks.
    sync waits for queued work (a GPU's) before each clock reading.
    """
    before_block = before_block or {}
    calls = {}
    for name, f in candidates.items():
        before_block.get(name, lambda: None)()
        f(), f()  # warm up: first-call costs (lazy imports, allocator) are not what we measure
        sync()
        n, t0 = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - t0 < block_s / 4:
            f()
            n += 1
        sync()
        per_call = (time.perf_counter() - t0) / n
        calls[name] = max(1, round(block_s / per_call))
    times = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            f, n = candidates[name], calls[name]
            before_block.get(name, lambda: None)()
            f()  # one untimed call after the setup: its first-call costs are not measured
            sync()
            t0 = clock()
            for _ in range(n):
                f()
            sync()
            times[name].append((clock() - t0) / n)
    return times


def median(values) -> float:
    return statistics.median(values)


def median_ratio(a: list[float], b: list[float]) -> float:
    """The median of the per-round ratios a/b (paired rounds)."""
    return statistics.median(x / y for x, y in zip(a, b))


def _shape_key(shape) -> str:
    return "x".join(map(str, shape))


@functools.cache
def _compose_groups(overrides: tuple[str, ...]):
    from hydra import compose, initialize_config_module

    from bnexp.config import register

    register()
    with initialize_config_module(config_module="bnexp.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _compose(overrides: list[str]):
    """The real config (conf/ through Hydra, typed schema included) with overrides.

    Hydra composes each distinct choice of groups (and top-level keys) once, which is slow; nested
    keys (`model.width=50`) are then set on a copy, through the same typed schema.
    """
    nested = [o for o in overrides if "." in o.split("=", 1)[0]]
    cfg = copy.deepcopy(_compose_groups(tuple(o for o in overrides if o not in nested)))
    for override in nested:
        key, value = override.split("=", 1)
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
    return cfg


# ---- 1. our BatchNorm vs torch's --------------------------------------------------------------


class _Identity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.dweight, ctx.dbias = weight, bias  # "gradients" of the right shapes, at no cost
        return x.view_as(x)

    @staticmethod
    def backward(ctx, dy):
        return dy, ctx.dweight, ctx.dbias


class _EmptyNorm(nn.Module):
    """The cost of being a module with γ, β and a hand-written autograd.Function, with no arithmetic at all:
    what a Python BatchNorm pays before it computes anything (at (60, 100) most of native's whole time)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return _Identity.apply(x, self.weight, self.bias)


def bench_norm(res: Results, quick: bool, device: torch.device = torch.device("cpu")) -> None:
    from bnexp.norm import BatchNorm

    clock, sync = timers(device)
    for shape in QUICK_NORM_SHAPES if quick else NORM_SHAPES:
        torch.manual_seed(0)
        channels = shape[1]
        layers = {
            "torch": (nn.BatchNorm1d if len(shape) <= 3 else nn.BatchNorm2d)(channels),
            "fast": BatchNorm(channels, fast=True),
            "textbook": BatchNorm(channels),
            "empty": _EmptyNorm(channels),
        }
        x, dy = torch.randn(shape, device=device, requires_grad=True), torch.randn(shape, device=device)

        def step(bn, x=x, dy=dy):  # forward + backward in training mode: gradients for the input, γ and β
            torch.autograd.grad(bn(x), (x, bn.weight, bn.bias), dy)

        times = interleaved(
            {name: functools.partial(step, layer.to(device)) for name, layer in layers.items()},
            rounds=3 if quick else 41,
            block_s=0.002 if quick else 0.02,
            clock=clock,
            sync=sync,
        )
        key = f"norm.{_shape_key(shape)}"
        res.add(f"{key}.torch_us", median(times["torch"]) * 1e6, "us")
        for kernel in ("fast", "textbook"):
            res.add(f"{key}.{kernel}_us", median(times[kernel]) * 1e6, "us")
            res.add(f"{key}.{kernel}_ratio", median_ratio(times[kernel], times["torch"]), "x")
        # The floor of any Python-level BatchNorm: a module whose autograd.Function computes nothing.
        res.add(f"{key}.empty_function_ratio", median_ratio(times["empty"], times["torch"]), "x")


# ---- 2. the whole training step ------------------------------------------------------------------


# The BN paper's MNIST network (3 × 100 sigmoid, batch 60, Sec. 4.1) and the default CNN, on MNIST-shaped data
STEP_MODELS = {"mlp": [], "cnn": ["model=cnn"]}
STEP_TARGETS = {"mlp": 1.15, "cnn": 1.0}


def bench_step(res: Results, quick: bool, device: torch.device = torch.device("cpu")) -> None:
    """One SGD step of bnexp's own training loop (the engine's Eager stepper: batch, forward, backward,
    update) with our BatchNorm (norm=bn, its fast kernel as runs train it; and its textbook kernel) vs torch's
    (norm=torch_bn): what a user feels. Where this process keeps freed memory (bnexp.runtime), the same
    figures in a process that leaves glibc's defaults are reported beside them."""
    from bnexp import runtime

    clock, sync = timers(device)
    data = _mnist_shaped(256, size=8, device=device) if quick else _mnist_shaped(4096, device=device)
    for name, overrides in STEP_MODELS.items():
        small = ["model.channels=[4,8]", "model.width=16"] if quick else []
        steppers = {
            norm: Trainer([*overrides, *small, *norm_overrides, f"device={device.type}"], data)
            for norm, norm_overrides in (
                ("torch_bn", ["norm=torch_bn"]),
                ("ours", ["norm=bn"]),
                ("textbook", ["norm=bn", "norm.fast=false"]),
            )
        }
        times = interleaved(
            {norm: t.step for norm, t in steppers.items()},
            rounds=3 if quick else 21,
            block_s=0.002 if quick else 0.2,
            clock=clock,
            sync=sync,
        )
        key = f"step.{name}"
        res.add(f"{key}.torch_bn_ms", median(times["torch_bn"]) * 1e3, "ms")
        res.add(f"{key}.ours_ms", median(times["ours"]) * 1e3, "ms")
        res.add(
            f"{key}.ratio", median_ratio(times["ours"], times["torch_bn"]), "x", at_most=STEP_TARGETS[name]
        )
        res.add(f"{key}.textbook_ratio", median_ratio(times["textbook"], times["torch_bn"]), "x")
    if not quick and device.type == "cpu" and runtime.keep_freed_memory():
        code = (
            "import sys, bnexp.runtime as r; r.keep_freed_memory = lambda: False; import bnexp.bench as b; "
            "b.main(sys.argv[1:])"
        )
        with tempfile.TemporaryDirectory(prefix="bnexp-bench-") as tmp:
            out = os.path.join(tmp, "step.json")
            _run_child(["-c", code, "--only", "step", "--out", out], dict(os.environ))
            with open(out) as f:
                figures = json.load(f)
        for name in STEP_MODELS:
            for figure in ("ours_ms", "ratio"):
                res.add(
                    f"step.{name}.{figure}_glibc_defaults",
                    figures[f"step.{name}.{figure}"],
                    "ms" if figure.endswith("ms") else "x",
                )


# ---- 3. the data path ----------------------------------------------------------------------------


def _write_idx(path: str, array: np.ndarray) -> None:
    """An idx-ubyte file (MNIST's format): magic (type 0x08 = unsigned byte, ndim), sizes, data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist_files(root, n_train: int, n_test: int, seed: int = 0, folder: str = "MNIST") -> dict:
    """Random MNIST-shaped idx files where torchvision (and bnexp's mnist and fashion_mnist loaders) look
    for them, <root>/<folder>/raw/; returns {"train"|"t10k": (images, labels)} as written."""
    rng = np.random.default_rng(seed)
    raw = os.path.join(root, folder, "raw")
    os.makedirs(raw, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[prefix] = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        _write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), arrays[prefix][0])
        _write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), arrays[prefix][1])
    return arrays


def _endless(loader):
    while True:
        yield from loader


def bench_data(res: Results, quick: bool) -> None:
    import torchvision
    from torch.utils.data import DataLoader

    from bnexp.config import DataConfig
    from bnexp.data import BatchOrder, load_data

    batch_size = 60
    with tempfile.TemporaryDirectory(prefix="bnexp-bench-") as root:
        write_mnist_files(root, n_train=300 if quick else 6000, n_test=100)
        data = load_data(DataConfig(name="mnist", root=root, batch_size=batch_size))
        reference = torchvision.datasets.MNIST(root, train=True, transform=torchvision.transforms.ToTensor())
        order = BatchOrder(data, batch_size, [0])  # the engine's batches: indices, then gathered and prepared
        their_batches = _endless(DataLoader(reference, batch_size=batch_size, shuffle=True, drop_last=True))
        times = interleaved(
            {"torchvision": lambda: next(their_batches), "ours": lambda: data.batch(order.next()[0])},
            *((3, 0.005) if quick else (21, 0.05)),
        )
        res.add("data.batch.torchvision_us", median(times["torchvision"]) * 1e6, "us")
        res.add("data.batch.ours_us", median(times["ours"]) * 1e6, "us")
        res.add("data.batch.speedup", median_ratio(times["torchvision"], times["ours"]), "x", at_least=5)


# ---- 4. logging overhead -------------------------------------------------------------------------


def _timed_run(overrides: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of bnexp.engine.train on the composed config, in a fresh folder."""
    from bnexp.engine import train

    cfg = _compose(overrides)
    with tempfile.TemporaryDirectory(prefix="bnexp-bench-run-") as run_dir:
        cpu, wall = time.process_time(), time.perf_counter()
        train(cfg, run_dir)
        return time.process_time() - cpu, time.perf_counter() - wall


def _logging_off(steps: int) -> list[str]:
    """Overrides that log nothing during a run of `steps` steps: every interval past its end."""
    return [f"log.stats_every={steps + 1}", f"log.hist_every={steps + 1}", f"train.eval_every={steps + 1}"]


def bench_logging(res: Results, quick: bool) -> None:
    # The default run (the BN-MLP on digits, default logging: statistics every 50 steps, histograms
    # every 500, evaluations every 250), 500 of its 2000 steps: every logging rate is kept but the
    # evaluations' (2 in 500 steps against 8 in 2000; an evaluation is cheap against 500 steps).
    # Short runs, many of them: whole runs are the unit here, and a busy machine makes single runs
    # vary. --quick: 20 steps on synthetic data, the logging intervals shrunk in proportion.
    steps = 20 if quick else 500
    base = ["device=cpu", f"train.steps={steps}"] + (["data=synthetic"] if quick else [])
    on = base + (["log.stats_every=2", "log.hist_every=10", "train.eval_every=5"] if quick else [])
    off = base + _logging_off(steps)
    if not quick:
        _timed_run(on)  # warm-up: imports, the dataset cache
    cpu = {"on": [], "off": []}
    wall = {"on": [], "off": []}
    for r in range(1 if quick else 15):
        for name, overrides in (("on", on), ("off", off)) if r % 2 == 0 else (("off", off), ("on", on)):
            c, w = _timed_run(overrides)
            cpu[name].append(c)
            wall[name].append(w)
    res.add("logging.on_s", median(cpu["on"]), "s")
    res.add("logging.off_s", median(cpu["off"]), "s")
    res.add("logging.overhead", median_ratio(cpu["on"], cpu["off"]) - 1, "", at_most=0.10)
    # How much the paired rounds disagree: the quartiles of their ratios.
    ratios = sorted(on / off - 1 for on, off in zip(cpu["on"], cpu["off"]))
    res.add("logging.overhead_q1", ratios[len(ratios) // 4], "")
    res.add("logging.overhead_q3", ratios[(3 * len(ratios)) // 4], "")
    res.add("logging.overhead_wall", median_ratio(wall["on"], wall["off"]) - 1, "")


# ---- 5. vectorized sweeps -------------------------------------------------------------------------


def bench_vectorized(res: Results, quick: bool, device: torch.device = torch.device("cpu")) -> None:
    """K runs (seeds 0 … K−1) trained together by the engine vs one after another: whole runs
    of the default config (BN-MLP on digits), logging and evaluation included, 200 steps each; and the
    default CNN at K = 8, 60 steps each. CPU time (process_time: the TensorBoard writers' threads count);
    wall time on a GPU, where tiny models are launch-bound and larger K pays more."""
    from bnexp.engine import train, train_runs

    clock = time.process_time if device.type == "cpu" else time.perf_counter  # runs end in a sync anyway
    ks = (8, 16, 32) if device.type == "cpu" else (8, 32, 128)
    cases = (
        [("mlp", 2, ["data=synthetic", "train.steps=5"])]
        if quick
        else [("mlp", k, ["train.steps=200"]) for k in ks] + [("cnn", 8, ["model=cnn", "train.steps=60"])]
    )
    for model, k, overrides in cases:
        cfgs = [_compose([f"device={device.type}", *overrides, f"seed={s}"]) for s in range(k)]
        times = {"sequential": [], "vectorized": []}
        with tempfile.TemporaryDirectory(prefix="bnexp-bench-vec-") as tmp:

            def sequential(r, cfgs=cfgs):
                for s, cfg in enumerate(cfgs):
                    train(cfg, os.path.join(tmp, f"seq{r}_{s}"))

            def vectorized(r, cfgs=cfgs):
                train_runs(cfgs, [os.path.join(tmp, f"vec{r}_{s}") for s in range(len(cfgs))])

            if device.type != "cpu":  # a GPU's first calls load kernels and grow its allocator: not measured
                sequential("warm-up")
                vectorized("warm-up")
            for r in range(1 if quick else 3):
                for name, fn in (
                    (("sequential", sequential), ("vectorized", vectorized))
                    if r % 2 == 0
                    else (("vectorized", vectorized), ("sequential", sequential))
                ):
                    t = clock()
                    fn(r)
                    times[name].append(clock() - t)
        key = f"vectorized.{model}.k{k}"
        res.add(f"{key}.sequential_s", median(times["sequential"]), "s")
        res.add(f"{key}.vectorized_s", median(times["vectorized"]), "s")
        at_least = 2 if (model, k) == ("mlp", 8) else None  # issue 6's target; the others inform
        res.add(
            f"{key}.speedup", median_ratio(times["sequential"], times["vectorized"]), "x", at_least=at_least
        )


# ---- 6. start-up vs training of the default run --------------------------------------------------

# Run in a fresh interpreter: the `bnexp` command itself, with timestamps at the boundaries of its
# phases (wrapping functions that bnexp.engine and bnexp.step look up at call time).
_TIMELINE_CHILD = r"""
import json, sys, time
marks = {}
def mark(name):
    marks[name] = [time.process_time(), time.time()]
mark("python")
import bnexp.__main__ as cli
mark("imported")
import bnexp.engine as tr, bnexp.step as st
real_load, real_optimizer, real_train = tr.load_data, st.make_optimizer, cli.train
def train(*args, **kwargs):
    mark("train_start")
    return real_train(*args, **kwargs)
cli.train = train
def load_data(*args, **kwargs):
    mark("load_data_start")
    data = real_load(*args, **kwargs)
    mark("load_data_end")
    return data
def make_optimizer(*args, **kwargs):
    mark("optimizer_start")
    optimizer = real_optimizer(*args, **kwargs)
    mark("optimizer_end")
    step = optimizer.step
    def timed_step(*a, **k):
        out = step(*a, **k)
        if "first_step_end" not in marks:
            mark("first_step_end")
        mark("last_step_end")
        return out
    optimizer.step = timed_step
    return optimizer
tr.load_data, st.make_optimizer = load_data, make_optimizer
sys.argv = ["bnexp", *sys.argv[1:]]
try:
    cli.main()
finally:
    mark("end")
    marks["modules"] = {m: m in sys.modules for m in ("torchvision", "sklearn", "torch._dynamo")}
    import torch
    marks["threads"] = torch.get_num_threads()
    print("BNEXP_BENCH_MARKS " + json.dumps(marks), flush=True)
"""


def _run_child(args: list[str], env: dict) -> tuple[dict, float]:
    """Run a Python child; return its marks (if it printed any) and its wall time."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    for line in out.stdout.splitlines():
        if line.startswith("BNEXP_BENCH_MARKS "):
            return json.loads(line.split(" ", 1)[1]), wall
    return {}, wall


def _import_times(module: str, env: dict, repeats: int) -> tuple[float, float]:
    """Median (CPU, wall) seconds of a fresh `python -c "import <module>"`."""
    code = (
        f"import json, time; import {module}; "
        f"print('BNEXP_BENCH_MARKS ' + json.dumps({{'cpu': time.process_time()}}))"
    )
    cpus, walls = [], []
    for _ in range(repeats):
        marks, wall = _run_child(["-c", code], env)
        cpus.append(marks["cpu"])
        walls.append(wall)
    return median(cpus), median(walls)


def bench_startup(res: Results, quick: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="bnexp-bench-startup-") as tmp:
        env = {**os.environ, "BNEXP_DATA": os.path.join(tmp, "data")}
        if not quick:  # what importing costs, each in a fresh interpreter
            python_cpu, python_wall = _import_times("sys", env, repeats=3)
            for module, key in (
                ("torch", "torch"),
                ("bnexp.__main__", "bnexp"),
                ("torchvision", "torchvision"),
            ):
                cpu, wall = _import_times(module, env, repeats=3)
                res.add(f"startup.import_{key}_s", cpu - python_cpu, "s")
                res.add(f"startup.import_{key}_wall_s", wall - python_wall, "s")

        def timeline(steps: int, threads: int | None = None) -> tuple[dict, float]:
            run_dir = os.path.join(tmp, f"run{steps}-{threads}")
            overrides = [f"hydra.run.dir={run_dir}", f"train.steps={steps}", "device=cpu"]
            threads_env = {} if threads is None else {"OMP_NUM_THREADS": str(threads)}
            return _run_child(["-c", _TIMELINE_CHILD, *overrides], {**env, **threads_env})

        # The first run in a fresh data.root (digits not cached yet), then the default run, which
        # finds them cached as every later run does: a quarter of its 2000 steps, its training
        # time then scaled by 4 (training, evaluations included, grows linearly with the steps);
        # as the command runs it (torch's default threads), then with one intra-op thread.
        # --quick: one 2-step run, cold.
        cold, _ = timeline(steps=1 if not quick else 2)
        steps = 2 if quick else 500
        runs = {"": timeline(steps=steps)} if not quick else {"": (cold, _)}
        if not quick:
            runs["_1_thread"] = timeline(steps=steps, threads=1)

    res.add("startup.load_data_cold_s", cold["load_data_end"][0] - cold["load_data_start"][0], "s")
    for suffix, (marks, wall) in runs.items():

        def span(a: str, b: str, m: dict = marks) -> float:
            return m[b][0] - m[a][0]  # CPU seconds

        startup = marks["optimizer_end"][0]  # CPU since the process began: all before step 1
        training = span("optimizer_end", "last_step_end") * (1 if quick else 2000 / steps)
        wrap_up = span("last_step_end", "end")
        total = startup + training + wrap_up
        res.add(f"startup.torch_threads{suffix}", marks["threads"], "")
        res.add(f"startup.measured_{steps}_steps_wall_s{suffix}", wall, "s")
        res.add(f"startup.default_run_cpu_s{suffix}", total, "s")
        res.add(f"startup.before_first_step_s{suffix}", startup, "s")
        res.add(f"startup.imports_s{suffix}", marks["imported"][0], "s")
        res.add(f"startup.hydra_to_train_s{suffix}", span("imported", "train_start"), "s")
        if not quick:
            res.add(f"startup.load_data_cached_s{suffix}", span("load_data_start", "load_data_end"), "s")
        res.add(f"startup.make_optimizer_s{suffix}", span("optimizer_start", "optimizer_end"), "s")
        res.add(f"startup.first_step_s{suffix}", span("optimizer_end", "first_step_end"), "s")
        res.add(f"startup.training_s{suffix}", training, "s")
        res.add(f"startup.wrap_up_s{suffix}", wrap_up, "s")
        res.add(f"startup.training_share{suffix}", training / total, "", at_least=0.5)
    for module, loaded in runs[""][0]["modules"].items():
        res.add(f"startup.loads_{module.replace('.', '_')}", int(loaded), "")


# ---- 7. scaling and where a step goes ------------------------------------------------------------


def _mnist_shaped(n: int = 2048, size: int = 28, seed: int = 0, device=torch.device("cpu")):
    """An in-memory MNIST-shaped dataset (1xHxW uint8 images, 10 classes) on `device`, no files."""
    from bnexp.data import InMemoryData

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g).to(device)
    y = torch.randint(0, 10, (n,), generator=g).to(device)
    mean, std = torch.full((1, 1, 1, 1), 0.5, device=device), torch.full((1, 1, 1, 1), 0.29, device=device)
    return InMemoryData(x, y, x[:256], y[:256], 10, 1 / 255, mean, std)


class Trainer:
    """bnexp's training step for one run on a composed config: the engine's Eager stepper on the engine's
    batches, what `bnexp` does between two logging steps."""

    def __init__(self, overrides: list[str], data=None):
        from bnexp import runtime
        from bnexp.data import BatchOrder, load_data
        from bnexp.step import Eager

        cfg = _compose(["device=cpu", *overrides])
        device = runtime.prepare(cfg)  # as a run sets its process up (on CUDA: cuDNN held exact)
        data = data if data is not None else load_data(cfg.data, device)
        self.stepper = Eager(cfg, data, device)
        self.order = BatchOrder(data, cfg.data.batch_size, [0])

    def step(self):
        self.stepper.forward_backward(self.order.next(), observe=False)
        self.stepper.update()

    def phases(self, steps: int) -> dict[str, float]:
        """Median CPU seconds per step of: forward and backward (the batch included), and the update."""
        clock, spent = time.thread_time, {"forward_backward": [], "update": []}
        for _ in range(steps):
            t0 = clock()
            self.stepper.forward_backward(self.order.next(), observe=False)
            t1 = clock()
            self.stepper.update()
            t2 = clock()
            spent["forward_backward"].append(t1 - t0)
            spent["update"].append(t2 - t1)
        return {key: median(values) for key, values in spent.items()}


def _step_times(trainers: dict[str, Trainer], quick: bool) -> dict[str, list[float]]:
    return interleaved(
        {name: t.step for name, t in trainers.items()},
        rounds=3 if quick else 11,
        block_s=0.002 if quick else 0.1,
    )


def _profile(trainer: Trainer, steps: int, top: int = 6) -> dict[str, float]:
    """Shares of the profiled CPU time of `steps` steps: the top entries by self time (ops, and
    the Python around them in our BatchNorm's forward and backward), and our BatchNorm in all."""
    from torch.profiler import ProfilerActivity, profile

    trainer.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.step()
    events = list(prof.key_averages())
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    shares = {}
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]:
        shares[f"op.{e.key}"] = e.self_cpu_time_total / total
    ours = [e for e in events if e.key in ("FusedBatchNorm", "FusedBatchNormBackward")]
    shares["our_batchnorm"] = sum(e.cpu_time_total for e in ours) / total
    return shares


def bench_scaling(res: Results, quick: bool) -> None:
    mlp_data = ["data=synthetic"] if quick else []  # default: digits, as the default run
    mnist = _mnist_shaped(256, size=8) if quick else _mnist_shaped(4096)
    cnn = ["model=cnn", "model.channels=[4,8]"] if quick else ["model=cnn"]

    # How a run's time grows with its steps: train() with logging off, fixed cost + per step.
    # In-process: imports and first-call costs are paid by a warm-up run, not here.
    counts = [1, 2, 4] if quick else [1, 500, 1000]
    _timed_run(["device=cpu", "train.steps=1", *mlp_data])
    seconds = {steps: [] for steps in counts}
    for r in range(1 if quick else 3):
        for steps in counts if r % 2 == 0 else reversed(counts):
            seconds[steps].append(
                _timed_run(["device=cpu", f"train.steps={steps}", *mlp_data, *_logging_off(steps)])[0]
            )
    t = {steps: median(values) for steps, values in seconds.items()}
    short, mid, long = counts
    per_step = (t[long] - t[short]) / (long - short)
    res.add("scaling.steps.run_1_step_s", t[short], "s")
    res.add("scaling.steps.per_step_ms", per_step * 1e3, "ms")
    # Linear growth: the middle run against the straight line through the other two.
    res.add("scaling.steps.middle_vs_linear", t[mid] / (t[short] + per_step * (mid - short)), "x")

    groups = {
        "mlp.batch": {
            f"{b}": Trainer([*mlp_data, f"data.batch_size={b}"])
            for b in ([8, 32] if quick else [15, 30, 60, 120, 240])
        },
        "mlp.width": {
            f"{w}": Trainer([*mlp_data, f"model.width={w}"])
            for w in ([16, 64] if quick else [50, 100, 200, 400, 800])
        },
        "mlp.norm": {n: Trainer([*mlp_data, f"norm={n}"]) for n in ("bn", "torch_bn", "none")},
        "cnn.batch": {
            f"{b}": Trainer([*cnn, f"data.batch_size={b}"], mnist)
            for b in ([8, 16] if quick else [16, 32, 64, 128])
        },
        "cnn.channels": {
            "-".join(map(str, c)): Trainer(["model=cnn", f"model.channels=[{c[0]},{c[1]}]"], mnist)
            for c in ([(2, 4)] if quick else [(16, 32), (32, 64), (64, 128)])
        },
        "cnn.norm": {n: Trainer([*cnn, f"norm={n}"], mnist) for n in ("bn", "torch_bn", "none")},
        "cnn.layout": {
            "contiguous": Trainer(cnn, mnist),
            "channels_last": Trainer([*cnn, "train.channels_last=true"], mnist),
        },
    }
    if not quick:  # compiling takes long (and a C++ compiler): not for a smoke run
        groups["mlp.compile"] = {
            "eager": Trainer(mlp_data),
            "compiled": Trainer([*mlp_data, "train.compile=true"]),
        }
        groups["cnn.compile"] = {
            "eager": Trainer(cnn, mnist),
            "compiled": Trainer([*cnn, "train.compile=true"], mnist),
        }
    for group, trainers in groups.items():
        times = _step_times(trainers, quick)
        for name, t in times.items():
            key = f"scaling.{group}.{name}"
            res.add(f"{key}.step_ms", median(t) * 1e3, "ms")
            if group.endswith(".batch"):
                res.add(f"{key}.per_example_us", median(t) * 1e6 / int(name), "us")
        if group.endswith(".norm"):
            res.add(f"scaling.{group}.bn_vs_torch_bn", median_ratio(times["bn"], times["torch_bn"]), "x")
            res.add(f"scaling.{group}.bn_vs_none", median_ratio(times["bn"], times["none"]), "x")
        if group == "cnn.layout":
            res.add(
                "scaling.cnn.channels_last_speedup",
                median_ratio(times["contiguous"], times["channels_last"]),
                "x",
            )
        if group.endswith(".compile"):
            res.add(f"scaling.{group}_speedup", median_ratio(times["eager"], times["compiled"]), "x")

    # Intra-op threads (torch's default is one per core): wall time, as CPU time would also count
    # threads that spin waiting for each other.
    counts = (1, os.cpu_count() or 1)
    for name, trainer in (("mlp", groups["mlp.norm"]["bn"]), ("cnn", groups["cnn.norm"]["bn"])):
        times = interleaved(
            {f"{n}": trainer.step for n in counts},
            rounds=3 if quick else 11,
            block_s=0.002 if quick else 0.2,
            clock=time.perf_counter,
            before_block={f"{n}": functools.partial(torch.set_num_threads, n) for n in counts},
        )
        torch.set_num_threads(1)
        res.add(
            f"scaling.{name}.threads_{counts[1]}_vs_1_wall",
            median_ratio(times[f"{counts[1]}"], times["1"]),
            "x",
        )

    # Where one step of the default MLP and of the default CNN (batch 60, MNIST-shaped) goes.
    for name, trainer in (("mlp", groups["mlp.norm"]["bn"]), ("cnn", groups["cnn.norm"]["bn"])):
        for phase, seconds_ in trainer.phases(5 if quick else 50).items():
            res.add(f"profile.{name}.{phase}_ms", seconds_ * 1e3, "ms")
        for key, share in _profile(trainer, 2 if quick else {"mlp": 200, "cnn": 20}[name]).items():
            res.add(f"profile.{name}.{key}", share, "share")


# ---- the command ---------------------------------------------------------------------------------

BENCHES = {
    "norm": bench_norm,
    "step": bench_step,
    "data": bench_data,
    "logging": bench_logging,
    "vectorized": bench_vectorized,
    "startup": bench_startup,
    "scaling": bench_scaling,
}


def format_table(rows: list[Row]) -> str:
    lines = [f"{'metric':<46} {'value':>12} {'unit':<6} {'target':<8} status", "-" * 80]
    for row in rows:
        value = f"{row.value:.4g}" if isinstance(row.value, float) else str(row.value)
        status = "" if row.ok is None else ("ok" if row.ok else "MISSED")
        lines.append(f"{row.key:<46} {value:>12} {row.unit:<6} {row.target:<8} {status}")
    return "\n".join(lines)


def run(
    sections=SECTIONS, quick: bool = False, echo: Callable[[str], None] = print, device: str = "cpu"
) -> dict:
    """Run the benchmark sections; return the flat mapping (machine info first). With a GPU `device`, only
    the DEVICE_SECTIONS, on it."""
    from bnexp import runtime

    torch.set_num_threads(1)
    device = torch.device(device)
    out = machine_info()
    out["machine.bench_device"] = str(device)
    out["machine.keeps_freed_memory"] = int(runtime.keep_freed_memory())  # as every bnexp run does
    if device.type == "cuda":
        torch.cuda.set_device(device)  # cuda:N for every section, also where a config says device=cuda
        out["machine.gpu"] = torch.cuda.get_device_name(device)
        out["machine.timer"] = "wall clock, after waiting for the GPU's queued work"
    res = Results(judge=not quick and device.type == "cpu")  # the targets are this project's CPU figures
    for name in sections:
        start, first = time.perf_counter(), len(res.rows)
        BENCHES[name](res, quick, **({"device": device} if name in DEVICE_SECTIONS else {}))
        echo(f"\n[{name}] ({time.perf_counter() - start:.0f} s)\n{format_table(res.rows[first:])}")
    if hasattr(os, "getloadavg"):
        out["machine.loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    out.update(res.flat())
    missed = [row.key for row in res.rows if row.ok is False]
    out["targets.missed"] = ", ".join(missed)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="bnexp-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds)")
    parser.add_argument("--out", default="bench.json", help="where to write the JSON figures")
    parser.add_argument(
        "--only",
        help=f"comma-separated sections (default: all of {','.join(SECTIONS)}; "
        f"with a GPU --device: {','.join(DEVICE_SECTIONS)})",
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu, or cuda (cuda:N) for the sections that run on a GPU"
    )
    args = parser.parse_args(argv)
    gpu = args.device != "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError:  # not a device name at all
        device = None
    if gpu and not (
        device is not None
        and device.type == "cuda"
        and torch.cuda.is_available()
        and (device.index or 0) < torch.cuda.device_count()
    ):
        parser.error(
            f"--device {args.device}: no such GPU here (PyTorch sees {torch.cuda.device_count()}); use "
            f"--device cpu, or cuda (cuda:N) on a machine with an NVIDIA GPU"
        )
    allowed = DEVICE_SECTIONS if gpu else SECTIONS
    sections = [s.strip() for s in (args.only or ",".join(allowed)).split(",") if s.strip()]
    unknown = [s for s in sections if s not in allowed]
    if unknown:
        parser.error(
            f"section(s) {', '.join(unknown)} unknown{' or CPU-only' if gpu else ''}; "
            f"choose from {', '.join(allowed)}"
        )
    folder = os.path.dirname(os.path.abspath(args.out))
    if not (os.path.isdir(folder) and os.access(folder, os.W_OK)) or os.path.isdir(args.out):
        # before the minutes of measuring, not after
        parser.error(
            f"--out {args.out}: cannot write a file there; give a file path in an existing, writable folder"
        )
    command = "python -m bnexp.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    figures = {"command": command.strip(), **run(sections, quick=args.quick, device=args.device)}
    with open(args.out, "w") as f:
        json.dump(figures, f, indent=1)
    print(f"\nfigures written to {args.out}")


if __name__ == "__main__":
    main()
