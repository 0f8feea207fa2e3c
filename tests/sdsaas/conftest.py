"""The admin's fixtures (tests/support/admin.py), for this folder's test_admin.py."""

from tests.support.admin import staff, world  # noqa: F401
