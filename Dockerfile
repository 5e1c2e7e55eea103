# The Airflow image for docker-compose.yaml: the official base plus this project's pinned stack.
# The base image runs pip as the `airflow` user, so the project is copied owned by it (group 0 and
# group-writable, for an AIRFLOW_UID other than 50000): `pip install -e` writes its metadata there,
# and RETURNLEDGER_HOME (/opt/returnledger, with .local/ for validation output and digests) is writable.
FROM apache/airflow:3.3.2-python3.11
USER root
RUN mkdir -p /opt/returnledger/.local && chown -R airflow:0 /opt/returnledger && chmod -R g+rwX /opt/returnledger
USER airflow
COPY --chown=airflow:0 requirements.txt pyproject.toml README.md /opt/returnledger/
RUN pip install --no-cache-dir -r /opt/returnledger/requirements.txt
COPY --chown=airflow:0 include /opt/returnledger/include
RUN pip install --no-cache-dir --no-deps -e /opt/returnledger && chmod -R g+rwX /opt/returnledger
ENV RETURNLEDGER_HOME=/opt/returnledger
