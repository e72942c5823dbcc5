"""Secure aggregation for Flower apps: this project's protocol over Flower's message channel.

The bank adds :class:`SecAggMod` to its ``ClientApp`` in place of ``secaggplus_mod``;
the coordinator runs :class:`SecAggWorkflow` in place of ``SecAggPlusWorkflow``. Both
sides share the records of :mod:`clients.flower.records` and the consortium's
:class:`Roster`. See docs/FLOWER.md. Needs the ``flower`` extra (``flwr``).
"""

from clients.flower.errors import FlowerRefusalReason
from clients.flower.mod import BankSettings, SecAggMod
from clients.flower.roster import Roster, RosterError
from clients.flower.workflow import RoundReport, SecAggWorkflow

__all__ = ["BankSettings", "FlowerRefusalReason", "Roster", "RosterError", "RoundReport", "SecAggMod", "SecAggWorkflow"]
