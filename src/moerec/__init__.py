"""moerec: a sequential recommender built on a Mixture-of-Experts Transformer."""

__version__ = "0.1.0"


class MoerecError(Exception):
    """An error a user can act on: its message says what went wrong and what to do."""
