"""The aggregation server: a thin, durable HTTP shell over the pure protocol core (``secagg``).

==========================  ================================================================
``API.md``                  the HTTP contract the bank client codes against
``request_signing``         the signed-request scheme (pure; imported by the client too)
``settings``                pydantic-settings (``SECAGG_*``), refusing unsafe configurations
``db``                      SQLAlchemy tables, SQLite/PostgreSQL engines, the round lock
``coordinator``             rounds over the database: accept, close stages, replay, deadlines
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
