"""The final errors of the model store: retrying gives the same answer."""

from __future__ import annotations


class ModelStoreError(Exception):
    """The source cannot give these weights, and asking again will not change that."""


class ModelNotFound(ModelStoreError):
    """No file, folder, bucket, object or prefix at the source URI."""


class ModelIntegrityError(ModelStoreError):
    """The bytes at the source do not have the catalog's digest."""
