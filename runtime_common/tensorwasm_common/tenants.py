"""Tenant ids: the pattern every service checks, and the tenant of a call that names none."""

from __future__ import annotations

import re

DEFAULT_TENANT = "default"
# A tenant id: what the gateway admits, and what names a tenant's records and directories.
TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
