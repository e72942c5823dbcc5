"""``secagg dp``: pinned values from the command line, JSON output, and bad input.

Pinned values: Gaussian, q = 0.1, z = 1.0, T = 100, delta = 1e-5 gives RDP 7.899 and
PRV 7.057 with Opacus 1.6 (the pinned reference values).
"""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from dp.accounting import AccountantKind, SampledGaussian, Skellam, compute_epsilon
from dp.cli import dp_app

runner = CliRunner()

PINNED = ["--noise-multiplier", "1.0", "--sample-rate", "0.1", "--steps", "100", "--delta", "1e-5"]


def _json_result(arguments: list[str]) -> dict:
    result = runner.invoke(dp_app, arguments)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("accountant", "expected"), [("rdp", 7.899), ("prv", 7.057)])
def test_epsilon_json_gives_the_pinned_values(accountant, expected) -> None:
    result = _json_result(["epsilon", *PINNED, "--accountant", accountant, "--json"])
    assert round(result["epsilon"], 3) == expected
    assert result["delta"] == 1e-5
    assert result["accountant"] == accountant
    assert result["mechanism"] == "gaussian"
    assert result["noise_multiplier"] == 1.0
    assert result["sample_rate"] == 0.1
    assert result["steps"] == 100


def test_epsilon_defaults_to_the_gaussian_mechanism_and_the_rdp_accountant() -> None:
    result = _json_result(["epsilon", *PINNED, "--json"])
    assert (result["mechanism"], result["accountant"]) == ("gaussian", "rdp")
    assert result["rdp_order"] == pytest.approx(3.2)


def test_epsilon_text_output_names_epsilon_delta_and_accountant() -> None:
    result = runner.invoke(dp_app, ["epsilon", *PINNED])
    assert result.exit_code == 0
    assert "epsilon = 7.89926 at delta = 1e-05" in result.stdout
    assert "accountant rdp" in result.stdout


def test_skellam_epsilon_with_variance_matches_the_library() -> None:
    result = _json_result(
        [
            "epsilon",
            "--mechanism",
            "skellam",
            "--l1-sensitivity",
            "300",
            "--l2-sensitivity",
            "20",
            "--variance",
            "40000",
            "--steps",
            "10",
            "--delta",
            "1e-5",
            "--json",
        ]
    )
    expected = compute_epsilon([Skellam(l1_sensitivity=300.0, l2_sensitivity=20.0, variance=40000.0, steps=10)], delta=1e-5)
    assert result["epsilon"] == pytest.approx(expected, rel=1e-12)
    assert result["mechanism"] == "skellam"
    assert result["variance"] == 40000.0
    assert result["noise_multiplier"] == pytest.approx(10.0)


def test_skellam_noise_multiplier_means_variance_z_times_l2_squared_and_l1_defaults_to_l2_squared() -> None:
    by_multiplier = _json_result(
        [
            "epsilon",
            "--mechanism",
            "skellam",
            "--l2-sensitivity",
            "20",
            "--noise-multiplier",
            "10",
            "--steps",
            "10",
            "--delta",
            "1e-5",
            "--json",
        ]
    )
    assert by_multiplier["variance"] == pytest.approx(40000.0)
    assert by_multiplier["l1_sensitivity"] == 400.0
    by_variance = _json_result(
        [
            "epsilon",
            "--mechanism",
            "skellam",
            "--l1-sensitivity",
            "400",
            "--l2-sensitivity",
            "20",
            "--variance",
            "40000",
            "--steps",
            "10",
            "--delta",
            "1e-5",
            "--json",
        ]
    )
    assert by_multiplier["epsilon"] == pytest.approx(by_variance["epsilon"], rel=1e-12)


def test_noise_for_inverts_the_pinned_value() -> None:
    result = _json_result(
        [
            "noise-for",
            "--target-epsilon",
            "7.9",
            "--sample-rate",
            "0.1",
            "--steps",
            "100",
            "--delta",
            "1e-5",
            "--tolerance",
            "0.001",
            "--json",
        ]
    )
    assert result["noise_multiplier"] == pytest.approx(1.0, abs=2e-3)
    assert 7.9 - 0.001 <= result["epsilon"] <= 7.9
    assert (result["mechanism"], result["accountant"], result["delta"]) == ("gaussian", "rdp", 1e-5)


def test_noise_for_with_prv_gives_a_noise_multiplier_meeting_the_target() -> None:
    result = _json_result(
        [
            "noise-for",
            "--target-epsilon",
            "7.057",
            "--sample-rate",
            "0.1",
            "--steps",
            "100",
            "--delta",
            "1e-5",
            "--accountant",
            "prv",
            "--json",
        ]
    )
    event = SampledGaussian(noise_multiplier=result["noise_multiplier"], sample_rate=0.1, steps=100)
    assert compute_epsilon([event], delta=1e-5, accountant=AccountantKind.PRV) <= 7.057
    assert result["noise_multiplier"] == pytest.approx(1.0, abs=0.01)


