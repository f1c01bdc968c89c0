"""JPEG compression of every query (Guo et al., ICLR 2018; Das et al., 2017) with ART's
``JpegCompression``, as an evasion of trigger-set verification."""

from __future__ import annotations

from dataclasses import dataclass

from arena.registry import register_attack
from attacks.evasion.transform import InputTransformAttack


@dataclass(frozen=True)
class JpegParams:
    quality: int = 50  # 1 (worst) to 100; PIL advises against values above 95

    def check(self) -> None:
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must lie in [1, 100], got {self.quality}")


@register_attack("jpeg")
class JpegCompressionAttack(InputTransformAttack):
    """Serve the stolen model behind JPEG compression of every input (Guo et al.,
    "Countering Adversarial Images using Input Transformations", ICLR 2018).

    Every query is encoded as a JPEG at ``quality`` and decoded before the model sees it
    (ART's ``JpegCompression``); the weights are not changed. Default quality 50.
    """

    paper = "Guo et al., ICLR 2018"
    Params = JpegParams

    def preprocessor(self):
        from art.defences.preprocessor import JpegCompression

        return JpegCompression(
            clip_values=(0.0, 1.0), quality=self.params.quality, channels_first=True
        )
