"""drlaif reward server: direct RLAIF rewards from a labeler LLM over HTTP."""

__version__ = "0.1.0"
