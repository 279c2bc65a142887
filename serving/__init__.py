"""The prediction API: BentoML service, explanations, model and feature adapters."""
