"""The portal's route map: every route of the client area declares the isolation dependency.

Built offline (no CouchDB is asked while routes are built). A new route under ``/``,
``/tasks``, ``/api/tasks`` or ``/api/activity`` that forgets
``Depends(hub.portal.auth.client_scope)`` fails here, before it can serve one client
another's data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from hub.portal import auth
from hub.portal.app import create_app
from hub.protocol.couch import Couch
from hub.service import FarmService

CLIENT_AREA = ("/tasks", "/api/tasks", "/api/activity")
OPERATOR_AREA = ("/ops", "/api/ops")


def offline_app() -> FastAPI:
    service = FarmService(Couch("http://127.0.0.1:9"), "offline")
    return create_app(service, lambda name, password: None, secret_key="k" * 32)


def api_routes(app: FastAPI) -> Iterator[tuple[str, set[str], Dependant]]:
    """(path, methods, dependant) of every API route, routers' own dependencies included."""
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI >= 0.16x: lazy includes
    except ImportError:  # pragma: no cover - older FastAPI flattens included routers
        contexts: Any = app.routes
    else:
        contexts = iter_route_contexts(app.routes)
    for context in contexts:
        original = getattr(context, "original_route", context)
        if isinstance(original, APIRoute):
            yield context.path, set(context.methods or ()), context.dependant


def calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from calls(sub)


def in_area(path: str, area: tuple[str, ...]) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in area)


def test_every_client_route_declares_client_scope():
    routes = list(api_routes(offline_app()))
    client_routes = [r for r in routes if r[0] == "/" or in_area(r[0], CLIENT_AREA)]
    # The walk sees the routers' routes (not an empty list that would pass anything).
    assert len(client_routes) >= 25, [r[0] for r in client_routes]
    missing = [
        (path, sorted(methods))
        for path, methods, dependant in client_routes
        if not set(calls(dependant)) & set(auth.ISOLATION_DEPENDENCIES)
    ]
    assert not missing, f"client routes without Depends(client_scope): {missing}"


def test_operator_routes_declare_operator_and_every_route_knows_who_asks():
    for path, methods, dependant in api_routes(offline_app()):
        found = set(calls(dependant))
        if in_area(path, OPERATOR_AREA):
            assert auth.operator in found, (path, methods)
        if path not in ("/login", "/api/openapi.json"):
            assert auth.principal in found, (path, methods)


def test_the_walk_catches_a_route_without_the_scope():
    """The check above really fails for a client route that forgets the dependency."""
    app = offline_app()

    @app.get("/api/tasks/{name}/forgotten")
    def forgotten(name: str) -> dict[str, str]:
        return {"name": name}

    bare = [
        path
        for path, _methods, dependant in api_routes(app)
        if in_area(path, CLIENT_AREA)
        and not set(calls(dependant)) & set(auth.ISOLATION_DEPENDENCIES)
    ]
    assert bare == ["/api/tasks/{name}/forgotten"]


def test_no_portal_function_is_longer_than_the_limit(limit: int = 150):
    """Issue 16's room sizes for hub/portal: no function over 150 lines, no class over 25
    methods."""
    import ast
    from pathlib import Path

    root = Path(auth.__file__).resolve().parent
    too_long, too_wide = [], []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > limit:
                    too_long.append(f"{path.name}:{node.name} {length}")
            if isinstance(node, ast.ClassDef):
                methods = [
                    n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                ]
                if len(methods) > 25:
                    too_wide.append(f"{path.name}:{node.name} {len(methods)}")
    assert not too_long and not too_wide, (too_long, too_wide)
