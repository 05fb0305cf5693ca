"""Local stand-ins of the gateways' admin APIs, served by uvicorn on 127.0.0.1 for the enforcement tests.

Each stand-in implements exactly the admin endpoints the enforcer calls, with
the gateway's own request and response shapes, on top of the gateway's own
tables (``tests/gateways/tables.py``). It adds one relay endpoint,
``POST /v1/chat/completions``, that only checks the caller's key the way the
gateway does, so a test can see a disabled key refused. ``fail_next`` makes
the next calls return 503.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, select, update

ADMIN_TOKEN = "admin-access-token"
MASTER_KEY = "sk-master-standin-0000000000"


class StandIn:
    """A running stand-in: its URL, the calls it received, and failure injection."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.calls: list[tuple[str, str, dict]] = []
        self.fail_next = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

        @app.middleware("http")
        async def record(request: Request, call_next):
            body = await request.json() if request.method in ("PUT", "POST") else {}
            if not request.url.path.startswith("/v1/"):
                self.calls.append((request.method, request.url.path, body))
                if self.fail_next > 0:
                    self.fail_next -= 1
                    return JSONResponse({"message": "upstream busy"}, status_code=503)
            return await call_next(request)

    def start(self) -> StandIn:
        """Listen on the reserved port; until then, connections are refused."""
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("stand-in did not start within 10 s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)
        self.sock.close()

    def admin_calls(self) -> list[tuple[str, str, dict]]:
        return list(self.calls)


def _answer(success: bool, message: str = "") -> dict:
    return {"success": success, "message": message}


def newapi_app(engine: Engine, tables: dict, *, admin_user_id: int = 1, one_api: bool = False) -> FastAPI:
    """new-api (or, with ``one_api``, one-api) admin endpoints and a key check, on the gateway's tables."""
    app = FastAPI()
    tokens, users = tables["tokens"], tables["users"]

    def admin(authorization: str | None, new_api_user: str | None) -> bool:
        if authorization != ADMIN_TOKEN:
            return False
        return one_api or new_api_user == str(admin_user_id)

    @app.put("/api/token/")
    async def update_token(request: Request, status_only: str = "", authorization: str | None = Header(None),
                           new_api_user: str | None = Header(None)):
        if not admin(authorization, new_api_user):
            return JSONResponse(_answer(False, "unauthorized"), status_code=401)
        body = await request.json()
        condition = tokens.c.id == body["id"]
        if one_api:
            # one-api finds the token by id and the caller's user id, so only own tokens can change.
            condition = condition & (tokens.c.user_id == admin_user_id)
        with engine.begin() as connection:
            found = connection.execute(select(tokens.c.id).where(condition)).first()
            if found is None:
                return _answer(False, "record not found")
            if status_only:
                connection.execute(update(tokens).where(tokens.c.id == body["id"]).values(status=body["status"]))
        return _answer(True)

    @app.post("/api/user/manage")
    async def manage_user(request: Request, authorization: str | None = Header(None),
                          new_api_user: str | None = Header(None)):
        if not admin(authorization, new_api_user):
            return JSONResponse(_answer(False, "unauthorized"), status_code=401)
        body = await request.json()
        condition = users.c.username == body.get("username") if one_api else users.c.id == body.get("id")
        status = {"disable": 2, "enable": 1}.get(body.get("action"))
        with engine.begin() as connection:
            if connection.execute(select(users.c.id).where(condition)).first() is None:
                return _answer(False, "user does not exist")
            if status is None:
                return _answer(False, "invalid action")
            connection.execute(update(users).where(condition).values(status=status))
        return _answer(True)

    @app.post("/v1/chat/completions")
    async def relay(authorization: str | None = Header(None)):
        key = (authorization or "").removeprefix("Bearer ").removeprefix("sk-")
        with engine.connect() as connection:
            token = connection.execute(select(tokens).where(tokens.c.key == key)).mappings().first()
            user = token and connection.execute(select(users).where(users.c.id == token["user_id"])).mappings().first()
        if token is None or token["status"] != 1:
            return JSONResponse({"error": {"message": "token unavailable"}}, status_code=401)
        if user is None or user["status"] != 1:
            return JSONResponse({"error": {"message": "user banned"}}, status_code=403)
        return {"choices": []}

    return app


def litellm_app(engine: Engine, tables: dict) -> FastAPI:
    """LiteLLM's /key/block, /key/unblock and /key/update, and a key check, on LiteLLM_VerificationToken."""
    app = FastAPI()
    keys = tables["LiteLLM_VerificationToken"]

    def hashed(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest() if key.startswith("sk-") else key

    def change(authorization: str | None, key: str, **values):
        if authorization != f"Bearer {MASTER_KEY}":
            return JSONResponse({"error": {"message": "Authentication Error"}}, status_code=401)
        with engine.begin() as connection:
            result = connection.execute(update(keys).where(keys.c.token == hashed(key)).values(**values))
        if result.rowcount == 0:
            return JSONResponse({"error": {"message": f"Key not found: {key}"}}, status_code=404)
        return {"key": hashed(key), **values}

    @app.post("/key/block")
    async def block(request: Request, authorization: str | None = Header(None)):
        return change(authorization, (await request.json())["key"], blocked=True)

    @app.post("/key/unblock")
    async def unblock(request: Request, authorization: str | None = Header(None)):
        return change(authorization, (await request.json())["key"], blocked=False)

    @app.post("/key/update")
    async def update_key(request: Request, authorization: str | None = Header(None)):
        body = await request.json()
        return change(authorization, body["key"], **{name: body[name] for name in ("rpm_limit",) if name in body})

    @app.post("/v1/chat/completions")
    async def relay(authorization: str | None = Header(None)):
        token = hashed((authorization or "").removeprefix("Bearer "))
        with engine.connect() as connection:
            row = connection.execute(select(keys).where(keys.c.token == token)).mappings().first()
        if row is None or row["blocked"]:
            return JSONResponse({"error": {"message": "Authentication Error, Key is blocked."}}, status_code=401)
        return {"choices": [], "rpm_limit": row["rpm_limit"]}

    return app
