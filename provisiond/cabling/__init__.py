"""Physical truth for cabling: each NIC's planned switch port against what LLDP saw.

:mod:`~provisiond.cabling.lldp` checks the agent's neighbours, :mod:`.check` is the
pure diff (pass / fail / n/a, swaps), :mod:`.service` stores and records verdicts
(events, holds, metrics), :mod:`.views` answers the API, :mod:`.topology` exports and
imports the plan as a PTM ``topology.dot``.
"""
