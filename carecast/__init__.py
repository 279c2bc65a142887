"""CareCast core: settings, paths and small utilities shared by every stage.

Layering (imports only flow downwards): carecast -> features -> training -> serving -> pipelines.
"""

__version__ = "0.1.0"
