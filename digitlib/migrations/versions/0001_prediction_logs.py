"""prediction_logs as store.py first created it (the baseline of databases made before migrations).

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A frozen copy of the table, not an import of store.py: later changes are later revisions.
    op.create_table(
        "prediction_logs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("submission_id", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("predicted", sa.SmallInteger, sa.CheckConstraint("predicted BETWEEN 0 AND 9"), nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("probabilities", sa.JSON, nullable=False),
        sa.Column("true_label", sa.SmallInteger, sa.CheckConstraint("true_label BETWEEN 0 AND 9"), nullable=False),
        sa.Column("image", sa.LargeBinary, nullable=False),
        sa.Column("strokes", sa.JSON, nullable=False),
        sa.Column("canvas_size", sa.Integer, nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("prediction_logs")
