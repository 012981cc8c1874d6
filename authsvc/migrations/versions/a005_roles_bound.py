"""auth_operator_roles.bound_authorization: the authorization an operator's roles are for

Roles were kept per (USCC, operator id) alone, so a person later given a departed
operator's id, or the operators of an enterprise that ceased and applied again under its
USCC, got the roles granted before. An operator certificate now names the enterprise's
authorization of that operator (its subject's dnQualifier: :func:`ca.policy.authorization_of`);
a grant is bound to the first authorization that logs in with it, and a grant bound to
another authorization gives no roles until the enterprise grants them again (which
unbinds it). NULL: not bound yet (every grant of earlier releases). A nullable column:
a release before this one, still running, ignores it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a005"
down_revision = "a004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("auth_operator_roles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("bound_authorization", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("auth_operator_roles", schema=None) as batch_op:
        batch_op.drop_column("bound_authorization")
