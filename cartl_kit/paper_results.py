"""The paper's published results, stored once and as numbers (CARTL, Chen et al., ICML 2021).

Every cell is clean / robust accuracy in percent, exactly as printed in the poster's tables (transcribed in
``CARTL_REFERENCE.md`` §11); each ``PaperTable`` names its source and its setting. In the authors' scripts
robust accuracy is foolbox LinfPGD-100 (ε = 8/255, step 2/255, random start) on the full target test set.
The reproduction report, its full-scale recipes and notebook 05 read these numbers; nothing else types them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Mapping, TypeVar

Row = TypeVar("Row")
Column = TypeVar("Column")


@dataclass(frozen=True)
class Accuracy:
    """One cell of a paper table: clean and robust accuracy, in percent as printed.

    Example:
        >>> str(Accuracy(91.17, 14.36))
        '91.17 / 14.36'
    """

    clean: float
    robust: float

    def __str__(self) -> str:
        return f"{self.clean:.2f} / {self.robust:.2f}"

    def as_row(self) -> dict[str, float]:
        """The cell as a row of the kit's tables: ``clean_acc`` and ``robust_acc`` as fractions."""
        return {"clean_acc": self.clean / 100, "robust_acc": self.robust / 100}


@dataclass(frozen=True)
class PaperTable(Generic[Row, Column]):
    """A table of the paper: where it is printed, its setting, and its cells (row → column → accuracy)."""

    source: str
    setting: str
    cells: Mapping[Row, Mapping[Column, Accuracy]]

    def __getitem__(self, row: Row) -> Mapping[Column, Accuracy]:
        return self.cells[row]


def row_text(row: Mapping[Any, Accuracy]) -> str:
    """A table row as ``"91.17 / 14.36, 90.86 / 14.89"`` (its cells in order, clean / robust %)."""
    return ", ".join(str(cell) for cell in row.values())


# The kit's ``bn_case`` names against the paper's "sub-model frozen set | extractor frozen set", in the paper's order.
BN_CASE_LABELS = {"train-update": "– | W,b", "train-reuse": "– | μ,σ,W,b", "freeze-update": "W,b | W,b",
                  "freeze-reuse": "W,b | μ,σ,W,b"}


def _bn_row(*cells: tuple[float, float]) -> dict[str, Accuracy]:
    return {case: Accuracy(*cell) for case, cell in zip(BN_CASE_LABELS, cells, strict=True)}


# setting ("source → target, k = fine-tuned blocks") → bn_case → accuracy
BN_ABLATION: PaperTable[str, str] = PaperTable(
    source="poster, table \"Rethinking fine-tuning BN\" (CARTL_REFERENCE.md §11.1)",
    setting="vanilla transfer of the last k blocks from an AT teacher; WRN-34-10 for CIFAR-100 → CIFAR-10 "
            "(the others' architecture is not stated; WRN-28-4 is likely)",
    cells={"CIFAR-100 → CIFAR-10, k = 8": _bn_row((91.17, 14.36), (90.86, 14.89), (90.70, 17.41), (90.84, 18.54)),
           "CIFAR-10 → GTSRB, k = 6": _bn_row((93.02, 30.22), (89.29, 32.22), (92.13, 32.22), (88.94, 34.53)),
           "CIFAR-10 → SVHN, k = 6": _bn_row((95.29, 3.88), (95.24, 9.22), (95.16, 4.90), (94.86, 11.52)),
           "CIFAR-10 → SVHN, k = 5": _bn_row((93.47, 4.71), (92.92, 12.45), (93.41, 5.64), (92.10, 14.16))})


def _beta_row(*cells: tuple[float, float]) -> dict[float, Accuracy]:
    return {beta: Accuracy(*cell) for beta, cell in zip((1.0, 0.6, 0.4), cells, strict=True)}


# (k, FDM weight λ) → NEFT bound β → accuracy
LAM_BETA: PaperTable[tuple[int, float], float] = PaperTable(
    source="poster, CARTL λ × β table (CARTL_REFERENCE.md §11.2)",
    setting="CIFAR-100 → CIFAR-10, WRN-34-10; FDM teacher with λ and k, NEFT transfer of the same k with β",
    cells={(4, 0.01): _beta_row((86.09, 25.73), (86.08, 27.17), (85.64, 28.40)),
           (4, 0.005): _beta_row((85.41, 25.75), (85.47, 27.14), (85.51, 28.47)),
           (6, 0.01): _beta_row((87.78, 25.58), (87.92, 27.27), (87.96, 29.60)),
           (6, 0.005): _beta_row((87.66, 25.97), (88.07, 27.64), (87.79, 30.94)),
           (8, 0.01): _beta_row((91.85, 16.36), (91.63, 19.22), (91.55, 27.47)),
           (8, 0.005): _beta_row((91.71, 17.62), (91.10, 21.60), (91.30, 29.34))})


def _k_row(*cells: tuple[float, float]) -> dict[int, Accuracy]:
    return {k: Accuracy(*cell) for k, cell in zip((4, 6, 8), cells, strict=True)}


# source → transfer ("AT → TL", ...) → k ("Case-4/6/8") → accuracy
ABLATION: PaperTable[str, int] = PaperTable(
    source="poster, component ablation table (CARTL_REFERENCE.md §11.3)",
    setting="CIFAR-100 → CIFAR-10, WRN-34-10; the AT+FDM → NEFT row is the λ = 0.005, β = 0.4 cell of §11.2 "
            "(β of AT → NEFT is not stated)",
    cells={"AT → TL": _k_row((83.22, 25.23), (86.92, 25.38), (90.82, 18.54)),
           "AT → NEFT": _k_row((83.72, 26.29), (86.87, 27.95), (90.92, 29.97)),
           "AT+FDM → NEFT": _k_row((85.51, 28.47), (87.79, 30.94), (91.30, 29.34))})


def _method_row(*cells: tuple[float, float]) -> dict[str, Accuracy]:
    return {method: Accuracy(*cell) for method, cell in zip(("LwF", "vanilla", "CARTL"), cells, strict=True)}


# "source → target" → method (LwF, vanilla, CARTL) → accuracy
BASELINES: PaperTable[str, str] = PaperTable(
    source="poster, cross-dataset comparison table (CARTL_REFERENCE.md §11.4)",
    setting="WRN-34-10 for the CIFAR-100 sources, WRN-28-4 for the others; k not stated (CIFAR-10 → SVHN vanilla "
            "is §11.1's k = 6, W,b | μ,σ,W,b cell)",
    cells={"CIFAR-100 → SVHN": _method_row((85.90, 6.67), (92.83, 17.64), (93.96, 22.21)),
           "CIFAR-100 → GTSRB": _method_row((70.34, 15.85), (80.40, 30.25), (83.07, 47.34)),
           "CIFAR-10 → SVHN": _method_row((94.32, 4.68), (94.86, 11.52), (94.76, 21.65)),
           "GTSRB → SVHN": _method_row((81.80, 1.08), (93.91, 6.08), (94.07, 15.26))})

# Every stored table, by the name of the reproduction table it stands beside.
PAPER_TABLES: dict[str, PaperTable] = {"batchnorm": BN_ABLATION, "lam_beta": LAM_BETA, "ablation": ABLATION,
                                       "baselines": BASELINES}

__all__ = ["ABLATION", "Accuracy", "BASELINES", "BN_ABLATION", "BN_CASE_LABELS", "LAM_BETA", "PAPER_TABLES",
           "PaperTable", "row_text"]
