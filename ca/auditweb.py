"""The auditor's read-only web view at ``/audit/`` (placeholder until the view lands)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("audit_web", __name__, url_prefix="/audit")
