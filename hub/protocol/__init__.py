"""The protocol core: what the hub and the worker must agree on, and nothing else.

Documents and ids (``model``), the state machine and result order (``states``), hub time
(``timefmt``), the kinds' input schemas (``kinds``), the one CouchDB client (``couch``),
database and document names (``names``) and the version rules (``version``). The worker
imports only this package; the hub's services build on it. Nothing here imports Qt or a hub
service.
"""