def test_noise_for_skellam_gives_a_variance_meeting_the_target() -> None:
    result = _json_result(
        [
            "noise-for",
            "--mechanism",
            "skellam",
            "--target-epsilon",
            "2",
            "--l2-sensitivity",
            "16",
            "--steps",
            "20",
            "--delta",
            "1e-5",
            "--json",
        ]
    )
    event = Skellam(l1_sensitivity=256.0, l2_sensitivity=16.0, variance=result["variance"], steps=20)
    assert 2.0 - 0.01 <= compute_epsilon([event], delta=1e-5) <= 2.0
    assert result["noise_multiplier"] == pytest.approx(math.sqrt(result["variance"]) / 16.0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["epsilon", "--noise-multiplier", "1", "--sample-rate", "1.5", "--steps", "10", "--delta", "1e-5"], "sample_rate"),
        (["epsilon", "--noise-multiplier", "0", "--sample-rate", "0.1", "--steps", "10", "--delta", "1e-5"], "noise_multiplier"),
        (["epsilon", "--noise-multiplier", "1", "--sample-rate", "0.1", "--steps", "0", "--delta", "1e-5"], "steps"),
        (["epsilon", "--noise-multiplier", "1", "--sample-rate", "0.1", "--steps", "10", "--delta", "1"], "delta"),
        (["epsilon", "--noise-multiplier", "1", "--sample-rate", "0.1", "--steps", "10", "--delta", "nan"], "delta"),
        (["epsilon", "--sample-rate", "0.1", "--steps", "10", "--delta", "1e-5"], "--noise-multiplier"),
        (
            [
                "epsilon",
                "--noise-multiplier",
                "1",
                "--sample-rate",
                "0.1",
                "--steps",
                "10",
                "--delta",
                "1e-5",
                "--variance",
                "100",
            ],
            "--variance",
        ),
        (["epsilon", "--mechanism", "skellam", "--variance", "100", "--steps", "10", "--delta", "1e-5"], "--l2-sensitivity"),
        (["epsilon", "--mechanism", "skellam", "--l2-sensitivity", "4", "--steps", "10", "--delta", "1e-5"], "exactly one"),
        (
            [
                "epsilon",
                "--mechanism",
                "skellam",
                "--l2-sensitivity",
                "4",
                "--variance",
                "100",
                "--noise-multiplier",
                "2",
                "--steps",
                "10",
                "--delta",
                "1e-5",
            ],
            "exactly one",
        ),
        (
            [
                "epsilon",
                "--mechanism",
                "skellam",
                "--l2-sensitivity",
                "4",
                "--l1-sensitivity",
                "2",
                "--variance",
                "100",
                "--steps",
                "10",
                "--delta",
                "1e-5",
            ],
            "l1_sensitivity",
        ),
        (
            [
                "epsilon",
                "--mechanism",
                "skellam",
                "--l2-sensitivity",
                "4",
                "--variance",
                "100",
                "--sample-rate",
                "0.5",
                "--steps",
                "10",
                "--delta",
                "1e-5",
            ],
            "subsampling",
        ),
        (
            [
                "epsilon",
                "--mechanism",
                "skellam",
                "--l2-sensitivity",
                "4",
                "--variance",
                "100",
                "--steps",
                "10",
                "--delta",
                "1e-5",
                "--accountant",
                "prv",
            ],
            "skellam",
        ),
        (["noise-for", "--target-epsilon", "0", "--sample-rate", "0.1", "--steps", "10", "--delta", "1e-5"], "target_epsilon"),
        (["noise-for", "--target-epsilon", "1", "--steps", "10", "--delta", "1e-5"], "--sample-rate"),
        (["noise-for", "--target-epsilon", "1e-9", "--sample-rate", "1", "--steps", "10000", "--delta", "1e-5"], "unreachable"),
        (
            [
                "noise-for",
                "--mechanism",
                "skellam",
                "--target-epsilon",
                "1",
                "--l2-sensitivity",
                "4",
                "--steps",
                "10",
                "--delta",
                "1e-5",
                "--accountant",
                "prv",
            ],
            "rdp only",
        ),
    ],
)
def test_bad_input_exits_non_zero_with_a_clear_message(arguments, message) -> None:
    result = runner.invoke(dp_app, arguments)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in result.stderr
    assert result.stderr.startswith("error: ")


@pytest.mark.parametrize(
    "arguments",
    [
        ["epsilon", *PINNED, "--mechanism", "laplace"],
        ["epsilon", *PINNED, "--accountant", "gdp"],
        ["epsilon", "--noise-multiplier", "1", "--sample-rate", "0.1", "--delta", "1e-5"],
        ["epsilon", "--noise-multiplier", "one", "--sample-rate", "0.1", "--steps", "10", "--delta", "1e-5"],
    ],
)
def test_unknown_choices_and_missing_options_are_usage_errors(arguments) -> None:
    result = runner.invoke(dp_app, arguments)
    assert result.exit_code == 2
    assert result.stdout == ""


def test_help_documents_the_skellam_options() -> None:
    result = runner.invoke(dp_app, ["epsilon", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--variance", "--noise-multiplier", "--l1-sensitivity", "--l2-sensitivity", "--accountant", "--json"):
        assert option in result.stdout
    assert "l2_sensitivity^2" in result.stdout
