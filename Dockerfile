# One image for every service; docker-compose.yml picks the entry point per container.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOST=0.0.0.0
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY service_kit service_kit
COPY migrations migrations
COPY command_api command_api
COPY course_processor course_processor
COPY projections projections
COPY notifier notifier
COPY stack stack
RUN pip install --no-cache-dir . && useradd --system --uid 10001 app
USER app
