# The Airflow image for docker-compose.yaml: the official slim base (Airflow without the bundled providers)
# plus the runtime lock, the package, the DAGs and the plugin, all baked in. Nothing of the dev stack
# (tests, lint, browser, embedded PostgreSQL, simulators: requirements.txt and dev/) is in it, and nothing
# is bind-mounted over it in docker-compose.yaml; docker-compose.dev.yaml mounts the source for local work.
# The base image runs pip as the `airflow` user, so what is copied is owned by it (group 0 and
# group-writable, for an AIRFLOW_UID other than 50000); RETURNLEDGER_HOME (/opt/returnledger, with .local/
# on a volume and the reference seed files under include/reference/) is writable by it.
FROM apache/airflow:slim-3.3.2-python3.11
USER root
RUN mkdir -p /opt/returnledger/.local && chown -R airflow:0 /opt/returnledger && chmod -R g+rwX /opt/returnledger
USER airflow
# 1. the runtime lock (Airflow, providers, the libraries the package imports), pinned, pip check clean
COPY --chown=airflow:0 requirements-runtime.txt /opt/returnledger/
RUN pip install --no-cache-dir -r /opt/returnledger/requirements-runtime.txt
# 2. the package, a regular (non-editable) install into site-packages; its build folder is dropped
COPY --chown=airflow:0 pyproject.toml README.md /tmp/returnledger-src/
COPY --chown=airflow:0 include/returnledger /tmp/returnledger-src/include/returnledger
RUN pip install --no-cache-dir --no-deps /tmp/returnledger-src && rm -rf /tmp/returnledger-src && pip check
# 3. the reference seed files `returnledger reference load` reads (RETURNLEDGER_HOME/include/reference)
COPY --chown=airflow:0 include/reference /opt/returnledger/include/reference
# 4. the DAGs and the plugin, where [core] dags_folder and plugins_folder point
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
ENV RETURNLEDGER_HOME=/opt/returnledger
