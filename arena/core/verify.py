"""The one verification step: a scheme's evidence tested against the null that holds
for it. Matches, ``arena verify``, claims and calibration all go through ``measure``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from arena.core.context import Context
from arena.core.plugin import Defense
from arena.core.stats import Evidence

NullKind = Literal["exact", "beta-binomial", "uncalibrated", "refuted"]


# Nulls that decide no verdict: the evidence is measured and shown, never judged.
UNSOUND_NULLS = frozenset({"uncalibrated", "refuted"})


@dataclass(frozen=True)
class Null:
    """The null distribution a verification tests against, and where it came from.

    ``exact``: the scheme's own binomial (1/|L|, 0.5 for bits), exact for its keys.
    ``beta-binomial``: mean ``p`` and intra-class correlation ``dispersion``, fitted to
    clean reference models by calibration ``calibration``. ``uncalibrated``: a scheme
    whose labels are not uniform, with no calibration yet: the nominal binomial is what
    the evidence is tested against, and it is NOT a sound null (``sound`` is False).
    ``refuted``: a fitted beta-binomial that the same calibration caught claiming clean
    models it never saw more often than alpha (``refutation``); the evidence is still
    tested against the fit, for information, but it is not a sound null either.
    """

    kind: NullKind
    source: str
    p: float | None = None
    dispersion: float = 0.0
    calibration: int | None = None  # the calibration's position in the store
    smallest_p_value: float | None = None  # P[K = n] under this null, for n triggers

    @property
    def sound(self) -> bool:
        return self.kind not in UNSOUND_NULLS

    def apply(self, evidence: Evidence) -> Evidence:
        """``evidence`` tested against this null."""
        if self.kind not in ("beta-binomial", "refuted"):
            return evidence
        return dataclasses.replace(evidence, null_p=self.p, null_dispersion=self.dispersion)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def measure(defense: Defense, model: nn.Module, key: Any, ctx: Context, null: Null) -> Evidence:
    """The one verification path of matches, ``arena verify``, claims and calibration: the
    scheme's evidence, tested against ``null``."""
    return null.apply(defense.evidence(model, key, ctx))
