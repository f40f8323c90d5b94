"""The run format, in one place: what a run folder holds, its TensorBoard tags, reading a sweep back.

A run folder (one Hydra job) holds `.hydra/` (the composed config), the run's log, its TensorBoard
events, `metrics.json` (written last: a run is finished when it is there) and, while a run with
train.checkpoint_every trains, `checkpoint.pt` (bnexp.checkpoint). metrics.json holds:

    config       the resolved settings, flat ("model.width": 100, ...; flat_config)
    provenance   what produced it: bnexp version, git commit and whether the checkout had uncommitted
                 changes (when run from a checkout), torch version, device
    <metrics>    the final metrics, below
    series       every logged scalar, {tag: [[step, value], ...]}, non-finite values as null

The tags (TensorBoard's, and the keys of series), each spelled once below:

  train/loss, train/acc, test/loss, test/acc   full splits in eval mode, every train.eval_every steps
  test/loss_precise_bn, test/acc_precise_bn    the same test with precise population statistics
                                               (eval.precise_bn_batches; norms with running statistics)
  batch/loss, batch/acc, lr                    mean over the mini-batches since the last log
  act/<layer>/p15|p50|p85|mean|std             the input of the layer's nonlinearity (BN paper, Fig. 1)
  act/<layer>/unit0/p15|p50|p85                the same for one fixed unit (channel 0) of the layer
  act/<layer>/linear_frac                      fraction of those inputs with |x| < LINEAR_BOUND, where the
                                               sigmoid is near-linear (sigmoid(x) within 0.02 of 1/2 + x/4)
  act/<layer>                                  histograms, every log.hist_every steps, the first and the last
  grad/<layer>/norm                            L2 norm of the gradient of the layer's parameters
  grad/<layer>/bias                            L2 norm of the gradient of the bias before the norm, if kept
  ics/<layer>/l2|cos|rel                       gradient-based ICS (bnexp.measures), every measure.ics_every
  landscape/<key>                              the loss along the gradient (bnexp.measures)
  sharpness/lambda_max, sharpness/limit        the top Hessian eigenvalue on a fixed batch, and the
  sharpness/iterations                         optimizer's stability limit 2/η (bnexp.measures), every
                                               measure.sharpness_every steps
  hparam/<metric>                              the final metrics in the HParams tab (the same event file)

A sweep folder holds its run folders, and once analysed `report.md`, `<claim>.png`, `finding.json`
(with the provenance of the analysis and of its runs) and `report/` (the figure for TensorBoard).
Everything an analysis reads comes from here: `load_runs` and `Run`.
"""

import errno
import functools
import importlib.metadata
import json
import math
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bnexp.config import Config, UserError

METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.pt"
# Settings that change how a run is carried out, not what it records: a run recorded with other values of
# them is the same run (a sweep resumes with checkpoints added, or with more progress lines).
NOT_RESULTS = frozenset({"train.checkpoint_every", "train.keep_checkpoint", "log.progress_every"})

# ---- TensorBoard tags, also the keys of metrics.json's series ------------------------------------------
TRAIN_LOSS, TRAIN_ACC, TEST_LOSS, TEST_ACC = "train/loss", "train/acc", "test/loss", "test/acc"
TEST_LOSS_PRECISE, TEST_ACC_PRECISE = "test/loss_precise_bn", "test/acc_precise_bn"
BATCH_LOSS, BATCH_ACC, LR = "batch/loss", "batch/acc", "lr"

PERCENTILES = (15, 50, 85)  # of a probe point's values: the BN paper's Fig. 1
LINEAR_BOUND = 1.0  # |x| below this: the near-linear region of the sigmoid
LINEAR_FRAC = "linear_frac"
PROBE_STATS = (
    *(f"p{p}" for p in PERCENTILES),
    "mean",
    "std",
    LINEAR_FRAC,
    *(f"unit0/p{p}" for p in PERCENTILES),
)
ICS_L2, ICS_COS, ICS_REL = "l2", "cos", "rel"  # ‖G − G′‖₂, cos(G, G′), ‖G − G′‖₂/‖G‖₂
# landscape(): the step sizes along the negative gradient, as multiples of the learning rate, and its keys
LANDSCAPE_STEPS = (0.5, 1.0, 2.0, 3.0, 4.0)
LOSS_RANGE, LOSS_MIN, LOSS_MAX = "loss_range", "loss_min", "loss_max"
# Sharpness (Cohen et al. 2021): λ_max, the stability limit of the run's optimizer (2/η for SGD, (2 + 2β)/η
# with heavy-ball momentum β; none for Adam), and the power iterations it took
SHARPNESS, SHARPNESS_LIMIT = "sharpness/lambda_max", "sharpness/limit"
SHARPNESS_ITERS = "sharpness/iterations"
GRAD_CHANGE, BETA_SMOOTHNESS, LOSS, GRAD_NORM = "grad_change", "beta_smoothness", "loss", "grad_norm"


