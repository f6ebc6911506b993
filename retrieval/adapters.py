"""Connected adapters ("Scattered or Connected?", Ma et al., CIKM 2022): runtime modules and artifacts.

Inside modules: LoRA (peft) in the attention of every layer. The same class builds the baselines: ``lora``
(peft LoRA in every linear layer, no aside pathway) and ``adalora`` (peft AdaLoRA there: adaptive ranks). Aside pathway: one bottleneck module per
layer (down -> GELU -> up) running alongside the frozen transformer. Layer l's aside module reads the
layer's output hidden state h_l plus the previous aside output a_(l-1); its output is accumulated:

    a_0 = 0,    a_l = a_(l-1) + up_l(GELU(down_l(h_l + a_(l-1)))),    final hidden = h_L + a_L

so the per-layer modules form one connected trainable path whose end joins the final representation
(before pooling). The up-projections start at zero: at step 0 the model is exactly the pretrained one.
The pathway never feeds back into the frozen layers; LoRA changes them from the inside.

This module lives in ``retrieval`` because the Encoder applies a trained adapter at inference time;
``training/adapters.py`` decides what trains. An adapter artifact (``adapter.safetensors`` +
``manifest.json``) records the fingerprint of its base model and is refused on any other.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from retrieval.artifacts import Manifest, atomic_dir
from retrieval.errors import SiftrankError

WEIGHTS = "adapter.safetensors"
LORA_TARGETS = ("query", "value")
ASIDE_MARKER = "aside_pathway."


class InsideModules(NamedTuple):
    """One kind of parameter-efficient module put inside the transformer's layers: how it is attached to a
    Hugging Face model (in place), and the substring that names its weights."""

    attach: Callable[[ConnectedAdapters, Any, Any], None]  # (adapters, transformer, target modules)
    marker: str


def _lora(adapters: ConnectedAdapters, transformer: Any, targets: Any) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    rank = adapters.lora_rank
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets), transformer)


def _adalora(adapters: ConnectedAdapters, transformer: Any, targets: Any) -> None:
    """AdaLoRA (Zhang et al., 2023): SVD-form LoRA whose ranks are pruned from init_r toward r by importance
    during training (``ConnectedAdapters.step``); the pruned singular values are zeros in the weights."""
    from peft import AdaLoraConfig
    from peft.tuners.adalora import AdaLoraModel

    steps, rank = max(adapters.total_steps, 4), adapters.lora_rank
    config = AdaLoraConfig(init_r=int(1.5 * rank), target_r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                           target_modules=targets, total_step=steps, tinit=steps // 10, tfinal=steps // 5,
                           deltaT=max(1, steps // 20))
    adapters.allocator = AdaLoraModel(transformer, config, "default")


def _ia3(adapters: ConnectedAdapters, transformer: Any, targets: Any) -> None:
    """(IA)³ (Liu et al., 2022): learned vectors rescaling the attention keys and values and the FFN's
    inner activations; about 0.1% of MiniLM's parameters."""
    from peft import IA3Config, inject_adapter_in_model

    ffn = r".*encoder\.layer\.\d+\.output\.dense$"  # the FFN's down projection: its input is rescaled
    inject_adapter_in_model(IA3Config(target_modules=targets, feedforward_modules=ffn), transformer)


#: the inside modules by method; ``connected`` adds the aside pathway to its LoRA
INSIDE: dict[str, InsideModules] = {
    "connected": InsideModules(_lora, "lora_"),
    "lora": InsideModules(_lora, "lora_"),
    "adalora": InsideModules(_adalora, "lora_"),
    "ia3": InsideModules(_ia3, "ia3_"),
}


def _torch():
    import torch

    return torch


