"""The staff review console: a FastAPI app with server-rendered Jinja2 pages.

``fairuse console`` serves it; ``create_app`` builds it for tests and other
servers.
"""

from fairuse_console.app import create_app

__all__ = ["create_app"]
