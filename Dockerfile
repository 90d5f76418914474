# Digit Lab: one image for the dashboard (Voila), JupyterLab, the trainer and migrations.
# docker compose builds it (docker-compose.yml); each service picks its command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user runs everything; root only builds.
RUN useradd --create-home --uid 1000 --user-group digitlab
WORKDIR /app

# Torch first, CPU wheels only (no CUDA gigabytes): this layer survives changes to the project.
RUN python -m venv /app/.venv \
    && /app/.venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1

# The project, editable so digitlib.config finds models/, data/ and notebooks/ under /app.
COPY pyproject.toml README.md alembic.ini voila.json Makefile ./
COPY digitlib ./digitlib
RUN /app/.venv/bin/pip install --extra-index-url https://download.pytorch.org/whl/cpu -e . \
    && /app/.venv/bin/python -m ipykernel install --sys-prefix --name digitlab --display-name "Python (digitlab)"

COPY dashboards ./dashboards
COPY notebooks ./notebooks
COPY models/default ./models/default
COPY deploy/check-env ./deploy/check-env

# Folders the services write to (named volumes start as copies of these, owned by digitlab).
RUN mkdir -p data reports \
    && chown -R digitlab:digitlab /app/data /app/reports /app/models /app/notebooks
USER digitlab

EXPOSE 8866 8888
# Every service's command starts behind the secrets check: .env.example placeholders and short
# secrets stop the container with a message naming the variable (deploy/check-env).
ENTRYPOINT ["/app/deploy/check-env"]
# The dashboard by default: the same command as `make dashboard` (voila.json: preheated kernels, no tracebacks).
CMD [".venv/bin/python", "-m", "voila", "dashboards/digits.ipynb", "--port=8866", "--no-browser", "--preheat_kernel=True", "--Voila.ip=0.0.0.0"]
