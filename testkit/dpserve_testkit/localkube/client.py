"""A small synchronous JSON client for the emulator (tests, benchmark, demo scripts)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from dpserve_testkit.localkube.emulator import ADMIN_TOKEN

Obj = dict[str, Any]


class ApiFailure(Exception):
    def __init__(self, status: int, body: Obj) -> None:
        super().__init__(f"{status} {body.get('reason')}: {body.get('message')}")
        self.status = status
        self.body = body


class Client:
    """Requests as the admin (``token``: another identity, e.g. a ServiceAccount's token)."""

    def __init__(self, url: str, timeout_s: float = 10.0, *, token: str = ADMIN_TOKEN) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.token = token

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> Obj:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type,
                                              "Authorization": f"Bearer {self.token}",
                                              "User-Agent": "localkube-client"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                payload: Obj = json.loads(resp.read() or b"{}")
                return payload
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                failure = json.loads(raw)
            except ValueError:
                failure = {"message": raw.decode(errors="replace")}
            raise ApiFailure(exc.code, failure) from exc

    def get(self, path: str) -> Obj:
        return self.request("GET", path)

    def find(self, path: str) -> Obj | None:
        try:
            return self.get(path)
        except ApiFailure as exc:
            if exc.status == 404:
                return None
            raise

    def items(self, path: str) -> list[Obj]:
        items: list[Obj] = self.get(path).get("items") or []
        return items

    def create(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body)

    def replace(self, path: str, body: Obj) -> Obj:
        return self.request("PUT", path, body)

    def merge(self, path: str, patch: Obj) -> Obj:
        return self.request("PATCH", path, patch, "application/merge-patch+json")

    def json_patch(self, path: str, ops: list[Obj]) -> Obj:
        return self.request("PATCH", path, ops, "application/json-patch+json")

    def delete(self, path: str, options: Obj | None = None) -> Obj:
        return self.request("DELETE", path, options)
