"""Internal covariate shift and loss-landscape smoothness, measured on the training batch the way
Santurkar et al. (2018, "How does batch normalization help optimization?", Sec. 2.2 and 3.1) do, and
sharpness, the top eigenvalue of the loss's Hessian (Cohen et al. 2021), on a fixed batch.

Each measurement is `fn(model, x, y, lr) -> {tag: value}` (TensorBoard-style tags, Python floats).
The training loop calls it on the step's batch after loss.backward() and before optimizer.step(),
every `measure.ics_every` / `measure.landscape_every` steps, and records the result with
`Monitor.scalars`. What a call leaves as it found it:

  * the parameters and their .grad: everything runs through torch.func.functional_call on detached
    copies, and gradients come from torch.autograd.grad, which accumulates nothing;
  * the buffers: BN updates its running statistics in place in training mode, so every forward here
    gets fresh clones of all buffers;
  * the RNG stream: the RNG state at the call is restored before every forward and again at the end,
    so all forwards of one measurement draw the same dropout masks (the comparison is between
    parameter settings only; the masks are not the training forward's, whose RNG state is gone) and
    the training draws exactly what it would have drawn without the measurement;
  * the noise of noisy BN (`Noise`): all forwards run inside `held_noise`, so they reuse the noise the
    step itself was trained with (drawn in its training forward) and draw none.

The model runs in its current mode (training mode, in the loop: BN normalizes by the batch's own
statistics, as the step did). The loss is the training loss, cross-entropy.

Optimizer: the update that G′ and the landscape steps take is plain SGD, p ← p − η·∂L/∂p, whatever
the run's optimizer: momentum, Adam's per-parameter scaling and weight decay are ignored.
"""

from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from bnexp import records
from bnexp.models import Network
from bnexp.norm import Noise, held_noise


def _get_rng(device: torch.device) -> list[Tensor]:
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    elif device.type == "mps":
        states.append(torch.mps.get_rng_state())
    return states