def act(layer: str, stat: str | None = None) -> str:
    """The input of a hidden layer's nonlinearity: act/<layer>/<stat> (a PROBE_STATS entry); without a stat,
    the histogram's tag."""
    return f"act/{layer}" if stat is None else f"act/{layer}/{stat}"


def act_percentiles(layer: str, unit0: bool = False) -> list[str]:
    """The tags of a layer's 15th/50th/85th percentiles: of unit 0, or of all its units."""
    return [act(layer, f"unit0/p{p}" if unit0 else f"p{p}") for p in PERCENTILES]


def grad_norm(layer: str) -> str:
    """L2 norm of the gradient of all of a layer's parameters."""
    return f"grad/{layer}/norm"


def grad_bias(layer: str) -> str:
    """L2 norm of the gradient of the bias before the layer's norm, where it is kept."""
    return f"grad/{layer}/bias"


def ics(layer: str, stat: str) -> str:
    """Gradient-based internal covariate shift of a layer's weight: stat l2, cos or rel (bnexp.measures)."""
    return f"ics/{layer}/{stat}"


def landscape(key: str) -> str:
    """The loss landscape along the gradient (bnexp.measures)."""
    return f"landscape/{key}"


def hparam(metric: str) -> str:
    """A final metric as the HParams tab shows it."""
    return f"hparam/{metric}"


def layers_logged(series: dict, kind: str = "act") -> list[str]:
    """The layers with tags kind/<layer>/... in a series (layer1, layer2, ..., then head), in depth order."""
    names = {tag.split("/")[1] for tag in series if tag.startswith(f"{kind}/")}
    return sorted(names, key=lambda n: (n == "head", int(n[5:]) if n[5:].isdigit() else 0, n))


# ---- metrics.json ------------------------------------------------------------------------------------
FINAL_TEST_ACC, BEST_TEST_ACC, FINAL_TRAIN_ACC = "final_test_acc", "best_test_acc", "final_train_acc"
FINAL_TRAIN_LOSS, FINAL_TEST_LOSS = "final_train_loss", "final_test_loss"  # null when not finite
DIVERGED, DIVERGED_STEP = "diverged", "diverged_step"  # the step the loss first became non-finite
STEPS, STEPS_PLANNED, WALL_TIME = "steps", "steps_planned", "wall_time_s"
BATCH_STATS_ACC = "final_test_acc_batch_stats"  # norms with running statistics: tested with batch statistics
PRECISE_ACC = "final_test_acc_precise_bn"  # eval.precise_bn_batches: tested with precise statistics
TRAIN_LENGTH = "train_length"  # with train.eval_lengths: the steps of a training sequence (rnn: T_max)


ACC_AT_LENGTH = "final_test_acc_length_"  # + n: on test sequences made n steps long (train.eval_lengths)
POOLED_STATS = "pooled_stats_"  # + an accuracy key: the same test with per-step statistics pooled (rnn)


def acc_at_length(length: int, pooled: bool = False) -> str:
    """The final test accuracy on sequences made `length` steps long (train.eval_lengths); `pooled`: with
    the per-step statistics pooled over the steps (model=rnn, model.per_step_stats=true, BN)."""
    return f"{POOLED_STATS if pooled else ''}{ACC_AT_LENGTH}{length}"


def finite(x: float | None) -> float | None:
    """x, or None where it is missing or not finite (strict JSON has no NaN)."""
    return x if x is not None and math.isfinite(x) else None


def write_text(path, text: str) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path, obj) -> None:
    """Write strict JSON (no NaN) atomically."""
    write_text(path, json.dumps(obj, indent=2, allow_nan=False))


def write_metrics(run_dir, config: dict, provenance: dict, metrics: dict, series: dict) -> None:
    """A finished run's metrics.json."""
    series = {tag: [[step, finite(v)] for step, v in points] for tag, points in series.items()}
    record = dict(config=config, provenance=provenance, **metrics, series=series)
    write_json(os.path.join(run_dir, METRICS_FILE), record)


RECORD_KEYS = ("config", "provenance", "series")  # metrics.json's keys that are not metrics


