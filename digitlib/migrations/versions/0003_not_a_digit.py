"""Answers that say "not a digit", and the model's own rejection as it was made.

- `not_digit`: the visitor answered "not a digit"; `true_label` is then NULL (a check ties them).
- `rejected`, `not_digit_probability`: the prediction as shown (NULL probability for rows
  written before models had one).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ANSWER_CHECK = "ck_prediction_logs_answer"


def _revision_0002() -> sa.Table:
    """The table as 0002 left it: SQLite rebuilds it from this (reflection would drop its checks)."""
    table = sa.Table(
        "prediction_logs",
        sa.MetaData(),
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
    sa.Index("ix_prediction_logs_created_at", table.c.created_at)
    return table


def upgrade() -> None:
    with op.batch_alter_table("prediction_logs", copy_from=_revision_0002()) as batch:
        batch.add_column(sa.Column("not_digit", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("rejected", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("not_digit_probability", sa.Float, nullable=True))
        batch.alter_column("true_label", existing_type=sa.SmallInteger, nullable=True)
        # A digit label xor "not a digit": never both, never neither. (NULL passes BETWEEN's check.)
        batch.create_check_constraint(
            ANSWER_CHECK, "(not_digit AND true_label IS NULL) OR (NOT not_digit AND true_label IS NOT NULL)"
        )


def downgrade() -> None:
    # Revision 0002 has no place for a "not a digit" answer: refuse rather than delete them.
    bind = op.get_bind()
    kept = bind.execute(sa.text("SELECT count(*) FROM prediction_logs WHERE not_digit")).scalar()
    if kept:
        raise RuntimeError(
            f"{kept} stored answers say 'not a digit'; revision 0002 cannot hold them. "
            "Export them (digitlib export-feedback) and delete them first if you must downgrade."
        )
    table = _revision_0002()
    for name, kind in (("not_digit", sa.Boolean), ("rejected", sa.Boolean), ("not_digit_probability", sa.Float)):
        table.append_column(sa.Column(name, kind))
    table.append_constraint(sa.CheckConstraint("true_label IS NOT NULL", name=ANSWER_CHECK))
    with op.batch_alter_table("prediction_logs", copy_from=table) as batch:
        batch.drop_constraint(ANSWER_CHECK, type_="check")
        batch.alter_column("true_label", existing_type=sa.SmallInteger, nullable=False)
        batch.drop_column("not_digit_probability")
        batch.drop_column("rejected")
        batch.drop_column("not_digit")
