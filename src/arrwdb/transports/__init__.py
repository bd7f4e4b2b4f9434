"""The network transports: thin adapters from the wire to the application service.

Each transport is one module with a ``router()`` (``rest``, ``streaming`` for NDJSON, ``sse``,
``ws``); ``arrwdb.server`` registers the ones named in ``Settings.transports``. They share:

* ``messages`` / ``envelopes``: the msgspec Structs of every body and message (the validator);
* ``dispatch``: the one table of actions (request Struct -> service call -> response Struct);
* ``errors``: the one table from exceptions to HTTP problems, WS and NDJSON errors;
* ``runtime``: the service, encoded-event cache, connection registry and graceful drain.

Transports import the domain, the config and third-party libraries only: never an adapter or
the container (import-linter checks it). The protocols are described in ``docs/protocol.md``.
"""