def finished(run_dir, config: dict) -> dict | None:
    """The metrics of the finished run of `config` (flat) that run_dir holds, or None where it holds none:
    no metrics.json (the run never started, failed or was killed: metrics.json is written last, atomically).
    A finished run of another config is not overwritten: UserError. A key the record lacks (the run was
    recorded before it existed) counts as recorded at its default."""
    try:
        record = json.loads(Path(run_dir, METRICS_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(
            f"{Path(run_dir, METRICS_FILE)} cannot be read ({e}), so whether that run finished is unknown; "
            f"move the file away (the run then trains again) or resume into another folder."
        ) from None
    differ = config_differences(record["config"], config)
    if differ:
        raise UserError(
            f"{run_dir} holds a finished run of another config ({differ}), "
            f"which this run would overwrite. A sweep resumes into its folder only with the same settings: "
            f"rerun it with the overrides it had, or give this one another hydra.sweep.dir."
        )
    return {k: v for k, v in record.items() if k not in RECORD_KEYS}


def config_differences(recorded: dict, requested: dict) -> str:
    """Where a recorded flat config and a requested one differ in what a run records (NOT_RESULTS aside),
    in words ("optim.lr=0.5 recorded, 0.2 now"); "" where they do not."""
    requested = json.loads(json.dumps(requested))  # as JSON keeps it: tuples are lists
    try:
        recorded = json.loads(json.dumps(flat_config(nested_config(recorded))))
    except OmegaConfBaseException:  # a setting this bnexp no longer has: another config
        pass
    differ = sorted(
        k
        for k in recorded.keys() | requested.keys()
        if k not in NOT_RESULTS and recorded.get(k) != requested.get(k)
    )
    shown = "; ".join(f"{k}={recorded.get(k)!r} recorded, {requested.get(k)!r} now" for k in differ[:4])
    return shown + ("; ..." if len(differ) > 4 else "")


# What a full disk, a quota, a file-size limit, a read-only or forbidden folder raise on a write.
WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


def unwritable(e: OSError, run_dirs) -> str:
    """The message for a run that could not write its records (or its data): what failed, and how to go on
    without losing what finished."""
    where = f" ({e.filename})" if e.filename else ""
    return (
        f"a file could not be written{where}: {e.strerror}, so the run in {', '.join(map(str, run_dirs))} "
        f"did not finish. Free space (or raise the quota or file-size limit, or make the folder writable), "
        f"then run the same command again: a sweep run again into its folder keeps every finished run and "
        f"trains this one from its start; or choose another folder with hydra.run.dir= (hydra.sweep.dir= "
        f"for a sweep)."
    )


def clear_remains(run_dir) -> None:
    """Remove what a killed run left in run_dir (its TensorBoard events, a checkpoint it cannot resume from,
    half-written files), so that training it again does not log every step twice."""
    leftovers = [f"{METRICS_FILE}.tmp", CHECKPOINT_FILE, f"{CHECKPOINT_FILE}.tmp"]
    for path in (*Path(run_dir).glob("events.out.tfevents.*"), *(Path(run_dir, f) for f in leftovers)):
        path.unlink(missing_ok=True)


def nested_config(flat: dict):
    """A run's flat `group.key` config (metrics.json) as the typed config a run reads; the keys that a run
    recorded by an older bnexp lacks take their defaults."""
    nested: dict = {}
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            nested[head] = value
    return OmegaConf.merge(OmegaConf.structured(Config), nested)


def flat_config(cfg) -> dict:
    """The run's resolved settings as flat `group.key: value` pairs (metrics.json, HParams)."""
    out = {}
    for group in ("model", "norm", "init", "data", "optim", "train", "eval", "log", "measure"):
        for key, value in OmegaConf.to_container(cfg[group], resolve=True, enum_to_str=True).items():
            out[f"{group}.{key}"] = value
    out.update(seed=cfg.seed, device=str(getattr(cfg.device, "value", cfg.device)), claim=cfg.get("claim"))
    return out


# ---- provenance --------------------------------------------------------------------------------------
def provenance(device: torch.device | None = None) -> dict:
    """What produced a record: bnexp's version, its git commit and whether the code it runs (src/, conf/,
    pyproject.toml: files changed, or new and not ignored) differs from that commit (null when bnexp is not
    running from a git checkout), torch's version, Python's, and the device (when one trained)."""
    out = {
        "bnexp": _version(),
        **checkout(Path(__file__).resolve().parent),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device is not None:
        out["device"] = (
            str(device) if device.type != "cuda" else f"{device} ({torch.cuda.get_device_name(device)})"
        )
    return out


def _version() -> str | None:
    try:
        return importlib.metadata.version("bnexp")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return None


@functools.cache
def checkout(package: Path) -> dict:
    """git_commit and git_dirty of the checkout whose package folder (src/bnexp) is `package`, as when bnexp
    runs from a checkout (an editable install); both None where the package is not a checkout's."""

    def git(*args) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args],
                cwd=package,
                capture_output=True,
                text=True,
                timeout=10,
                env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
            )
        except (OSError, subprocess.SubprocessError):  # no git, or it hangs
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    # An installed copy can sit inside a checkout (a venv in the repository): only a tracked file is the
    # checkout's.
    if git("ls-files", "--error-unmatch", "__init__.py") is None:
        return {"git_commit": None, "git_dirty": None}
    top = git("rev-parse", "--show-toplevel")
    status = git(
        "-C", top, "status", "--porcelain", "--untracked-files=normal", "--", "src", "conf", "pyproject.toml"
    )
    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status)}


