"""A small Flower app for the tests: five banks whose updates are known in advance.

Each bank's ``fit`` returns arrays drawn from a seed of its partition id and the
server round (public test data, not a secret), so a test can recompute exactly what
every bank contributed. Bank 3 loses its connection after R1 in the round named by
``drop_round``, by a mod placed outside the secure-aggregation mod: a crash in the
middle of the protocol, after its shares were distributed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Context, Message
from flwr.client import ClientApp, NumPyClient
from flwr.common import ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow

from clients.flower import BankSettings, Roster, RoundReport, SecAggMod, SecAggWorkflow
from clients.flower.records import RECORD_KEY
from clients.runtime.policy import ClientPolicy
from secagg.hazmat.keys import SigningKey
from secagg.rounds import Round

SHAPES = ((3, 4), (7,))
MAX_WEIGHT = 100.0
DROPPING_BANK = 3


def update_of(partition: int, server_round: int) -> list[np.ndarray]:
    """The arrays bank ``partition`` returns in ``server_round`` (values in [-2, 2], some beyond clip 1.5)."""
    rng = np.random.default_rng([partition, server_round])
    return [rng.uniform(-2.0, 2.0, size=shape).astype(np.float32) for shape in SHAPES]


def examples_of(partition: int, server_round: int) -> int:
    """Round 1: every bank at max_weight (weight 1, a plain sum); later rounds: distinct weights."""
    return int(MAX_WEIGHT) if server_round == 1 else 10 * (partition + 1)


def participant(partition: int) -> str:
    return f"bank-{partition}"


class KnownUpdateClient(NumPyClient):
    def __init__(self, partition: int) -> None:
        self.partition = partition

    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        server_round = int(config["server-round"])
        return update_of(self.partition, server_round), examples_of(self.partition, server_round), {"loss": 0.5}


@dataclass(frozen=True)
class Consortium:
    """The banks' keys and the roster, shared by the test's client and server apps."""

    keys: tuple[SigningKey, ...]

    @property
    def roster(self) -> Roster:
        return Roster({participant(i): key.public_bytes for i, key in enumerate(self.keys)})

    def bank(self, context: Context) -> BankSettings:
        partition = int(context.node_config["partition-id"])
        return BankSettings(
            participant_id=participant(partition),
            identity=self.keys[partition],
            policy=ClientPolicy(min_cohort_size=3),
            roster=self.roster,
        )


def client_app(consortium: Consortium, *, drop_round: int | None) -> ClientApp:
    def client_fn(context: Context):  # type: ignore[no-untyped-def]
        return KnownUpdateClient(int(context.node_config["partition-id"])).to_client()

    def lose_connection_after_r1(msg: Message, ctxt: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        record = msg.content.config_records.get(RECORD_KEY) if msg.has_content() else None
        if (
            record is not None
            and record.get("stage") == Round.MASKED_INPUT_COLLECTION.value
            and int(ctxt.node_config["partition-id"]) == DROPPING_BANK
            and msg.metadata.group_id == str(drop_round)
        ):
            raise ConnectionError(f"{participant(DROPPING_BANK)} lost its connection after R1")
        return call_next(msg, ctxt)

    return ClientApp(client_fn=client_fn, mods=[lose_connection_after_r1, SecAggMod(consortium.bank)])


def server_app(
    consortium: Consortium, *, rounds: int, clients: int, reports: list[RoundReport], models: list[list[np.ndarray]]
) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        initial = [np.zeros(shape, dtype=np.float32) for shape in SHAPES]
        strategy = FedAvg(
            fraction_fit=1.0,
            min_fit_clients=clients,
            min_available_clients=clients,
            fraction_evaluate=0.0,
            initial_parameters=ndarrays_to_parameters(initial),
            on_fit_config_fn=lambda server_round: {"server-round": server_round},
        )
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)

        def record_model(report: RoundReport) -> None:
            reports.append(report)

        workflow = SecAggWorkflow(consortium.roster, clip=1.5, max_weight=MAX_WEIGHT, on_round=record_model)

        def fit_then_keep_model(grid: Grid, context: Context) -> None:
            workflow(grid, context)
            from flwr.compat.common import recorddict_compat as compat
            from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

            parameters = compat.arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
            from flwr.common import parameters_to_ndarrays

            models.append(parameters_to_ndarrays(parameters))

        DefaultWorkflow(fit_workflow=fit_then_keep_model)(grid, legacy)

    return app
