"""JPEG compression of every query (Guo et al., ICLR 2018; Das et al., 2017) with ART's
``JpegCompression``, as an evasion of trigger-set verification."""

from __future__ import annotations

from dataclasses import dataclass

from arena.core.params import param
from arena.core.plugin import Budget
from arena.core.registry import register_attack
from attacks.evasion.transform import InputTransformAttack


@dataclass(frozen=True)
class JpegParams:
    quality: int = param(
        50, help="JPEG quality, 1 (worst) to 100; PIL advises against above 95", min=1, max=100
    )


@register_attack("jpeg")
class JpegCompressionAttack(InputTransformAttack):
    """Serve the stolen model behind JPEG compression of every input (Guo et al.,
    "Countering Adversarial Images using Input Transformations", ICLR 2018).

    Every query is encoded as a JPEG at ``quality`` and decoded before the model sees it
    (ART's ``JpegCompression``); the weights are not changed. Default quality 50.
    """

    budget_curve = Budget("quality", (90, 70, 50, 30, 10))

    paper = "Guo et al., ICLR 2018"
    Params = JpegParams

    def preprocessor(self):
        from art.defences.preprocessor import JpegCompression

        return JpegCompression(
            clip_values=(0.0, 1.0), quality=self.params.quality, channels_first=True
        )
