"""Global magnitude pruning: zero the smallest weights of the whole network, then
optionally fine-tune (Han, Pool, Tran, Dally, "Learning both Weights and Connections for
Efficient Neural Networks", NeurIPS 2015; a removal attack since Uchida et al.,
"Embedding Watermarks into Deep Neural Networks", ICMR 2017).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.utils import prune

from arena.core.context import Context
from arena.core.params import param
from arena.core.plugin import AttackOutcome, Budget, RemovalAttack, ThreatModel
from arena.core.registry import register_attack
from attacks.removal.common import (
    MAX_EPOCHS,
    AttackerTraining,
    fine_tune,
    removal_threat_model,
)


@dataclass(frozen=True)
class PruneParams(AttackerTraining):
    epochs: int | None = param(
        0,
        help="fine-tuning epochs after pruning; 0: none, None: the protocol's",
        min=0,
        max=MAX_EPOCHS,
    )
    sparsity: float = param(
        0.5, help="fraction of all Conv2d and Linear weights set to zero", min=0, below=1
    )


@register_attack("prune")
class GlobalMagnitudePruning(RemovalAttack):
    """Global magnitude pruning (Han et al., NeurIPS 2015) as a removal attack.

    The ``sparsity`` fraction of smallest-magnitude weights of all Conv2d and Linear layers,
    ranked together (L1 unstructured), is set to zero for good. With ``epochs`` the other
    weights are then fine-tuned on the attacker's split while the pruned ones stay zero.

    Sparsities in the literature: Uchida et al. (ICMR 2017) sweep 0.1-0.9; Lukas et al.
    ("SoK: How Robust is Image Classification Deep Neural Network Watermarking?", IEEE S&P
    2022) sweep 0.2-0.9, and their released CIFAR-10 configuration uses 0.5, the default.
    """

    budget_curve = Budget("sparsity", (0.3, 0.5, 0.7, 0.8, 0.9, 0.95))

    paper = "Han et al., NeurIPS 2015; as a removal attack Uchida et al., ICMR 2017"
    Params = PruneParams

    def threat_model(self, ctx: Context) -> ThreatModel:
        return removal_threat_model(self.params.budget(ctx))

    def remove(self, model: nn.Module, ctx: Context) -> AttackOutcome:
        layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        prune.global_unstructured(
            [(layer, "weight") for layer in layers],
            pruning_method=prune.L1Unstructured,
            amount=self.params.sparsity,
        )
        epochs = self.params.budget(ctx)
        steps = 0
        if epochs > 0:  # the pruning masks stay in place while fine-tuning
            steps = fine_tune(model, ctx, self.params.settings(epochs), self.name).steps
        for layer in layers:
            prune.remove(layer, "weight")  # permanent: plain weights, no masks left
        total = sum(layer.weight.numel() for layer in layers)
        zeros = sum(int((layer.weight == 0).sum()) for layer in layers)
        info = {
            "summary": f"sparsity {zeros / total:.2f}",
            "sparsity": zeros / total,
            "zero_weights": zeros,
            "weights": total,
            "steps": steps,
        }
        return AttackOutcome(model=model, info=info)
