"""What trains under each fine-tuning method, and the trainable-parameter budget.

    full        every weight
    bitfit      only the bias terms (Ben Zaken et al., 2022)
    lora        peft LoRA (rank 8) in every linear layer of every transformer layer: scattered modules
    adalora     peft AdaLoRA there (ranks 12 → 8 by importance during training; no orthogonality penalty,
                which lives in peft's model wrapper that sentence-transformers' loss does not call)
    ia3         peft (IA)³ vectors on the attention keys and values and the FFN (Liu et al., 2022)
    connected   LoRA (rank 8) in the attention query/value of every layer (inside) plus the aside
                pathway of ``retrieval.adapters`` joining the layers into one trainable path

The two parameter-efficient methods get comparable budgets (~1.5% of MiniLM each), so a difference
between them is the wiring, not the size. A budget (``max_fraction``) the chosen modules exceed is an
error, not a silent overshoot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from retrieval.adapters import LORA_TARGETS, ConnectedAdapters
from retrieval.errors import SiftrankError

FFN_PATTERN = r"layer\.\d+\.(intermediate\.dense|output\.dense)\.weight$"  # both FFN matrices of a layer
ALL_LINEAR = r".*encoder\.layer\.\d+\..*(query|key|value|dense)$"  # attention, its output, both FFN matrices


@dataclass(frozen=True)
class Method:
    """A fine-tuning method: its default learning rate, and either which of the model's own weights train
    (``trains``) or where its adapter modules go (``targets``, for ``retrieval.adapters.INSIDE``)."""

    learning_rate: float
    trains: Callable[[str], bool] | None = None
    targets: str | tuple[str, ...] = ALL_LINEAR


#: the registry of fine-tuning methods (a new adapter kind: an entry here and one in retrieval.adapters.INSIDE)
METHODS: dict[str, Method] = {
    "connected": Method(5e-4, targets=LORA_TARGETS),
    "lora": Method(5e-4),
    "adalora": Method(5e-4),
    "ia3": Method(3e-3, targets=r".*encoder\.layer\.\d+\.(attention\.self\.(key|value)|output\.dense)$"),
    "bitfit": Method(1e-3, trains=lambda name: name.endswith("bias")),
    "full": Method(5e-5, trains=lambda name: True),
}


class TrainableSetup:
    """Freezes a sentence-transformers model except what ``method`` trains (adding adapter modules)."""

    def __init__(self, method: str, lora_rank: int = 8, aside_dim: int = 64, max_fraction: float | None = None,
                 total_steps: int = 100) -> None:
        if method not in METHODS:
            raise SiftrankError(f"fine-tuning method must be one of {', '.join(METHODS)}, not '{method}'")
        if max_fraction is not None and not 0 < max_fraction <= 1:
            raise SiftrankError(f"the trainable budget must be a fraction in (0, 1], not {max_fraction}")
        self.method, self.max_fraction, self.spec = method, max_fraction, METHODS[method]
        self.adapters: ConnectedAdapters | None = None
        if self.spec.trains is None:
            self.adapters = ConnectedAdapters(method, lora_rank, aside_dim, self.spec.targets, total_steps)

    def apply(self, model) -> dict[str, Any]:
        """Attach modules, set ``requires_grad``, check the budget; returns the parameter counts."""
        base_total = sum(p.numel() for p in model.parameters())
        if self.adapters is not None:
            self.adapters.attach(model)
        trains = self.spec.trains or self.adapters.owns  # type: ignore[union-attr]
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(trains(name))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        fraction = trainable / base_total
        if self.max_fraction is not None and fraction > self.max_fraction:
            raise SiftrankError(f"{self.method} trains {trainable:,} parameters = {fraction:.2%} of the model, over "
                                f"the budget of {self.max_fraction:.2%}")
        return {"trainable": trainable, "base_parameters": base_total, "trainable_fraction": fraction}
