"""The aggregation server: a thin, durable HTTP shell over the pure protocol core (``secagg``).

The HTTP contract (request signing, problem types, body limits) is shared with the
clients in :mod:`secagg.http_contract`; ``docs/API.md`` is its prose.

==========================  ================================================================
``settings``                pydantic-settings (``SECAGG_*``), refusing unsafe configurations
``db``                      SQLAlchemy tables, SQLite/PostgreSQL engines, the round lock
``rounds``                  the round engine over the database, one module per job: parameters,
                            acceptance and the running sum, transitions, replay, background
``ledger``                  the seam to the signed server ledger (``dp.audit.round_records``)
``app``                     ``create_app(settings)``: lifespan, problem handlers, routers
``routes``                  admin, participant, audit and operations endpoints
``auth``, ``views``,        request authentication, response shaping, problem types,
``problems``, ``schemas``   request/response schemas
``watch``, ``metrics``,     long polling, Prometheus metrics, JSON logs
``logs``
``cli``                     ``secagg server`` (``python -m service``)
==========================  ================================================================

Nothing here imports FastAPI at package import time; ``service.cli`` imports it inside
the command.
"""
