"""The HTTP simulation harness: banks sharing one process take turns on its cores, and its server has a connection for each.

Between receiving a request and sending its answer a simulated bank holds a slot; it
gives the slot back before every other call to the server, so a bank waiting for the
server never keeps another from computing, and no more banks compute at once than
there are slots.
"""

from __future__ import annotations

import threading

from clients.harness.http_simulation import CONNECTION_MARGIN, TakingTurns, connections_for
from clients.runtime.transport import Delivered, Pending
from secagg.rounds import Round


class ScriptedTransport:
    """Answers every fetch with the next of ``deliveries``; records the calls."""

    endpoint = "scripted"

    def __init__(self, deliveries: list[object]) -> None:
        self.deliveries = list(deliveries)
        self.calls: list[str] = []

    def describe_round(self, round_id: str) -> str:
        self.calls.append("describe")
        return "description"

    def submit(self, round_id: str, protocol_round: Round, payload: bytes) -> str:
        self.calls.append(f"submit {protocol_round.key}")
        return "accepted"

    def fetch(self, round_id: str, protocol_round: Round) -> object:
        self.calls.append(f"fetch {protocol_round.key}")
        return self.deliveries.pop(0)

    def fetch_result(self, round_id: str) -> str:
        self.calls.append("result")
        return "result"


def delivered() -> Delivered:
    return Delivered(b"request")


def pending() -> Pending:
    return Pending(retry_after=None, long_polled=True)


def test_a_bank_holds_its_slot_from_a_delivered_request_to_its_answer_and_not_while_it_waits() -> None:
    slots = threading.Semaphore(1)
    bank = TakingTurns(ScriptedTransport([pending(), delivered()]), slots)
    bank.describe_round("r")  # the R0 message is computed next: the slot is taken
    assert not slots.acquire(blocking=False)
    bank.submit("r", Round.ADVERTISE_KEYS, b"m")  # sending: the slot is given back first
    assert slots.acquire(blocking=False)
    slots.release()
    bank.fetch("r", Round.ADVERTISE_KEYS)  # nothing yet: no slot while it waits
    assert slots.acquire(blocking=False)
    slots.release()
    bank.fetch("r", Round.ADVERTISE_KEYS)  # its R1 request: computing the answer takes the slot
    assert not slots.acquire(blocking=False)
    bank.release()
    assert slots.acquire(blocking=False)


def test_no_more_banks_compute_at_once_than_there_are_slots() -> None:
    slots = threading.Semaphore(1)
    first = TakingTurns(ScriptedTransport([delivered()]), slots)
    second = TakingTurns(ScriptedTransport([delivered()]), slots)
    first.fetch("r", Round.SHARE_KEYS)
    got_request = threading.Event()

    def second_bank() -> None:
        second.fetch("r", Round.SHARE_KEYS)
        got_request.set()

    waiting = threading.Thread(target=second_bank)
    waiting.start()
    assert not got_request.wait(0.2), "the second bank computes only once the first has answered"
    first.submit("r", Round.SHARE_KEYS, b"answer")
    assert got_request.wait(5)
    waiting.join(5)
    second.release()
    assert slots.acquire(blocking=False)


def test_the_simulation_server_has_a_connection_for_every_waiting_bank() -> None:
    # each waiting bank holds one long-poll connection: a limit at or below the cohort refuses the last banks
    assert connections_for(200) == 1000, "never below the server's default"
    assert connections_for(1000) > 1000
    assert connections_for(5000) >= 5000 + CONNECTION_MARGIN
