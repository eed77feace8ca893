"""The portal's routers, one per area (wired together by :func:`hub.portal.app.create_app`):

* ``login``: log in and out, ``/api/me``;
* ``pages``: the client's pages (dashboard, task pages and form, one run);
* ``api``: the client's JSON API (tasks, runs, plots) and the reference (kinds, preview);
* ``export``: CSV and JSON-lines downloads;
* ``tokens``: API tokens (page and API);
* ``ops``: the operators' page and API.

Routes under ``/``, ``/tasks``, ``/api/tasks`` and ``/api/activity`` form the client area:
each declares :func:`hub.portal.auth.client_scope` (held by ``tests/test_portal_routes.py``).
"""
