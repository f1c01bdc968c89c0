"""A calibration record as a README-ready Markdown report."""

from __future__ import annotations

from typing import Any

from arena.storage.calibrations import refutation


def to_markdown(record: dict[str, Any]) -> str:
    """The calibration as a README-ready report."""
    lines = [
        f"Calibration of `{record['defense']}` on `{record['protocol']}` "
        f"v{record['protocol_version']} (alpha {record['alpha']:g})",
        "",
        *_null_lines(record["null"], record["alpha"]),
        *_claim_lines(record),
        "",
        *_model_table(record),
        "",
        f"{record['seconds']:.0f} s, calibration {record['position']} in the store.",
    ]
    versions = record.get("versions")
    if versions:
        lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    return "\n".join(lines)


def _null_lines(null: dict[str, Any], alpha: float) -> list[str]:
    """The null: exact or fitted, and the smallest p-value it can give."""
    ci = null["rate_ci95"]
    pooled = (
        f"{null['successes']:,} / {null['trials']:,} = {null['rate']:.4f} "
        f"(95% CI [{ci[0]:.4f}, {ci[1]:.4f}])"
    )
    if null["kind"] == "exact":
        kind = (
            f"- Null: exact, Binomial(n, {null['nominal']:.4g}): the key's labels are drawn "
            "uniformly and independently of every model, so nothing is fitted. The reference "
            f"models' pooled agreement with fresh keys, {pooled}, is the check."
        )
    else:
        kind = (
            f"- Null: beta-binomial fitted by maximum likelihood to {null['counts']:,} "
            f"(model, key) counts: mean {null['mean']:.4g}, intra-class correlation "
            f"{null['dispersion']:.4g} (pooled agreement {pooled}; the scheme's nominal "
            f"{null['nominal']:.4g} is not a sound null for it)."
        )
    reach = "reaches" if null["reaches_alpha"] else "CANNOT reach"
    return [
        kind,
        f"- Smallest p-value this null gives a key of {null['trials_per_key']} triggers (all "
        f"answered): {null['smallest_p_value']:.3g}; the scheme {reach} alpha = {alpha:g} "
        "with these reference models.",
    ]


def _claim_lines(record: dict[str, Any]) -> list[str]:
    """False claims per role, a refuted null, and the public label check's results."""
    alpha = record["alpha"]
    lines = []
    for role, rate in record.get("false_claims", {}).items():
        models = sum(1 for row in record["claims"] if row["role"] == role)
        lines.append(
            f"- False claims on {role} models ({models} models, keys the fit never saw): "
            f"{rate['claimed']} of {rate['pairs']:,} (key, model) pairs = {rate['rate']:.2e} "
            f"(95% CI [{rate['ci95'][0]:.2e}, {rate['ci95'][1]:.2e}]), alpha {alpha:g}."
        )
    refuted = refutation(record) if record["null"]["kind"] != "exact" else None
    if refuted:
        lines.append(
            f"- **The fitted null is REFUTED**: it {refuted}. The reference models do not "
            f"span the clean models a stranger may hold, so `arena verify` refuses to decide "
            f"a {record['defense']} key on this protocol and matches record no verdict, "
            "until a wider reference set is calibrated."
        )
    if "label_check_honest" in record:
        honest = record["label_check_honest"]
        lines.append(
            f"- Public label check on honest keys: {honest['rejected']} of {honest['keys']} "
            "rejected."
        )
    if "in_distribution" in record:
        inside = record["in_distribution"]
        claims = inside["foreign_claims"]
        lines.append(
            f"- In-distribution keys ({inside['triggers']} test images with their true "
            f"labels): {inside['rejected_by_label_check']} of {inside['keys']} rejected by the "
            f"label check; without it they would claim {claims['claimed']} of "
            f"{claims['pairs']} (key, foreign model) pairs (agreement "
            f"{inside['foreign_agreement']:.3f})."
        )
    return lines


def _model_table(record: dict[str, Any]) -> list[str]:
    """One row per clean model: its agreement with the fit's keys and the claim keys."""
    lines = [
        "| model | role | architecture | recipe | seed | test acc | agreement (fit keys) | "
        "agreement (claim keys) | most one key got | smallest p-value | claimed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fit_rows = {(row["role"], row["index"]): row for row in record["models"]}
    for row in record.get("claims", record["models"]):
        fit = fit_rows.get((row["role"], row["index"]))
        fit_cell = f"{fit['successes']}/{fit['trials']} ({fit['rate']:.4f})" if fit else ""
        claimed = f"{row['claimed']} of {row['keys']}" if "claimed" in row else ""
        lines.append(
            f"| {row['index']} | {row['role']} | {row['architecture']} | {row['recipe']} | "
            f"{row['seed']} | {row['test_acc']:.3f} | {fit_cell} | {row['successes']}/"
            f"{row['trials']} ({row['rate']:.4f}) | {row['max_agreement']} | "
            f"{row['smallest_p_value']:.2g} | {claimed} |"
        )
    return lines
