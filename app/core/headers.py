"""Security headers on every HTML page: a strict Content-Security-Policy and no framing.

The pages load only their own scripts and stylesheet (no inline script or style), so the
policy can forbid everything else: an injected `<script>` or `style=` does nothing, and no
other site can frame a page to trick clicks out of a user. Responses that set their own
policy (file previews, which are sandboxed) keep it.
"""

from __future__ import annotations

from litestar.datastructures import MutableScopeHeaders
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send


def page_policy(connect_to: list[str]) -> str:
    """The policy of our pages; `connect_to`: origins scripts may send requests to besides
    our own (the S3 bucket, which browsers PUT chunks to through presigned URLs)."""
    connect = " ".join(["'self'", *connect_to])
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            "media-src 'self' blob:",
            f"connect-src {connect}",
            "frame-src 'self'",
            "frame-ancestors 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ]
    )


class SecurityHeadersMiddleware(ASGIMiddleware):
    scopes = ("http",)  # type: ignore[assignment]

    def __init__(self, policy: str) -> None:
        self.policy = policy

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                if headers.get("content-type", "").startswith("text/html"):
                    if "content-security-policy" not in headers:
                        headers["Content-Security-Policy"] = self.policy
                    headers["X-Frame-Options"] = "SAMEORIGIN"
                    headers["X-Content-Type-Options"] = "nosniff"
            await send(message)

        await next_app(scope, receive, send_with_headers)
