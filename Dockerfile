# One image for every service: `loopline run <service>` picks which (see docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml requirements.lock ./
COPY libs ./libs
COPY services ./services
RUN pip install --no-cache-dir -c requirements.lock . \
    && useradd --system loopline
USER loopline
ENTRYPOINT ["loopline"]