def describe(record: dict) -> str:
    """A provenance record in words, e.g. 'bnexp 0.1.0 (git 1a2b3c4d, uncommitted changes), torch 2.14.1'."""
    commit = record.get("git_commit")
    where = (
        ""
        if not commit
        else f" (git {commit[:8]}{', uncommitted changes' if record.get('git_dirty') else ''})"
    )
    device = f", on {record['device']}" if record.get("device") else ""
    return f"bnexp {record.get('bnexp', '?')}{where}, torch {record.get('torch', '?')}{device}"


# ---- reading runs back -------------------------------------------------------------------------------
@dataclass
class Run:
    """One run folder of a sweep, as recorded; `metrics` (metrics.json) is None if the run failed before the
    end."""

    path: Path
    config: dict  # flat "group.key" -> value, as in metrics.json
    metrics: dict | None

    def __getitem__(self, key: str):
        return self.config[key]

    @property
    def diverged(self) -> bool:
        return self.metrics is None or self.metrics[DIVERGED]

    @property
    def test_acc(self) -> float:
        """Final test accuracy; a failed run counts as 0 (it produced no classifier)."""
        return (self.metrics or {}).get(FINAL_TEST_ACC) or 0.0

    @property
    def train_acc(self) -> float | None:
        return self.metrics[FINAL_TRAIN_ACC] if self.metrics else None

    @property
    def batch_stats_acc(self) -> float | None:
        """Final test accuracy with batch statistics in place of the running ones (None: no running
        statistics)."""
        return (self.metrics or {}).get(BATCH_STATS_ACC)

    @property
    def steps(self) -> int:
        return self.metrics[STEPS]

    @property
    def steps_planned(self) -> int:
        return self.metrics[STEPS_PLANNED]

    @property
    def train_length(self) -> int | None:
        return (self.metrics or {}).get(TRAIN_LENGTH)

    def acc_at_length(self, length: int, pooled: bool = False) -> float | None:
        return (self.metrics or {}).get(acc_at_length(length, pooled))

    @property
    def tested_lengths(self) -> list[int]:
        return sorted(int(k[len(ACC_AT_LENGTH) :]) for k in self.metrics or {} if k.startswith(ACC_AT_LENGTH))

    @property
    def series(self) -> dict[str, list]:
        """Every logged scalar: {tag: [[step, value], ...]} (a value is None where it was not finite)."""
        return (self.metrics or {}).get("series", {})

    @property
    def provenance(self) -> dict:
        return (self.metrics or {}).get("provenance", {})


def curve(run: Run, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a logged scalar; a non-finite value (None in metrics.json) is NaN; empty if
    absent."""
    points = run.series.get(tag, [])
    steps = np.array([s for s, _ in points], dtype=float)
    values = np.array([math.nan if v is None else v for _, v in points], dtype=float)
    return steps, values


def load_runs(sweep_dir) -> list[Run]:
    """Every run of a sweep: each subfolder that Hydra made (it holds `.hydra/config.yaml`); a run without a
    readable metrics.json counts as failed."""
    runs = []
    for cfg_file in sorted(Path(sweep_dir).glob("*/.hydra/config.yaml")):
        folder = cfg_file.parent.parent
        try:
            metrics = json.loads((folder / METRICS_FILE).read_text())
        except (OSError, ValueError):  # not there (the run failed), or unreadable: no result either way
            metrics = None
        config = metrics["config"] if metrics else flat_config(OmegaConf.load(cfg_file))
        runs.append(Run(folder, config, metrics))
    return runs
