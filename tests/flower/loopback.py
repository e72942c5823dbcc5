"""Flower's ServerApp and ClientApps in one process without the simulation engine.

:class:`LoopbackGrid` delivers each message to the destination node's ``ClientApp``
synchronously, with that node's own ``Context``, and returns the replies, which is
all :class:`~clients.flower.SecAggWorkflow` asks of a Flower ``Grid``. A ``tamper``
function sees every message on its way to a node: a hostile coordinator (or network)
for the refusal tests, at a fraction of the simulation engine's start-up cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from uuid import uuid4

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.client import ClientApp
from flwr.common import ndarrays_to_parameters
from flwr.common.constant import ErrorCode
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig, SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.supercore.task_identity import TaskIdentity

from clients.flower import RoundReport, SecAggWorkflow

RUN_ID = 1
SERVER_NODE = 0
Tamper = Callable[[Message], Message | None]


class LoopbackGrid:
    def __init__(self, client_app: ClientApp, contexts: dict[int, Context], tamper: Tamper | None = None) -> None:
        self.client_app = client_app
        self.contexts = contexts
        self.tamper = tamper
        self.delivered: list[Message] = []

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid4().hex
            delivered = self.tamper(message) if self.tamper is not None else message
            if delivered is None:
                continue
            self.delivered.append(delivered)
            try:
                reply = self.client_app(message=delivered, context=self.contexts[delivered.metadata.dst_node_id])
            except Exception as exc:  # a ClientApp that raises: Flower answers with an error reply
                reply = Message(
                    Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(exc)}:<'{exc}'>"), reply_to=delivered
                )
            replies.append(reply)
        return replies


def node_contexts(count: int) -> dict[int, Context]:
    return {
        100 + partition: Context(
            run_id=RUN_ID,
            node_id=100 + partition,
            node_config={"partition-id": partition, "num-partitions": count},
            state=RecordDict(),
            run_config={},
        )
        for partition in range(count)
    }


def run_rounds(
    workflow: SecAggWorkflow,
    grid: LoopbackGrid,
    initial: Sequence[np.ndarray],
    *,
    rounds: int = 1,
) -> list[RoundReport]:
    """Run ``rounds`` fit rounds of ``workflow`` over ``grid`` with FedAvg over every node."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, SERVER_NODE, 1
    clients = len(grid.contexts)
    manager = SimpleClientManager()
    for node in grid.contexts:
        manager.register(GridClientProxy(node, grid, RUN_ID))  # type: ignore[arg-type]
    strategy = FedAvg(
        fraction_fit=1.0,
        min_fit_clients=clients,
        min_available_clients=clients,
        fraction_evaluate=0.0,
        on_fit_config_fn=lambda server_round: {"server-round": server_round},
    )
    server_context = Context(run_id=RUN_ID, node_id=SERVER_NODE, node_config={}, state=RecordDict(), run_config={})
    legacy = LegacyContext(
        context=server_context, config=ServerConfig(num_rounds=rounds), strategy=strategy, client_manager=manager
    )
    legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(ndarrays_to_parameters(list(initial)), True)
    start = len(workflow.reports)
    for server_round in range(1, rounds + 1):
        legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({"current_round": server_round})
        workflow(grid, legacy)  # type: ignore[arg-type]
    return workflow.reports[start:]
