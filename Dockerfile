# One image for every service; docker-compose.yml picks the entry point per container.
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOST=0.0.0.0
WORKDIR /app
# The same lock as `make install`: exactly these files (pip checks every hash), nothing
# resolved; then the project itself without dependencies, built with the locked
# setuptools. (The lock holds the dev tools too: one lock, one resolution.)
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY service_kit service_kit
COPY migrations migrations
COPY command_api command_api
COPY course_processor course_processor
COPY projections projections
COPY notifier notifier
COPY stack stack
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && useradd --system --uid 10001 app
USER app
