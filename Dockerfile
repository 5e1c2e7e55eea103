# The Airflow image for docker-compose.yaml: the official base plus this project's pinned stack.
FROM apache/airflow:3.3.2-python3.11
COPY requirements.txt pyproject.toml README.md /opt/returnledger/
COPY include /opt/returnledger/include
RUN pip install --no-cache-dir -r /opt/returnledger/requirements.txt \
 && pip install --no-cache-dir --no-deps -e /opt/returnledger
