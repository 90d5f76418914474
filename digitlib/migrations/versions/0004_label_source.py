"""Where each answer's label came from: `label_source`.

- `prompt`: the dashboard asked "Draw a 4" and the visitor drew it (the label is the prompt's).
- `confirmed`: the visitor said the model was right (its digit, or "not a digit" when it rejected).
- `corrected`: the visitor gave another answer (a digit the model did not answer, or "not a digit"
  for a drawing the model took for a digit).

Older rows are backfilled the way feedback.load_feedback computes `correct`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SOURCE_CHECK = "ck_prediction_logs_label_source"
SOURCES = "label_source IN ('prompt', 'confirmed', 'corrected')"
CONFIRMED = "(rejected AND not_digit) OR (NOT rejected AND NOT not_digit AND true_label = predicted)"


def _revision_0003() -> sa.Table:
    """The table as 0003 left it: SQLite rebuilds it from this (reflection would drop its checks)."""
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
        sa.Column("true_label", sa.SmallInteger, sa.CheckConstraint("true_label BETWEEN 0 AND 9"), nullable=True),
        sa.Column("image", sa.LargeBinary, nullable=False),
        sa.Column("strokes", sa.JSON, nullable=False),
        sa.Column("canvas_size", sa.Integer, nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("not_digit", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("rejected", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("not_digit_probability", sa.Float, nullable=True),
        sa.CheckConstraint(
            "(not_digit AND true_label IS NULL) OR (NOT not_digit AND true_label IS NOT NULL)",
            name="ck_prediction_logs_answer",
        ),
    )
    sa.Index("ix_prediction_logs_created_at", table.c.created_at)
    return table


def upgrade() -> None:
    op.add_column("prediction_logs", sa.Column("label_source", sa.String(16), nullable=True))
    op.execute(f"UPDATE prediction_logs SET label_source = CASE WHEN {CONFIRMED} THEN 'confirmed' ELSE 'corrected' END")
    table = _revision_0003()
    table.append_column(sa.Column("label_source", sa.String(16), nullable=True))
    with op.batch_alter_table("prediction_logs", copy_from=table) as batch:
        batch.alter_column("label_source", existing_type=sa.String(16), nullable=False)
        batch.create_check_constraint(SOURCE_CHECK, SOURCES)


def downgrade() -> None:
    # Revision 0003 cannot tell a prompted label from a correction: refuse rather than lose it.
    bind = op.get_bind()
    kept = bind.execute(sa.text("SELECT count(*) FROM prediction_logs WHERE label_source = 'prompt'")).scalar()
    if kept:
        raise RuntimeError(
            f"{kept} stored answers were drawn to a prompt; revision 0003 cannot record that. "
            "Export them (digitlib export-feedback) and delete them first if you must downgrade."
        )
    table = _revision_0003()
    table.append_column(sa.Column("label_source", sa.String(16), nullable=False))
    table.append_constraint(sa.CheckConstraint(SOURCES, name=SOURCE_CHECK))
    with op.batch_alter_table("prediction_logs", copy_from=table) as batch:
        batch.drop_constraint(SOURCE_CHECK, type_="check")
        batch.drop_column("label_source")
