"""The coordinators' web page: ``create_ui_app(settings)`` is a standalone ASGI app (Starlette),
meant to be mounted under ``/ui`` in the BentoML service. See docs/coordinators.md."""

from serving.ui.app import create_ui_app

__all__ = ["create_ui_app"]
