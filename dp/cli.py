"""``secagg dp``: privacy accounting from the command line.

``secagg dp epsilon`` prints the epsilon of a planned or finished run;
``secagg dp noise-for`` prints the least noise that keeps a run within a target
epsilon. Both use :mod:`dp.accounting` (numpy only: runs on the server and on the
auditor's machine, where torch is not installed). With ``--json`` the last line of
stdout is one JSON object with the result and every parameter it depends on.

Invalid input exits with status 2 and one ``error:`` line on stderr; an analysis that
cannot certify an epsilon for valid input exits with status 1.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import typer

from dp.accounting import (
    AccountantKind,
    AccountingError,
    InvalidParameterError,
    MechanismEvent,
    MechanismKind,
    SampledGaussian,
    Skellam,
    UnsupportedMechanismError,
    compute_epsilon,
    noise_multiplier_for_epsilon,
    skellam_variance_for_epsilon,
)
from dp.accounting.rdp import rdp_epsilon

dp_app = typer.Typer(
    help="Privacy accounting: epsilon for a mechanism, and noise for a target epsilon.",
    no_args_is_help=True,
)

_SKELLAM_HELP = (
    "Skellam (participant level, aggregated in the integer ring): give --l2-sensitivity and either "
    "--variance (per-coordinate variance of the aggregate noise, in integer units, for the worst case "
    "of t survivors) or --noise-multiplier z, meaning variance = (z * l2_sensitivity)^2. "
    "--l1-sensitivity defaults to l2_sensitivity^2, a valid bound for an integer vector "
    "(||v||_1 <= ||v||_2^2). Every round includes every survivor: no --sample-rate "
    "(or exactly 1). Skellam is accounted with RDP only (Agarwal, Kairouz, Liu 2021, Corollary 3.6)."
)

MechanismOption = Annotated[MechanismKind, typer.Option("--mechanism", help="Noise mechanism: gaussian (DP-SGD) or skellam.")]
AccountantOption = Annotated[
    AccountantKind,
    typer.Option("--accountant", help="rdp (Gaussian and Skellam) or prv (Gaussian only; tighter)."),
]
StepsOption = Annotated[int, typer.Option("--steps", help="Number of steps (Gaussian) or rounds (Skellam).")]
DeltaOption = Annotated[float, typer.Option("--delta", help="Target delta, 0 < delta < 1.")]
SampleRateOption = Annotated[float | None, typer.Option("--sample-rate", help="Poisson sampling rate q, 0 < q <= 1 (Gaussian).")]
L1Option = Annotated[float | None, typer.Option("--l1-sensitivity", help="Skellam: L1 sensitivity in integer units.")]
L2Option = Annotated[float | None, typer.Option("--l2-sensitivity", help="Skellam: L2 sensitivity in integer units.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object (the last line of stdout) instead of text.")]


def _fail(error: AccountingError) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    invalid_input = isinstance(error, (InvalidParameterError, UnsupportedMechanismError))
    return typer.Exit(code=2 if invalid_input else 1)


def _skellam_sensitivities(l1_sensitivity: float | None, l2_sensitivity: float | None) -> tuple[float, float]:
    if l2_sensitivity is None:
        raise InvalidParameterError("the skellam mechanism needs --l2-sensitivity")
    if isinstance(l2_sensitivity, float) and not (math.isfinite(l2_sensitivity) and l2_sensitivity > 0):
        raise InvalidParameterError(f"l2_sensitivity must be finite and > 0, got {l2_sensitivity!r}")
    l1 = l2_sensitivity**2 if l1_sensitivity is None else l1_sensitivity
    return l1, l2_sensitivity


def _refuse_options(mechanism: MechanismKind, **given: object) -> None:
    present = sorted(f"--{name.replace('_', '-')}" for name, value in given.items() if value is not None)
    if present:
        raise InvalidParameterError(f"{', '.join(present)} do not apply to the {mechanism.value} mechanism")


def _skellam_sample_rate(sample_rate: float | None) -> None:
    if sample_rate is not None and sample_rate != 1.0:
        raise InvalidParameterError("the skellam mechanism is accounted without subsampling: omit --sample-rate or give 1")


def _event_from_options(
    *,
    mechanism: MechanismKind,
    steps: int,
    noise_multiplier: float | None,
    sample_rate: float | None,
    l1_sensitivity: float | None,
    l2_sensitivity: float | None,
    variance: float | None,
) -> MechanismEvent:
    if mechanism is MechanismKind.GAUSSIAN:
        _refuse_options(mechanism, l1_sensitivity=l1_sensitivity, l2_sensitivity=l2_sensitivity, variance=variance)
        if noise_multiplier is None or sample_rate is None:
            raise InvalidParameterError("the gaussian mechanism needs --noise-multiplier and --sample-rate")
        return SampledGaussian(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
    _skellam_sample_rate(sample_rate)
    l1, l2 = _skellam_sensitivities(l1_sensitivity, l2_sensitivity)
    if (variance is None) == (noise_multiplier is None):
        raise InvalidParameterError("the skellam mechanism needs exactly one of --variance and --noise-multiplier")
    if variance is None:
        assert noise_multiplier is not None  # exactly one of the two is given
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise InvalidParameterError(f"noise_multiplier must be finite and > 0, got {noise_multiplier!r}")
        variance = (noise_multiplier * l2) ** 2
    return Skellam(l1_sensitivity=l1, l2_sensitivity=l2, variance=variance, steps=steps)


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _event_fields(event: MechanismEvent) -> dict[str, Any]:
    fields = event.to_dict()
    if isinstance(event, Skellam):
        fields["noise_multiplier"] = math.sqrt(event.variance) / event.l2_sensitivity
    return fields


def _describe(event: MechanismEvent) -> str:
    if isinstance(event, SampledGaussian):
        return f"gaussian: noise multiplier {event.noise_multiplier:g}, sample rate {event.sample_rate:g}, {event.steps} steps"
    return (
        f"skellam: variance {event.variance:g} (noise multiplier "
        f"{math.sqrt(event.variance) / event.l2_sensitivity:g}), L1 sensitivity {event.l1_sensitivity:g}, "
        f"L2 sensitivity {event.l2_sensitivity:g}, {event.steps} rounds"
    )


@dp_app.command("epsilon", epilog=_SKELLAM_HELP)
def epsilon_command(
    steps: StepsOption,
    delta: DeltaOption,
    mechanism: MechanismOption = MechanismKind.GAUSSIAN,
    noise_multiplier: Annotated[
        float | None,
        typer.Option(
            "--noise-multiplier",
            help="Noise std / L2 sensitivity (Gaussian; for Skellam, an alternative to --variance).",
        ),
    ] = None,
    sample_rate: SampleRateOption = None,
    accountant: AccountantOption = AccountantKind.RDP,
    l1_sensitivity: L1Option = None,
    l2_sensitivity: L2Option = None,
    variance: Annotated[
        float | None,
        typer.Option("--variance", help="Skellam: per-coordinate variance of the aggregate noise (integer units)."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Print the epsilon at DELTA of STEPS steps of a mechanism."""
    try:
        event = _event_from_options(
            mechanism=mechanism,
            steps=steps,
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            l1_sensitivity=l1_sensitivity,
            l2_sensitivity=l2_sensitivity,
            variance=variance,
        )
        epsilon = compute_epsilon([event], delta=delta, accountant=accountant)
        order = rdp_epsilon([event], delta=delta)[1] if accountant is AccountantKind.RDP else math.nan
    except AccountingError as error:
        raise _fail(error) from error
    if json_output:
        result: dict[str, Any] = {
            "epsilon": _json_number(epsilon),
            "delta": delta,
            "accountant": accountant.value,
            **_event_fields(event),
        }
        if accountant is AccountantKind.RDP:
            result["rdp_order"] = _json_number(order)
        typer.echo(json.dumps(result, sort_keys=True, allow_nan=False))
        return
    typer.echo(f"epsilon = {epsilon:.6g} at delta = {delta:g}")
    typer.echo(f"  mechanism  {_describe(event)}")
    accountant_line = f"  accountant {accountant.value}"
    if accountant is AccountantKind.RDP and math.isfinite(order):
        accountant_line += f" (optimal order {order:g})"
    typer.echo(accountant_line)


