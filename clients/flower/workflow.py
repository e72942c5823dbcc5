"""The coordinator's side in a Flower ``ServerApp``: a fit workflow that replaces ``SecAggPlusWorkflow``.

::

    from clients.flower import Roster, SecAggWorkflow
    fit_workflow = SecAggWorkflow(Roster.load(Path("roster.json")), clip=8.0, max_weight=1000.0)
    DefaultWorkflow(fit_workflow=fit_workflow)(grid, context)

For each Flower round, :class:`SecAggWorkflow` takes the clients and ``FitIns`` the
strategy configures, binds each sampled node to a roster participant (``identify``,
once per node and run), and drives one :class:`secagg.server.ServerSession` over
Flower's message channel: R0 (with the ``FitIns``), R1, R2, R3 (active mode) and R4,
one ``grid.send_and_receive`` per round, exactly the core's messages in both
directions (:mod:`clients.flower.records`). A node that does not answer a stage, whose
answer is an error, or whose message the session rejects, is a dropout from that stage
on; the session recovers its masks from the survivors' shares (Bonawitz et al. 2017,
section 4) as long as t of them answer, and aborts the round by name otherwise.

What the coordinator sees (threat_model.md, section 4): identity public keys, signed
round keys, AES-GCM ciphertexts of shares it cannot open, masked vectors, consistency
signatures, at most one share per owner of each secret, and the unmasked weighted sum.
It never holds a bank's signing key, a bank's update, its ``num_examples`` or its fit
metrics. The weighted average of the survivors' updates goes to
``strategy.aggregate_fit`` as one result per survivor with the same parameters (as
Flower's SecAgg+ workflow does), so FedAvg and its relatives return it unchanged.

Each round's outcome, survivors by stage and every refusal by name is kept as a
:class:`RoundReport` (``workflow.reports``) and logged.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp.grid import Grid

from clients.flower.records import IDENTIFY, RECORD_KEY, RoundSetup, UpdateEncoding, VectorLayout, refusal_reason
from clients.flower.roster import Roster
from clients.runtime.transport import RoundDescription
from dp.audit.round_records import RoundPrivacy
from secagg.config import GraphKind, ProtocolMode, RoundConfig, minimum_threshold
from secagg.errors import ConfigurationError, EncodingError, MalformedMessage, MessageRejected, ProtocolAbort, RejectReason
from secagg.messages import ClientMessage, decode, encode
from secagg.rounds import Round
from secagg.server import ServerSession, ServerStage

LOGGER = logging.getLogger("secagg.flower")


@dataclass(slots=True)
class RoundReport:
    """One Flower round through secure aggregation: who took part, who refused what, the result.

    ``decoded_sum`` is the unmasked sum decoded from the ring, [sum r_u x_u, clip sum r_u]
    (see :class:`~clients.flower.records.UpdateEncoding`); each coordinate is within
    ``error_bound`` of the exact sum of the survivors' encoded real vectors.
    """

    server_round: int
    round_id: str = ""
    cohort: tuple[str, ...] = ()
    threshold: int = 0
    outcome: str = "not-started"
    abort_reason: str | None = None
    survivors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    refusals: dict[str, str] = field(default_factory=dict)
    rejections: dict[str, str] = field(default_factory=dict)
    decoded_sum: np.ndarray | None = field(default=None, repr=False)
    total_examples: float | None = None
    scale: float | None = None
    error_bound: float | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def final_survivors(self) -> tuple[str, ...]:
        """U3: the participants whose updates are in the sum."""
        return self.survivors.get(Round.MASKED_INPUT_COLLECTION.key, ())


class SecAggWorkflow:
    """A Flower fit workflow running this project's secure aggregation (see the module docstring).

    ``threshold`` is t: an integer, a fraction of the cohort (rounded up), or ``None``
    for the smallest t the mode allows (active: floor(2n/3) + 1). Whatever is asked,
    :class:`~secagg.config.RoundConfig` refuses a t below the mode's rule, and every bank
    checks it again. ``privacy`` declares the DP mechanisms of each round, which every
    bank charges to its own signed ledger before training. ``timeout`` bounds each stage
    (seconds; ``None`` waits for every node, as Flower does). ``on_round`` sees each
    :class:`RoundReport`.
    """

    def __init__(
        self,
        roster: Roster,
        *,
        clip: float = 8.0,
        max_weight: float = 1000.0,
        mode: ProtocolMode = ProtocolMode.ACTIVE,
        threshold: int | float | None = None,
        bits: int = 32,
        graph: GraphKind = GraphKind.FULL,
        degree: int | None = None,
        privacy: Sequence[RoundPrivacy] = (),
        timeout: float | None = None,
        mask_threads: int | None = None,
        on_round: Callable[[RoundReport], None] | None = None,
    ) -> None:
        if not (math.isfinite(clip) and clip > 0) or not (math.isfinite(max_weight) and max_weight > 0):
            raise ValueError("clip and max_weight must be positive finite numbers")
        self.roster = roster
        self.clip = float(clip)
        self.max_weight = float(max_weight)
        self.mode = ProtocolMode(mode)
        self.threshold = threshold
        self.bits = bits
        self.graph = GraphKind(graph)
        self.degree = degree
        self.privacy = tuple(privacy)
        self.timeout = timeout
        self.mask_threads = mask_threads or os.cpu_count() or 1
        self.on_round = on_round
        self.reports: list[RoundReport] = []
        self._participant_of_node: dict[int, str] = {}

    def __call__(self, grid: Grid, context: Context) -> None:
        if not isinstance(context, LegacyContext):
            raise TypeError(f"SecAggWorkflow runs inside DefaultWorkflow with a LegacyContext, got {type(context).__name__}")
        config_record = context.state.config_records[MAIN_CONFIGS_RECORD]
        server_round = cast(int, config_record[WorkflowKey.CURRENT_ROUND])
        report = RoundReport(server_round=server_round)
        self.reports.append(report)
        try:
            self._run(grid, context, server_round, report)
        finally:
            LOGGER.info(
                "secagg round %s (%s): %s%s; survivors %s; refusals %s",
                server_round,
                report.round_id,
                report.outcome,
                f" ({report.abort_reason})" if report.abort_reason else "",
                list(report.final_survivors),
                report.refusals or "none",
            )
            if self.on_round is not None:
                self.on_round(report)

    # ---------------------------------------------------------------- round
    def _run(self, grid: Grid, context: LegacyContext, server_round: int, report: RoundReport) -> None:
        parameters = compat.arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
        instructions = context.strategy.configure_fit(server_round, parameters, context.client_manager)
        if not instructions:
            report.outcome = "no-clients"
            return
        layout = VectorLayout.of(parameters_to_ndarrays(parameters))
        group = str(server_round)
        proxies = {proxy.node_id: proxy for proxy, _ in instructions}
        fit_ins = {proxy.node_id: fitins for proxy, fitins in instructions}

        self._identify(grid, [node for node in proxies if node not in self._participant_of_node], group, report)
        claimed: dict[str, list[int]] = {}
        for node in proxies:
            if node in self._participant_of_node:
                claimed.setdefault(self._participant_of_node[node], []).append(node)
        for participant, nodes in claimed.items():
            if len(nodes) > 1:
                report.refusals[participant] = "claimed-by-several-nodes"
        cohort = sorted(participant for participant, nodes in claimed.items() if len(nodes) == 1)
        node_of = {participant: claimed[participant][0] for participant in cohort}
        report.cohort = tuple(cohort)
        try:
            config = RoundConfig(
                round_id=os.urandom(16),
                identity_keys=tuple(cast(bytes, self.roster.key_of(participant)) for participant in cohort),
                threshold=self._threshold_for(len(cohort)),
                dim=layout.size + 1,
                bits=self.bits,
                mode=self.mode,
                graph=self.graph,
                degree=self.degree,
            )
            encoding = UpdateEncoding.finest(
                ring=config.ring, clip=self.clip, max_weight=self.max_weight, cohort_size=len(cohort)
            )
        except (ConfigurationError, EncodingError) as exc:
            report.outcome = "not-started"
            report.abort_reason = f"configuration: {exc}"
            LOGGER.error("secagg round %s not started: %s", server_round, exc)
            return
        round_id = config.round_id.hex()
        report.round_id, report.threshold, report.scale = round_id, config.threshold, encoding.scale
        description = RoundDescription(
            round_id=round_id,
            config=config,
            status=Round.ADVERTISE_KEYS.value,
            is_open=True,
            member_ids=tuple(cohort),
            dp_policy={"privacy": [item.to_dict() for item in self.privacy]},
        )
        setup = RoundSetup(description=description, encoding=encoding, layout=layout).to_json()
        session = ServerSession(config, mask_threads=self.mask_threads)

        def first_request(index: int) -> RecordDict:
            content = compat.fitins_to_recorddict(fit_ins[node_of[cohort[index]]], keep_input=True)
            content.config_records[RECORD_KEY] = ConfigRecord(
                {"stage": Round.ADVERTISE_KEYS.value, "round": round_id, "setup": setup}
            )
            return content

        requests: dict[int, RecordDict] = {index: first_request(index) for index in range(len(cohort))}
        try:
            while True:
                stage = session.stage
                protocol_round = stage.round
                assert protocol_round is not None
                started = time.perf_counter()
                replies = grid.send_and_receive(
                    [
                        Message(content, dst_node_id=node_of[cohort[index]], message_type=MessageType.TRAIN, group_id=group)
                        for index, content in requests.items()
                    ],
                    timeout=self.timeout,
                )
                self._accept(session, replies, protocol_round, round_id, cohort, report)
                outbox = session.advance()
                report.stage_seconds[protocol_round.key] = time.perf_counter() - started
                if session.stage is ServerStage.COMPLETED:
                    break
                next_stage = session.stage.value
                requests = {
                    index: RecordDict(
                        {RECORD_KEY: ConfigRecord({"stage": next_stage, "round": round_id, "payload": encode(message)})}
                    )
                    for index, message in sorted(outbox.items())
                }
        except ProtocolAbort as abort:
            report.outcome, report.abort_reason = "aborted", abort.reason.value
            return
        finally:
            report.survivors = self._survivors(session, cohort)

        fixed_point = encoding.fixed_point(config)
        decoded = fixed_point.decode_sum(session.result)
        average, total_examples = encoding.weighted_average(decoded)
        report.outcome = "completed"
        report.decoded_sum = decoded
        report.total_examples = total_examples
        report.error_bound = encoding.error_bound(len(session.survivors))
        self._aggregate(context, server_round, layout.unflatten(average), report, proxies, node_of)

    def _threshold_for(self, cohort_size: int) -> int:
        if self.threshold is None:
            return minimum_threshold(self.mode, cohort_size)
        if isinstance(self.threshold, float):
            return math.ceil(self.threshold * cohort_size)
        return self.threshold

    def _identify(self, grid: Grid, nodes: list[int], group: str, report: RoundReport) -> None:
        """Ask new nodes who they are; keep those the roster admits with exactly that key."""
        if not nodes:
            return
        request = RecordDict({RECORD_KEY: ConfigRecord({"stage": IDENTIFY})})
        replies = grid.send_and_receive(
            [Message(request, dst_node_id=node, message_type=MessageType.TRAIN, group_id=group) for node in nodes],
            timeout=self.timeout,
        )
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                report.refusals[f"node-{node}"] = refusal_reason(reply.error.reason or "") or "error"
                continue
            record = reply.content.config_records.get(RECORD_KEY)
            participant = record.get("participant") if record is not None else None
            public_key = record.get("public-key") if record is not None else None
            if not isinstance(participant, str) or not isinstance(public_key, bytes):
                report.refusals[f"node-{node}"] = "malformed-identify"
            elif not self.roster.admits(participant, public_key):
                report.refusals[f"node-{node}"] = "not-on-roster"
            else:
                self._participant_of_node[node] = participant

    def _accept(
        self,
        session: ServerSession,
        replies: Iterable[Message],
        protocol_round: Round,
        round_id: str,
        cohort: Sequence[str],
        report: RoundReport,
    ) -> None:
        """Hand every well-formed reply of this stage to the session; name every refusal and rejection.

        A message must come from the node bound to the participant it names as sender:
        the session authenticates R0 and R3 by signature, and this binding covers the
        rest, as the HTTP service's signed requests do.
        """
        index_of = {participant: index for index, participant in enumerate(cohort)}
        for reply in replies:
            node = reply.metadata.src_node_id
            who = self._participant_of_node.get(node, f"node-{node}")
            if reply.has_error():
                reason = refusal_reason(reply.error.reason or "") or f"error-{reply.error.code}"
                report.refusals[who] = f"{protocol_round.key}: {reason}"
                continue
            record = reply.content.config_records.get(RECORD_KEY)
            payload = record.get("payload") if record is not None else None
            if (
                record is None
                or record.get("stage") != protocol_round.value
                or record.get("round") != round_id
                or not isinstance(payload, bytes)
            ):
                report.rejections[who] = f"{protocol_round.key}: malformed-reply"
                continue
            try:
                message: ClientMessage = decode(payload)
                if message.sender != index_of.get(who):
                    raise MessageRejected(RejectReason.UNKNOWN_SENDER, f"{who} sent a message as participant {message.sender}")
                session.receive(message)
            except MalformedMessage:
                report.rejections[who] = f"{protocol_round.key}: {RejectReason.MALFORMED.value}"
            except MessageRejected as rejected:
                report.rejections[who] = f"{protocol_round.key}: {rejected.reason.value}"

    @staticmethod
    def _survivors(session: ServerSession, cohort: Sequence[str]) -> dict[str, tuple[str, ...]]:
        return {
            record.stage.round.key: tuple(cohort[index] for index in sorted(record.responded))
            for record in session.history
            if record.stage.round is not None
        }

    def _aggregate(
        self,
        context: LegacyContext,
        server_round: int,
        arrays: list[np.ndarray],
        report: RoundReport,
        proxies: dict[int, ClientProxy],
        node_of: dict[str, int],
    ) -> None:
        parameters = ndarrays_to_parameters(arrays)
        results = [
            (proxies[node_of[participant]], FitRes(Status(Code.OK, ""), parameters, 1, {}))
            for participant in report.final_survivors
        ]
        failures: list[tuple[ClientProxy, FitRes] | BaseException] = [
            Exception(f"{who}: {reason}") for who, reason in {**report.refusals, **report.rejections}.items()
        ]
        parameters_aggregated, metrics_aggregated = context.strategy.aggregate_fit(server_round, results, failures)
        if parameters_aggregated:
            context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(parameters_aggregated, True)
            context.history.add_metrics_distributed_fit(server_round=server_round, metrics=metrics_aggregated)
