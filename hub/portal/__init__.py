"""The client portal: web pages and a JSON API over the farm, for clients and operators.

FastAPI with Jinja2 templates and a little vanilla JavaScript (no build step, nothing
fetched from other sites). Clients never talk to CouchDB: the portal checks their CouchDB
name and password once against ``/_session``, then keeps its own signed session cookie,
and every figure it shows comes from a view range keyed by the logged-in client.

- :func:`hub.portal.app.create_app` builds the ASGI app (tests use it directly);
- :func:`hub.portal.server.start_portal` runs it inside ``hub serve`` on a thread.
"""

from hub.portal.app import PortalSettings, create_app

__all__ = ["PortalSettings", "create_app"]
