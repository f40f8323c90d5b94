"""The typed configuration schema.

Every key a user can type lives here, with its type and default. The dataclasses are registered in
Hydra's ConfigStore, and `conf/config.yaml` starts from them, so a mistyped key, a value of the
wrong type or a value outside an enum fails at start-up with Hydra's own message, before any work.
The YAML files in `conf/` only choose values; they never add keys.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


class UserError(Exception):
    """A mistake in what the user asked for (missing files, impossible sizes, ...).

    The command line prints its message as one paragraph, without a traceback; the message says
    what was wrong and how to fix it.
    """


class NormPosition(Enum):
    pre = "pre"  # g(norm(Wu)): the norm before the nonlinearity, as the BN paper places it
    post = "post"  # norm(g(Wu + b)): after it


class Activation(Enum):
    sigmoid = "sigmoid"
    relu = "relu"
    tanh = "tanh"
    # σ's first-order Taylor expansion at 0, σ(0) + σ'(0)·x = 0.5 + x/4: a sigmoid network without the
    # sigmoid's nonlinearity, the control for what leaving the linear region buys (claims/affine.py).
    linearized_sigmoid = "linearized_sigmoid"


class InitLayers(Enum):
    all = "all"  # every linear and conv map, the head included
    # The hidden layers' maps only: the ones a norm follows in a normalized network. The head keeps
    # PyTorch's default init, the same draw for every norm and init.std of a seed.
    hidden = "hidden"


class Device(Enum):
    auto = "auto"  # the accelerator when there is one, else the CPU
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


@dataclass
class ModelConfig:
    name: str = MISSING  # mlp | cnn | rnn (set by the model group)
    depth: int = 3  # mlp: hidden layers (0: a linear classifier); rnn: stacked recurrent layers
    width: int = (
        100  # mlp: units per hidden layer; cnn: units of the hidden classifier layer; rnn: hidden state
    )
    activation: Activation = Activation.sigmoid
    dropout: float = 0.0  # after every hidden nonlinearity
    # False: no dropout on a layer whose output feeds a norm with running statistics (BN and its variants):
    # there it shifts the variance BN's running statistics see between training and test (Li et al. 2019,
    # "Understanding the disharmony between dropout and batch normalization by variance shift"). A BN
    # network then keeps dropout where it feeds the head; a network without BN keeps it everywhere.
    dropout_before_bn: bool = True
    # The linear/conv bias right before a norm layer is redundant (the norm subtracts the mean);
    # the BN paper drops it. Keep it only to show that.
    bias_before_norm: bool = False
    channels: list[int] = field(default_factory=lambda: [32, 64])  # cnn: one conv stage each
    pool: str = "max"  # cnn: max | avg | none, after every conv stage
    # cnn: the norm also on the hidden fully connected layer; false: on the convolutions only, as in Wu &
    # He's ResNets, whose only fully connected layer is the classifier (there, BN's statistics come from the
    # batch alone, not the batch times the positions).
    norm_fc: bool = True
    # mlp, cnn: where each hidden layer's norm sits, before the nonlinearity (pre) or after it (post)
    norm_position: NormPosition = NormPosition.pre
    # rnn: separate norm statistics for each time step (Cooijmans et al. 2016); steps beyond the
    # training length reuse the last step's. False: one set shared by all steps, in training too (BN:
    # each batch normalized by its statistics pooled over all steps).
    per_step_stats: bool = False
    # rnn: train on random windows of this many consecutive steps, each example its own (the training
    # length T_max), test on whole sequences. null: train on whole sequences.
    crop: int | None = None


@dataclass
class NormConfig:
    name: str = MISSING  # a key of bnexp.models.NORMS
    eps: float = 1e-5
    momentum: float | None = 0.1  # running statistics; null = cumulative average
    affine: bool = True  # learnable γ and β
    # γ's start (norms with affine=true). Cooijmans et al. (2016) start it at 0.1 in their BN-LSTM: tanh
    # and sigmoid then begin in their linear range, where gradients pass through time undamped.
    gamma_init: float = 1.0
    groups: int = 4  # gn: channels are split into this many groups (4 divides every default width)
    # bn, noisy_bn: train with bnexp.fast_norm's kernel (the same function as bnexp.norm's textbook one,
    # faster: python -m bnexp.bench --only norm,step); false: with the textbook one.
    fast: bool = True
    # batch_renorm (Ioffe 2017): r clipped to [1/r_max, r_max], d to [-d_max, d_max] (null: unclipped), after
    # `warmup` training batches of plain BN relaxed linearly to reach r_max at batch r_max_at and d_max at
    # d_max_at; the defaults are the paper's.
    r_max: float | None = 3.0
    d_max: float | None = 5.0
    warmup: int = 5000
    r_max_at: int = 40000
    d_max_at: int = 25000
    # bn, noisy_bn, batch_renorm: normalize each training batch in consecutive ghost batches of this many
    # examples, each by its own statistics (Hoffer et al. 2017); null: the whole batch. Evaluation unchanged.
    ghost_batch_size: int | None = None


@dataclass
class InitConfig:
    name: str = MISSING  # default | normal | uniform | xavier | kaiming | orthogonal
    std: float = 0.01  # normal and uniform: the weights' standard deviation
    gain: float = 1.0  # xavier, kaiming, orthogonal: multiplies the scheme's own scale
    layers: InitLayers = InitLayers.all  # which maps the scheme initializes


@dataclass
class DataConfig:
    name: str = MISSING  # digits | mnist5k | mnist1d | mnist | fashion_mnist | cifar10 | synthetic
    root: str = "${oc.env:BNEXP_DATA,'~/.cache/bnexp'}"  # where files are found or cached
    download: bool = False  # torchvision sets may fetch their files; nothing else ever does
    batch_size: int = 60
    normalize: bool = True  # standardize inputs with training-split statistics
    subset: int | None = None  # keep the first N training examples
    # synthetic only: Gaussian classes, one input feature per scale.
    feature_scales: list[float] = field(default_factory=lambda: [1.0, 100.0])
    num_classes: int = 2
    num_train: int = 2000
    num_test: int = 1000


@dataclass
class OptimConfig:
    name: str = MISSING  # sgd | momentum | adam
    lr: float = 0.1
    weight_decay: float = 0.0
    momentum: float = 0.9  # the `momentum` optimizer only
    # If set, optim.lr is the rate for this batch size and scales linearly with data.batch_size
    # (Goyal et al. 2017), so batch-size sweeps compare like with like.
    lr_batch_size: int | None = None


@dataclass
class TrainConfig:
    steps: int = 2000  # optimizer steps
    epochs: int | None = None  # if set, replaces `steps` by this many passes over the data
    # The steps of each model named here (the others, or all when empty or null, take `steps`): a sweep over
    # models that learn at different speeds gives each a budget it trains in, not the slowest one's to all
    steps_by_model: dict[str, int] | None = field(default_factory=dict)
    eval_every: int = 250  # full train/test evaluation, in steps (and always at the end)
    # If set, replaces `eval_every` by this many evaluations evenly spaced over the run (every steps // evals
    # steps): a sweep over batch sizes with its budget in epochs evaluates every run equally often.
    evals: int | None = None
    # At the end, also test with the test sequences made this many steps long, aligned at their end
    # (first steps dropped, or blank steps put before); models that read any length: rnn.
    # metrics.json gets final_test_acc_length_<n> for each.
    eval_lengths: list[int] = field(default_factory=list)
    # Opt-in speed flags: whether they pay off depends on the model and the machine, which
    # `python -m bnexp.bench --only scaling` measures (README, Performance). Compiling costs time up front.
    channels_last: bool = False  # model=cnn on images: NHWC weights and batches
    compile: bool = False  # the training steps call torch.compile(model) (logging steps stay eager)
    # A checkpoint in the run folder every N steps (0 = none): a killed run, started again with the same
    # command, resumes from its last one and records what it would have without the kill (bnexp.checkpoint).
    checkpoint_every: int = 0
    keep_checkpoint: bool = False  # keep it once the run has finished (then the state at its end)


@dataclass
class EvalConfig:
    # Before each evaluation, also test with "precise" population statistics (Wu & Johnson 2021, Sec. 3.1):
    # each BN layer's running statistics recomputed, on a copy of the network with its weights frozen, as the
    # equally weighted average over this many training batches (of data.batch_size) instead of the EMA's
    # recent-batch-weighted one. 0: off. Logged beside the EMA's test as test/acc_precise_bn.
    precise_bn_batches: int = 0


@dataclass
class LogConfig:
    stats_every: int = 50  # percentiles, mean/std of each probe point and gradient norms
    hist_every: int = 500  # histograms of each probe point
    # The probe points' statistics and histograms on the first N test examples, a fixed held-out batch, in
    # eval mode (bnexp.monitor.observe); 0: on each logging step's training batch, in training mode.
    probe_batch: int = 0
    progress_every: int = 0  # a progress line every N steps; 0 = only at evaluations


@dataclass
class MeasureConfig:
    """Extra measurements on the training batch (bnexp.measures), every N steps; 0 = off."""

    ics_every: int = 0  # gradient-based internal covariate shift per layer (Santurkar et al. 2018)
    landscape_every: int = 0  # loss and gradient along the gradient direction (Santurkar et al. 2018)
    # The top eigenvalue of the training loss's Hessian (Cohen et al. 2021, edge of stability) by power
    # iteration on Hessian-vector products, on a fixed batch, the first `sharpness_batch` training examples,
    # in training mode; at most `sharpness_iters` iterations, stopping once λ changes by less than
    # `sharpness_tol` of itself (twice that where the eigenvalue of largest magnitude is negative: a second,
    # shifted iteration finds the top one); at the first step (before any update) and every
    # `sharpness_every` steps.
    # Every run of a vectorized sweep is measured too.
    sharpness_every: int = 0
    sharpness_batch: int = 1000
    sharpness_iters: int = 20
    sharpness_tol: float = 1e-3


@dataclass
class Config:
    model: ModelConfig = MISSING
    norm: NormConfig = MISSING
    init: InitConfig = MISSING
    data: DataConfig = MISSING
    optim: OptimConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    seed: int = 0
    device: Device = Device.auto
    # Intra-op CPU threads per run; 0 = PyTorch's default (one per core). Sweeps run a job per core, and
    # one thread each keeps them from fighting over the cores; alone on an idle machine a second thread
    # pays off only a little (`scaling.*.threads_2_vs_1_wall` of python -m bnexp.bench measures it).
    threads: int = 1
    # Set by experiment configs: which claim a sweep tests (its analysis in bnexp.claims).
    claim: str | None = None


def _at_least(low: int) -> tuple[str, Callable]:
    return f"at least {low}", lambda v: v >= low


# The range of every number the schema's types alone do not bound: out of it, PyTorch would answer
# with a traceback (a negative width or learning rate) or, worse, train on nonsense (BN momentum 2).
# Ranges that depend on the data (data.batch_size, data.subset, norm.groups) are checked where the
# data is known. A list's (or a dict's) range holds for each of its elements (values); None (null) is always
# allowed.
RANGES: dict[str, tuple[str, Callable]] = {
    "model.depth": _at_least(0),
    "model.width": _at_least(1),
    "model.channels": _at_least(1),
    "model.dropout": ("in [0, 1)", lambda v: 0 <= v < 1),
    "model.crop": _at_least(1),
    "norm.eps": ("positive", lambda v: v > 0),
    "norm.momentum": ("in [0, 1] (or null)", lambda v: 0 <= v <= 1),
    "norm.r_max": _at_least(1),
    "norm.d_max": _at_least(0),
    "norm.warmup": _at_least(0),
    "norm.r_max_at": _at_least(0),
    "norm.d_max_at": _at_least(0),
    "norm.gamma_init": _at_least(0),
    "norm.ghost_batch_size": _at_least(2),
    "init.std": _at_least(0),
    "init.gain": _at_least(0),
    "optim.lr": _at_least(0),
    "optim.weight_decay": _at_least(0),
    "optim.momentum": _at_least(0),
    "optim.lr_batch_size": _at_least(1),
    "train.steps": _at_least(1),
    "train.epochs": _at_least(1),
    "train.steps_by_model": _at_least(1),
    "train.eval_every": _at_least(1),
    "train.evals": _at_least(1),
    "train.eval_lengths": _at_least(1),
    "train.checkpoint_every": _at_least(0),
    "eval.precise_bn_batches": _at_least(0),
    "log.stats_every": _at_least(1),
    "log.hist_every": _at_least(1),
    "log.progress_every": _at_least(0),
    "log.probe_batch": _at_least(0),
    "measure.ics_every": _at_least(0),  # 0: off
    "measure.landscape_every": _at_least(0),
    "measure.sharpness_every": _at_least(0),
    "measure.sharpness_batch": _at_least(2),
    "measure.sharpness_iters": _at_least(1),
    "measure.sharpness_tol": ("positive", lambda v: v > 0),
    "threads": _at_least(0),
}


def check_ranges(cfg) -> None:
    """Raise one UserError that names every value of `cfg` outside its range in RANGES."""
    wrong = []
    for key, (allowed, ok) in RANGES.items():
        value = OmegaConf.select(cfg, key)
        values = (
            value.values() if OmegaConf.is_dict(value) else value if OmegaConf.is_list(value) else [value]
        )
        if not all(v is None or ok(v) for v in values):
            wrong.append(f"{key}={value} (must be {allowed})")
    if wrong:
        raise UserError(
            f"Out of range: {'; '.join(wrong)}. Set {'it' if len(wrong) == 1 else 'them'} within "
            f"range on the command line or in the experiment config."
        )


def register() -> None:
    ConfigStore.instance().store(name="config_schema", node=Config)
