"""Helpers of the console's tests: a logged-in Flask test client, the CSRF token of a page."""
from __future__ import annotations

import re

SECRET = "test-secret-key-" + "x" * 32
PASSWORDS = {"viewer": "viewer-pass-1", "operator": "operator-pass-1", "admin": "admin-pass-1"}


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "the page has no CSRF token"
    return found.group(1)


def login(client, name: str, password: str):
    token = csrf_of(client.get("/login").get_data(as_text=True))
    return client.post("/login", data=dict(csrf_token=token, name=name, password=password))


def post_form(client, page: str, action: str, **data):
    """Post ``action`` with the CSRF token of ``page`` (as the browser would)."""
    token = csrf_of(client.get(page).get_data(as_text=True))
    return client.post(action, data=dict(csrf_token=token, **data))