class ConnectedAdapters:
    """Builds the inside (LoRA) and aside modules on a BERT-style sentence-transformers model, and
    saves or restores their weights as an artifact tied to the base model."""

    def __init__(self, method: str = "connected", lora_rank: int = 8, aside_dim: int = 64,
                 lora_targets: tuple[str, ...] | str = LORA_TARGETS, total_steps: int = 100) -> None:
        if method not in INSIDE:
            raise SiftrankError(f"adapter method must be one of {', '.join(INSIDE)}, not '{method}'")
        self.total_steps = total_steps  # adalora: its rank schedule spans the training run
        self.allocator: Any = None  # adalora: the peft tuner that reallocates ranks during training
        # peft target modules: suffixes, or one regex over module names
        self.lora_targets = lora_targets if isinstance(lora_targets, str) else tuple(lora_targets)
        self.method, self.lora_rank, self.aside_dim = method, lora_rank, aside_dim

    @property
    def aside(self) -> bool:
        return self.method == "connected"

    def owns(self, name: str) -> bool:
        """Whether parameter ``name`` belongs to the adapter (what trains)."""
        return INSIDE[self.method].marker in name or ASIDE_MARKER in name

    def attach(self, model) -> None:
        """Add the modules to ``model`` (a SentenceTransformer) in place; they are its parameters now."""
        transformer = model[0].auto_model
        layers = getattr(getattr(transformer, "encoder", None), "layer", None)
        if layers is None:
            raise SiftrankError("connected adapters need a BERT-style encoder (encoder.layer[...])")
        targets = self.lora_targets if isinstance(self.lora_targets, str) else list(self.lora_targets)
        INSIDE[self.method].attach(self, transformer, targets)
        if self.aside:
            pathway = AsidePathway(transformer.config.hidden_size, len(layers), self.aside_dim)
            pathway.to(next(transformer.parameters()).dtype)
            transformer.aside_pathway = pathway
            pathway.hook(layers)

    def step(self, global_step: int) -> None:
        """After each optimiser step (gradients still present): AdaLoRA's rank reallocation; else nothing."""
        if self.allocator is not None:
            self.allocator.update_and_allocate(global_step)

    def state_dict(self, model) -> dict[str, Any]:
        """The adapter's weights only (LoRA matrices and the aside pathway)."""
        transformer = model[0].auto_model
        return {k: v.detach().cpu().float().contiguous() for k, v in transformer.state_dict().items() if self.owns(k)}

    def save(self, model, path: Path, base: dict[str, Any], extra: dict[str, Any] | None = None,
             overwrite: bool = False) -> None:
        """Write ``adapter.safetensors`` + ``manifest.json`` (the base model's identity inside), atomically."""
        from safetensors.torch import save_file

        with atomic_dir(Path(path), overwrite=overwrite) as tmp:
            save_file(self.state_dict(model), str(tmp / WEIGHTS))
            Manifest(kind="adapter", encoder=base, parameters={"method": self.method, "lora_rank": self.lora_rank,
                     "aside_dim": self.aside_dim, "total_steps": self.total_steps, "lora_targets": self.lora_targets if isinstance(self.lora_targets, str)
                     else list(self.lora_targets)},
                     **(extra or {})).write(tmp)

    @classmethod
    def load(cls, path: Path, model, base: dict[str, Any]) -> ConnectedAdapters:
        """Attach the adapter stored at ``path`` to ``model``; refused unless ``base`` is its base model."""
        from safetensors.torch import load_file

        path = Path(path)
        manifest = Manifest.read(path, kind="adapter")
        expected = manifest.encoder or {}
        if expected.get("fingerprint") != base.get("fingerprint"):
            raise SiftrankError(f"{path}: this adapter belongs to base model {expected.get('model', '?')} "
                                f"(fingerprint {expected.get('fingerprint', '?')}), not {base.get('model')} "
                                f"(fingerprint {base.get('fingerprint')})")
        params = manifest.parameters
        targets = params["lora_targets"]
        adapters = cls(params["method"], params["lora_rank"], params["aside_dim"],
                       targets if isinstance(targets, str) else tuple(targets), params.get("total_steps", 100))
        adapters.attach(model)
        weights = load_file(str(path / WEIGHTS))
        transformer = model[0].auto_model
        missing = set(adapters.state_dict(model)) - set(weights)
        if missing:
            raise SiftrankError(f"{path}: adapter weights lack {sorted(missing)[:3]}")
        dtype = next(transformer.parameters()).dtype
        transformer.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=False)
        return adapters


class AsidePathway(_torch().nn.Module):  # type: ignore[misc]  # torch is imported lazily
    """The aside modules, one per layer, joined into one path by forward hooks on the encoder layers."""

    def __init__(self, hidden: int, layers: int, dim: int) -> None:
        torch = _torch()
        super().__init__()
        self.down = torch.nn.ModuleList(torch.nn.Linear(hidden, dim) for _ in range(layers))
        self.up = torch.nn.ModuleList(torch.nn.Linear(dim, hidden) for _ in range(layers))
        for up in self.up:  # zero up-projections: step 0 is the pretrained model
            torch.nn.init.zeros_(up.weight)
            torch.nn.init.zeros_(up.bias)
        self.act = torch.nn.GELU()
        self._carry = None

    def hook(self, layers) -> None:
        last = len(layers) - 1
        for i, layer in enumerate(layers):
            layer.register_forward_hook(self._make_hook(i, i == last))

    def _make_hook(self, i: int, last: bool):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            carry = self._carry if i > 0 and self._carry is not None else 0
            carry = carry + self.up[i](self.act(self.down[i](hidden + carry)))
            self._carry = None if last else carry
            if not last:
                return None
            joined = hidden + carry
            return (joined, *output[1:]) if isinstance(output, tuple) else joined
        return hook
