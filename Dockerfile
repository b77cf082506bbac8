# One image for every service: `loopline run <service>` picks which (see docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml requirements.lock ./
COPY libs ./libs
COPY services ./services
# Data contracts, feature views and model specs are data the services read at start.
COPY contracts ./contracts
COPY features ./features
COPY models ./models
RUN pip install --no-cache-dir -c requirements.lock . \
    && useradd --system loopline
USER loopline
ENV LOOPLINE_CONTRACTS_DIR=/app/contracts LOOPLINE_FEATURE_VIEWS_DIR=/app/features LOOPLINE_MODELS_DIR=/app/models
ENTRYPOINT ["loopline"]