def _set_rng(device: torch.device, states: list[Tensor]) -> None:
    torch.set_rng_state(states[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(states[1], device)
    elif device.type == "mps":
        torch.mps.set_rng_state(states[1])


@contextmanager
def _measuring(model: Network, x: Tensor, hold: bool = True):
    """Yields `rewind()`, which puts the RNG back to its state at entry (also done on exit); the
    `Noise` layers (noisy BN's) hold their noise meanwhile, or (hold=False, for a batch other than the
    step's) draw afresh and get their last draw back on exit."""
    states = _get_rng(x.device)
    noises = [(m, m.noise) for m in model.modules() if isinstance(m, Noise)]
    try:
        with held_noise(model) if hold else nullcontext():
            yield lambda: _set_rng(x.device, states)
    finally:
        _set_rng(x.device, states)
        for m, noise in noises:
            m.noise = noise


def _loss_and_grads(model, params: dict, x, y, wrt: list[str], rewind) -> tuple[Tensor, dict]:
    """The training loss at `params` (name -> tensor) on (x, y), and its gradient w.r.t. `wrt`.

    Buffers are cloned, so BN's running statistics of the real model stay untouched.
    """
    wanted = set(wrt)
    leaves = {n: p.detach().requires_grad_(n in wanted) for n, p in params.items()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    rewind()
    with torch.enable_grad():
        loss = F.cross_entropy(functional_call(model, (leaves, buffers), (x,)), y)
        grads = torch.autograd.grad(loss, [leaves[n] for n in wrt], allow_unused=True)
    return loss.detach(), {n: torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(wrt, grads)}


def _params(model) -> dict[str, Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


def _layer_groups(model: Network) -> list[tuple[str, str, list[str]]]:
    """(tag, name of the layer's weight, names of all the layer's parameters) for each hidden layer
    in depth order, then the head."""
    full = {id(m): name for name, m in model.named_modules()}
    groups = []
    for tag, layer in model.layers().items():
        prefix = full[id(layer)]
        groups.append(
            (tag, f"{prefix}.linear.weight", [f"{prefix}.{n}" for n, _ in layer.named_parameters()])
        )
    prefix = full[id(model.head)]
    groups.append(("head", f"{prefix}.weight", [f"{prefix}.{n}" for n, _ in model.head.named_parameters()]))
    return groups


def _flat(tensors) -> Tensor:
    return torch.cat([t.flatten() for t in tensors])


def gradient_ics(model: Network, x: Tensor, y: Tensor, lr: float) -> dict[str, float]:
    """Santurkar et al.'s gradient-based internal covariate shift of each layer on this batch.

    For layer i (the hidden layers layer1, layer2, ..., then the head): G = ∂L/∂W_i, the gradient of
    the layer's weight (its linear or conv map), and G′ = the same gradient recomputed on the same
    batch after every parameter of the layers before i (weights, biases, norm γ and β) has taken
    its SGD step p − lr·∂L/∂p, layer i and those after it unchanged. Tags per layer:
      ics/<layer>/l2   ‖G − G′‖₂
      ics/<layer>/cos  cos(G, G′) (1: the update of the layers below left layer i's gradient as it was)
      ics/<layer>/rel  ‖G − G′‖₂ / ‖G‖₂, the same change in units of the gradient's own size
    For layer1 nothing precedes it, so G′ = G: l2 = 0, cos = 1 (a check of the machinery).
    """
    params = _params(model)
    values, tags = [], []
    with _measuring(model, x) as rewind:
        _, g = _loss_and_grads(model, params, x, y, list(params), rewind)
        before: list[str] = []
        for tag, weight, names in _layer_groups(model):
            moved = {**params, **{n: params[n] - lr * g[n] for n in before}}
            _, g_moved = _loss_and_grads(model, moved, x, y, [weight], rewind)
            G, G2 = g[weight].flatten(), g_moved[weight].flatten()
            l2 = torch.linalg.vector_norm(G - G2)
            values += [l2, F.cosine_similarity(G, G2, dim=0), l2 / torch.linalg.vector_norm(G)]
            tags += [records.ics(tag, stat) for stat in (records.ICS_L2, records.ICS_COS, records.ICS_REL)]
            before += names
    return dict(zip(tags, torch.stack(values).float().tolist()))  # one host sync


def landscape(model: Network, x: Tensor, y: Tensor, lr: float) -> dict[str, float]:
    """The loss landscape along the gradient on this batch (Santurkar et al. 2018, Sec. 3.1, Fig. 4).

    With g = ∇L(θ) over all parameters, the points θ_η = θ − η·g for η in records.LANDSCAPE_STEPS × lr
    (½ to 4 SGD steps). Tags:
      landscape/loss_range        max_η L(θ_η) − min_η L(θ_η): how much the loss varies along the
                                  gradient direction (the Lipschitzness of the loss), ≥ 0
      landscape/loss_min|loss_max those two values
      landscape/grad_change       max_η ‖∇L(θ_η) − ∇L(θ)‖₂ ("gradient predictiveness": small when the
                                  gradient here predicts the gradient there)
      landscape/beta_smoothness   max_η ‖∇L(θ_η) − ∇L(θ)‖₂ / ‖θ_η − θ‖₂, the "effective β-smoothness"
                                  (largest gradient change per distance moved)
      landscape/loss, landscape/grad_norm   L(θ) and ‖g‖₂ at the current point
    """
    params = _params(model)
    names = list(params)
    with _measuring(model, x) as rewind:
        loss, g = _loss_and_grads(model, params, x, y, names, rewind)
        g_flat = _flat(g[n] for n in names)
        g_norm = torch.linalg.vector_norm(g_flat)
        losses, changes, betas = [], [], []
        for k in records.LANDSCAPE_STEPS:
            eta = k * lr
            moved = {n: params[n] - eta * g[n] for n in names}
            loss_k, g_k = _loss_and_grads(model, moved, x, y, names, rewind)
            change = torch.linalg.vector_norm(_flat(g_k[n] for n in names) - g_flat)
            losses.append(loss_k)
            changes.append(change)
            betas.append(change / (eta * g_norm))
    losses, changes, betas = torch.stack(losses), torch.stack(changes), torch.stack(betas)
    out = {
        records.LOSS_RANGE: losses.max() - losses.min(),
        records.LOSS_MIN: losses.min(),
        records.LOSS_MAX: losses.max(),
        records.GRAD_CHANGE: changes.max(),
        records.BETA_SMOOTHNESS: betas.max(),
        records.LOSS: loss,
        records.GRAD_NORM: g_norm,
    }
    out = {records.landscape(key): value for key, value in out.items()}
    return dict(zip(out, torch.stack(list(out.values())).float().tolist()))  # one host sync


def sharpness(model: Network, x: Tensor, y: Tensor, iters: int, tol: float) -> tuple[Tensor, int]:
    """λ_max, the top eigenvalue of the Hessian of the training loss on (x, y) w.r.t. all parameters, and the
    iterations it took (Cohen et al. 2021, "Gradient descent on neural networks typically occurs at the edge
    of stability", Sec. 2: sharpness, the Hessian's maximum eigenvalue).

    Power iteration on Hessian-vector products Hv = ∇(∇L·v) (double backward through one forward and one
    backward kept as a graph) from a fixed random start finds λ_m, the eigenvalue of largest magnitude. Where
    that is negative (near initialization, or at a saddle, the most negative curvature can dominate), the
    top eigenvalue is found by a second power iteration on H − λ_m·I, whose eigenvalues λ − λ_m are all
    ≥ 0 and largest at λ_max. Each runs at most `iters` times, stopping once its estimate changes by less
    than `tol` of itself; the iterations returned are both together. The model runs as `_loss_and_grads`
    runs it: its current mode, buffers cloned, the RNG rewound; noisy BN draws its noise for this batch (it
    is not the step's), and its last draw is put back."""
    params = _params(model)
    names = list(params)
    with _measuring(model, x, hold=False) as rewind:
        leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        rewind()
        with torch.enable_grad():
            loss = F.cross_entropy(functional_call(model, (leaves, buffers), (x,)), y)
            grads = torch.autograd.grad(loss, [leaves[n] for n in names], create_graph=True)
            g = _flat(grads)

            def hvp(v: Tensor) -> Tensor:
                return _flat(torch.autograd.grad(g, [leaves[n] for n in names], v, retain_graph=True))

            start = torch.Generator().manual_seed(0)  # the same start at every measurement
            v = torch.randn(g.numel(), generator=start, dtype=g.dtype).to(g.device)
            lam, done = dominant_eigenvalue(hvp, v, iters, tol)
            if lam < 0:
                shifted, more = dominant_eigenvalue(lambda u: hvp(u) - lam * u, v, iters, tol)
                lam, done = shifted + lam, done + more
    return lam, done


def dominant_eigenvalue(matvec, v: Tensor, iters: int, tol: float) -> tuple[Tensor, int]:
    """The eigenvalue of largest magnitude of the symmetric map `matvec`, by power iteration from v:
    v ← Av/‖Av‖, λ = vᵀAv, at most `iters` times, stopping once λ changes by less than `tol`·|λ|; and the
    iterations it took."""
    v = v / torch.linalg.vector_norm(v)
    lam, done = None, 0
    while done < iters:
        done += 1
        av = matvec(v)
        previous, lam = lam, torch.dot(v, av).detach()
        v = (av / torch.linalg.vector_norm(av)).detach()
        if previous is not None and abs(float(lam - previous)) <= tol * abs(float(lam)):
            break
    return lam, done