@dp_app.command("noise-for", epilog=_SKELLAM_HELP)
def noise_for_command(
    target_epsilon: Annotated[float, typer.Option("--target-epsilon", help="Epsilon not to exceed.")],
    steps: StepsOption,
    delta: DeltaOption,
    mechanism: MechanismOption = MechanismKind.GAUSSIAN,
    sample_rate: SampleRateOption = None,
    accountant: AccountantOption = AccountantKind.RDP,
    l1_sensitivity: L1Option = None,
    l2_sensitivity: L2Option = None,
    tolerance: Annotated[
        float, typer.Option("--tolerance", help="Stop when epsilon is within this much below the target.")
    ] = 0.01,
    json_output: JsonOption = False,
) -> None:
    """Print the least noise keeping STEPS steps within TARGET_EPSILON at DELTA."""
    try:
        if mechanism is MechanismKind.GAUSSIAN:
            _refuse_options(mechanism, l1_sensitivity=l1_sensitivity, l2_sensitivity=l2_sensitivity)
            if sample_rate is None:
                raise InvalidParameterError("the gaussian mechanism needs --sample-rate")
            noise_multiplier = noise_multiplier_for_epsilon(
                target_epsilon=target_epsilon,
                delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                tolerance=tolerance,
            )
            event: MechanismEvent = SampledGaussian(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        else:
            _skellam_sample_rate(sample_rate)
            if accountant is not AccountantKind.RDP:
                raise UnsupportedMechanismError("the skellam mechanism is accounted with --accountant rdp only")
            l1, l2 = _skellam_sensitivities(l1_sensitivity, l2_sensitivity)
            variance = skellam_variance_for_epsilon(
                target_epsilon=target_epsilon,
                delta=delta,
                l1_sensitivity=l1,
                l2_sensitivity=l2,
                steps=steps,
                tolerance=tolerance,
            )
            event = Skellam(l1_sensitivity=l1, l2_sensitivity=l2, variance=variance, steps=steps)
        epsilon = compute_epsilon([event], delta=delta, accountant=accountant)
    except AccountingError as error:
        raise _fail(error) from error
    if json_output:
        result = {
            "target_epsilon": target_epsilon,
            "epsilon": epsilon,
            "delta": delta,
            "accountant": accountant.value,
            "tolerance": tolerance,
            **_event_fields(event),
        }
        typer.echo(json.dumps(result, sort_keys=True, allow_nan=False))
        return
    if isinstance(event, SampledGaussian):
        typer.echo(f"noise multiplier = {event.noise_multiplier:.6g}")
    else:
        relative_noise = math.sqrt(event.variance) / event.l2_sensitivity
        typer.echo(f"variance = {event.variance:.6g} (noise multiplier {relative_noise:.6g})")
    typer.echo(f"  gives epsilon = {epsilon:.6g} <= {target_epsilon:g} at delta = {delta:g}")
    typer.echo(f"  mechanism  {_describe(event)}")
    typer.echo(f"  accountant {accountant.value}")
