"""cartl_kit: a teaching and analysis kit for CARTL (Chen et al., ICML 2021).

Importing the kit changes nothing (no seeding, no device work). The engine's public API:

- models: ``create_model``, ``blocks``, ``ARCHITECTURES``, ``set_half_residual``
- attacks: ``pgd_linf``, ``pgd_linf_any`` (any-iterate, the fast evaluation path), ``fgsm``; ``AttackConfig``,
  how step functions, evaluation and analysis are given a PGD attack
- losses: ``fdm_loss``, ``lwf_loss``
- NEFT: ``apply_neft``, ``remove_neft``, ``neft_report``
- transfer: ``make_student``, ``BN_CASES``, ``trainable_summary``
- training: ``fit`` (with an ``OptimConfig``), ``natural_step``, ``adversarial_step``, ``fdm_step``, ``lwf_step``,
  ``lr_at``
- strong attacks: ``apgd``, ``apgd_targeted`` (Croce & Hein's APGD with CE / targeted DLR losses)
- evaluation: ``ensemble_accuracy`` (the headline: worst case over a large-step PGD guard, APGD-CE and
  APGD-T), ``EnsembleConfig``, ``worst_case``; ``accuracy``, ``robust_accuracy`` (the paper's PGD-k),
  ``EvalResult``, ``check_model``, ``compare_precision``
- speed switches (bf16 autocast, cuDNN autotuner): ``cartl_kit.speed``
- runtime: ``seed_everything``, ``default_device`` (``cartl_kit.runtime``)
"""

from .apgd import apgd, apgd_targeted
from .attacks import AttackConfig, fgsm, pgd_linf, pgd_linf_any
from .config import OptimConfig
from .ensemble import EnsembleConfig, EnsembleResult, ensemble_accuracy, worst_case
from .evaluate import EvalResult, SanityCheckError, accuracy, check_model, compare_precision, robust_accuracy
from .losses import fdm_loss, lwf_loss
from .models import ARCHITECTURES, WideResNet, blocks, create_model, set_half_residual
from .neft import apply_neft, conv_operator_norm, neft_report, remove_neft
from .runtime import default_device, seed_everything
from .train import adversarial_step, fdm_step, fit, lr_at, lwf_step, natural_step
from .transfer import BN_CASES, FrozenBatchNorm2d, get_bn_case, make_student, trainable_summary

__all__ = [
    "ARCHITECTURES", "AttackConfig", "BN_CASES", "EnsembleConfig", "EnsembleResult", "EvalResult", "FrozenBatchNorm2d",
    "OptimConfig", "SanityCheckError", "WideResNet",
    "accuracy", "adversarial_step", "apgd", "apgd_targeted", "apply_neft", "blocks", "check_model", "compare_precision", "conv_operator_norm",
    "create_model", "default_device", "ensemble_accuracy", "fdm_loss", "fdm_step", "fgsm", "fit", "get_bn_case", "lr_at",
    "lwf_loss", "lwf_step", "make_student", "natural_step", "neft_report", "pgd_linf", "pgd_linf_any", "remove_neft",
    "robust_accuracy", "seed_everything", "set_half_residual", "trainable_summary", "worst_case",
]
__version__ = "0.1.0"
